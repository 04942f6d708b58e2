"""chainer_resnet.doctor.facts: the rows the checks read, built in this process."""

import os
import sys
import types

import pytest

from chainer_resnet.communication import LOCAL_RANK_VARIABLES
from chainer_resnet.doctor import checks, facts


def test_intra_ranks_group_by_host_like_chainermn():
    hosts = ['a', 'b', 'a', 'b', 'a']
    assert facts.intra_ranks(hosts) == [(0, 3), (0, 2), (1, 3), (1, 2), (2, 3)]


def test_first_line_skips_blank_lines_and_folds_white_space():
    assert facts.first_line('\n  \nMPICH   Version:\t5.0.2\nmore\n') == 'MPICH Version: 5.0.2'
    assert facts.first_line(' \n') == ''


def test_launcher_rank_reads_the_first_variable_set(monkeypatch):
    for name in facts.LAUNCHER_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert facts.launcher_rank() is None
    monkeypatch.setenv('SLURM_PROCID', '3')
    assert facts.launcher_rank() == '3'
    monkeypatch.setenv('PMI_RANK', '0')
    assert facts.launcher_rank() == '0'


def test_rank_facts_is_the_row_the_checks_read(monkeypatch):
    for name in (LOCAL_RANK_VARIABLES + facts.LAUNCHER_RANK_VARIABLES +
                 tuple(n for n, _ in facts.LAUNCHER_SIZE_VARIABLES)):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith('NCCL_'):
            monkeypatch.delenv(name)
    monkeypatch.setenv('SLURM_LOCALID', '3')
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1,2,3')
    monkeypatch.setenv('NCCL_SOCKET_IFNAME', 'ib0')
    monkeypatch.setenv('NCCL_IB_HCA', 'mlx5_0')
    monkeypatch.setenv('SLURM_STEP_NUM_TASKS', '16')
    MPI = types.SimpleNamespace(Get_processor_name=lambda: 'node7')
    row = facts.rank_facts(MPI)
    assert row == {'host': 'node7', 'python': sys.executable,
                   'local_var': 'SLURM_LOCALID=3', 'cuda_visible': '0,1,2,3',
                   'forwarded': {'NCCL_IB_HCA': 'mlx5_0', 'NCCL_SOCKET_IFNAME': 'ib0'},
                   'launcher_size': [('SLURM_STEP_NUM_TASKS', '16', 'srun')]}
    assert list(row['forwarded']) == ['NCCL_IB_HCA', 'NCCL_SOCKET_IFNAME']   # sorted
    # The checks take the row as it is: a world of one names srun's 16.
    rep = checks.Report()
    checks.check_world([row], 16, rep)
    assert rep.lines[0].endswith('(srun) started this process as one of 16 '
                                 '(SLURM_STEP_NUM_TASKS=16)')


def test_rank_facts_without_launcher_variables(monkeypatch):
    for name in LOCAL_RANK_VARIABLES + ('CUDA_VISIBLE_DEVICES',):
        monkeypatch.delenv(name, raising=False)
    row = facts.rank_facts(types.SimpleNamespace(Get_processor_name=lambda: 'vm'))
    assert row['local_var'] == '-' and row['cuda_visible'] == '(unset)'


def test_software_versions_on_cpu_name_every_library_and_find_nothing():
    rows, findings = facts.software_versions('cpu')
    assert [name for name, _ in rows] == ['python', 'numpy', 'chainer', 'cupy', 'cuDNN',
                                          'NCCL']
    assert dict(rows)['chainer'].startswith('7.8.1 ')
    assert findings == []      # CuPy, cuDNN and NCCL are judged only for --device gpu


def test_software_versions_say_which_convolution_path_runs(fake_cupy, monkeypatch):
    import chainer
    from chainer_resnet import gpu
    fake_cupy(cudnn=8907, nccl=True)
    monkeypatch.setattr(chainer.backends.cuda, 'cudnn_enabled', True)
    rows, findings = facts.software_versions('gpu')
    rows = dict(rows)
    assert rows['cuDNN'].startswith('on: cuDNN 8907')
    assert rows['convolutions'] == 'cuDNN (autotune on, workspace 512 MiB)'
    assert rows['NCCL'] == 'NCCL 22501' and findings == []
    # CuPy 13 that could not load cuDNN: Chainer's own kernels, and the pinned fix.
    fake_cupy(cudnn=None, nccl=True)
    monkeypatch.setattr(chainer.backends.cuda, 'cudnn_enabled', False)
    rows, findings = facts.software_versions('gpu')
    assert dict(rows)['convolutions'].startswith('im2col + GEMM')
    [(level, text, fix)] = findings
    assert level == 'WARN' and 'will not use cuDNN' in text and gpu.PIP_CUDNN in fix


def test_software_versions_fail_on_a_missing_nccl(fake_cupy, monkeypatch):
    import chainer
    from chainer_resnet import gpu
    fake_cupy(cudnn=8907, nccl=False)
    monkeypatch.setattr(chainer.backends.cuda, 'cudnn_enabled', True)
    rows, findings = facts.software_versions('gpu')
    [(level, text, fix)] = findings
    assert level == 'FAIL' and 'pure_nccl' in text and gpu.PIP_NCCL in fix
    assert facts.software_versions('cpu')[1] == []     # judged only for --device gpu


