"""chainer_resnet.health: each signal, with a failure injected, and its negative control.

The real two-rank runs (a slow rank named, disagreeing BN statistics):
tests/test_health_launch.py.
"""

import types

import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L

from chainer_resnet import communication, health, reporting
from chainer_resnet import updater as cr_updater
from chainer_resnet.optimizers import RMSpropWarmup


class _Ranks:
    """A communicator of `size` ranks seen from rank 0, where every rank sends what rank 0 does
    (the fp16 model's case: the workers' gradients agree)."""

    def __init__(self, size, rank=0):
        self.size, self.rank = size, rank
        self.mpi_comm = self

    def Gather(self, send, recv, root=0):
        if recv is not None:
            recv[...] = send


# --- fp16 census: the oracle is NumPy's own float16 arithmetic ------------------------------

def _fp16_oracle(g, workers):
    """(overflow, underflow, flushed) counted by doing what pure_nccl does in fp16."""
    g = g.astype(numpy.float32)
    # Every worker sends g: the ring's fp16 sum (communication's model), then the scaling.
    with numpy.errstate(over='ignore'):
        total = g.astype(numpy.float16)
        for _ in range(workers - 1):
            total = (total + g.astype(numpy.float16)).astype(numpy.float16)
        scaled = (g / numpy.float32(workers)).astype(numpy.float16)
    nonzero = g != 0
    return (int(numpy.isinf(total).sum()),
            int((nonzero & (numpy.abs(scaled) < numpy.float16(2 ** -14))).sum()),
            int((nonzero & (scaled == 0)).sum()))


@pytest.mark.parametrize('workers', [1, 2, 8])
def test_fp16_census_counts_what_an_fp16_allreduce_overflows_and_flushes(workers):
    rng = numpy.random.default_rng(0)
    # Magnitudes from 1e-12 to 1e6, away from the exact limits (a factor 1.5 either side).
    exponents = rng.uniform(-12, 6, size=4000)
    g = (rng.choice([-1, 1], size=4000) * 10.0 ** exponents).astype(numpy.float32)
    limits = numpy.array([65504 / workers, 2 ** -14 * workers, 2 ** -25 * workers])
    ratio = numpy.abs(g)[:, None] / limits
    g = g[~((ratio > 1 / 1.5) & (ratio < 1.5)).any(axis=1)]
    g[:7] = 0                                          # zeros count as nothing
    grads = [g[:1000].reshape(10, 100), g[1000:]]
    over, under, flushed, top = health.fp16_census(grads, workers)
    assert (over, under, flushed) == _fp16_oracle(g, workers)
    assert over > 0 and under > flushed > 0             # the data reach every case
    assert top == numpy.abs(g).max()


def test_fp16_census_agrees_with_the_projects_allreduce_model_at_1024_ranks():
    g = numpy.array([1.0, 70.0, -64.5, 0.01, 1e-9, 0.0], numpy.float32)
    over, under, flushed, _ = health.fp16_census([g], 1024)
    mean = communication.fp16_allreduce_mean(numpy.tile(g, (1024, 1)))
    assert over == numpy.isinf(mean).sum() == 2          # 70 and -64.5: 1,024 x |g| > 65,504
    assert flushed == 1 and under == 2                  # 1e-9 vanishes, 0.01/1024 is subnormal


# --- the extension in a trainer ---------------------------------------------------------------

