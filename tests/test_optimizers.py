"""Tests of chainer_resnet.optimizers: RMSpropWarmup and WeightDecayExceptBN.

The oracle is docs/method.md §1 written out again below in plain NumPy (float64,
no in-place updates); the limiting cases must match Chainer's own
CorrectedMomentumSGD and RMSprop step for step.
"""

import functools

import numpy as np
import pytest

import chainer
import chainer.functions as F
import chainer.links as L

from chainer_resnet import optimizers
from chainer_resnet.optimizers import RMSpropWarmup, WeightDecayExceptBN
from chainer_resnet.schedules import alpha_sgd as alpha_sgd_schedule

SHAPE = (3, 4)


def oracle_step(theta, m, delta, g, lr, alpha_sgd, lr_rmsprop=3e-4, mu1=0.9,
                mu2=0.99, eps=1e-8):
    """One step of Akiba et al. (2017), docs/method.md §1, in float64."""
    theta, m, delta, g = (np.asarray(a, np.float64) for a in (theta, m, delta, g))
    m = mu2 * m + (1 - mu2) * g ** 2
    alpha_rmsprop = (1 - alpha_sgd) * lr_rmsprop / lr
    delta = mu1 * delta - (alpha_sgd + alpha_rmsprop / (np.sqrt(m) + eps)) * g
    theta = theta + lr * delta
    return theta, m, delta


class OneParam(chainer.Link):
    def __init__(self, value):
        super().__init__()
        with self.init_scope():
            self.p = chainer.Parameter(np.array(value))


def step(opt, grad):
    """One update of ``opt`` with the gradient of its single parameter set."""
    opt.target.p.grad = np.array(grad, dtype=opt.target.p.dtype)
    opt.update()
    return opt.target.p.array.copy()


def random_grads(n, dtype=np.float64, seed=0, scale=1.0):
    rng = np.random.RandomState(seed)
    return [(scale * rng.standard_normal(SHAPE)).astype(dtype) for _ in range(n)]


def initial_theta(dtype=np.float64):
    return np.random.RandomState(1).standard_normal(SHAPE).astype(dtype)


# --------------------------------------------------------------------------
# The update equations


@pytest.mark.parametrize('dtype, rtol', [(np.float64, 1e-6), (np.float32, 1e-5)])
@pytest.mark.parametrize('k', [1, 2])
def test_matches_oracle_with_changing_lr_and_alpha(dtype, rtol, k):
    rng = np.random.RandomState(2)
    theta0 = initial_theta(dtype)
    opt = RMSpropWarmup(lr=1.0, alpha_sgd=0.0).setup(OneParam(theta0))
    theta, m, delta = theta0.astype(np.float64), np.zeros(SHAPE), np.zeros(SHAPE)
    grads = random_grads(60, dtype)
    for t, g in enumerate(grads):
        # 0.25 epochs per step: crosses alpha's centre (10) and 12.5; with
        # k = 2 alpha_rmsprop goes negative on the way.
        lr = rng.uniform(0.1, 10)
        a = alpha_sgd_schedule(t * 0.25, k=k)
        opt.lr = lr
        opt.alpha_sgd = a
        got = step(opt, g)
        theta, m, delta = oracle_step(theta, m, delta, g, lr, a)
        rule = opt.target.p.update_rule
        # Elements near 0 are held to the scale of the whole array: float32
        # rounding accumulates over the steps in absolute, not relative, terms.
        np.testing.assert_allclose(got, theta, rtol=rtol,
                                   atol=rtol * np.abs(theta).max())
        np.testing.assert_allclose(rule.state['m'], m, rtol=rtol)
        np.testing.assert_allclose(rule.state['delta'], delta, rtol=rtol,
                                   atol=rtol * np.abs(delta).max())
    assert got.dtype == dtype


def test_step_change_of_lr_acts_at_once():
    opt = RMSpropWarmup(lr=1.0, alpha_sgd=0.5).setup(OneParam(initial_theta()))
    grads = random_grads(6)
    for g in grads[:5]:
        before = step(opt, g)
    opt.lr = 10.0
    after = step(opt, grads[5])
    # theta_{t+1} - theta_t = lr_new * delta_{t+1}: no gradual hand-over.
    np.testing.assert_allclose(
        after - before, 10.0 * opt.target.p.update_rule.state['delta'],
        rtol=1e-12)


