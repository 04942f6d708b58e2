"""Communicator set-up pieces and the fp16 gradient allreduce arithmetic."""

import multiprocessing
import types

import numpy
import pytest

from chainer_resnet import communication


def _fp32_mean(per_rank):
    return numpy.asarray(per_rank, numpy.float64).mean(axis=0)


@pytest.mark.parametrize('size', [1, 2, 8, 1024])
def test_fp16_mean_matches_fp32_mean_within_fp16_tolerance(size):
    rng = numpy.random.default_rng(size)
    # Gradient-like values over several orders of magnitude, in fp16's normal range.
    base = rng.standard_normal(2000) * 10.0 ** rng.uniform(-3, 0, 2000)
    per_rank = (base[None] * (1 + 0.3 * rng.standard_normal((size, 2000)))).astype(
        numpy.float32)
    got = communication.fp16_allreduce_mean(per_rank)
    exact = _fp32_mean(per_rank)
    assert got.dtype == numpy.float32
    # Each addition rounds to fp16 (relative 2^-11); errors grow at most
    # linearly with the number of additions, relative to the largest partial sum.
    bound = 2.0 ** -11 * (size + 1) * numpy.abs(per_rank).max(axis=0) + 1e-7
    assert numpy.all(numpy.abs(got - exact) <= bound)
    if size > 1:
        # It is a real fp16 path: not bit-identical to the fp32 mean.
        assert not numpy.array_equal(got, exact.astype(numpy.float32))


def test_world_size_one_is_a_plain_fp16_round_trip():
    g = numpy.array([[0.1, -2.5, 3e-3, 1e-6]], numpy.float32)
    numpy.testing.assert_array_equal(communication.fp16_allreduce_mean(g),
                                     g[0].astype(numpy.float16).astype(numpy.float32))


def test_sum_of_1024_ranks_overflows_fp16_and_prescaling_does_not():
    per_rank = numpy.full((1024, 3), 100.0, numpy.float32)   # sum 102,400 > 65,504
    per_rank[:, 1] = 50.0                                     # sum 51,200: fits
    per_rank[:, 2] = -70.0
    got = communication.fp16_allreduce_mean(per_rank)
    assert numpy.isinf(got[0]) and numpy.isinf(got[2])
    # Finite, but coarse: near 51,200 fp16 values are 32 apart, so adding 50
    # at a time rounds heavily (swamping). Still within 10 %.
    assert got[1] == pytest.approx(50.0, rel=0.1)
    safe = communication.fp16_allreduce_mean(per_rank, prescale=True)
    assert numpy.all(numpy.isfinite(safe))
    numpy.testing.assert_allclose(safe, [100.0, 50.0, -70.0], rtol=0.1)  # swamping
    assert communication.fp16_sum_overflows(100.0, 1024)
    assert not communication.fp16_sum_overflows(50.0, 1024)
    assert communication.fp16_sum_overflows(65505.0, 1)


def test_prescaling_loses_small_gradients_to_subnormals():
    # The price of the safe variant: g / 1024 for |g| < 0.0625 is below
    # fp16's normal range (6.1e-5), and below 3e-8 it rounds to zero, so a
    # gradient of 1e-5 vanishes when pre-scaled for 1,024 ranks.
    rng = numpy.random.default_rng(0)
    per_rank = (1e-5 * (1 + 0.1 * rng.standard_normal((1024, 500)))).astype(numpy.float32)
    exact = _fp32_mean(per_rank)
    err_default = numpy.abs(communication.fp16_allreduce_mean(per_rank) - exact).max()
    err_prescaled = numpy.abs(
        communication.fp16_allreduce_mean(per_rank, prescale=True) - exact).max()
    assert err_prescaled > 2 * err_default


class _FakeComm:
    def __init__(self, rank, intra_rank):
        self.rank, self.intra_rank = rank, intra_rank


def test_select_gpu_uses_the_node_local_rank():
    assert communication.select_gpu(_FakeComm(rank=13, intra_rank=5), visible_gpus=8) == 5


def test_more_local_ranks_than_gpus_is_a_clear_error():
    with pytest.raises(communication.CommunicationError) as e:
        communication.select_gpu(_FakeComm(rank=9, intra_rank=8), visible_gpus=8)
    message = str(e.value)
    assert 'local rank 8' in message and 'only 8 GPU(s)' in message
    assert 'ppr:8:node' in message and 'ntasks-per-node=8' in message


def test_cpu_communicator_is_naive_and_works_without_mpiexec():
    comm = communication.create_communicator(gpu=False)
    assert type(comm).__name__ == 'NaiveCommunicator'
    assert comm.size >= 1


def test_forkserver_is_started():
    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        communication.start_forkserver()
        assert multiprocessing.get_start_method() == 'forkserver'
    finally:
        # The start method is process-wide: later tests must not inherit it.
        multiprocessing.set_start_method(previous, force=True)


def test_print0_prints_on_rank_zero_only(capsys):
    communication.print0(types.SimpleNamespace(rank=1), 'hidden')
    communication.print0(types.SimpleNamespace(rank=0), 'shown')
    assert capsys.readouterr().out == 'shown\n'


@pytest.mark.gpu
def test_pure_nccl_fp16_allreduce_equals_fp32_mean_on_gpu():
    # World size 1 still runs the cast path: pack to fp16, NCCL sum, scale
    # by 1/size, unpack to fp32.
    import chainer.links as L
    import cupy
    comm = communication.create_communicator(gpu=True, allreduce_grad_dtype='float16')
    model = L.Linear(64, 32)
    model.to_device('@cupy:0')
    rng = numpy.random.default_rng(0)
    grads = {}
    for name, p in model.namedparams():
        g = (rng.standard_normal(p.shape) * 0.01).astype(numpy.float32)
        p.grad = cupy.asarray(g)
        grads[name] = g
    comm.multi_node_mean_grad(model)
    for name, p in model.namedparams():
        got = cupy.asnumpy(p.grad)
        assert got.dtype == numpy.float32
        expected = communication.fp16_allreduce_mean(grads[name].reshape(1, -1))
        numpy.testing.assert_allclose(got.ravel(), expected, rtol=1e-3, atol=1e-6)
        numpy.testing.assert_allclose(got, grads[name], rtol=2e-3, atol=1e-5)
