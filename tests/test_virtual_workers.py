"""Virtual workers: k micro-batches per rank are the mathematics of k times more ranks.

Unit tests first (the stream of samples, the BN statistics averaging, the
updater's micro-batches, the recipe's worker count); then the real trainer
under ``mpiexec`` (slow): 1 rank x k=2 against 2 ranks x k=1 (BN statistics
averaged by 'mean', and Chainer's moving-average BN), and 2 ranks x k=2 against
4 ranks x k=1 ('union'), over the whole smoke run (8 and 4 iterations,
lr steps at epochs 0.89, 1.56 and 1.89, an evaluation each epoch; the
virtual run is stopped half-way and resumed), with a negative control.

Tolerance of the trainer comparisons: ``rtol=1e-5, atol=1e-7`` on every
parameter, optimizer state and BN statistic. The two runs do the same
arithmetic except the order of the gradient sum: ``(g0 + g1)/2 + ...``
across ranks against ``g0/2 + g1/2`` on one rank (float32, ~6e-8 relative
per addition, a handful of additions per element, amplified little by
RMSprop's normalisation over 8 steps), and the BN statistics' float64 sums
in another order before the cast to float32. Measured on this machine:
bit-for-bit equal in all three cases (k and the world sizes are powers of two,
so the 1/k scalings are exact, and MPICH adds the four ranks' gradients
pairwise, in the order the virtual run does). The negative control (one BN
statistic over each rank's k micro-batches) differs by up to 6.5 in a BN
variance and ~2x in relative terms, far outside the tolerance.
"""

import json
import os
import subprocess
import sys

import numpy
import pytest

import chainer
import chainer.links as L

from chainer_resnet import batch_normalization, recipes, updater
from chainer_resnet.data import sampling

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run_mpi import mpiexec  # noqa: E402

MPIEXEC = mpiexec()
RTOL, ATOL = 1e-5, 1e-7


# --- the stream: each micro-batch is that worker's own batch -------------------------
class _Images(chainer.dataset.DatasetMixin):
    """``base[g] = (g, g % 3)``: the image is its own index."""

    def __init__(self, n):
        self.n = n
        self.paths = ['img{}'.format(g) for g in range(n)]

    def __len__(self):
        return self.n

    def get_example(self, g):
        return numpy.array([g]), g % 3


def _draw(image, rng):
    """A transform whose output shows the sample and its augmentation draw."""
    return numpy.array([image[0], rng.integers(1 << 30)])


def _worker_datasets(n, ranks, k, rank, seed=3):
    ids = numpy.arange(n)
    return [sampling.AugmentedDataset(
        _Images(n), _draw, seed, indices=sampling.scatter_indices(
            ids, ranks * k, rank * k + j, equal=True, shuffle_seed=seed))
        for j in range(k)]


def _batches(iterator, count):
    return [numpy.stack([x for x, _ in iterator.next()]) for _ in range(count)]


@pytest.mark.parametrize('n, ranks, k, batch', [(31, 2, 3, 4), (64, 1, 2, 8), (50, 2, 4, 7)])
def test_each_micro_batch_is_the_batch_that_worker_reads_as_a_rank(n, ranks, k, batch):
    iterations = 25                          # several epochs, batches across epoch ends
    for rank in range(ranks):
        workers = _worker_datasets(n, ranks, k, rank)
        stream = sampling.VirtualWorkerStream(workers, batch, seed=3)
        it = chainer.iterators.SerialIterator(
            stream, k * batch, order_sampler=sampling.StreamOrderSampler(len(stream)))
        got = _batches(it, iterations)
        alone = [_batches(chainer.iterators.SerialIterator(
            w, batch, order_sampler=sampling.EpochOrderSampler(len(w), 3)), iterations)
            for w in workers]
        for i in range(iterations):
            for j in range(k):
                numpy.testing.assert_array_equal(got[i][j * batch:(j + 1) * batch],
                                                 alone[j][i])
        assert it.epoch == iterations * batch // len(workers[0])   # the trainer's epochs