class _TwoLayers(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.first = L.Linear(4, 8)
            self.second = L.Linear(8, 3)

    def forward(self, x, t):
        return F.softmax_cross_entropy(self.second(F.relu(self.first(x))), t)


def _run(tmp_path, comm, scale=1.0, inject=None, iterations=4, interval=2):
    """A tiny trainer with RunHealth every `interval`; its log, the model and the weights
    just before and after the update of `iterations` (for the update-ratio oracle)."""
    numpy.random.seed(0)
    model = _TwoLayers()
    rng = numpy.random.RandomState(0)
    x = (rng.randn(16, 4) * scale).astype(numpy.float32)
    t = rng.randint(0, 3, 16).astype(numpy.int32)
    it = chainer.iterators.SerialIterator(chainer.datasets.TupleDataset(x, t), 8)
    opt = RMSpropWarmup(lr=0.01, alpha_sgd=1.0)
    opt.setup(model)
    if inject is not None:
        opt.add_hook(inject, name='inject')
    monitor = health.RunHealth(comm, model, interval)
    monitor.attach(opt)
    step = cr_updater.TimedUpdater(it, opt, health=monitor)
    trainer = chainer.training.Trainer(step, (iterations, 'iteration'), out=str(tmp_path))
    trainer.extend(monitor, trigger=monitor.trigger)
    reporting.extend_reporting(trainer, interval, ('lr',), plot_trigger=(iterations, 'iteration'),
                               progress_bar=False, observations=monitor.observations)
    weights = {}

    def keep(opt):
        if step.iteration + 1 == iterations:
            weights['before'] = {n: p.array.copy() for n, p in model.namedparams()}
    opt.add_hook(keep, name='keep')
    trainer.run()
    weights['after'] = {n: p.array.copy() for n, p in model.namedparams()}
    return trainer.get_extension('LogReport').log, weights


def test_an_fp16_overflow_is_reported_and_warned(tmp_path, capsys):
    log, _ = _run(tmp_path, _Ranks(1024), scale=1e5)
    assert log[-1]['fp16/overflow'] > 0 and log[-1]['fp16/range'] > 1
    assert 'overflow an fp16 sum over 1024 ranks' in capsys.readouterr().err
    # Negative control: the same run at unit scale fits fp16 with room to spare.
    log, _ = _run(tmp_path / 'control', _Ranks(1024))
    assert log[-1]['fp16/overflow'] == 0 and log[-1]['fp16/range'] < 0.5
    assert 'WARNING' not in capsys.readouterr().err


def _explode_second(opt):
    opt.target.second.W.grad *= 1e4


def test_a_layer_with_an_exploding_update_ratio_is_named(tmp_path, capsys):
    log, weights = _run(tmp_path, _Ranks(1), inject=_explode_second, iterations=2)
    last = log[-1]
    assert last['layers/update_ratio/max_at'] == 'second/W'
    # The oracle: |w_after - w_before| / |w_before| of the last (measured) update.
    before, after = weights['before']['/second/W'], weights['after']['/second/W']
    assert last['layers/update_ratio/max'] == pytest.approx(
        numpy.linalg.norm(after - before) / numpy.linalg.norm(before), rel=1e-5)
    assert last['layers/w_norm/max'] == pytest.approx(max(
        numpy.linalg.norm(weights['before'][n]) for n in ('/first/W', '/second/W')), rel=1e-5)
    assert 'one update moved second/W by' in capsys.readouterr().err
    # Negative control: without the injection the second layer's ratio is ordinary.
    control, _ = _run(tmp_path / 'control', _Ranks(1), iterations=2)
    assert control[-1]['layers/update_ratio/max'] < last['layers/update_ratio/max'] / 10


def test_each_measurement_lands_in_one_log_entry_and_only_at_the_interval(tmp_path):
    log, _ = _run(tmp_path, _Ranks(1), iterations=6, interval=3)
    assert [e['iteration'] for e in log] == [3, 6]
    assert all('layers/g_norm/median' in e and 'ranks/compute_s/max' in e for e in log)
    log, _ = _run(tmp_path / 'sparse', _Ranks(1), iterations=4, interval=4)
    # Logged every 4 (extend_reporting's interval = the health interval in _run).
    assert 'fp16/underflow' in log[-1]


def test_layer_hooks_do_nothing_between_intervals():
    model = _TwoLayers()
    opt = chainer.optimizers.SGD(lr=0.1)
    opt.setup(model)
    dynamics = health.LayerDynamics(model)
    dynamics.attach(opt)
    x = numpy.ones((2, 4), numpy.float32)
    t = numpy.zeros(2, numpy.int32)
    opt.update(model, x, t)
    w, g, ratio = dynamics.take()
    assert numpy.isnan(ratio).all() and not dynamics._kept
    dynamics.armed = True
    opt.update(model, x, t)
    w, g, ratio = dynamics.take()
    assert dynamics.names == ['first/W', 'first/b', 'second/W', 'second/b']
    assert list(dynamics.weights) == [True, False, True, False]
    assert numpy.isfinite(ratio).all() and not dynamics._kept


def test_rank_table_names_the_slowest_rank():
    # iterations, compute s, data wait s, then the fp16 census; rank 2 computes slowly,
    # rank 1 waits for data.
    table = numpy.array([[4, 0.4, 0.04] + [0] * 5, [4, 0.4, 2.0] + [0] * 5,
                         [4, 2.4, 0.04] + [0] * 5, [4, 0.44, 0.0] + [0] * 5])
    fields = health._rank_fields(table)
    assert fields['ranks/compute_s/slowest'] == 2 and fields['ranks/compute_s/max'] == 0.6
    assert fields['ranks/data_wait_s/slowest'] == 1
    assert fields['ranks/compute_s/median'] == pytest.approx(0.105)
    assert fields['ranks/step_s/slowest'] == 2


def test_a_straggler_is_warned_once_it_persists(capsys):
    monitor = health.RunHealth(_Ranks(2), _TwoLayers(), 1)
    slow = {'ranks/compute_s/max': 2.0, 'ranks/compute_s/median': 1.0,
            'ranks/compute_s/slowest': 1, 'ranks/step_s/median': 1.2}
    monitor._warn(1, slow)
    assert 'WARNING' not in capsys.readouterr().err           # once could be a hiccup
    monitor._warn(2, slow)
    assert 'rank 1 is a straggler: 2 s per iteration in compute' in capsys.readouterr().err
    monitor._warn(3, slow)
    assert capsys.readouterr().err == ''                      # said once while it lasts
    monitor._warn(4, dict(slow, **{'ranks/compute_s/max': 1.1}))   # within 10 % of a step
    monitor._warn(5, slow)
    monitor._warn(6, slow)
    assert 'rank 1 is a straggler' in capsys.readouterr().err  # back again: said again
    data = {'ranks/data_wait_s/max': 0.5, 'ranks/data_wait_s/median': 0.01,
            'ranks/data_wait_s/slowest': 0, 'ranks/step_s/median': 1.2}
    monitor._warn(7, data)
    monitor._warn(8, data)
    assert 'rank 0 is a straggler: 0.5 s per iteration waiting for data' in \
        capsys.readouterr().err


def test_summarise_ignores_non_finite_values():
    fields = health.summarise('x', [numpy.nan, 2.0, numpy.inf, 1.0, 5.0], list('abcde'))
    assert fields == {'x/min': 1.0, 'x/median': 2.0, 'x/max': 5.0, 'x/max_at': 'e'}
    assert health.summarise('x', [numpy.nan], ['a']) == {}


def test_a_zero_interval_is_refused():
    with pytest.raises(ValueError, match='interval must be >= 1'):
        health.RunHealth(_Ranks(1), _TwoLayers(), 0)


def test_observations_go_to_the_next_log_entry_once():
    obs = health.Observations()
    obs.put(3, {'a/max': 1.0, 'a/max_at': 'x'}, {'a/x': 1.0})
    assert obs.pop_fields() == {'a/max': 1.0, 'a/max_at': 'x'}
    assert obs.pop_fields() == {}
    assert obs.pop_records() == [(3, {'a/x': 1.0})]
    assert obs.pop_records() == []


# --- the same functions on CuPy ----------------------------------------------------------

@pytest.mark.gpu
def test_device_functions_on_cupy_equal_numpy():
    import cupy
    rng = numpy.random.default_rng(1)
    grads = [(10.0 ** rng.uniform(-12, 6, size=s)).astype(numpy.float32) * rng.choice([-1, 1], s)
             for s in ((64, 3, 3, 3), (1000,), (7,))]
    grads[1][:5] = 0
    for workers in (1, 1024):
        cpu = health.fp16_census(grads, workers)
        gpu = health.fp16_census([cupy.asarray(g) for g in grads], workers)
        assert isinstance(gpu, cupy.ndarray)
        numpy.testing.assert_array_equal(cupy.asnumpy(gpu), cpu)
    x, y = grads[0], grads[0] * 1.5
    assert float(health.sum_of_squares(cupy.asarray(x))) == pytest.approx(
        float(health.sum_of_squares(x)), rel=1e-5)
    assert float(health.sum_of_squared_differences(cupy.asarray(y), cupy.asarray(x))) == \
        pytest.approx(float(health.sum_of_squared_differences(y, x)), rel=1e-5)
    clock = health.DeviceClock(cupy)
    start = clock.mark()
    cupy.ones((1000, 1000)).sum()
    stop = clock.mark()
    cupy.cuda.Device().synchronize()
    assert clock.seconds(start, stop) >= 0


@pytest.mark.gpu
def test_run_health_on_cupy_reports_the_same_as_numpy(tmp_path):
    import cupy
    model = _TwoLayers()
    model.to_device('@cupy:0')
    opt = RMSpropWarmup(lr=0.01, alpha_sgd=1.0)
    opt.setup(model)
    monitor = health.RunHealth(_Ranks(2), model, 1)
    monitor.attach(opt)
    x = cupy.ones((4, 4), numpy.float32)
    t = cupy.zeros(4, numpy.int32)
    model.cleargrads()
    model(x, t).backward()
    monitor.before_allreduce(model)
    opt.update()
    monitor.after_update()
    monitor.record_step(0.0, 1.0)
    trainer = types.SimpleNamespace(updater=types.SimpleNamespace(iteration=1))
    monitor(trainer)
    fields = monitor.observations.pop_fields()
    assert fields['fp16/overflow'] == 0 and fields['layers/update_ratio/max'] > 0
