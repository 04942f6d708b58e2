"""Multi-process behaviour, run under mpiexec (``make test-mpi``).

Every test here is an ``mpi`` test: tests/run_mpi.py launches one pytest per
rank at -n 1 and -n 2. Collectives come first, assertions after, so a
failing rank cannot leave the others waiting; negative controls that need
two ranks are skipped by ``comm.size``, never by rank.
"""

import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L

from chainer_resnet import batch_normalization, communication, evaluator, optimizers

pytestmark = pytest.mark.mpi


@pytest.fixture(scope='module')
def comm():
    import chainermn
    return chainermn.create_communicator('naive')


class MLP(chainer.Chain):
    """BN-free, so a mean of per-rank gradients equals the global gradient."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(6, 16)
            self.l2 = L.Linear(16, 3)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


def _global_batches(steps, global_batch):
    rng = numpy.random.default_rng(123)
    return [(rng.standard_normal((global_batch, 6)).astype(numpy.float32),
             rng.integers(0, 3, global_batch).astype(numpy.int32))
            for _ in range(steps)]


def _train(batches, comm=None, rank_slice=None):
    numpy.random.seed(0)
    model = L.Classifier(MLP())
    opt = optimizers.RMSpropWarmup(lr=0.5, alpha_sgd=0.3)
    if comm is not None:
        opt = communication.create_multi_node_optimizer(opt, comm, model)
    else:
        opt.setup(model)
    opt.add_hook(optimizers.WeightDecayExceptBN(rate=1e-2))
    for step, (x, t) in enumerate(batches):
        if rank_slice is not None:
            x, t = x[rank_slice], t[rank_slice]
        opt.alpha_sgd = min(1.0, 0.3 + 0.1 * step)
        opt.update(model, x, t)
    return numpy.concatenate([p.array.ravel() for _, p in sorted(model.namedparams())])


def _rank_slice(comm, per_rank):
    return slice(comm.rank * per_rank, (comm.rank + 1) * per_rank)


def test_gradient_mean_equals_one_process_on_the_whole_batch(comm):
    per_rank = 4
    batches = _global_batches(6, per_rank * comm.size)
    distributed = _train(batches, comm=comm, rank_slice=_rank_slice(comm, per_rank))
    reference = _train(batches)                    # one process, whole batch
    everyone = comm.mpi_comm.allgather(distributed)
    numpy.testing.assert_allclose(distributed, reference, rtol=1e-5, atol=1e-6)
    for other in everyone:
        numpy.testing.assert_array_equal(other, distributed)


def test_negative_control_plain_chainermn_wrapper_skips_first_update(comm):
    # Why communication.create_multi_node_optimizer primes the wrapper: the
    # plain ChainerMN wrapper's first update() only broadcasts.
    import chainermn
    numpy.random.seed(0)
    model = L.Classifier(MLP())
    before = model.predictor.l1.W.array.copy()
    opt = chainermn.create_multi_node_optimizer(
        optimizers.RMSpropWarmup(lr=0.5, alpha_sgd=0.3), comm)
    opt.setup(model)
    x, t = _global_batches(1, 4)[0]
    opt.update(model, x, t)
    skipped = numpy.array_equal(model.predictor.l1.W.array, before)
    opt.update(model, x, t)
    moved = not numpy.array_equal(model.predictor.l1.W.array, before)
    assert skipped and moved


def test_negative_control_local_gradients_differ(comm):
    if comm.size < 2:
        pytest.skip('needs 2 ranks: at 1 rank local and global batches coincide')
    per_rank = 4
    batches = _global_batches(6, per_rank * comm.size)
    local_only = _train(batches, rank_slice=_rank_slice(comm, per_rank))
    reference = _train(batches)
    assert numpy.abs(local_only - reference).max() > 1e-3


class _Logits(chainer.Chain):
    """The 'predictor' returns the input as logits (known predictions)."""

    def forward(self, x):
        return x


def _val_set(n, classes=6):
    # Sample i: the true class scores at rank i % classes among the logits,
    # so it is top-1 correct iff i % 6 == 0 and top-5 correct iff i % 6 < 5.
    xs, ts = [], []
    for i in range(n):
        rank = i % classes
        logits = numpy.arange(classes, 0, -1).astype(numpy.float32)  # class 0 best
        xs.append(logits)
        ts.append(rank)
    return chainer.datasets.TupleDataset(numpy.stack(xs), numpy.array(ts, numpy.int32))


def _expected(n):
    top1 = sum(1 for i in range(n) if i % 6 == 0)
    top5 = sum(1 for i in range(n) if i % 6 < 5)
    return top1 / n, top5 / n


@pytest.mark.parametrize('n', [7, 13])
def test_exact_evaluation_counts_each_image_once(comm, n):
    dataset = _val_set(n)
    start, end = n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size
    local = chainer.datasets.SubDataset(dataset, start, end)
    it = chainer.iterators.SerialIterator(local, 2, repeat=False, shuffle=False)
    model = L.Classifier(_Logits())
    result = evaluator.ExactEvaluator(it, model, comm).evaluate()
    result2 = evaluator.ExactEvaluator(it, model, comm).evaluate()   # reusable
    top1, top5 = _expected(n)
    assert result['validation/main/images'] == n
    assert result['validation/main/accuracy'] == pytest.approx(top1)
    assert result['validation/main/top5'] == pytest.approx(top5)
    assert result2 == result


def test_negative_control_chainermn_padding_miscounts(comm):
    # ChainerMN's scatter_dataset pads to equal length with duplicates; the
    # multi-node evaluator then averages per-rank means over padded data.
    if comm.size < 2:
        pytest.skip('needs 2 ranks: nothing is padded at 1 rank')
    import chainermn
    n = 7
    local = chainermn.scatter_dataset(_val_set(n) if comm.rank == 0 else None, comm)
    it = chainer.iterators.SerialIterator(local, 2, repeat=False, shuffle=False)
    model = L.Classifier(_Logits())
    evaluator = chainermn.create_multi_node_evaluator(
        chainer.training.extensions.Evaluator(it, model), comm)
    result = evaluator()
    assert result['main/accuracy'] != pytest.approx(_expected(n)[0])


def _bn_after_one_batch(comm):
    # Rank r's batch holds r and r + 2 in every channel: mean r + 1, var 1.
    link = batch_normalization.LastBatchNormalization(3)
    x = numpy.zeros((2, 3), numpy.float32)
    x[0], x[1] = comm.rank, comm.rank + 2
    with chainer.using_config('train', True):
        link(x)
    model = chainer.Sequential(link)
    return link, model


@pytest.mark.parametrize('mode', ['mean', 'union'])
def test_bn_statistics_averaged_over_ranks(comm, mode):
    link, model = _bn_after_one_batch(comm)
    batch_normalization.BNStatisticsAllreduce(comm, model, mode=mode)()
    mean, var = link.mean.copy(), link.var.copy()
    everyone = comm.mpi_comm.allgather((mean, var))
    w = comm.size
    expected_mean = (w + 1) / 2.0                  # mean of r + 1 over r < w
    spread = (w * w - 1) / 12.0                    # variance of 1..w
    expected_var = 1.0 + spread if mode == 'union' else 1.0
    numpy.testing.assert_allclose(mean, expected_mean, rtol=1e-6)
    numpy.testing.assert_allclose(var, expected_var, rtol=1e-6)
    for m, v in everyone:
        numpy.testing.assert_array_equal(m, mean)
        numpy.testing.assert_array_equal(v, var)
    # The exact mode is the single-process union formula.
    means = numpy.array([[r + 1.0] * 3 for r in range(w)])
    variances = numpy.ones((w, 3))
    if mode == 'union':
        ref_mean, ref_var = batch_normalization.combine_statistics(means, variances)
        numpy.testing.assert_allclose(var, ref_var, rtol=1e-6)
        numpy.testing.assert_allclose(mean, ref_mean, rtol=1e-6)


def test_negative_control_bn_statistics_differ_without_allreduce(comm):
    if comm.size < 2:
        pytest.skip('needs 2 ranks')
    link, _ = _bn_after_one_batch(comm)
    everyone = comm.mpi_comm.allgather(link.mean.copy())
    assert not numpy.array_equal(everyone[0], everyone[1])