def test_a_stream_iterator_resumes_from_its_serialised_state():
    workers = _worker_datasets(31, 2, 3, 1)
    make = lambda: chainer.iterators.SerialIterator(       # noqa: E731
        sampling.VirtualWorkerStream(workers, 4, seed=3), 12,
        order_sampler=sampling.StreamOrderSampler(3 * len(workers[0])))
    it = make()
    _batches(it, 7)
    state = {}
    it.serialize(chainer.serializers.DictionarySerializer(state))
    expected = _batches(it, 9)
    resumed = make()
    resumed.serialize(chainer.serializers.NpzDeserializer(state))
    for a, b in zip(_batches(resumed, 9), expected):
        numpy.testing.assert_array_equal(a, b)


def test_a_stream_refuses_workers_of_different_sizes():
    a, b = _worker_datasets(31, 1, 2, 0)
    short = sampling.AugmentedDataset(_Images(31), _draw, 3, indices=numpy.arange(5))
    with pytest.raises(ValueError, match='equally many samples'):
        sampling.VirtualWorkerStream([a, short], 4, 3)
    assert len(sampling.VirtualWorkerStream([a, b], 4, 3)) == len(a) + len(b)


# --- BN statistics: an average over ranks x k workers ---------------------------------
class _OneRank:
    size = 1

    class mpi_comm:
        @staticmethod
        def Allreduce(send, recv):
            recv[...] = send


class _TwoBN(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.a = batch_normalization.LastBatchNormalization(3)
            self.b = batch_normalization.LastBatchNormalization(2)

    def forward(self, x):
        return self.a(x[:, :3]), self.b(x[:, 3:])


@pytest.mark.parametrize('mode', ['mean', 'union'])
def test_bn_statistics_average_every_virtual_worker_in_both_modes(mode):
    model = _TwoBN()
    stats = batch_normalization.VirtualWorkerStatistics(model, 3)
    rng = numpy.random.default_rng(0)
    batches = [rng.normal(j, 1 + j, size=(6, 5)).astype(numpy.float32) for j in range(3)]
    with chainer.using_config('train', True):
        for j, x in enumerate(batches):
            model(x)
            stats.record(j)
    assert stats.complete
    batch_normalization.BNStatisticsAllreduce(_OneRank(), model, mode=mode, virtual=stats)()
    means = numpy.stack([x.mean(axis=0) for x in batches])
    variances = numpy.stack([x.var(axis=0) for x in batches])
    if mode == 'union':
        mean, var = batch_normalization.combine_statistics(means, variances)
        numpy.testing.assert_allclose(var, numpy.concatenate(batches).var(axis=0), rtol=1e-5)
    else:
        mean, var = means.mean(axis=0), variances.mean(axis=0)
    numpy.testing.assert_allclose(numpy.concatenate([model.a.mean, model.b.mean]), mean,
                                  rtol=1e-6)
    numpy.testing.assert_allclose(numpy.concatenate([model.a.var, model.b.var]), var,
                                  rtol=1e-6)
    # Negative control: the last micro-batch alone is not the average.
    assert not numpy.allclose(model.b.mean, batches[-1][:, 3:].mean(axis=0), rtol=1e-3)
    # Averaged: every worker now holds the average, a second call keeps it.
    assert not stats.complete
    kept = model.a.mean.copy(), model.a.var.copy()
    batch_normalization.BNStatisticsAllreduce(_OneRank(), model, mode=mode, virtual=stats)()
    numpy.testing.assert_allclose(model.a.mean, kept[0], rtol=1e-6)
    numpy.testing.assert_allclose(model.a.var, kept[1], rtol=1e-6)


# --- the updater: k micro-batches of b, one update -------------------------------------
class _Recorder(chainer.dataset.Converter):
    def __init__(self):
        self.sizes = []

    def __call__(self, batch, device=None):
        self.sizes.append(len(batch))
        return chainer.dataset.concat_examples(batch, device)


def _model():
    numpy.random.seed(0)
    return L.Classifier(chainer.Sequential(L.Linear(3, 4), L.BatchNormalization(4),
                                           L.Linear(4, 2)))


X = numpy.random.RandomState(1).randn(8, 3).astype(numpy.float32)
T = numpy.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=numpy.int32)