def test_alpha_sgd_one_is_corrected_momentum_sgd_and_not_momentum_sgd():
    theta0 = initial_theta()
    ours = RMSpropWarmup(lr=0.5, alpha_sgd=1.0, mu1=0.9).setup(OneParam(theta0))
    corrected = chainer.optimizers.CorrectedMomentumSGD(
        lr=0.5, momentum=0.9).setup(OneParam(theta0))
    plain = chainer.optimizers.MomentumSGD(
        lr=0.5, momentum=0.9).setup(OneParam(theta0))
    for t, g in enumerate(random_grads(40)):
        if t == 20:
            for opt in (ours, corrected, plain):
                opt.lr = 5.0
        a, b, c = step(ours, g), step(corrected, g), step(plain, g)
        # alpha_rmsprop = 0 exactly, so the arithmetic is the same: bitwise.
        np.testing.assert_array_equal(a, b)
        if t < 20:
            np.testing.assert_allclose(c, a, rtol=1e-12)
        else:
            # Negative control: MomentumSGD folds lr into its velocity, so
            # after the change it must differ.
            assert not np.allclose(c, a, rtol=1e-6, atol=0)


@pytest.mark.parametrize('lrs', [(6.4,), (6.4, 0.5, 100.0)])
def test_alpha_sgd_zero_mu1_zero_is_rmsprop_whatever_lr(lrs):
    # Chainer's RMSprop puts eps outside the square root by default; the
    # warm-up's formula does too.
    assert chainer.optimizers.RMSprop().eps_inside_sqrt is False
    theta0 = initial_theta()
    ours = RMSpropWarmup(lr=lrs[0], alpha_sgd=0.0, mu1=0.0).setup(
        OneParam(theta0))
    theirs = chainer.optimizers.RMSprop(lr=3e-4, alpha=0.99, eps=1e-8).setup(
        OneParam(theta0))
    for t, g in enumerate(random_grads(50)):
        ours.lr = lrs[t * len(lrs) // 50]
        np.testing.assert_allclose(step(ours, g), step(theirs, g), rtol=1e-12)


def test_rmsprop_limit_is_sensitive_to_eps_convention():
    # With a large eps and small gradients the two eps conventions differ
    # clearly: the matching above would catch the wrong one.
    theta0 = initial_theta()
    ours = RMSpropWarmup(lr=2.0, alpha_sgd=0.0, mu1=0.0, eps=1e-2).setup(
        OneParam(theta0))
    outside = chainer.optimizers.RMSprop(lr=3e-4, eps=1e-2).setup(
        OneParam(theta0))
    inside = chainer.optimizers.RMSprop(lr=3e-4, eps=1e-2,
                                        eps_inside_sqrt=True).setup(
        OneParam(theta0))
    for g in random_grads(10, scale=1e-3):
        a, b, c = step(ours, g), step(outside, g), step(inside, g)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert not np.allclose(a - theta0, c - theta0, rtol=1e-3)


# --------------------------------------------------------------------------
# Hyperparameters

HYPER = dict(lr=2.5, alpha_sgd=0.3, lr_rmsprop=1e-3, mu1=0.8, mu2=0.95,
             eps=1e-4)
# A second value for each, used to show that each one changes the update.
OTHER = dict(lr=0.7, alpha_sgd=0.6, lr_rmsprop=5e-3, mu1=0.5, mu2=0.5,
             eps=1e-1)


def test_default_hyperparameters():
    opt = RMSpropWarmup(6.4, 0.5)  # positional form
    assert (opt.lr, opt.alpha_sgd) == (6.4, 0.5)
    assert (opt.lr_rmsprop, opt.mu1, opt.mu2, opt.eps) == (3e-4, 0.9, 0.99, 1e-8)


def test_constructor_hyperparameters_reach_the_update_rule():
    opt = RMSpropWarmup(model=OneParam(initial_theta()), **HYPER)
    assert opt.target is not None  # model= calls setup
    rule = opt.target.p.update_rule
    assert isinstance(rule, optimizers.RMSpropWarmupRule)
    for name, value in HYPER.items():
        assert getattr(rule.hyperparam, name) == value
        assert getattr(opt, name) == value
    for name, value in OTHER.items():
        setattr(opt, name, value)  # through the HyperparameterProxy
        assert getattr(rule.hyperparam, name) == value


@pytest.mark.parametrize('name', sorted(HYPER))
def test_each_hyperparameter_changes_the_update(name):
    grads = random_grads(3, scale=1e-2)

    def run(**hyper):
        opt = RMSpropWarmup(**hyper).setup(OneParam(initial_theta()))
        for g in grads:
            theta = step(opt, g)
        return theta

    changed = dict(HYPER, **{name: OTHER[name]})
    a, b = run(**HYPER), run(**changed)
    assert not np.allclose(a, b, rtol=1e-9, atol=0)
    theta = initial_theta()
    m = delta = np.zeros(SHAPE)
    for g in grads:
        theta, m, delta = oracle_step(theta, m, delta, g, **changed)
    np.testing.assert_allclose(b, theta, rtol=1e-9)


def test_alpha_rmsprop_reference_value():
    # docs/method.md §1: eta = 6.4, alpha_sgd(0) = 0.00916 (k = 1):
    # (1 - 0.00916) * 3e-4 / 6.4 = 0.99084 * 4.6875e-5 = 4.6445625e-5
    assert optimizers.alpha_rmsprop(0.00916, 6.4, 3e-4) == pytest.approx(
        4.6445625e-5, rel=1e-12)
    opt = RMSpropWarmup(lr=6.4, alpha_sgd=0.00916)
    assert opt.alpha_rmsprop == pytest.approx(4.6445625e-5, rel=1e-12)
    # The RMSprop part's step, lr * alpha_rmsprop, does not depend on lr.
    for lr in (0.1, 6.4, 12.8):
        opt.lr = lr
        assert lr * opt.alpha_rmsprop == pytest.approx(0.99084 * 3e-4, rel=1e-12)


def test_zero_lr_is_a_clear_error():
    with pytest.raises(ValueError, match='lr must be positive'):
        RMSpropWarmup(lr=0.0, alpha_sgd=0.5)
    opt = RMSpropWarmup(lr=1.0, alpha_sgd=0.5).setup(OneParam(initial_theta()))
    opt.lr = 0.0
    with pytest.raises(ValueError, match='lr must be positive'):
        step(opt, random_grads(1)[0])


@pytest.mark.parametrize('bad', [dict(mu1=1.0), dict(mu2=-0.1), dict(eps=0.0),
                                 dict(lr_rmsprop=-1e-3), dict(lr=-1.0)])
def test_out_of_range_hyperparameters_are_errors(bad):
    with pytest.raises(ValueError, match=sorted(bad)[0]):
        RMSpropWarmup(**dict(dict(lr=1.0, alpha_sgd=0.5), **bad))


# --------------------------------------------------------------------------
# State: shapes, dtype, serialisation


def test_state_is_zero_initialised_with_the_param_dtype():
    opt = RMSpropWarmup(lr=1.0, alpha_sgd=1.0).setup(
        OneParam(initial_theta(np.float32)))
    rule = opt.target.p.update_rule
    rule._init_states(opt.target.p)  # what the first update does first
    assert sorted(rule.state) == ['delta', 'm']
    for value in rule.state.values():
        assert value.dtype == np.float32 and value.shape == SHAPE
        assert not value.any()


def make_linear(seed=3):
    np.random.seed(seed)  # Chainer's default initialisers draw from numpy.random
    return L.Linear(3, 2)


def batch(t):
    rng = np.random.RandomState(100 + t)
    return (rng.standard_normal((8, 3)).astype(np.float32),
            rng.randint(0, 2, size=8).astype(np.int32))


def train(model, opt, start, stop):
    for t in range(start, stop):
        # Hyperparameters as a schedule would set them at step t.
        opt.lr = 0.5 if t < 6 else 0.05
        opt.alpha_sgd = alpha_sgd_schedule(t / 2.0, center=2, period=2)
        x, y = batch(t)
        opt.update(lambda: F.softmax_cross_entropy(model(x), y))


def test_state_serialises_and_resumes(tmp_path):
    k, n = 5, 6
    model = make_linear()
    opt = RMSpropWarmup(lr=1.0, alpha_sgd=0.0).setup(model)
    train(model, opt, 0, k + n)

    model_a = make_linear()
    opt_a = RMSpropWarmup(lr=1.0, alpha_sgd=0.0).setup(model_a)
    train(model_a, opt_a, 0, k)
    chainer.serializers.save_npz(str(tmp_path / 'model.npz'), model_a)
    chainer.serializers.save_npz(str(tmp_path / 'opt.npz'), opt_a)
    with np.load(str(tmp_path / 'opt.npz')) as saved:
        assert {'W/m', 'W/delta', 'b/m', 'b/delta'} <= set(saved.files)

    model_b = make_linear(seed=4)  # different weights, overwritten by load
    opt_b = RMSpropWarmup(lr=1.0, alpha_sgd=0.0).setup(model_b)
    chainer.serializers.load_npz(str(tmp_path / 'model.npz'), model_b)
    chainer.serializers.load_npz(str(tmp_path / 'opt.npz'), opt_b)
    assert opt_b.t == k
    train(model_b, opt_b, k, k + n)
    for name in ('W', 'b'):
        np.testing.assert_array_equal(getattr(model_b, name).array,
                                      getattr(model, name).array)
        for key in ('m', 'delta'):
            np.testing.assert_array_equal(
                getattr(model_b, name).update_rule.state[key],
                getattr(model, name).update_rule.state[key])


# --------------------------------------------------------------------------
# GPU kernel against the NumPy reference


@pytest.mark.gpu
@pytest.mark.parametrize('dtype, rtol', [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_gpu_kernel_matches_numpy_path(dtype, rtol):
    from chainer.backends import cuda
    theta0 = np.random.RandomState(1).standard_normal((64, 33)).astype(dtype)
    cpu = RMSpropWarmup(lr=1.0, alpha_sgd=0.0).setup(OneParam(theta0))
    gpu_link = OneParam(theta0)
    gpu_link.to_gpu()
    gpu = RMSpropWarmup(lr=1.0, alpha_sgd=0.0).setup(gpu_link)
    rng = np.random.RandomState(2)
    for t in range(80):
        g = rng.standard_normal(theta0.shape).astype(dtype)
        # k = 2 makes alpha_rmsprop negative for a while: a sign error
        # between the two paths (a defect of the public code) would show.
        for opt in (cpu, gpu):
            opt.lr = 6.4 if t < 60 else 0.96
            opt.alpha_sgd = alpha_sgd_schedule(t * 0.2, k=2)
        cpu.target.p.grad = g
        gpu.target.p.grad = cuda.to_gpu(g)
        cpu.update()
        gpu.update()
        # Fused multiply-adds on the GPU round differently: elements near 0
        # are held to the scale of the whole array.
        ref = cpu.target.p.array
        np.testing.assert_allclose(cuda.to_cpu(gpu.target.p.array), ref,
                                   rtol=rtol, atol=rtol * np.abs(ref).max())
    for key in ('m', 'delta'):
        ref = cpu.target.p.update_rule.state[key]
        np.testing.assert_allclose(
            cuda.to_cpu(gpu.target.p.update_rule.state[key]), ref,
            rtol=rtol, atol=rtol * np.abs(ref).max())


@pytest.mark.gpu
def test_gpu_weight_decay_matches_numpy_path():
    from chainer.backends import cuda
    cpu_net, gpu_net = Net(), Net()
    gpu_net.to_gpu()
    hook = WeightDecayExceptBN(rate=0.1)
    cpu_grads = apply_hook(hook, cpu_net)
    gpu_grads = apply_hook(hook, gpu_net)
    for name, grad in cpu_grads.items():
        np.testing.assert_allclose(cuda.to_cpu(gpu_grads[name]), grad,
                                   rtol=1e-6)


# --------------------------------------------------------------------------
# ChainerMN's multi-node optimizer wrapper


@pytest.fixture(scope='module')
def naive_comm():
    pytest.importorskip('mpi4py')
    import chainermn
    # Without mpiexec MPI starts a one-process world.
    return chainermn.create_communicator('naive')


def test_hyperparameters_reachable_through_multi_node_optimizer(naive_comm):
    import chainermn
    theta0 = initial_theta()
    opt = RMSpropWarmup(lr=1.0, alpha_sgd=0.5)
    mn_opt = chainermn.create_multi_node_optimizer(opt, naive_comm)
    mn_opt.setup(OneParam(theta0))
    rule = mn_opt.target.p.update_rule
    mn_opt.lr = 5
    mn_opt.alpha_sgd = 0.25
    assert rule.hyperparam.lr == 5 and opt.lr == 5
    assert rule.hyperparam.alpha_sgd == 0.25
    assert mn_opt.alpha_rmsprop == pytest.approx(0.75 * 3e-4 / 5)
    g1, g2 = random_grads(2)
    # ChainerMN quirk: the wrapper's first update() only broadcasts the
    # parameters from rank 0; it does not update them.
    np.testing.assert_array_equal(step(mn_opt, g1), theta0)
    theta, _, _ = oracle_step(theta0, 0, 0, g2, lr=5, alpha_sgd=0.25)
    np.testing.assert_allclose(step(mn_opt, g2), theta, rtol=1e-12)


# --------------------------------------------------------------------------
# Weight decay


class CustomBN(chainer.Link):
    """A BN-like link that is not a chainer.links.BatchNormalization."""

    def __init__(self, size):
        super().__init__()
        with self.init_scope():
            self.gamma = chainer.Parameter(np.ones(size, np.float32))
            self.beta = chainer.Parameter(np.zeros(size, np.float32))


class Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        np.random.seed(5)
        with self.init_scope():
            self.conv = L.Convolution2D(1, 2, 3, nobias=False)
            self.bn = L.BatchNormalization(2)
            self.block = chainer.Sequential(L.Linear(2, 2, nobias=True),
                                            CustomBN(2))
            self.fc = L.Linear(2, 3)
        # Non-trivial values everywhere, so that decay is visible.
        rng = np.random.RandomState(6)
        for param in self.params():
            param.array[...] = rng.standard_normal(param.shape)


DECAYED = {'/conv/W', '/conv/b', '/block/0/W', '/fc/W', '/fc/b'}
NORMALISATION = {'/bn/gamma', '/bn/beta', '/block/1/gamma', '/block/1/beta'}


def names(pairs):
    return {name for name, _ in pairs}


def apply_hook(hook, net, grad=0.25):
    for param in net.params():
        param.grad = param.device.xp.full(param.shape, grad, param.dtype)
    opt = chainer.optimizers.SGD().setup(net)
    hook(opt)
    return {name: param.grad for name, param in net.namedparams()}


def test_weight_decay_skips_bn_by_default_and_decays_biases():
    net = Net()
    hook = WeightDecayExceptBN(rate=0.1)
    decayed, excluded = hook.split_params(net)
    assert names(decayed) == DECAYED
    assert names(excluded) == NORMALISATION
    grads = apply_hook(hook, net)
    params = {name: param.array for name, param in net.namedparams()}
    for name in DECAYED:
        np.testing.assert_allclose(grads[name], 0.25 + 0.1 * params[name],
                                   rtol=1e-6)
    for name in NORMALISATION:
        np.testing.assert_array_equal(grads[name], 0.25)


def test_weight_decay_include_bn_decays_everything():
    net = Net()
    hook = WeightDecayExceptBN(rate=0.1, include_bn=True)
    assert names(hook.split_params(net)[0]) == DECAYED | NORMALISATION
    grads = apply_hook(hook, net)
    for name, param in net.namedparams():
        np.testing.assert_allclose(grads[name], 0.25 + 0.1 * param.array,
                                   rtol=1e-6)


def test_weight_decay_explicit_bn_types():
    hook = WeightDecayExceptBN(rate=0.1, bn_types=(L.BatchNormalization,))
    decayed, excluded = hook.split_params(Net())
    assert names(excluded) == {'/bn/gamma', '/bn/beta'}
    assert names(decayed) == DECAYED | {'/block/1/gamma', '/block/1/beta'}


def test_weight_decay_rate_must_be_non_negative():
    with pytest.raises(ValueError, match='rate must be >= 0'):
        WeightDecayExceptBN(rate=-1e-4)


def test_weight_decay_enters_the_update_as_g_plus_rate_theta():
    net = Net()
    theta0 = {name: p.array.astype(np.float64) for name, p in net.namedparams()}
    opt = RMSpropWarmup(lr=2.0, alpha_sgd=0.3).setup(net)
    opt.add_hook(WeightDecayExceptBN(rate=0.1))
    rng = np.random.RandomState(7)
    grads = {name: rng.standard_normal(p.shape).astype(np.float32)
             for name, p in net.namedparams()}
    for name, param in net.namedparams():
        param.grad = grads[name].copy()
    opt.update()
    for name, param in net.namedparams():
        rate = 0.1 if name in DECAYED else 0.0
        theta, _, _ = oracle_step(theta0[name], 0, 0,
                                  grads[name] + rate * theta0[name],
                                  lr=2.0, alpha_sgd=0.3)
        np.testing.assert_allclose(param.array, theta, rtol=1e-5, atol=1e-6)


def test_weight_decay_with_static_loss_scaling():
    # 'pre' optimizer hooks see the scaled gradient (the update rule unscales
    # it later), so the decay must be scaled too: same result either way.
    x, y = batch(0)
    results = []
    for scale in (None, 128.0):
        model = make_linear()
        opt = RMSpropWarmup(lr=1.0, alpha_sgd=0.5).setup(model)
        if scale is not None:
            opt.loss_scaling(scale=scale)
        opt.add_hook(WeightDecayExceptBN(rate=0.1))
        for _ in range(3):
            opt.update(lambda: F.softmax_cross_entropy(model(x), y))
        results.append(model.W.array.copy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-7)


class TwoWorkerStub(object):
    """Stands in for a 2-worker communicator in one process.

    ``multi_node_mean_grad`` averages this worker's gradient with a fixed
    gradient of a virtual second worker, so that the averaged gradient
    differs from the local one and the order of decay and allreduce shows.
    """

    def __init__(self, other_grads):
        self.other_grads = other_grads

    def bcast_data(self, model):
        pass

    def multi_node_mean_grad(self, model, zero_fill=False):
        for name, param in model.namedparams():
            param.grad = (param.grad + self.other_grads[name]) / 2


def test_weight_decay_runs_after_the_multi_node_allreduce():
    import chainermn
    net = Net()
    theta0 = {name: p.array.astype(np.float64) for name, p in net.namedparams()}
    rng = np.random.RandomState(8)
    mine = {name: rng.standard_normal(p.shape).astype(np.float32)
            for name, p in net.namedparams()}
    other = {name: rng.standard_normal(p.shape).astype(np.float32)
             for name, p in net.namedparams()}
    mn_opt = chainermn.create_multi_node_optimizer(
        RMSpropWarmup(lr=2.0, alpha_sgd=0.3), TwoWorkerStub(other))
    mn_opt.setup(net)
    mn_opt.add_hook(WeightDecayExceptBN(rate=0.1))
    for _ in range(2):  # the first update() only broadcasts
        for name, param in net.namedparams():
            param.grad = mine[name].copy()
        mn_opt.update()
    for name, param in net.namedparams():
        rate = 0.1 if name in DECAYED else 0.0
        g_mean = (mine[name].astype(np.float64) + other[name]) / 2
        theta, _, _ = oracle_step(theta0[name], 0, 0, g_mean + rate * theta0[name],
                                  lr=2.0, alpha_sgd=0.3)
        np.testing.assert_allclose(param.array, theta, rtol=1e-5, atol=1e-6)
        if rate:
            # Negative control: decay before the averaging would halve it.
            wrong, _, _ = oracle_step(
                theta0[name], 0, 0, g_mean + rate * theta0[name] / 2,
                lr=2.0, alpha_sgd=0.3)
            assert not np.allclose(param.array, wrong, rtol=1e-5, atol=1e-6)


def test_weight_decay_hook_sits_on_the_wrapped_optimizer(naive_comm):
    import chainermn
    net = Net()
    theta0 = {name: p.array.astype(np.float64) for name, p in net.namedparams()}
    mn_opt = chainermn.create_multi_node_optimizer(
        RMSpropWarmup(lr=2.0, alpha_sgd=0.3), naive_comm)
    mn_opt.setup(net)
    hook = WeightDecayExceptBN(rate=0.1)
    mn_opt.add_hook(hook)
    # The actual optimizer's 'pre' hooks run inside its update(), which the
    # wrapper calls after multi_node_mean_grad.
    pre_hooks = mn_opt.actual_optimizer._hookable._pre_update_hooks
    assert list(pre_hooks.values()) == [hook]
    grads = {name: np.full(p.shape, 0.5, np.float32)
             for name, p in net.namedparams()}
    for _ in range(2):  # the first update() only broadcasts
        for name, param in net.namedparams():
            param.grad = grads[name].copy()
        mn_opt.update()
    for name, param in net.namedparams():
        rate = 0.1 if name in DECAYED else 0.0
        theta, _, _ = oracle_step(theta0[name], 0, 0,
                                  grads[name] + rate * theta0[name],
                                  lr=2.0, alpha_sgd=0.3)
        np.testing.assert_allclose(param.array, theta, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Convergence smoke


class MLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(2, 16)
            self.bn = L.BatchNormalization(16)
            self.l2 = L.Linear(16, 2)

    def forward(self, x):
        return self.l2(F.relu(self.bn(self.l1(x))))


def test_convergence_smoke_with_warmup_schedule():
    rng = np.random.RandomState(9)
    np.random.seed(9)
    x = rng.standard_normal((512, 2)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    model = MLP()
    opt = RMSpropWarmup(lr=0.5, alpha_sgd=0.0).setup(model)
    opt.add_hook(WeightDecayExceptBN(rate=1e-4))
    iters_per_epoch = 8  # batch 64
    # The paper's warm-up compressed from 10 + 2.5 epochs to 2 + 1.
    schedule = functools.partial(alpha_sgd_schedule, center=2, period=2)
    for t in range(200):
        opt.alpha_sgd = schedule(t / iters_per_epoch)
        i = (t % iters_per_epoch) * 64
        opt.update(lambda: F.softmax_cross_entropy(
            model(x[i:i + 64]), y[i:i + 64]))
    with chainer.using_config('train', False):
        logits = model(x)
    loss = float(F.softmax_cross_entropy(logits, y).array)
    accuracy = float(F.accuracy(logits, y).array)
    assert accuracy > 0.97
    assert loss < 0.15


def test_from_recipe_builds_the_recipes_optimizer_and_hooks():
    from chainer_resnet import recipes
    paper = recipes.AKIBA2017
    opt = optimizers.from_recipe(paper, lr=6.4, alpha_sgd=0.25)
    assert isinstance(opt, RMSpropWarmup)
    assert (opt.lr, opt.alpha_sgd, opt.lr_rmsprop, opt.mu1, opt.mu2, opt.eps) == (
        6.4, 0.25, paper.lr_rmsprop, paper.mu1, paper.mu2, paper.eps)
    sgd = optimizers.from_recipe(recipes.GOYAL2017, lr=0.1)
    assert type(sgd) is chainer.optimizers.CorrectedMomentumSGD
    assert (sgd.lr, sgd.momentum) == (0.1, recipes.GOYAL2017.mu1)
    check, hook = optimizers.hooks_from_recipe(paper)
    assert isinstance(check, optimizers.NonFiniteGradientCheck)
    assert isinstance(hook, WeightDecayExceptBN)
    assert (hook.rate, hook.include_bn) == (1e-4, False)
    with_bn = recipes.resolve('akiba2017', ['weight_decay_bn=true'])
    assert optimizers.hooks_from_recipe(with_bn)[1].include_bn is True
    no_decay = optimizers.hooks_from_recipe(recipes.resolve('akiba2017', ['weight_decay=0']))
    assert [type(h) for h in no_decay] == [optimizers.NonFiniteGradientCheck]


def _model_with_grads(value):
    model = L.Classifier(L.Linear(3, 2))
    model.cleargrads()
    for param in model.params():
        param.grad = np.ones_like(param.array)
    model.predictor.W.grad[0, 1] = value
    return model


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_stops_before_the_update(value):
    model = _model_with_grads(value)
    opt = RMSpropWarmup(lr=0.1, alpha_sgd=1.0)
    opt.setup(model)
    opt.add_hook(optimizers.NonFiniteGradientCheck())
    before = {name: p.array.copy() for name, p in model.namedparams()}
    expected = r'at iteration 1: NaN or infinite values in the averaged gradient .* in 1 array'
    with pytest.raises(optimizers.TrainingDiverged, match=expected) as e:
        opt.update()
    assert e.value.names == ['/predictor/W'] and e.value.iteration == 1
    for name, param in model.namedparams():
        np.testing.assert_array_equal(param.array, before[name], err_msg=name)
    # Negative control: the same gradient made finite updates the parameters.
    finite = _model_with_grads(1.0)
    opt = RMSpropWarmup(lr=0.1, alpha_sgd=1.0)
    opt.setup(finite)
    opt.add_hook(optimizers.NonFiniteGradientCheck())
    opt.update()
    assert opt.t == 1
