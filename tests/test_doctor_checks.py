"""chainer_resnet.doctor.checks: each check on hand-built rows, in this process.

The rows are what ``facts.rank_facts`` gathers and the results what
``probes.run_probes`` returns, written by hand for layouts that only a
cluster produces (16 nodes, a rank with another Python, two ranks on one
GPU). Each failure is asserted with its ``fix:`` line, next to a negative
control: the one change to the rows that turns the ``OK`` into the ``FAIL``.
"""

import types

import pytest

from chainer_resnet import communication
from chainer_resnet.doctor import checks

PYTHON = '/site/venv/bin/python'
NCCL = {'NCCL_IB_HCA': 'mlx5_0', 'NCCL_SOCKET_IFNAME': 'ib0'}


def rank_row(host, **changes):
    row = {'host': host, 'python': PYTHON, 'local_var': '-', 'cuda_visible': '(unset)',
           'forwarded': dict(NCCL), 'launcher_size': []}
    row.update(changes)
    return row


def job(*ranks_per_node):
    """Rows of ranks placed node by node: job(8, 8) is 16 ranks on node0, node1."""
    return [rank_row('node{}'.format(node)) for node, n in enumerate(ranks_per_node)
            for _ in range(n)]


def lines(check, *args):
    """The lines ``check(*args, rep)`` adds to a fresh Report, and its failures."""
    rep = checks.Report()
    check(*args, rep)
    return rep.lines, rep.failures