def _step(k, joint_bn=False):
    """One update of k virtual workers on the 8 samples; the model, converter sizes, reports."""
    model = _model()
    it = chainer.iterators.SerialIterator(chainer.datasets.TupleDataset(X, T), 8,
                                          shuffle=False)
    opt = chainer.optimizers.SGD(lr=0.1)
    opt.setup(model)
    converter = _Recorder()
    step = updater.TimedUpdater(it, opt, virtual_workers=k, converter=converter,
                                joint_bn=joint_bn)
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    observation = {}
    with reporter.scope(observation):
        step.update()
    return model, converter.sizes, observation


def test_the_updater_runs_k_micro_batches_and_one_update():
    model, sizes, _ = _step(2)
    assert sizes == [4, 4]                    # one micro-batch at a time through the model
    # The running averages: one update (decay 0.9, from 0), by worker 0's micro-batch only.
    hidden = _model().predictor[0](X[:4]).array
    numpy.testing.assert_allclose(model.predictor[1].avg_mean, 0.1 * hidden.mean(axis=0),
                                  rtol=1e-5)
    # By hand: the mean of the two micro-batches' gradients, each with its own BN statistics.
    by_hand = _model()
    by_hand.cleargrads()
    for part in (slice(0, 4), slice(4, 8)):
        (by_hand(X[part], T[part]) * 0.5).backward()
    expected = by_hand.predictor[0].W.array - 0.1 * by_hand.predictor[0].W.grad
    numpy.testing.assert_allclose(model.predictor[0].W.array, expected, rtol=1e-6)
    # Negative control: one BN statistic over both (joint_bn) is plain SGD on 8.
    joint, joint_sizes, _ = _step(2, joint_bn=True)
    reference, _, _ = _step(1)
    assert joint_sizes == [8]
    numpy.testing.assert_allclose(joint.predictor[0].W.array, reference.predictor[0].W.array,
                                  rtol=1e-6)
    assert not numpy.allclose(model.predictor[0].W.array, joint.predictor[0].W.array,
                              rtol=1e-4)


def test_the_updater_reports_the_mean_loss_over_its_workers():
    _, _, observation = _step(2)
    fresh = _model()
    with chainer.using_config('train', True):
        losses = [float(fresh(X[part], T[part]).array) for part in (slice(0, 4), slice(4, 8))]
    assert float(observation['main/loss']) == pytest.approx(numpy.mean(losses), rel=1e-6)
    assert losses[0] != pytest.approx(losses[1])
    assert observation['perf/images_per_sec'] > 0


# --- the recipe counts virtual workers -------------------------------------------------
def test_the_world_size_guard_counts_virtual_workers():
    r = recipes.resolve('akiba2017', ['virtual_workers_per_rank=16'])
    r.check_world_size(64)                                  # 64 x 16 = 1,024
    assert r.workers(64) == 1024 and r.global_batch(r.workers(64)) == 32768
    assert r.total_iters(r.workers(64)) == recipes.AKIBA2017.total_iters(1024)
    with pytest.raises(recipes.RecipeError, match=r'64 process\(es\) were started x 8 virtual '
                       r'workers = 512 workers.*virtual_workers_per_rank=16'):
        recipes.resolve('akiba2017', ['virtual_workers_per_rank=8']).check_world_size(64)
    with pytest.raises(recipes.RecipeError, match='virtual_workers_per_rank=128'):
        recipes.AKIBA2017.check_world_size(8)
    s = r.summary(64)
    assert (s['ranks'], s['virtual_workers_per_rank'], s['workers'], s['global_batch']) == (
        64, 16, 1024, 32768)
    with pytest.raises(recipes.RecipeError, match='virtual_workers_per_rank must be > 0'):
        recipes.resolve('akiba2017', ['virtual_workers_per_rank=0'])


def test_recipe_facts_take_the_virtual_workers(capsys):
    assert recipes.main(['facts', 'akiba2017', '64', '16']) == 0
    assert capsys.readouterr().out.split() == ['1024', '32768', '12.8', '16']
    assert recipes.main(['facts', 'akiba2017', '64', '0']) == 2


# --- the real trainer: exactly the same run ---------------------------------------------
def _train(out, data_cache, ranks, *extra, script='train_imagenet.py'):
    cmd = [MPIEXEC, '-n', str(ranks), sys.executable, os.path.join(ROOT, script),
           '--recipe', 'smoke', '--out', str(out), '--data-cache', data_cache,
           '--loaderjobs', '0', '--no-progress'] + list(extra)
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def _load(path):
    # The model file's description (a JSON string) names each run's own recipe.
    from chainer_resnet.model_file import META_KEY
    with numpy.load(str(path)) as f:
        return {key: f[key] for key in f.files if key != META_KEY}


