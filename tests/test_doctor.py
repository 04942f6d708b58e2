"""chainer_resnet.doctor: the preflight check the job scripts run on every rank.

Runs under MPICH's ``mpiexec`` from the virtualenv (2 CPU ranks) and as plain
singletons, in subprocesses: the pytest process itself never starts MPI here.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from chainer_resnet import doctor

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
            'open("{}/rank%d" % MPI.COMM_WORLD.Get_rank(), "w").write(str(rc)); sys.exit(rc)'.format(
                tmp_path))

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


# --- the pieces, in this process (no MPI) -------------------------------------------

def test_mpi_family():
    assert doctor.mpi_family('mpirun (Open MPI) 4.1.5') == 'Open MPI'
    assert doctor.mpi_family('Open MPI v5.0.3, package: Open MPI') == 'Open MPI'
    assert doctor.mpi_family('MPICH Version:      5.0.2') == 'MPICH'
    assert doctor.mpi_family('HYDRA 4.1.2') == 'MPICH'
    assert doctor.mpi_family('Intel(R) MPI Library 2021.10 for Linux* OS') == 'MPICH'
    assert doctor.mpi_family('MVAPICH2 Version: 2.3.7') == 'MPICH'
    assert doctor.mpi_family('aprun 1.0') is None


def test_intra_ranks_group_by_host_like_chainermn():
    hosts = ['a', 'b', 'a', 'b', 'a']
    assert doctor.intra_ranks(hosts) == [(0, 3), (0, 2), (1, 3), (1, 2), (2, 3)]


@pytest.mark.parametrize('size', [1, 4, 5])
def test_grad_pattern_mean_is_the_closed_form(size):
    grads = [doctor.grad_pattern(r, size)[0] for r in range(size)]
    expected = doctor.grad_pattern(0, size)[1]
    numpy.testing.assert_allclose(numpy.mean(grads, axis=0), expected, rtol=1e-6)


@pytest.mark.parametrize('size', [1, 2, 3, 8, 1024])
def test_fp16_path_is_within_tolerance_and_a_wrong_mean_is_not(size):
    grads = [doctor.grad_pattern(r, size)[0] for r in range(size)]
    expected = doctor.grad_pattern(0, size)[1]

    def error(got):
        got = got.astype(numpy.float32)
        return numpy.max(numpy.abs(got - expected) / expected)

    # pure_nccl's fp16 path: cast, sum in fp16 (ring order), x 1/size in fp16.
    acc = numpy.zeros_like(grads[0], dtype=numpy.float16)
    for g in grads:
        acc += g.astype(numpy.float16)
    assert error(acc * numpy.float16(1.0 / size)) <= doctor.fp16_tolerance(size)
    # Negative controls: the sum not divided by size; one rank missing.
    if size > 1:
        assert error(acc) > doctor.fp16_tolerance(size)
    if 1 < size <= 8:
        missing = (acc - grads[-1].astype(numpy.float16)) * numpy.float16(1.0 / size)
        assert error(missing) > doctor.fp16_tolerance(size)


def test_arbitrary_fp16_sums_over_many_ranks_drift():
    """Why grad_pattern uses exact units: plain fp16 sums lose per cents."""
    rng = numpy.random.default_rng(0)
    values = rng.uniform(1.0, 2.0, size=(1024, 257)).astype(numpy.float32)
    acc = numpy.zeros(257, dtype=numpy.float16)
    for v in values:
        acc += v.astype(numpy.float16)
    drift = numpy.max(numpy.abs(acc.astype(numpy.float64) - values.sum(0)) / values.sum(0))
    assert drift > doctor.fp16_tolerance(1024)