def cpu_results(size):
    return [{'mpi_sum': size * (size + 1) // 2, 'fp16_mpi': 0.0, 'naive': 0.0}
            for _ in range(size)]


# --- Report ---------------------------------------------------------------------------

def test_report_formats_and_counts_only_failures():
    rep = checks.Report()
    rep.ok('a')
    rep.warn('b')
    rep.warn('c', 'do c')
    assert rep.failures == 0 and rep.verdict() == 'doctor: all checks passed'
    rep.fail('d', 'do d')
    assert rep.lines == ['  OK    a', '  WARN  b', '  WARN  c', '        fix: do c',
                         'FAIL: d', '  fix: do d']
    assert rep.verdict() == 'doctor: 1 check(s) FAILED (see the FAIL: lines)'


# --- the whole job fine -----------------------------------------------------------------

def test_sixteen_nodes_of_eight_all_ok():
    rows = job(*[8] * 16)
    results = cpu_results(128)
    rep = checks.Report()
    checks.check_world(rows, 128, rep)
    checks.check_layout(rows, 8, rep)
    checks.check_same_environment(rows, rep)
    checks.check_mpi_sum(results, rep)
    checks.check_gpus(rows, results, rep)
    checks.check_allreduces('cpu', results, rep)
    assert rep.lines == [
        '  OK    world size 128 (expected 128)',
        '  OK    8 rank(s) on each of 16 node(s) (expected 8 per node)',
        '  OK    same Python and NCCL_* variables on every rank',
        '  OK    MPI allreduce: sum of rank+1 over 128 rank(s) = 8256',
        '  OK    fp16 allreduce over MPI (fp16 on the wire, fp16 sum, x 1/size, as '
        'pure_nccl does; CPU training itself averages in fp32): max relative error '
        '0.0e+00 (tolerance 2.0e-03)',
        '  OK    ChainerMN naive communicator (MPI, fp32): multi_node_mean_grad equals '
        'the mean: max relative error 0.0e+00 (tolerance 1.0e-05)']
    assert rep.failures == 0


# --- world size -------------------------------------------------------------------------

def test_world_size_mismatch_fails_with_a_fix():
    text, failures = lines(checks.check_world, job(8, 8), 24)
    assert failures == 1
    assert text[0] == 'FAIL: 16 rank(s) started but the job asked for 24'
    assert text[1].startswith('  fix: make the launcher start nodes x GPUs-per-node ranks '
                              '(mpirun -np, srun --ntasks, ')
    assert '#SBATCH --ntasks-per-node=8' in text[1] and 'GPUS_PER_NODE' in text[1]
    # Negative control: the number the job asked for.
    assert lines(checks.check_world, job(8, 8), 16) == (
        ['  OK    world size 16 (expected 16)'], 0)
    assert lines(checks.check_world, job(8, 8), None) == (
        ['  OK    world size 16 (no --expect-world-size given)'], 0)


def test_singleton_without_launcher_variables():
    text, failures = lines(checks.check_world, job(1), 16)
    assert failures == 1
    assert text == ['FAIL: only 1 rank(s) started but the job asked for 16',
                    '  fix: ' + checks.FIX_SINGLETON]
    assert 'srun without --mpi=pmix' in text[1]
    assert 'env MPICC=$(which mpicc) pip install --no-binary=mpi4py' in text[1]
    # Negative control: a world of one is fine when one was asked for.
    assert lines(checks.check_world, job(1), 1) == (['  OK    world size 1 (expected 1)'], 0)


@pytest.mark.parametrize('launcher_size, named', [
    ([('OMPI_COMM_WORLD_SIZE', '16', 'Open MPI mpirun/mpiexec')],
     '; the launcher (Open MPI mpirun/mpiexec) started this process as one of 16 '
     '(OMPI_COMM_WORLD_SIZE=16)'),
    # A size of 1 is no evidence; the next variable that says more is named.
    ([('PMI_SIZE', '1', 'a PMI launcher'), ('SLURM_STEP_NUM_TASKS', '16', 'srun')],
     '; the launcher (srun) started this process as one of 16 (SLURM_STEP_NUM_TASKS=16)'),
    ([('PMI_SIZE', '1', 'a PMI launcher')], ''),
])
def test_singleton_names_the_launcher_that_started_more(launcher_size, named):
    rows = [rank_row('node0', launcher_size=launcher_size)]
    text, failures = lines(checks.check_world, rows, 16)
    assert failures == 1
    assert text == ['FAIL: only 1 rank(s) started but the job asked for 16' + named,
                    '  fix: ' + checks.FIX_SINGLETON]


# --- ranks per node ---------------------------------------------------------------------

def test_ranks_per_node_mismatch_fails_with_a_fix():
    text, failures = lines(checks.check_layout, job(2), 4)
    assert failures == 1
    assert text == [
        'FAIL: ranks per node differ from the 4 expected: node0 has 2',
        '  fix: place exactly 4 ranks on every node: mpirun --map-by ppr:4:node (Open MPI) '
        'or -ppn 4 (hydra), #PBS ...:mpiprocs=4, #SBATCH --ntasks-per-node=4; or set '
        'GPUS_PER_NODE to the GPUs a node really has']
    assert lines(checks.check_layout, job(4), 4) == (
        ['  OK    4 rank(s) on each of 1 node(s) (expected 4 per node)'], 0)


def test_uneven_ranks_per_node_across_hosts_fails_naming_the_nodes():
    # 32 ranks as asked, but 7 on node2 and 9 on node3: the world size passes,
    # the placement does not.
    rows = job(8, 8, 7, 9)
    assert lines(checks.check_world, rows, 32) == (['  OK    world size 32 (expected 32)'], 0)
    text, failures = lines(checks.check_layout, rows, 8)
    assert failures == 1
    assert text[0] == 'FAIL: ranks per node differ from the 8 expected: node2 has 7, node3 has 9'
    assert text[1].startswith('  fix: place exactly 8 ranks on every node: mpirun --map-by '
                              'ppr:8:node')
    # Negative control: one rank of node3 moved to node2.
    rows[24]['host'] = 'node2'
    assert lines(checks.check_layout, rows, 8) == (
        ['  OK    8 rank(s) on each of 4 node(s) (expected 8 per node)'], 0)


def test_ranks_per_node_are_counted_by_host_not_by_position():
    # Round-robin placement (rank r on node r % 2), as --map-by node does.
    rows = [rank_row('node{}'.format(r % 2)) for r in range(16)]
    assert lines(checks.check_layout, rows, 8) == (
        ['  OK    8 rank(s) on each of 2 node(s) (expected 8 per node)'], 0)


def test_uneven_ranks_per_node_name_at_most_four_nodes():
    text, failures = lines(checks.check_layout, job(7, 7, 7, 7, 7, 7), 8)
    assert failures == 1
    assert text[0] == ('FAIL: ranks per node differ from the 8 expected: node0 has 7, '
                       'node1 has 7, node2 has 7, node3 has 7')


def test_ranks_per_node_without_an_expectation_are_listed():
    assert lines(checks.check_layout, job(8, 7, 8), None) == (
        ['  OK    ranks per node: 7, 8'], 0)


# --- the same environment on every rank -----------------------------------------------

def test_another_python_on_one_rank_fails_with_a_fix():
    rows = job(2, 2)
    assert lines(checks.check_same_environment, rows) == (
        ['  OK    same Python and NCCL_* variables on every rank'], 0)
    rows[3]['python'] = '/usr/bin/python3'
    text, failures = lines(checks.check_same_environment, rows)
    assert failures == 1
    assert text == ['FAIL: rank 3 runs /usr/bin/python3 but rank 0 runs ' + PYTHON,
                    '  fix: activate the same virtualenv on every node and forward PATH '
                    'to every rank (mpirun -x PATH, srun --export=ALL)']


def test_nccl_variables_differing_on_one_rank_fail_with_a_fix():
    rows = job(2, 2)
    rows[2]['forwarded'] = {'NCCL_SOCKET_IFNAME': 'eth0'}   # another value, one missing
    text, failures = lines(checks.check_same_environment, rows)
    assert failures == 1
    assert text == ['FAIL: rank 2 sees different NCCL_* variables than rank 0 '
                    '(NCCL_IB_HCA, NCCL_SOCKET_IFNAME)',
                    '  fix: forward the environment to every rank: Open MPI mpirun -x NAME '
                    'for each variable, hydra -genvall, srun --export=ALL']


def test_another_python_and_other_nccl_variables_fail_twice():
    rows = job(2)
    rows[1].update(python='/usr/bin/python3', forwarded={})
    text, failures = lines(checks.check_same_environment, rows)
    assert failures == 2 and not any(line.startswith('  OK') for line in text)
    assert text[2] == ('FAIL: rank 1 sees different NCCL_* variables than rank 0 '
                       '(NCCL_IB_HCA, NCCL_SOCKET_IFNAME)')


# --- a GPU of its own ------------------------------------------------------------------

def test_two_ranks_on_one_gpu_fail_with_a_fix():
    # Rank 0 sees CUDA_VISIBLE_DEVICES=1,0 and rank 1 0,1: local ranks 0 and 1
    # both land on the physical GPU 1.
    rows = [rank_row('node0', cuda_visible='1,0'), rank_row('node0', cuda_visible='0,1')]
    results = [{'gpu': 0, 'gpu_bus': '0000:3d:00'}, {'gpu': 1, 'gpu_bus': '0000:3d:00'}]
    text, failures = lines(checks.check_gpus, rows, results)
    assert failures == 1
    assert text == ['FAIL: ranks 0 and 1 share GPU 0000:3d:00 on node0',
                    '  fix: one rank per GPU: check CUDA_VISIBLE_DEVICES and the ranks '
                    'per node']
    # Negative controls: another bus on the same node; the same bus on another node.
    results[1]['gpu_bus'] = '0000:1b:00'
    assert lines(checks.check_gpus, rows, results) == ([], 0)
    rows = job(1, 1)
    results = [{'gpu': 0, 'gpu_bus': '0000:3d:00'}, {'gpu': 0, 'gpu_bus': '0000:3d:00'}]
    assert lines(checks.check_gpus, rows, results) == ([], 0)


def test_a_rank_without_a_gpu_fails_and_skips_the_nccl_checks(monkeypatch):
    # Three ranks on a node that shows all ranks the same two GPUs: local rank
    # 2 has none (one GPU per rank, srun --gpus-per-task=1, is fine: each takes
    # its device 0); select_gpu's own message is what the probe records.
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1')
    assert communication.select_gpu(types.SimpleNamespace(rank=1, intra_rank=1),
                                    visible_gpus=1) == 0
    with pytest.raises(communication.CommunicationError) as e:
        communication.select_gpu(types.SimpleNamespace(rank=2, intra_rank=2), visible_gpus=2)
    rows = [rank_row('node0', cuda_visible='0,1') for _ in range(3)]
    results = [{'gpu': 0, 'gpu_bus': '0000:1b:00', 'mpi_sum': 3, 'fp16_mpi': 0.0},
               {'gpu': 1, 'gpu_bus': '0000:1c:00', 'mpi_sum': 3, 'fp16_mpi': 0.0},
               {'gpu_error': str(e.value), 'mpi_sum': 3, 'fp16_mpi': 0.0}]
    text, failures = lines(checks.check_gpus, rows, results)
    assert failures == 1
    assert text[0].startswith('FAIL: rank 2 (node0) has no GPU of its own: rank 2 is local '
                              'rank 2 on host ')
    assert "only 2 GPU(s) are visible (CUDA_VISIBLE_DEVICES='0,1')" in text[0]
    assert text[1] == ("  fix: give every rank a GPU: as many ranks per node as visible GPUs "
                       "(the trainer takes GPU = local rank among them), or exactly one GPU "
                       "visible to each rank (srun --gpus-per-task=1 / --gpu-bind: the "
                       "trainer takes it)")
    # The NCCL allreduces were skipped on every rank: not a second failure.
    text, failures = lines(checks.check_allreduces, 'gpu', results)
    assert failures == 0 and len(text) == 1 and text[0].startswith('  OK    fp16 allreduce')


# --- the allreduces ---------------------------------------------------------------------

def test_a_wrong_mpi_sum_on_one_rank_fails():
    results = cpu_results(4)
    assert lines(checks.check_mpi_sum, results) == (
        ['  OK    MPI allreduce: sum of rank+1 over 4 rank(s) = 10'], 0)
    results[2]['mpi_sum'] = 4
    text, failures = lines(checks.check_mpi_sum, results)
    assert failures == 1
    assert text == ['FAIL: MPI allreduce: rank 2 got 4 for the sum of rank+1, expected 10',
                    '  fix: the MPI library is broken or mismatched; rebuild mpi4py against '
                    'the MPI the launcher belongs to']


def test_an_allreduce_beyond_tolerance_names_the_worst_rank():
    results = cpu_results(4)
    results[1]['naive'] = 2e-5
    results[3]['naive'] = float('inf')     # what a non-finite result is recorded as
    text, failures = lines(checks.check_allreduces, 'cpu', results)
    assert failures == 1
    assert text[1] == ('FAIL: ChainerMN naive communicator (MPI, fp32): multi_node_mean_grad '
                       'equals the mean: max relative error inf on rank 3 exceeds 1.0e-05')
    assert text[2].startswith('  fix: an allreduce returns wrong numbers')
    # Negative control: within the tolerance.
    results[3]['naive'] = 1e-6
    results[1]['naive'] = 0.0
    text, failures = lines(checks.check_allreduces, 'cpu', results)
    assert failures == 0
    assert text[1].endswith('max relative error 1.0e-06 (tolerance 1.0e-05)')


@pytest.mark.parametrize('device, what, fix', [
    ('cpu', 'naive (MPI)', 'check that chainer 7.8.1 and mpi4py import on every rank'),
    ('gpu', 'pure_nccl (NCCL)', 'rerun with NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET; set '
     'NCCL_SOCKET_IFNAME to an interface every node has (ip -br addr) and NCCL_IB_HCA to '
     'the HCA ports (ibstat); NCCL_IB_DISABLE=1 only to tell InfiniBand problems from '
     'others'),
])
def test_a_communicator_error_fails_once_with_a_fix(device, what, fix):
    results = [{'mpi_sum': 3, 'fp16_mpi': 0.0, 'comm_error': 'RuntimeError: boom'}] * 2
    text, failures = lines(checks.check_allreduces, device, results)
    assert failures == 1                   # not again as "did not run"
    assert text[:2] == ['FAIL: ChainerMN {} communicator failed on rank 0: RuntimeError: '
                        'boom'.format(what), '  fix: ' + fix]


def test_an_allreduce_that_did_not_run_without_a_reason_fails():
    results = [{'mpi_sum': 3}] * 2
    text, failures = lines(checks.check_allreduces, 'gpu', results)
    assert failures == 3
    assert text[0] == ('FAIL: fp16 allreduce over MPI (fp16 on the wire, fp16 sum, x 1/size, '
                       'as pure_nccl does): did not run')
    assert text[1] == '  fix: see the errors above'
    assert text[4] == ('FAIL: NCCL fp16 allreduce (pure_nccl, allreduce_grad_dtype=float16) '
                       'vs the fp32 mean: did not run')


# --- software -------------------------------------------------------------------------

def test_mpi_family():
    assert checks.mpi_family('mpirun (Open MPI) 4.1.5') == 'Open MPI'
    assert checks.mpi_family('Open MPI v5.0.3, package: Open MPI') == 'Open MPI'
    assert checks.mpi_family('MPICH Version:      5.0.2') == 'MPICH'
    assert checks.mpi_family('HYDRA 4.1.2') == 'MPICH'
    assert checks.mpi_family('Intel(R) MPI Library 2021.10 for Linux* OS') == 'MPICH'
    assert checks.mpi_family('MVAPICH2 Version: 2.3.7') == 'MPICH'
    assert checks.mpi_family('aprun 1.0') is None


def test_a_launcher_of_another_mpi_family_warns():
    library = 'MPICH Version: 5.0.2'
    launchers = [('mpiexec', '/usr/bin/mpiexec', 'HYDRA 5.0.2'),
                 ('mpirun', '/opt/openmpi/bin/mpirun', 'mpirun (Open MPI) 4.1.5')]
    text, failures = lines(checks.check_software, [], library, launchers)
    assert failures == 0                   # a warning: the training may use mpiexec
    assert text == ['  WARN  mpirun on PATH is Open MPI but mpi4py runs on MPICH: launched '
                    'with it, every process would be a one-rank job',
                    '        fix: put the mpirun of the MPI mpi4py uses first on PATH '
                    '(module load), or rebuild mpi4py against this one']
    # Negative controls: the same family, an unknown one, none on PATH, not probed.
    same = [('mpirun', '/usr/bin/mpirun', 'HYDRA 5.0.2'), ('srun', '/usr/bin/srun', 'slurm'),
            ('mpiexec', None, 'not found on PATH')]
    assert lines(checks.check_software, [], library, same) == ([], 0)
    assert lines(checks.check_software, [], library, None) == ([], 0)


def test_software_findings_become_fail_and_warn_lines():
    findings = [('FAIL', 'CuPy is not importable (not installed)', 'pip install cupy'),
                ('WARN', 'Chainer does not use cuDNN', 'install cuDNN')]
    text, failures = lines(checks.check_software, findings, 'MPICH', [])
    assert failures == 1
    assert text == ['FAIL: CuPy is not importable (not installed)', '  fix: pip install cupy',
                    '  WARN  Chainer does not use cuDNN', '        fix: install cuDNN']


# --- can MPI start: the launcher's PMI and the library, before MPI_Init ----------------

# MPI_Get_library_version of PyPI's mpich 5.0.2 (the virtualenv's), as printed.
PYPI_MPICH = """MPICH Version:      5.0.2
MPICH Release date: Fri Sep 25 20:45:26 UTC 2026
MPICH ABI:          18:2:6
MPICH Device:       ch4:ucx ofi
MPICH configure:    --with-device=ch4:ucx,ofi --with-pm=hydra:gforker
MPICH CC:           cc
"""
OPEN_MPI = 'Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4'


def test_mpich_without_pmix_under_a_pmix_launcher_fails_before_mpi_init():
    text, failures = lines(checks.check_pmi, ('PMIx', 'PMIX_RANK', 'srun'), PYPI_MPICH)
    assert failures == 1
    assert text == [
        'FAIL: srun speaks PMIx (PMIX_RANK is set) but the MPI library mpi4py loads, MPICH '
        'Version: 5.0.2, was built without PMIx: MPI_Init would abort ("unsupported PMI '
        'version PMIx"), so MPI was not started',
        "  fix: launch with this MPI's own mpiexec (jobs/slurm/mpirun.sh, MPIRUN=mpiexec), "
        "or load the site's MPI built with PMIx (MODULES) and rebuild mpi4py against it: "
        'env MPICC=$(which mpicc) pip install --no-binary=mpi4py --force-reinstall mpi4py; '
        "srun --mpi=pmi2 (SRUN_FLAGS=--mpi=pmi2) starts MPICH too, but PyPI's MPICH 5 on "
        'Slurm 22.05 failed in MPI_Init once in a few launches ("mpi/pmi2: invalid client '
        'request")']
    # Open MPI's mpirun speaks PMIx too; the fix is its own.
    text, _ = lines(checks.check_pmi, ('PMIx', 'PMIX_RANK', 'Open MPI mpirun'), PYPI_MPICH)
    assert text[0].startswith('FAIL: Open MPI mpirun speaks PMIx')
    assert 'MPI4PY_LIBMPI=libmpi.so.40' in text[1]


@pytest.mark.parametrize('pmi, library', [
    (('PMI-1/2', 'PMI_FD', 'srun'), PYPI_MPICH),            # srun --mpi=pmi2: MPICH speaks it
    ((None, None, None), PYPI_MPICH),                          # a singleton
    (('PMIx', 'PMIX_RANK', 'srun'), OPEN_MPI),                 # Open MPI has PMIx inside
    (('PMIx', 'PMIX_RANK', 'srun'),                            # an MPICH built with PMIx
     PYPI_MPICH.replace('--with-pm=hydra:gforker', '--with-pmix=/usr --with-pm=no')),
    (('PMIx', 'PMIX_RANK', 'srun'), 'Intel(R) MPI Library 2021.10 for Linux* OS'),
])
def test_pmi_and_library_that_can_work_are_not_judged(pmi, library):
    assert lines(checks.check_pmi, pmi, library) == ([], 0)


# --- the network NCCL uses between nodes -----------------------------------------------

def gpu_results(nets, detail=''):
    return [{'nccl32': 0.0, 'nccl16': 0.0, 'fp16_mpi': 0.0, 'mpi_sum': 0, 'nccl_net': net,
             'nccl_net_detail': detail} for net in nets]


SOCKET = 'NET/Socket : Using [0]ib0:10.10.0.1<0> [1]eth0:192.168.1.21<0>'
IB = 'NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.10.0.1<0>'


def test_nccl_over_sockets_between_nodes_fails_with_a_fix():
    rows = job(2, 2)
    rows[0]['forwarded'] = {'NCCL_IB_HCA': 'mlx5_0:1'}
    text, failures = lines(checks.check_nccl_network, rows,
                           gpu_results(['IB', 'IB', 'Socket', 'Socket'], SOCKET))
    assert failures == 1
    assert text == [
        'FAIL: NCCL falls back to sockets (NET/Socket) between the nodes on 2 of 4 rank(s), '
        'first rank 2 on node1 (' + SOCKET + '): allreduces over TCP, many times slower '
        'than InfiniBand',
        '  fix: NCCL_IB_HCA=mlx5_0:1 matches no HCA NCCL can use: let NCCL find the HCAs '
        '(NCCL_IB_HCA empty) or name them as the nodes have them (ibstat, ibv_devices: e.g. '
        'NCCL_IB_HCA=mlx5_0:1,mlx5_1:1); NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET shows '
        'why IB was not used. A cluster without InfiniBand/RoCE: set NCCL_NET=Socket']
    # Negative controls: the same ranks over IB; sockets asked for; one node.
    text, failures = lines(checks.check_nccl_network, job(2, 2), gpu_results(['IB'] * 4, IB))
    assert (text, failures) == (['  OK    NCCL between nodes: IB (' + IB + ')'], 0)
    rows = job(2, 2)
    rows[0]['forwarded'] = {'NCCL_NET': 'Socket'}
    text, failures = lines(checks.check_nccl_network, rows, gpu_results(['Socket'] * 4))
    assert failures == 0 and 'as NCCL_NET=Socket asks' in text[0]
    assert lines(checks.check_nccl_network, job(4), gpu_results(['Socket'] * 4)) == ([], 0)


def test_nccl_network_unknown_warns_and_no_communicator_is_silent():
    text, failures = lines(checks.check_nccl_network, job(1, 1), gpu_results([None, 'IB']))
    assert failures == 0 and text[0].startswith('  WARN  NCCL did not say which network')
    no_comm = [{'mpi_sum': 3, 'comm_error': 'NcclError'}] * 2
    assert lines(checks.check_nccl_network, job(1, 1), no_comm) == ([], 0)
