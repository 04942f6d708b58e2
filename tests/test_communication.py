"""Communicator set-up pieces, rank-0 helpers and the fp16 gradient allreduce arithmetic."""

import multiprocessing
import pickle
import sys
import types

import numpy
import pytest

from chainer_resnet import communication
from chainer_resnet.data.layouts import DatasetError
from chainer_resnet.recipes import RecipeError


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
    def __init__(self, rank, intra_rank, intra_size=8):
        self.rank, self.intra_rank, self.intra_size = rank, intra_rank, intra_size


def test_select_gpu_uses_the_node_local_rank():
    assert communication.select_gpu(_FakeComm(rank=13, intra_rank=5), visible_gpus=8) == 5


def test_one_visible_gpu_per_rank_is_that_ranks_own_gpu():
    # srun --gpus-per-task=1 / --gpu-bind: each of the 8 ranks sees one GPU, device 0.
    for local in range(8):
        assert communication.select_gpu(_FakeComm(rank=8 + local, intra_rank=local),
                                        visible_gpus=1) == 0


def test_an_explicit_gpu_id_with_several_ranks_per_node_is_refused():
    with pytest.raises(communication.CommunicationError,
                       match='--device 3 with 8 ranks on host .*every rank would use GPU 3'):
        communication.select_gpu(_FakeComm(rank=1, intra_rank=1), visible_gpus=8, explicit=3)
    alone = _FakeComm(rank=0, intra_rank=0, intra_size=1)
    assert communication.select_gpu(alone, visible_gpus=8, explicit=3) == 3
    with pytest.raises(communication.CommunicationError, match='only 2 GPU'):
        communication.select_gpu(alone, visible_gpus=2, explicit=3)


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
    # by 1/size, unpack to fp32. ChainerMN needs MPI (the GPU check reports a
    # missing mpi4py in its allreduce item).
    pytest.importorskip('mpi4py.MPI', reason='ChainerMN needs mpi4py')
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


# ---------------------------------------------------------------------------
# from_rank0: rank 0 computes, one broadcast delivers (issue 10)

class _RecordingMpiComm:
    """The ``bcast`` of a world seen from one rank: rank 0's payload goes out as
    it is; any other rank receives `delivered`, a pickled round trip of what
    rank 0 sent (as MPI would deliver it)."""

    def __init__(self, delivered=None):
        self.sent, self.delivered = [], delivered

    def bcast(self, obj, root=0):
        assert root == 0
        self.sent.append(obj)
        return obj if self.delivered is None else pickle.loads(pickle.dumps(self.delivered))


def _rank_view(rank, delivered=None):
    return types.SimpleNamespace(rank=rank, mpi_comm=_RecordingMpiComm(delivered))


def test_from_rank0_calls_fn_on_rank_zero_only_and_broadcasts_once():
    calls = []

    def index(path, *, scale):
        calls.append(path)
        return {'path': path, 'n': 3 * scale}

    root = _rank_view(0)
    assert communication.from_rank0(root, index, 'train.txt', scale=2) == \
        {'path': 'train.txt', 'n': 6}
    assert calls == ['train.txt'] and len(root.mpi_comm.sent) == 1
    other = _rank_view(1, delivered=root.mpi_comm.sent[0])
    assert communication.from_rank0(other, index, 'train.txt', scale=2) == \
        {'path': 'train.txt', 'n': 6}
    assert calls == ['train.txt']                  # not called again on rank 1
    assert other.mpi_comm.sent == [None]           # one bcast there too


@pytest.mark.parametrize('error', [
    DatasetError('list file x.txt does not exist. Pass ...'),
    RecipeError('unknown recipe'),
    communication.CommunicationError('2 samples cannot be split over 4 ranks')])
def test_a_user_error_on_rank_zero_is_raised_on_every_rank(error):
    def fail():
        raise error

    root = _rank_view(0)
    with pytest.raises(type(error)) as info:
        communication.from_rank0(root, fail)
    assert info.value is error                     # rank 0: the original, traceback and all
    assert len(root.mpi_comm.sent) == 1
    other = _rank_view(1, delivered=root.mpi_comm.sent[0])
    with pytest.raises(type(error)) as info:
        communication.from_rank0(other, fail)
    assert str(info.value) == str(error)
    assert info.value.collective_rank == 1         # so that only rank 0 prints it


class _SiteError(Exception):
    pass


class _DatasetErrorWithContext(DatasetError):
    def __init__(self, message, *, line):        # keyword-only: does not unpickle
        super().__init__(message)
        self.line = line


def test_errors_adds_user_error_types_and_other_errors_stay_on_rank_zero():
    def fail():
        raise _SiteError('the site check failed')

    root = _rank_view(0)
    with pytest.raises(_SiteError):
        communication.from_rank0(root, fail, errors=(_SiteError,))
    assert isinstance(root.mpi_comm.sent[0][1], _SiteError)
    # Negative control: without errors= it is not a user error; it propagates
    # on rank 0 before any broadcast (the abort hook ends the other ranks).
    bare = _rank_view(0)
    with pytest.raises(_SiteError):
        communication.from_rank0(bare, fail)
    assert bare.mpi_comm.sent == []


def test_a_user_error_that_does_not_pickle_travels_as_its_base_class():
    def fail():
        raise _DatasetErrorWithContext('line 7: label 12 out of range', line=7)

    root = _rank_view(0)
    with pytest.raises(_DatasetErrorWithContext):
        communication.from_rank0(root, fail)
    other = _rank_view(1, delivered=root.mpi_comm.sent[0])
    with pytest.raises(DatasetError, match='line 7: label 12 out of range'):
        communication.from_rank0(other, fail)