def _snapshot(out):
    from chainer_resnet import snapshots
    return _load(snapshots.list_snapshots(str(out))[0][1])


def _assert_same_run(virtual, reference, compare):
    a, b = _load(virtual / 'model.npz'), _load(reference / 'model.npz')
    assert sorted(a) == sorted(b) and any(key.endswith(('/var', '/avg_var')) for key in a)
    for key in a:
        numpy.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=ATOL, err_msg=key)
    # The last snapshots: parameters, RMSprop/momentum state, iteration.
    sa, sb = _snapshot(virtual), _snapshot(reference)
    optimizer_state = [key for key in sb if key.startswith('updater/optimizer:main/')]
    assert optimizer_state
    for key in optimizer_state + [key for key in sb if key.startswith('updater/model:main/')]:
        numpy.testing.assert_allclose(sa[key], sb[key], rtol=RTOL, atol=ATOL, err_msg=key)
    la, lb = (json.loads((d / 'log').read_text()) for d in (virtual, reference))
    assert len(la) == len(lb)
    seen = set()
    for ea, eb in zip(la, lb):
        keys = [key for key in compare if key in eb]
        assert keys == [key for key in compare if key in ea], (ea, eb)
        seen.update(keys)
        for key in keys:
            assert ea[key] == pytest.approx(eb[key], rel=RTOL, abs=ATOL), (key, ea, eb)
    assert seen == set(compare)               # every compared entry was logged somewhere


slow_mpi = [pytest.mark.slow, pytest.mark.skipif(MPIEXEC is None, reason='no mpiexec found')]


@pytest.fixture(scope='module')
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data'))


@pytest.mark.parametrize('ranks, k, mode', [(1, 2, 'mean'), (2, 2, 'union'),
                                             (1, 2, 'moving_average')])
@pytest.mark.parametrize('_', [pytest.param(0, marks=slow_mpi)])
def test_virtual_workers_train_exactly_like_k_times_more_ranks(tmp_path, data_cache,
                                                                ranks, k, mode, _):
    # 'mean', 'union': the paper's BN in both averaging modes. 'moving_average':
    # Chainer's BN; rank 0 keeps worker 0's running averages, which model.npz and
    # the snapshots hold (the evaluation is not compared: each rank evaluates
    # with its own running averages, k workers' worth of ranks in the reference).
    mode_arg = ['--set', ('batch_norm=' if mode == 'moving_average' else
                          'bn_stats_average=') + mode]
    reference = tmp_path / 'reference'
    text = _train(reference, data_cache, ranks * k, *mode_arg)
    assert 'workers={}, '.format(ranks * k) in text
    virtual = tmp_path / 'virtual'
    vk = ['--set', 'virtual_workers_per_rank={}'.format(k)] + mode_arg
    total = 16 // (ranks * k)
    text = _train(virtual, data_cache, ranks, *vk, '--stop-after-iters', str(total // 2))
    assert 'ranks={}, virtual_workers_per_rank={}, workers={}, '.format(
        ranks, k, ranks * k) in text
    assert 'Stopped at iteration {}/{}'.format(total // 2, total) in text
    text = _train(virtual, data_cache, ranks, *vk)                      # the resume
    assert 'Training complete at iteration {}/{}'.format(total, total) in text
    compare = ('lr', 'alpha_sgd', 'epoch', 'iteration')
    if mode != 'moving_average':
        compare += ('validation/main/accuracy', 'validation/main/loss')
    _assert_same_run(virtual, reference, compare)
    recorded = json.loads((virtual / 'recipe.json').read_text())
    assert recorded['virtual_workers_per_rank'] == k
    if ranks == 1 and mode == 'mean':
        # Negative control: the same micro-batches with one BN statistic over
        # all of them (TimedUpdater(joint_bn=True)) is another run.
        control = tmp_path / 'control'
        _train(control, data_cache, ranks, *vk, script=os.path.join('tests', 'joint_bn_probe.py'))
        with pytest.raises(AssertionError):
            _assert_same_run(control, reference, ())