# --- the launcher's PMI, read before MPI starts --------------------------------------

def clear_pmi(monkeypatch):
    for name, _ in facts.PMI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in ('OMPI_COMM_WORLD_SIZE', 'SLURM_STEP_NUM_TASKS'):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize('env, expected', [
    ({}, (None, None, None)),
    # srun --mpi=pmix (what Slurm 22.05 set under tests/slurm/cluster.sh)
    ({'PMIX_RANK': '0', 'PMIX_NAMESPACE': 'slurm.pmix.5.0', 'SLURM_STEP_NUM_TASKS': '2'},
     ('PMIx', 'PMIX_RANK', 'srun')),
    # srun --mpi=pmi2
    ({'PMI_FD': '11', 'PMI_RANK': '0', 'SLURM_STEP_NUM_TASKS': '2'},
     ('PMI-1/2', 'PMI_FD', 'srun')),
    # Open MPI's mpirun (PMIx inside), MPICH's hydra
    ({'PMIX_RANK': '1', 'OMPI_COMM_WORLD_SIZE': '2'}, ('PMIx', 'PMIX_RANK', 'Open MPI mpirun')),
    ({'PMI_RANK': '0', 'PMI_PORT': 'vm:4242'}, ('PMI-1/2', 'PMI_PORT', 'the launcher')),
])
def test_launcher_pmi_from_the_environment(monkeypatch, env, expected):
    clear_pmi(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert facts.launcher_pmi() == expected


# --- which network NCCL chose, from its NCCL_DEBUG=INFO output ------------------------
# NCCL's INFO lines (INIT and NET) as NCCL 2.18-2.21 prints them, written from
# its format for these tests: this project's machines have no GPU to capture
# them on. Host g01 of 2, 8 GPUs each.
NCCL_IB_TWO_RAILS = """\
g01:51234:51234 [0] NCCL INFO Bootstrap : Using ib0:10.10.0.1<0>
g01:51234:51234 [0] NCCL INFO NET/Plugin : No plugin found (libnccl-net.so)
g01:51234:51234 [0] NCCL INFO cudaDriverVersion 12040
NCCL version 2.20.5+cuda12.4
g01:51234:51301 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.10.0.1<0>
g01:51234:51301 [0] NCCL INFO Using non-device net plugin version 0
g01:51234:51301 [0] NCCL INFO Using network IB
g01:51234:51301 [0] NCCL INFO comm 0x55d0c8a0 rank 0 nranks 16 cudaDev 0 busId 7000 - Init START
g01:51234:51301 [0] NCCL INFO Channel 00/0 : 15[7] -> 0[0] [receive] via NET/IB/0/GDRDMA
g01:51234:51301 [0] NCCL INFO Channel 00/0 : 7[7] -> 8[0] [send] via NET/IB/1/GDRDMA
"""
# NCCL_IB_HCA=mlx5_0:1 where the HCAs are mlx5_2 and mlx5_3: no IB device, sockets.
NCCL_SOCKET_FALLBACK = """\
g01:51234:51234 [0] NCCL INFO Bootstrap : Using ib0:10.10.0.1<0>
g01:51234:51234 [0] NCCL INFO NET/Plugin : No plugin found (libnccl-net.so)
NCCL version 2.18.5+cuda12.2
g01:51234:51301 [0] NCCL INFO NCCL_IB_HCA set to mlx5_0:1
g01:51234:51301 [0] NCCL INFO NET/IB : No device found.
g01:51234:51301 [0] NCCL INFO NET/Socket : Using [0]ib0:10.10.0.1<0> [1]eth0:192.168.1.21<0>
g01:51234:51301 [0] NCCL INFO Using network Socket
g01:51234:51301 [0] NCCL INFO Channel 00/0 : 7[7] -> 8[0] [send] via NET/Socket/0
"""


@pytest.mark.parametrize('text, expected', [
    (NCCL_IB_TWO_RAILS, ('IB', 'NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB '
                               'ib0:10.10.0.1<0>')),
    (NCCL_SOCKET_FALLBACK, ('Socket', 'NET/Socket : Using [0]ib0:10.10.0.1<0> '
                                      '[1]eth0:192.168.1.21<0>')),
    # Without the "Using network" line (older NCCL, or other subsystems): the
    # connections say it.
    ('h:1:2 [3] NCCL INFO Channel 01/0 : 7[7] -> 8[0] [send] via NET/Socket/1\n',
     ('Socket', '')),
    ('h:1:2 [3] NCCL INFO Channel 01/0 : 7[7] -> 8[0] [send] via NET/IB/0\n', ('IB', '')),
    # Only the device lines.
    ('NCCL INFO NET/IB : No device found.\nNCCL INFO NET/Socket : Using [0]eth0:1.2.3.4<0>\n',
     ('Socket', 'NET/Socket : Using [0]eth0:1.2.3.4<0>')),
    # One node, or NCCL_DEBUG not taken: nothing said.
    ('NCCL version 2.20.5+cuda12.4\n', (None, '')),
    ('', (None, '')),
])
def test_nccl_network_from_its_info_output(text, expected):
    assert facts.nccl_network(text) == expected
