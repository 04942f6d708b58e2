import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L

from chainer_resnet.batch_normalization import (
    BNStatisticsAllreduce, LastBatchNormalization, bn_links, combine_statistics)
from chainer_resnet.resnet import ResNet50

EPS = 2e-5


def batch(seed, shape=(8, 4, 5, 5), loc=1.5, scale=3.0, dtype=numpy.float32):
    rng = numpy.random.RandomState(seed)
    # Channel-dependent offsets so that per-channel statistics genuinely differ.
    offsets = numpy.arange(shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
    return (rng.normal(loc, scale, size=shape) + offsets).astype(dtype)


def axes(x):
    return (0,) + tuple(range(2, x.ndim))


def numpy_bn(x, mean, var, gamma, beta, eps=EPS):
    """y = γ (x − μ) / sqrt(σ² + ε) + β, per channel (axis 1), in float64."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x = x.astype(numpy.float64)
    return (gamma.reshape(shape) * (x - mean.reshape(shape))
            / numpy.sqrt(var.reshape(shape) + eps) + beta.reshape(shape))


def train_forward(link, x):
    with chainer.using_config('train', True):
        return link(x)


def eval_forward(link, x):
    with chainer.using_config('train', False):
        return link(x)


@pytest.mark.parametrize('shape', [(8, 4, 5, 5), (16, 6)])
def test_training_output_is_normalised_per_channel(shape):
    x = batch(0, shape)
    y = train_forward(LastBatchNormalization(shape[1]), x).array
    numpy.testing.assert_allclose(y.mean(axis=axes(x)), 0, atol=1e-5)
    numpy.testing.assert_allclose(y.var(axis=axes(x)), 1, atol=1e-3)


def test_initial_statistics_and_eval_before_training():
    link = LastBatchNormalization(4)
    numpy.testing.assert_array_equal(link.mean, numpy.zeros(4))
    numpy.testing.assert_array_equal(link.var, numpy.ones(4))
    numpy.testing.assert_array_equal(link.gamma.array, numpy.ones(4))
    numpy.testing.assert_array_equal(link.beta.array, numpy.zeros(4))
    x = batch(0)
    numpy.testing.assert_allclose(eval_forward(link, x).array, x / numpy.sqrt(1 + EPS),
                                  rtol=1e-6)


def test_eval_uses_stored_statistics():
    rng = numpy.random.RandomState(3)
    gamma, beta = rng.rand(4).astype(numpy.float32) + 0.5, rng.randn(4).astype(numpy.float32)
    link = LastBatchNormalization(4, initial_gamma=gamma, initial_beta=beta)
    mean, var = rng.randn(4).astype(numpy.float32), rng.rand(4).astype(numpy.float32) + 0.1
    link.set_statistics(mean, var)
    x = batch(4)
    y = eval_forward(link, x)
    numpy.testing.assert_allclose(y.array, numpy_bn(x, mean, var, gamma, beta),
                                  rtol=1e-5, atol=1e-5)
    # Evaluation does not touch the stored statistics.
    numpy.testing.assert_array_equal(link.mean, mean)
    numpy.testing.assert_array_equal(link.var, var)


def test_parameters_and_persistents_are_exactly_the_documented_ones(tmp_path):
    link = LastBatchNormalization(4)
    assert sorted(name for name, _ in link.namedparams()) == ['/beta', '/gamma']
    assert sorted(link._persistent) == ['mean', 'var']
    for name in ('avg_mean', 'avg_var', 'decay', 'N'):
        assert not hasattr(link, name)
    chainer.serializers.save_npz(str(tmp_path / 'bn.npz'), link)
    with numpy.load(str(tmp_path / 'bn.npz')) as stored:
        assert sorted(stored.files) == ['beta', 'gamma', 'mean', 'var']


def test_stored_statistics_are_the_last_batch_not_a_blend():
    link = LastBatchNormalization(4)
    x1, x2 = batch(1, loc=-4.0, scale=1.0), batch(2, loc=6.0, scale=5.0)
    train_forward(link, x1)
    numpy.testing.assert_allclose(link.mean, x1.mean(axis=(0, 2, 3)), rtol=1e-6)
    train_forward(link, x2)
    assert link.mean.dtype == link.var.dtype == numpy.float32
    numpy.testing.assert_allclose(link.mean, x2.mean(axis=(0, 2, 3)), rtol=1e-6)
    numpy.testing.assert_allclose(link.var, x2.var(axis=(0, 2, 3)), rtol=1e-6)
    # Negative control: what Chainer's BN with its default decay 0.9 would hold.
    chainer_bn = L.BatchNormalization(4)
    train_forward(chainer_bn, x1)
    train_forward(chainer_bn, x2)
    assert not numpy.allclose(chainer_bn.avg_mean, link.mean, rtol=1e-2)


@pytest.mark.parametrize('shape', [(8, 4, 5, 5), (16, 6)])
def test_eval_on_last_training_batch_reproduces_training_output(shape):
    rng = numpy.random.RandomState(5)
    link = LastBatchNormalization(shape[1], initial_gamma=rng.rand(shape[1]) + 0.5,
                                  initial_beta=rng.randn(shape[1]))
    train_forward(link, batch(6, shape))
    x = batch(7, shape, loc=-2.0, scale=0.5)
    y_train = train_forward(link, x).array
    y_eval = eval_forward(link, x).array
    numpy.testing.assert_allclose(y_eval, y_train, rtol=1e-5, atol=1e-5)


def test_unbiased_option_stores_unbiased_variance():
    x = batch(8)
    m = x.size // x.shape[1]
    biased = LastBatchNormalization(4)
    unbiased = LastBatchNormalization(4, unbiased=True)
    y_biased = train_forward(biased, x).array
    y_unbiased = train_forward(unbiased, x).array
    numpy.testing.assert_allclose(unbiased.var, x.var(axis=(0, 2, 3), ddof=1), rtol=1e-6)
    numpy.testing.assert_allclose(unbiased.var, biased.var * m / (m - 1), rtol=1e-6)
    numpy.testing.assert_array_equal(unbiased.mean, biased.mean)
    # The option changes what is stored, not how the training batch is normalised.
    numpy.testing.assert_array_equal(y_unbiased, y_biased)


def test_analytic_constant_plus_minus_d():
    c = numpy.array([3.0, -1.0, 0.0], dtype=numpy.float32)
    d = numpy.array([2.0, 0.5, 4.0], dtype=numpy.float32)
    gamma = numpy.array([1.5, 2.0, -1.0], dtype=numpy.float32)
    beta = numpy.array([0.25, -3.0, 1.0], dtype=numpy.float32)
    sign = numpy.array([1, -1, -1, 1], dtype=numpy.float32).reshape(2, 1, 2, 1)
    sign = numpy.broadcast_to(sign, (2, 3, 2, 2))
    x = c.reshape(1, 3, 1, 1) + sign * d.reshape(1, 3, 1, 1)
    link = LastBatchNormalization(3, initial_gamma=gamma, initial_beta=beta)
    y = train_forward(link, x).array
    numpy.testing.assert_allclose(link.mean, c, atol=1e-6)
    numpy.testing.assert_allclose(link.var, d ** 2, rtol=1e-6)
    scale = (d / numpy.sqrt(d ** 2 + EPS)).reshape(1, 3, 1, 1)  # = 1 up to eps
    expected = sign * scale * gamma.reshape(1, 3, 1, 1) + beta.reshape(1, 3, 1, 1)
    numpy.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('shape', [(8, 4, 5, 5), (16, 6)])
def test_gradients_match_chainer_batch_normalization(shape):
    rng = numpy.random.RandomState(9)
    channels = shape[1]
    gamma = (rng.rand(channels) + 0.5).astype(numpy.float32)
    beta = rng.randn(channels).astype(numpy.float32)
    x = batch(10, shape)
    gy = rng.randn(*shape).astype(numpy.float32)
    results = []
    for link in (LastBatchNormalization(channels, initial_gamma=gamma, initial_beta=beta),
                 L.BatchNormalization(channels, initial_gamma=gamma, initial_beta=beta)):
        xv = chainer.Variable(x.copy())
        y = train_forward(link, xv)
        y.grad = gy
        y.backward()
        results.append((y.array, xv.grad, link.gamma.grad, link.beta.grad))
    for ours, theirs in zip(*results):
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    # Gradients flow through the batch statistics: the input gradient sums to 0 per channel.
    numpy.testing.assert_allclose(results[0][1].sum(axis=axes(x)), 0, atol=1e-4)


def test_dtype_float64():
    x = batch(11, dtype=numpy.float64)
    link = LastBatchNormalization(4, dtype=numpy.float64)
    y = train_forward(link, x)
    assert y.dtype == link.mean.dtype == link.var.dtype == link.gamma.dtype == numpy.float64
    numpy.testing.assert_allclose(link.var, x.var(axis=(0, 2, 3)), rtol=1e-12)
    numpy.testing.assert_allclose(eval_forward(link, x).array, y.array, rtol=1e-10, atol=1e-10)


def test_serialization_round_trip_keeps_statistics(tmp_path):
    link = LastBatchNormalization(4, initial_gamma=2.0, initial_beta=-1.0)
    train_forward(link, batch(12))
    path = str(tmp_path / 'bn.npz')
    chainer.serializers.save_npz(path, link)
    restored = LastBatchNormalization(4)
    chainer.serializers.load_npz(path, restored)
    for name in ('mean', 'var'):
        numpy.testing.assert_array_equal(getattr(restored, name), getattr(link, name))
    numpy.testing.assert_array_equal(restored.gamma.array, link.gamma.array)
    numpy.testing.assert_array_equal(restored.beta.array, link.beta.array)


def test_set_statistics_checks_shape():
    link = LastBatchNormalization(4)
    mean = link.mean
    link.set_statistics(numpy.arange(4.0), numpy.full(4, 2.0))
    assert link.mean is mean  # updated in place, dtype kept
    assert link.mean.dtype == numpy.float32
    with pytest.raises(ValueError, match='shape'):
        link.set_statistics(numpy.zeros(3), numpy.ones(4))


def test_combine_statistics_equals_statistics_of_the_union():
    workers, n = 4, 3
    # Chunks with different means (as per-worker batches have), each seen by its own link.
    chunks = [batch(20 + w, shape=(n, 4, 5, 5), loc=3.0 * w) for w in range(workers)]
    means, vars_ = [], []
    for chunk in chunks:
        link = LastBatchNormalization(4)
        train_forward(link, chunk)
        means.append(link.mean.astype(numpy.float64))
        vars_.append(link.var.astype(numpy.float64))
    means, vars_ = numpy.stack(means), numpy.stack(vars_)
    mean, var = combine_statistics(means, vars_)

    whole = numpy.concatenate(chunks).astype(numpy.float64)
    numpy.testing.assert_allclose(mean, whole.mean(axis=(0, 2, 3)), rtol=1e-6)
    numpy.testing.assert_allclose(var, whole.var(axis=(0, 2, 3)), rtol=1e-6)
    # The written-out form mean(var_i) + mean(mean_i²) − mean(mean_i)² agrees.
    numpy.testing.assert_allclose(
        var, vars_.mean(0) + (means ** 2).mean(0) - means.mean(0) ** 2, rtol=1e-9)
    # Negative control: plain averaging of variances (AllreducePersistent) underestimates.
    plain = vars_.mean(axis=0)
    assert (plain < 0.9 * whole.var(axis=(0, 2, 3))).all()


def test_combine_statistics_checks_shapes():
    with pytest.raises(ValueError, match='shape'):
        combine_statistics(numpy.zeros((2, 3)), numpy.zeros((2, 4)))
    with pytest.raises(ValueError, match='shape'):
        combine_statistics(numpy.zeros(3), numpy.zeros(3))


def test_bn_links_in_namedlinks_order():
    inner = chainer.ChainList(LastBatchNormalization(4), L.Linear(3, 4), LastBatchNormalization(2))
    model = chainer.Chain()
    with model.init_scope():
        model.b = LastBatchNormalization(3)
        model.a = inner
        model.c = L.BatchNormalization(4)
    found = bn_links(model)
    # Chain children come in name order, ChainList children in index order.
    assert [id(link) for link in found] == [id(inner[0]), id(inner[2]), id(model.b)]
    assert bn_links(model) == found


def test_resnet50_with_last_batch_normalization_trains_and_evaluates():
    model = ResNet50(n_class=10, bn=LastBatchNormalization)
    links = bn_links(model)
    assert len(links) == 53
    assert [link for _, link in model.namedlinks() if isinstance(link, L.BatchNormalization)] \
        == []
    assert all((block.bn3.gamma.array == 0).all()
               for stage in (model.res2, model.res3, model.res4, model.res5) for block in stage)
    optimizer = chainer.optimizers.MomentumSGD(lr=0.01)
    optimizer.setup(model)
    rng = numpy.random.RandomState(13)
    x = rng.rand(4, 3, 32, 32).astype(numpy.float32)
    t = rng.randint(0, 10, size=4).astype(numpy.int32)
    with chainer.using_config('train', True):
        loss = F.softmax_cross_entropy(model(x), t)
        conv1_out = model.conv1(x).array
    model.cleargrads()
    loss.backward()
    optimizer.update()
    assert numpy.isfinite(float(loss.array))
    # Every BN stored its batch's statistics (the first one: of conv1's output).
    assert all(not (link.var == 1).all() for link in links)
    numpy.testing.assert_allclose(links[0].mean, conv1_out.mean(axis=(0, 2, 3)),
                                  rtol=1e-4, atol=1e-5)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        y = model(x)
    assert y.shape == (4, 10)
    assert numpy.isfinite(y.array).all()


@pytest.mark.gpu
@pytest.mark.parametrize('shape', [(8, 4, 5, 5), (16, 6)])
def test_gpu_matches_cpu(shape):
    import cupy

    rng = numpy.random.RandomState(14)
    gamma = rng.rand(shape[1]) + 0.5
    beta = rng.randn(shape[1])
    cpu = LastBatchNormalization(shape[1], initial_gamma=gamma, initial_beta=beta)
    gpu = LastBatchNormalization(shape[1], initial_gamma=gamma, initial_beta=beta)
    gpu.to_device('@cupy:0')
    assert isinstance(gpu.mean, cupy.ndarray) and isinstance(gpu.var, cupy.ndarray)
    x1, x2 = batch(15, shape), batch(16, shape, loc=-3.0)
    for x in (x1, x2):
        y_cpu = train_forward(cpu, x)
        y_gpu = train_forward(gpu, cupy.asarray(x))
        # cuDNN computes its own statistics, so agreement is to rounding, not bitwise.
        numpy.testing.assert_allclose(cupy.asnumpy(y_gpu.array), y_cpu.array,
                                      rtol=1e-4, atol=1e-4)
        numpy.testing.assert_allclose(cupy.asnumpy(gpu.mean), cpu.mean, rtol=1e-5, atol=1e-6)
        numpy.testing.assert_allclose(cupy.asnumpy(gpu.var), cpu.var, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(cupy.asnumpy(gpu.mean), x2.mean(axis=axes(x2)), rtol=1e-5)
    numpy.testing.assert_allclose(cupy.asnumpy(eval_forward(gpu, cupy.asarray(x2)).array),
                                  eval_forward(cpu, x2).array, rtol=1e-4, atol=1e-4)
    gpu.set_statistics(numpy.zeros(shape[1]), numpy.ones(shape[1]))
    assert isinstance(gpu.mean, cupy.ndarray)
    assert float(gpu.var.sum()) == shape[1]


def test_bn_statistics_check_stops_on_non_finite_averaged_statistics():
    import types
    from chainer_resnet.optimizers import TrainingDiverged
    model = chainer.Sequential(LastBatchNormalization(3), LastBatchNormalization(3))
    sync = BNStatisticsAllreduce(types.SimpleNamespace(size=1), model)
    sync()                                           # finite: nothing happens
    model[1].var[1] = numpy.inf
    trainer = types.SimpleNamespace(updater=types.SimpleNamespace(iteration=7))
    with pytest.raises(TrainingDiverged, match=r'iteration 7: .*BN statistics.*\(first: /1\)'):
        sync(trainer)


# --- the workers' agreement, measured inside the statistics allreduce --------------------

class _OneRankZero:
    size, rank = 1, 0

    class mpi_comm:
        @staticmethod
        def Allreduce(send, recv):
            recv[...] = send


def _agreement(batches, mode='mean'):
    """BNStatisticsAllreduce's agreement fields for one rank of len(batches) virtual workers."""
    import types
    from chainer_resnet import health
    from chainer_resnet.batch_normalization import VirtualWorkerStatistics
    model = chainer.Sequential(LastBatchNormalization(3))
    stats = VirtualWorkerStatistics(model, len(batches))
    with chainer.using_config('train', True):
        for j, x in enumerate(batches):
            model(x)
            stats.record(j)
    observations = health.Observations()
    sync = BNStatisticsAllreduce(_OneRankZero(), model, mode=mode, virtual=stats,
                                 observations=observations)
    trainer = types.SimpleNamespace(updater=types.SimpleNamespace(iteration=5))
    sync(trainer)
    fields = observations.pop_fields()
    sync(trainer)                       # the snapshot's call at the same iteration: not measured
    assert observations.pop_fields() == {}
    return fields, observations.pop_records()


@pytest.mark.parametrize('mode', ['mean', 'union'])
def test_workers_bn_statistics_agreement_is_their_spread_around_the_mean(mode):
    rng = numpy.random.default_rng(0)
    # Four workers of 64 images; the last one sees data shifted by 3 standard deviations
    # in channels 0 and 1.
    batches = [rng.normal(0, 2, size=(64, 3)).astype(numpy.float32) for _ in range(4)]
    batches[3][:, :2] += 6
    fields, records = _agreement(batches, mode)
    means = numpy.stack([x.mean(axis=0) for x in batches])
    variances = numpy.stack([x.var(axis=0) for x in batches])
    eps, n = 2e-5, 64
    sigma2 = variances.mean(axis=0) + eps
    expected_mean = numpy.median(numpy.sqrt(means.var(axis=0) / (sigma2 / n)))
    expected_var = numpy.median(numpy.sqrt(variances.var(axis=0)) / sigma2 / numpy.sqrt(2 / n))
    assert fields['bn/mean_spread/max'] == pytest.approx(expected_mean, rel=1e-5)
    assert fields['bn/var_spread/max'] == pytest.approx(expected_var, rel=1e-5)
    assert fields['bn/mean_spread/max_at'] == '0'
    assert records == [(5, {'bn/mean_spread/0': fields['bn/mean_spread/max'],
                            'bn/var_spread/0': fields['bn/var_spread/max']})]
    assert fields['bn/mean_spread/max'] > 5
    # Negative control: the same workers without the shift agree as sampling says.
    batches[3][:, :2] -= 6
    control, _ = _agreement(batches, mode)
    assert control['bn/mean_spread/max'] < 2 and control['bn/var_spread/max'] < 2
