"""chainer_resnet.doctor: the preflight check the job scripts run on every rank.

Runs under MPICH's ``mpiexec`` from the virtualenv (2 CPU ranks) and as plain
singletons, in subprocesses: the pytest process itself never starts MPI here.
The printed report is also frozen from hand-built data (``cli.report``), for
the multi-node and GPU layouts this machine cannot launch. The checks one by
one: test_doctor_checks.py; the facts and probes: test_doctor_facts.py,
test_doctor_probes.py.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chainer_resnet.doctor import cli

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MPIEXEC = BIN / 'mpiexec'
needs_mpiexec = pytest.mark.skipif(not MPIEXEC.exists(),
                                   reason='mpiexec (pip install mpich) not in the virtualenv')

_LAUNCHER_VARS = re.compile(r'^(OMPI_|PMI_|PMIX_|MPI_LOCAL|SLURM_|HYDRA_)')


def clean_env(**extra):
    """This environment without the variables of an enclosing MPI launch."""
    env = {k: v for k, v in os.environ.items() if not _LAUNCHER_VARS.match(k)}
    env['PATH'] = os.pathsep.join([str(BIN), env.get('PATH', '/usr/bin:/bin')])
    env.update(extra)
    return env


def doctor_run(*args, np=None, env=None, code=None, timeout=120):
    if code is None:
        cmd = [sys.executable, '-m', 'chainer_resnet.doctor'] + list(args)
    else:
        cmd = [sys.executable, '-c', code] + list(args)
    if np is not None:
        cmd = [str(MPIEXEC), '-n', str(np)] + cmd
    return subprocess.run(cmd, cwd=str(ROOT), env=env or clean_env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)


def rank_rows(output):
    """{rank: [columns]} from the '== ranks ==' table."""
    table = output.split('== ranks ==', 1)[1].split('== checks ==', 1)[0]
    rows = {}
    for line in table.strip().splitlines()[1:]:
        cols = line.split()
        rows[int(cols[0])] = cols
    return rows


# --- 2 CPU ranks -------------------------------------------------------------------

@needs_mpiexec
def test_passes_on_two_cpu_ranks():
    r = doctor_run('--device', 'cpu', '--expect-world-size', '2',
                   '--expect-gpus-per-node', '2', np=2)
    assert r.returncode == 0, r.stdout
    out = r.stdout
    assert out.count('chainer_resnet doctor:') == 1          # rank 0 prints, once
    assert out.startswith('chainer_resnet doctor: 2 rank(s) on 1 node(s), device cpu')
    rows = rank_rows(out)
    assert sorted(rows) == [0, 1]
    assert rows[0][2] == '0/2' and rows[1][2] == '1/2'          # intra rank / size
    assert rows[0][1] == rows[1][1]                             # same host
    assert 'MPI_LOCALRANKID=1' in rows[1]                       # hydra's local rank
    for name in ('python', 'numpy', 'chainer', 'cupy', 'cuDNN', 'NCCL', 'mpi4py',
                 'MPI library', 'mpiexec'):
        assert re.search(r'^  {}\s+\S'.format(re.escape(name)), out, re.M), name
    assert 'MPICH' in out and str(MPIEXEC) in out
    assert 'OK    world size 2 (expected 2)' in out
    assert 'OK    2 rank(s) on each of 1 node(s)' in out
    assert 'OK    MPI allreduce: sum of rank+1 over 2 rank(s) = 3' in out
    assert re.search(r'OK    fp16 allreduce over MPI .* max relative error', out)
    assert re.search(r'OK    ChainerMN naive communicator .* max relative error 0\.0e\+00',
                     out)
    assert 'FAIL' not in out and out.rstrip().endswith('doctor: all checks passed')


@needs_mpiexec
def test_wrong_world_size_fails_with_a_fix():
    r = doctor_run('--expect-world-size', '3', np=2)
    assert r.returncode == 1
    assert 'FAIL: 2 rank(s) started but the job asked for 3' in r.stdout
    fix = r.stdout.split('FAIL: 2 rank(s)', 1)[1].splitlines()[1]
    assert fix.startswith('  fix: ') and 'ntasks-per-node' in fix
    assert r.stdout.rstrip().endswith('doctor: 1 check(s) FAILED (see the FAIL: lines)')


@needs_mpiexec
def test_wrong_ranks_per_node_fails():
    r = doctor_run('--expect-world-size', '2', '--expect-gpus-per-node', '4', np=2,
                   timeout=60)
    assert r.returncode == 1
    assert 'FAIL: ranks per node differ from the 4 expected' in r.stdout
    assert 'ppr:4:node' in r.stdout


@needs_mpiexec
def test_every_rank_exits_with_rank_zeros_verdict(tmp_path):
    # Each rank writes what doctor.run returned to a file of its own (stdout
    # of two ranks may interleave).
    code = ('import sys; from chainer_resnet import doctor; '
            'from mpi4py import MPI; '
            'rc = doctor.run(sys.argv[2:]); '
            'open("{}/rank%d" % MPI.COMM_WORLD.Get_rank(), "w").write(str(rc)); '
            'sys.exit(rc)'.format(tmp_path))

    def verdicts(*args):
        for f in tmp_path.glob('rank*'):
            f.unlink()
        r = doctor_run('--', *args, np=2, code=code)
        return r.returncode, sorted((f.name, f.read_text()) for f in tmp_path.glob('rank*'))

    assert verdicts('--expect-world-size', '5', '--ranks-only') == (
        1, [('rank0', '1'), ('rank1', '1')])
    assert verdicts('--expect-world-size', '2', '--ranks-only') == (
        0, [('rank0', '0'), ('rank1', '0')])


@needs_mpiexec
def test_environment_not_forwarded_to_every_rank_fails():
    # An MPMD launch gives rank 1 another NCCL_SOCKET_IFNAME, as a launcher that
    # does not forward the environment would.
    env = clean_env()
    cmd = [str(MPIEXEC), '-n', '1', '-env', 'NCCL_SOCKET_IFNAME', 'ib0',
           sys.executable, '-m', 'chainer_resnet.doctor', '--ranks-only', ':',
           '-n', '1', '-env', 'NCCL_SOCKET_IFNAME', 'eth0',
           sys.executable, '-m', 'chainer_resnet.doctor', '--ranks-only']
    r = subprocess.run(cmd, cwd=str(ROOT), env=env, timeout=60, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True)
    assert r.returncode == 1
    assert 'FAIL: rank 1 sees different NCCL_* variables than rank 0 (NCCL_SOCKET_IFNAME)' \
        in r.stdout


# --- singletons: the launcher did not start one MPI job ----------------------------

def test_singleton_when_two_were_asked_for():
    r = doctor_run('--expect-world-size', '2')
    assert r.returncode == 1
    assert 'FAIL: only 1 rank(s) started but the job asked for 2' in r.stdout
    assert 'srun without --mpi=pmix' in r.stdout
    assert 'MPICC=$(which mpicc) pip install' in r.stdout


@needs_mpiexec
def test_singleton_under_mpiexec_n1_ranks_only():
    r = doctor_run('--expect-world-size', '2', '--ranks-only', np=1)
    assert r.returncode == 1
    assert 'FAIL: only 1 rank(s) started but the job asked for 2' in r.stdout
    assert '== software ==' not in r.stdout and 'MPICH' in r.stdout


def test_mpirun_of_another_mpi_is_named(tmp_path):
    # Open MPI's mpiexec started this process as one of 2, but mpi4py runs on
    # MPICH: each process is a world of its own.
    fake = tmp_path / 'mpiexec'
    fake.write_text('#!/bin/sh\necho "mpiexec (Open MPI) 4.1.5"\n')
    fake.chmod(0o755)
    env = clean_env(OMPI_COMM_WORLD_SIZE='2', OMPI_COMM_WORLD_RANK='0')
    env['PATH'] = os.pathsep.join([str(tmp_path), env['PATH']])
    r = doctor_run('--expect-world-size', '2', env=env)
    assert r.returncode == 1
    assert ('the launcher (Open MPI mpirun/mpiexec) started this process as one of 2 '
            '(OMPI_COMM_WORLD_SIZE=2)') in r.stdout
    assert 'WARN  mpiexec on PATH is Open MPI but mpi4py runs on MPICH' in r.stdout


def test_mpich_under_a_pmix_launcher_fails_before_mpi_init():
    """srun --mpi=pmix with PyPI's MPICH: MPI_Init would abort with no report.
    The doctor judges it from the environment, names the fix, and exits 1 on
    every rank without starting MPI (rank 0 alone prints)."""
    r = doctor_run('--expect-world-size', '2',
                   env=clean_env(PMIX_RANK='0', PMIX_NAMESPACE='slurm.pmix.5.0',
                                 SLURM_STEP_NUM_TASKS='2'))
    assert r.returncode == 1, r.stdout
    assert r.stdout.splitlines() == [
        'chainer_resnet doctor: MPI not started, device cpu',
        '== checks ==',
        'FAIL: srun speaks PMIx (PMIX_RANK is set) but the MPI library mpi4py loads, MPICH '
        'Version: 5.0.2, was built without PMIx: MPI_Init would abort ("unsupported PMI '
        'version PMIx"), so MPI was not started',
        r.stdout.splitlines()[3],
        'doctor: 1 check(s) FAILED (see the FAIL: lines)']
    assert r.stdout.splitlines()[3].startswith("  fix: launch with this MPI's own mpiexec")
    other = doctor_run('--expect-world-size', '2',
                       env=clean_env(PMIX_RANK='1', SLURM_STEP_NUM_TASKS='2'))
    assert (other.returncode, other.stdout) == (1, '')


def test_gpu_without_cupy_fails_with_a_fix():
    pytest.importorskip('mpi4py')
    try:
        import cupy  # noqa: F401
        pytest.skip('CuPy is installed')
    except ImportError:
        pass
    r = doctor_run('--device', 'gpu', '--expect-world-size', '1')
    assert r.returncode == 1
    assert 'FAIL: CuPy is not importable (not installed)' in r.stdout
    assert 'pip install cupy-cuda12x' in r.stdout


def test_usage_errors_exit_2():
    r = doctor_run('--expect-world-size', '0', timeout=30)
    assert r.returncode == 2 and 'must be >= 1' in r.stdout


# --- the printed report, from hand-built data (no MPI) ------------------------------

def rank_row(host, local_var, cuda_visible='(unset)', forwarded=None):
    return {'host': host, 'python': '/work/main/.venv/bin/python', 'local_var': local_var,
            'cuda_visible': cuda_visible, 'forwarded': forwarded or {},
            'launcher_size': []}


CPU_SOFTWARE = ([('python', '3.11.7 (/work/main/.venv/bin/python)'), ('numpy', '1.26.4'),
                 ('chainer', '7.8.1 (chainermn 7.8.1)'), ('cupy', 'not installed'),
                 ('cuDNN', 'unavailable (no CuPy)'), ('NCCL', 'unavailable (no CuPy)')],
                [])
MPICH = {'library': 'MPICH Version: 5.0.2', 'mpi4py': '4.1.2', 'config': {}}
HYDRA = [(name, '/work/main/.venv/bin/' + name, 'HYDRA 5.0.2')
         for name in ('mpiexec', 'mpirun')]


def test_report_of_two_cpu_ranks_is_the_one_in_jobs_readme():
    args = cli.parse_args(['--device', 'cpu', '--expect-world-size', '2',
                           '--expect-gpus-per-node', '2'])
    rows = [rank_row('vm', 'MPI_LOCALRANKID=0'), rank_row('vm', 'MPI_LOCALRANKID=1')]
    results = [{'mpi_sum': 3, 'fp16_mpi': 0.0, 'naive': 0.0}] * 2
    text, status = cli.report(args, rows, results, MPICH, CPU_SOFTWARE, HYDRA)
    assert status == 0
    assert text == '\n'.join([
        'chainer_resnet doctor: 2 rank(s) on 1 node(s), device cpu',
        '== software ==',
        '  python       3.11.7 (/work/main/.venv/bin/python)',
        '  numpy        1.26.4',
        '  chainer      7.8.1 (chainermn 7.8.1)',
        '  cupy         not installed',
        '  cuDNN        unavailable (no CuPy)',
        '  NCCL         unavailable (no CuPy)',
        '  mpi4py       4.1.2 (build config: none recorded: a binary wheel)',
        '  MPI library  MPICH Version: 5.0.2 (the libmpi mpi4py runs on)',
        '  mpiexec      /work/main/.venv/bin/mpiexec: HYDRA 5.0.2',
        '  mpirun       /work/main/.venv/bin/mpirun: HYDRA 5.0.2',
        '  NCCL env     (none set)',
        '== ranks ==',
        '  rank  host  local  local-rank variable  CUDA_VISIBLE_DEVICES  GPU',
        '  0     vm    0/2    MPI_LOCALRANKID=0    (unset)               -',
        '  1     vm    1/2    MPI_LOCALRANKID=1    (unset)               -',
        '== checks ==',
        '  OK    world size 2 (expected 2)',
        '  OK    2 rank(s) on each of 1 node(s) (expected 2 per node)',
        '  OK    same Python and NCCL_* variables on every rank',
        '  OK    MPI allreduce: sum of rank+1 over 2 rank(s) = 3',
        '  OK    fp16 allreduce over MPI (fp16 on the wire, fp16 sum, x 1/size, as '
        'pure_nccl does; CPU training itself averages in fp32): max relative error '
        '0.0e+00 (tolerance 2.0e-03)',
        '  OK    ChainerMN naive communicator (MPI, fp32): multi_node_mean_grad equals '
        'the mean: max relative error 0.0e+00 (tolerance 1.0e-05)',
        'doctor: all checks passed'])


def test_report_of_a_singleton_ranks_only_is_the_one_in_jobs_readme():
    args = cli.parse_args(['--device', 'cpu', '--expect-world-size', '2',
                           '--expect-gpus-per-node', '2', '--ranks-only'])
    text, status = cli.report(args, [rank_row('vm', 'MPI_LOCALRANKID=0')], [{}], MPICH,
                              None, None)
    assert status == 1
    lines = text.splitlines()
    assert lines[:4] == [
        'chainer_resnet doctor: 1 rank(s) on 1 node(s), device cpu (rank counts only)',
        '  mpi4py 4.1.2 on MPICH Version: 5.0.2',
        '== ranks ==',
        '  rank  host  local  local-rank variable  CUDA_VISIBLE_DEVICES  GPU']
    assert lines[4:7] == ['  0     vm    0/1    MPI_LOCALRANKID=0    (unset)               -',
                          '== checks ==',
                          'FAIL: only 1 rank(s) started but the job asked for 2']
    assert lines[8:] == [
        'FAIL: ranks per node differ from the 2 expected: vm has 1',
        '  fix: place exactly 2 ranks on every node: mpirun --map-by ppr:2:node (Open MPI) '
        'or -ppn 2 (hydra), #PBS ...:mpiprocs=2, #SBATCH --ntasks-per-node=2; or set '
        'GPUS_PER_NODE to the GPUs a node really has',
        '  OK    same Python and NCCL_* variables on every rank',
        'doctor: 2 check(s) FAILED (see the FAIL: lines)']


def test_report_of_two_gpu_nodes_under_open_mpi():
    """The GPU branch of every section, which only a GPU cluster launches."""
    args = cli.parse_args(['--device', 'gpu', '--expect-world-size', '4',
                           '--expect-gpus-per-node', '2'])
    nccl = {'NCCL_IB_HCA': 'mlx5_0', 'NCCL_SOCKET_IFNAME': 'ib0'}   # sorted, as rank_facts
    rows = [rank_row('gpu{:02d}'.format(1 + r // 2),
                     'OMPI_COMM_WORLD_LOCAL_RANK={}'.format(r % 2), '0,1', nccl)
            for r in range(4)]
    results = [{'gpu': r % 2, 'gpu_bus': '0000:{}:00'.format(('1b', '3d')[r % 2]),
                'gpu_desc': '{}: NVIDIA H100 [0000:{}:00]'.format(r % 2, ('1b', '3d')[r % 2]),
                'mpi_sum': 10, 'fp16_mpi': 0.0, 'nccl32': 0.0, 'nccl16': 3e-4}
               for r in range(4)]
    software = ([('python', '3.11.7 (/site/venv/bin/python)'), ('numpy', '1.26.4'),
                 ('chainer', '7.8.1 (chainermn 7.8.1)'),
                 ('cupy', '13.3.0 (CUDA runtime 12040, driver 12040, 2 GPU(s) visible '
                  'to rank 0)'),
                 ('cuDNN', '8902 (chainer uses it: True)'), ('NCCL', '22005')], [])
    mpi = {'library': 'Open MPI v4.1.5, package: Open MPI', 'mpi4py': '4.1.2',
           'config': {'mpicc': '/opt/openmpi/bin/mpicc'}}
    launchers = [('mpiexec', '/opt/openmpi/bin/mpiexec', 'mpiexec (OpenRTE) 4.1.5'),
                 ('mpirun', '/opt/openmpi/bin/mpirun', 'mpirun (Open MPI) 4.1.5')]
    text, status = cli.report(args, rows, results, mpi, software, launchers)
    assert status == 0, text
    lines = text.splitlines()
    assert lines[:2] == ['chainer_resnet doctor: 4 rank(s) on 2 node(s), device gpu',
                         '== software ==']
    assert lines[5:8] == ['  cupy         13.3.0 (CUDA runtime 12040, driver 12040, '
                          '2 GPU(s) visible to rank 0)',
                          '  cuDNN        8902 (chainer uses it: True)',
                          '  NCCL         22005']
    assert lines[8:] == [
        '  mpi4py       4.1.2 (build config: mpicc=/opt/openmpi/bin/mpicc)',
        '  MPI library  Open MPI v4.1.5, package: Open MPI (the libmpi mpi4py runs on)',
        '  mpiexec      /opt/openmpi/bin/mpiexec: mpiexec (OpenRTE) 4.1.5',
        '  mpirun       /opt/openmpi/bin/mpirun: mpirun (Open MPI) 4.1.5',
        '  NCCL env     NCCL_IB_HCA=mlx5_0 NCCL_SOCKET_IFNAME=ib0',
        '== ranks ==',
        '  rank  host   local  local-rank variable           CUDA_VISIBLE_DEVICES  GPU',
        '  0     gpu01  0/2    OMPI_COMM_WORLD_LOCAL_RANK=0  0,1                   '
        '0: NVIDIA H100 [0000:1b:00]',
        '  1     gpu01  1/2    OMPI_COMM_WORLD_LOCAL_RANK=1  0,1                   '
        '1: NVIDIA H100 [0000:3d:00]',
        '  2     gpu02  0/2    OMPI_COMM_WORLD_LOCAL_RANK=0  0,1                   '
        '0: NVIDIA H100 [0000:1b:00]',
        '  3     gpu02  1/2    OMPI_COMM_WORLD_LOCAL_RANK=1  0,1                   '
        '1: NVIDIA H100 [0000:3d:00]',
        '== checks ==',
        '  OK    world size 4 (expected 4)',
        '  OK    2 rank(s) on each of 2 node(s) (expected 2 per node)',
        '  OK    same Python and NCCL_* variables on every rank',
        '  OK    MPI allreduce: sum of rank+1 over 4 rank(s) = 10',
        '  OK    fp16 allreduce over MPI (fp16 on the wire, fp16 sum, x 1/size, as '
        'pure_nccl does): max relative error 0.0e+00 (tolerance 2.0e-03)',
        '  OK    NCCL allreduce (pure_nccl, fp32): multi_node_mean_grad equals the mean: '
        'max relative error 0.0e+00 (tolerance 1.0e-05)',
        '  OK    NCCL fp16 allreduce (pure_nccl, allreduce_grad_dtype=float16) vs the fp32 '
        'mean: max relative error 3.0e-04 (tolerance 2.0e-03)',
        'doctor: all checks passed']
    # Negative control: rank 3 on the GPU of rank 2 (CUDA_VISIBLE_DEVICES in
    # another order on rank 2) fails the run.
    results[3] = dict(results[3], gpu_bus='0000:1b:00')
    text, status = cli.report(args, rows, results, mpi, software, launchers)
    assert status == 1
    assert 'FAIL: ranks 2 and 3 share GPU 0000:1b:00 on gpu02' in text.splitlines()
