"""chainer_resnet.doctor.facts: the rows the checks read, built in this process."""

import os
import sys
import types

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