def test_from_rank0_with_a_real_communicator_outside_mpiexec():
    comm = communication.create_communicator(gpu=False)
    assert communication.from_rank0(comm, sorted, [3, 1, 2]) == [1, 2, 3]


@pytest.mark.mpi
def test_from_rank0_under_mpi_same_result_and_same_error_on_every_rank():
    import chainermn
    comm = chainermn.create_communicator('naive')
    seen = []

    def index():
        seen.append(comm.rank)
        return numpy.arange(5) * 10

    result = communication.from_rank0(comm, index)

    def bad_list():
        raise DatasetError('train.txt, line 3: label 2 is out of range')

    try:
        communication.from_rank0(comm, bad_list)
        raised = None
    except DatasetError as e:
        raised = str(e)
    results = comm.mpi_comm.allgather((result.tolist(), seen, raised))
    for values, calls, message in results:
        assert values == [0, 10, 20, 30, 40]
        assert message == 'train.txt, line 3: label 2 is out of range'
    assert [calls for _, calls, _ in results] == [[0]] + [[]] * (comm.size - 1)


def test_process_rank_before_mpi_reads_the_launchers_variables(monkeypatch):
    for name in communication.LAUNCHER_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, 'mpi4py.MPI', None)      # as if MPI were not started
    assert communication.process_rank() == 0                  # started alone
    monkeypatch.setenv('PMI_RANK', '3')
    assert communication.process_rank() == 3


class _Gathering:
    """The mpi4py surface agree() uses, as `rank` of `size` ranks sees it (errors given)."""

    def __init__(self, rank, errors):
        self.rank, self.errors = rank, errors

    def Get_size(self):
        return len(self.errors)

    def Get_rank(self):
        return self.rank

    def allreduce(self, value, op=None):
        return any(e is not None for e in self.errors)

    def allgather(self, mine):
        return [(mine[0], e) for e in self.errors]


def test_agree_raises_the_first_ranks_error_on_every_rank_and_says_where():
    found = communication.CommunicationError('no CuPy')
    communication.agree(_Gathering(0, [None, None]), None)           # nobody failed
    for rank in (0, 1):
        with pytest.raises(communication.CommunicationError) as info:
            communication.agree(_Gathering(rank, [None, found, found]), None)
        assert info.value.collective_rank == rank                    # rank 0 says it
        assert str(info.value).startswith('on 2 of 3 ranks (rank 1 on host ')
        assert str(info.value).endswith('): no CuPy')
    with pytest.raises(communication.CommunicationError) as info:    # every rank: as it is
        communication.agree(_Gathering(0, [found, found]), found)
    assert str(info.value) == 'no CuPy'


@pytest.mark.mpi
def test_agree_under_mpi_one_ranks_error_ends_every_rank_together():
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    mine = communication.CommunicationError('rank 1 has no GPU') if world.rank == 1 else None
    try:
        communication.agree(world, mine)
        raised = None
    except communication.CommunicationError as e:
        raised = (str(e), e.collective_rank)
    seen = world.allgather(raised)
    if world.size == 1:
        assert seen == [None]
    else:
        assert all(message.endswith(': rank 1 has no GPU') and rank == r
                   for r, (message, rank) in enumerate(seen))


# ---------------------------------------------------------------------------
# bind_gpu: no two ranks of a node on one GPU (issue 19, defect 7)

class _Allgather:
    """The ``allgather`` of a world in which rank r contributed ``table[r]``."""

    def __init__(self, table):
        self.table = table

    def allgather(self, mine):
        return list(self.table)


def _world(table, rank):
    comm = _FakeComm(rank=rank, intra_rank=rank, intra_size=len(table))
    comm.mpi_comm = _Allgather(table)
    return comm


def test_two_ranks_on_one_gpu_are_refused_on_every_rank():
    # srun --gpus-per-task=1 gone wrong: both ranks see one GPU, the same one.
    table = [('node1', '0000:3b:00', 0), ('node1', '0000:3b:00', 0)]
    for rank in (0, 1):
        with pytest.raises(communication.CommunicationError) as e:
            communication.check_distinct_gpus(_world(table, rank), 0, '0000:3b:00')
        assert e.value.collective_rank == rank      # the trainer says it once
        assert 'ranks 0 and 1 on host node1' in str(e.value)
        assert '0000:3b:00' in str(e.value) and 'gpus-per-task' in str(e.value)


def test_distinct_gpus_or_other_hosts_pass():
    communication.check_distinct_gpus(_world(
        [('node1', '0000:3b:00', 0), ('node1', '0000:5e:00', 0)], 0), 0, '0000:3b:00')
    communication.check_distinct_gpus(_world(
        [('node1', '0000:3b:00', 0), ('node2', '0000:3b:00', 0)], 1), 0, '0000:3b:00')


def test_the_trainers_device_refuses_two_ranks_that_see_the_same_single_gpu(monkeypatch):
    used = []
    cupy = types.ModuleType('cupy')
    cupy.cuda = types.SimpleNamespace(
        Device=lambda gpu: types.SimpleNamespace(use=lambda: used.append(gpu)),
        runtime=types.SimpleNamespace(
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda gpu: {'pciDomainID': 0, 'pciBusID': 0x3b,
                                             'pciDeviceID': 0}))
    monkeypatch.setitem(sys.modules, 'cupy', cupy)
    table = [('node1', '0000:3b:00', 0), ('node1', '0000:3b:00', 0)]
    with pytest.raises(communication.CommunicationError, match='both use the GPU'):
        communication.device('gpu', _world(table, 1))
    assert used == [0]
