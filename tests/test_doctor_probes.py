"""chainer_resnet.doctor.probes: the test gradient, the fp16 tolerance, and the
probes themselves under MPI (``mpi``: tests/run_mpi.py, at -n 1 and -n 2)."""

import numpy
import pytest

from chainer_resnet.doctor import checks, probes


@pytest.mark.parametrize('size', [1, 4, 5])
def test_grad_pattern_mean_is_the_closed_form(size):
    grads = [probes.grad_pattern(r, size)[0] for r in range(size)]
    expected = probes.grad_pattern(0, size)[1]
    numpy.testing.assert_allclose(numpy.mean(grads, axis=0), expected, rtol=1e-6)


@pytest.mark.parametrize('size', [1, 2, 3, 8, 1024])
def test_fp16_path_is_within_tolerance_and_a_wrong_mean_is_not(size):
    grads = [probes.grad_pattern(r, size)[0] for r in range(size)]
    expected = probes.grad_pattern(0, size)[1]

    def error(got):
        got = got.astype(numpy.float32)
        return numpy.max(numpy.abs(got - expected) / expected)

    # pure_nccl's fp16 path: cast, sum in fp16 (ring order), x 1/size in fp16.
    acc = numpy.zeros_like(grads[0], dtype=numpy.float16)
    for g in grads:
        acc += g.astype(numpy.float16)
    assert error(acc * numpy.float16(1.0 / size)) <= probes.fp16_tolerance(size)
    # Negative controls: the sum not divided by size; one rank missing.
    if size > 1:
        assert error(acc) > probes.fp16_tolerance(size)
    if 1 < size <= 8:
        missing = (acc - grads[-1].astype(numpy.float16)) * numpy.float16(1.0 / size)
        assert error(missing) > probes.fp16_tolerance(size)


def test_arbitrary_fp16_sums_over_many_ranks_drift():
    """Why grad_pattern uses exact units: plain fp16 sums lose per cents."""
    rng = numpy.random.default_rng(0)
    values = rng.uniform(1.0, 2.0, size=(1024, 257)).astype(numpy.float32)
    acc = numpy.zeros(257, dtype=numpy.float16)
    for v in values:
        acc += v.astype(numpy.float16)
    drift = numpy.max(numpy.abs(acc.astype(numpy.float64) - values.sum(0)) / values.sum(0))
    assert drift > probes.fp16_tolerance(1024)


@pytest.mark.mpi
def test_run_probes_on_cpu_pass_the_checks_and_a_wrong_sum_does_not():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    results = comm.allgather(probes.run_probes(MPI, comm, 'cpu', intra_rank=0))
    size = comm.size
    assert [res['mpi_sum'] for res in results] == [size * (size + 1) // 2] * size
    assert all(res['naive'] == 0.0 for res in results)          # exact: fp32 units
    assert all(res['fp16_mpi'] <= probes.fp16_tolerance(size) for res in results)
    rep = checks.Report()
    checks.check_mpi_sum(results, rep)
    checks.check_allreduces('cpu', results, rep)
    assert rep.failures == 0 and len(rep.lines) == 3, rep.lines
    # Negative control: one rank's sum off by one.
    results[-1] = dict(results[-1], mpi_sum=results[-1]['mpi_sum'] + 1)
    rep = checks.Report()
    checks.check_mpi_sum(results, rep)
    assert rep.failures == 1


def test_nccl_debug_log_sets_nccls_variables_and_reads_its_file(monkeypatch):
    """What NCCL would do inside: read NCCL_DEBUG_FILE (%p: the pid) and write it."""
    import os
    monkeypatch.setenv('NCCL_DEBUG', 'WARN')
    monkeypatch.delenv('NCCL_DEBUG_SUBSYS', raising=False)
    with probes.nccl_debug_log() as read:
        assert (os.environ['NCCL_DEBUG'], os.environ['NCCL_DEBUG_SUBSYS']) == (
            'INFO', 'INIT,NET')
        path = os.environ['NCCL_DEBUG_FILE'].replace('%p', str(os.getpid()))
        assert read() == ''
        with open(path, 'w') as f:
            f.write('h:1:2 [0] NCCL INFO Using network IB\n')
        assert read() == 'h:1:2 [0] NCCL INFO Using network IB\n'
    assert os.environ['NCCL_DEBUG'] == 'WARN'
    assert 'NCCL_DEBUG_SUBSYS' not in os.environ and 'NCCL_DEBUG_FILE' not in os.environ
    assert not os.path.exists(os.path.dirname(path))
