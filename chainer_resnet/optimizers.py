"""RMSprop warm-up (Akiba, Suzuki & Fukuda 2017) and weight decay without BN.

Follows the anatomy of Chainer's own optimizers: a module-level
``_default_hyperparam``, an :class:`~chainer.UpdateRule` whose NumPy
``update_core_cpu`` is the readable reference, one CuPy elementwise kernel for
the same formula (built lazily: CuPy is not imported here), and a
:class:`~chainer.optimizer.GradientMethod` with a
:class:`~chainer.optimizer.HyperparameterProxy` per hyperparameter, so that a
schedule can write ``optimizer.lr = ...`` also through ChainerMN's multi-node
optimizer wrapper (it forwards attribute access to the wrapped optimizer).

Section numbers (§) refer to ``docs/method.md``.
"""

import numpy

import chainer
from chainer.backends import cuda
from chainer import optimizer


_default_hyperparam = optimizer.Hyperparameter()
_default_hyperparam.lr = 0.1            # eta, the SGD learning rate
_default_hyperparam.alpha_sgd = 1.0     # weight of the SGD term
_default_hyperparam.lr_rmsprop = 3e-4   # step of the RMSprop term (§1)
_default_hyperparam.mu1 = 0.9           # momentum
_default_hyperparam.mu2 = 0.99          # decay of the second moment m
_default_hyperparam.eps = 1e-8


def alpha_rmsprop(alpha_sgd, lr, lr_rmsprop=_default_hyperparam.lr_rmsprop):
    """Weight of the RMSprop term: ``(1 - alpha_sgd) * lr_rmsprop / lr`` (§1).

    Because the whole momentum buffer is multiplied by ``lr``, this weight
    makes the RMSprop part take a step of ``(1 - alpha_sgd) * lr_rmsprop``
    whatever ``lr`` is.

    Raises:
        ValueError: if ``lr`` is not positive (the weight would be infinite).
    """
    if not lr > 0:
        raise ValueError(
            'RMSpropWarmup: lr must be positive, got lr={!r}. The RMSprop '
            'weight is (1 - alpha_sgd) * lr_rmsprop / lr, so lr = 0 divides '
            'by zero; check the learning-rate schedule that sets '
            'optimizer.lr.'.format(lr))
    return (1.0 - alpha_sgd) * lr_rmsprop / lr


class RMSpropWarmupRule(optimizer.UpdateRule):

    """Update rule of :class:`RMSpropWarmup` for one parameter.

    State: ``m`` (RMSprop second moment) and ``delta`` (momentum buffer), both
    zeros of the parameter's shape and dtype at the first update.

    Args:
        parent_hyperparam (~chainer.optimizer.Hyperparameter): Hyperparameter
            that provides the default values.
        lr, alpha_sgd, lr_rmsprop, mu1, mu2, eps (float): Per-rule overrides;
            see :class:`RMSpropWarmup`.

    """
    is_elementwise = True

    def __init__(self, parent_hyperparam=None, lr=None, alpha_sgd=None,
                 lr_rmsprop=None, mu1=None, mu2=None, eps=None):
        super(RMSpropWarmupRule, self).__init__(
            parent_hyperparam or _default_hyperparam)
        overrides = dict(lr=lr, alpha_sgd=alpha_sgd, lr_rmsprop=lr_rmsprop,
                         mu1=mu1, mu2=mu2, eps=eps)
        for name, value in overrides.items():
            if value is not None:
                setattr(self.hyperparam, name, value)

    def init_state(self, param):
        with chainer.using_device(param.device):
            xp = param.device.xp
            self.state['m'] = xp.zeros_like(param.data)
            self.state['delta'] = xp.zeros_like(param.data)

    def _scalars(self, dtype):
        """Hyperparameters as Python floats, checked, for one update."""
        hp = self.hyperparam
        lr = float(hp.lr)
        alpha_sgd = float(hp.alpha_sgd)
        # Computed on the host, once per parameter and step; raises on lr <= 0.
        alpha_rms = alpha_rmsprop(alpha_sgd, lr, float(hp.lr_rmsprop))
        eps = float(hp.eps)
        if eps != 0 and dtype.type(eps) == 0:
            raise ValueError(
                'RMSpropWarmup: eps={} is zero in {}; use fp32 updates '
                '(optimizer.use_fp32_update()) or a larger eps.'.format(
                    eps, dtype.name))
        return lr, alpha_sgd, alpha_rms, float(hp.mu1), float(hp.mu2), eps

    def update_core_cpu(self, param):
        grad = param.grad
        if grad is None:
            return
        lr, alpha_sgd, alpha_rms, mu1, mu2, eps = self._scalars(grad.dtype)
        m = self.state['m']
        delta = self.state['delta']

        # m <- mu2 m + (1 - mu2) g^2
        m *= mu2
        m += (1 - mu2) * grad * grad
        # delta <- mu1 delta - (alpha_sgd + alpha_rms / (sqrt(m) + eps)) g
        delta *= mu1
        delta -= (alpha_sgd + alpha_rms / (numpy.sqrt(m) + eps)) * grad
        # theta <- theta + lr delta
        param.data += lr * delta

    def update_core_gpu(self, param):
        grad = param.grad
        if grad is None:
            return
        lr, alpha_sgd, alpha_rms, mu1, mu2, eps = self._scalars(grad.dtype)
        cuda.elementwise(
            'T grad, T lr, T alpha_sgd, T alpha_rms, T mu1, T mu2, T eps',
            'T param, T m, T delta',
            '''m = mu2 * m + (1 - mu2) * grad * grad;
               delta = mu1 * delta
                       - (alpha_sgd + alpha_rms / (sqrt(m) + eps)) * grad;
               param += lr * delta;''',
            'rmsprop_warmup')(
                grad, lr, alpha_sgd, alpha_rms, mu1, mu2, eps,
                param.data, self.state['m'], self.state['delta'])


class RMSpropWarmup(optimizer.GradientMethod):

    """SGD with momentum whose first epochs are handed over from RMSprop (§1).

    Akiba, Suzuki & Fukuda (2017), "Extremely Large Minibatch SGD: Training
    ResNet-50 on ImageNet in 15 Minutes". Per parameter, element-wise, with
    ``g`` the gradient (already averaged over all workers)::

        m     <- mu2 * m + (1 - mu2) * g**2
        delta <- mu1 * delta - (alpha_sgd + alpha_rmsprop / (sqrt(m) + eps)) * g
        theta <- theta + lr * delta

        alpha_rmsprop = (1 - alpha_sgd) * lr_rmsprop / lr

    ``m`` and ``delta`` start at zero; there is no bias correction. A schedule
    moves ``alpha_sgd`` from ~0 to 1 (see
    :func:`chainer_resnet.schedules.alpha_sgd`) and sets ``lr`` (the SGD
    learning rate eta), both through the proxies ``optimizer.alpha_sgd`` and
    ``optimizer.lr``.

    Momentum convention: ``lr`` sits *outside* the momentum buffer, so a step
    change of ``lr`` acts at once. This is **not** Chainer's
    :class:`~chainer.optimizers.MomentumSGD`, which folds the learning rate
    into the velocity (``v <- mu v - lr g; theta <- theta + v``), so that a
    step change of ``lr`` acts only gradually there. With ``alpha_sgd = 1``
    it is exactly :class:`~chainer.optimizers.CorrectedMomentumSGD`
    (``v <- mu v - g; theta <- theta + lr v``, Goyal et al. 2017, eq. 9).
    The RMSprop term sits *inside* the momentum buffer; the factor
    ``1 / lr`` in ``alpha_rmsprop`` cancels the outer ``lr``, so the RMSprop
    part takes a step of ``(1 - alpha_sgd) * lr_rmsprop`` whatever ``lr`` is.
    With ``alpha_sgd = 0`` and ``mu1 = 0`` it is Chainer's
    :class:`~chainer.optimizers.RMSprop` with step ``lr_rmsprop``
    (``ms <- a ms + (1 - a) g**2; theta <- theta - lr g / (sqrt(ms) + eps)``,
    eps outside the square root) for any ``lr``.

    The defects of the public re-implementation listed in §1 are avoided:
    progress is in epochs, not iterations (the schedules' job); the CPU and
    GPU paths compute the same signed formula (tested against each other);
    and the RMSprop term stays inside the momentum buffer.

    Args:
        lr (float): SGD learning rate eta (> 0); set by the lr schedule.
        alpha_sgd (float): Weight of the SGD term; set by the warm-up
            schedule. 1 means plain (corrected) momentum SGD.
        lr_rmsprop (float): Step of the RMSprop term.
        mu1 (float): Momentum.
        mu2 (float): Decay rate of the second moment ``m``.
        eps (float): Added to ``sqrt(m)``.
        model (~chainer.Link): If given, ``setup(model)`` is called.

    Raises:
        ValueError: on a non-positive ``lr`` (here and at every update: the
            RMSprop weight divides by ``lr``) or hyperparameters outside
            their range.

    """

    def __init__(self, lr, alpha_sgd, lr_rmsprop=_default_hyperparam.lr_rmsprop,
                 mu1=_default_hyperparam.mu1, mu2=_default_hyperparam.mu2,
                 eps=_default_hyperparam.eps, model=None):
        super(RMSpropWarmup, self).__init__()
        alpha_rmsprop(alpha_sgd, lr, lr_rmsprop)  # raises on lr <= 0
        if not lr_rmsprop >= 0:
            raise ValueError('RMSpropWarmup: lr_rmsprop must be >= 0, got '
                             '{!r}'.format(lr_rmsprop))
        for name, value in (('mu1', mu1), ('mu2', mu2)):
            if not 0 <= value < 1:
                raise ValueError('RMSpropWarmup: {} must be in [0, 1), got '
                                 '{!r}'.format(name, value))
        if not eps > 0:
            raise ValueError('RMSpropWarmup: eps must be positive, got '
                             '{!r}'.format(eps))
        self.hyperparam.lr = lr
        self.hyperparam.alpha_sgd = alpha_sgd
        self.hyperparam.lr_rmsprop = lr_rmsprop
        self.hyperparam.mu1 = mu1
        self.hyperparam.mu2 = mu2
        self.hyperparam.eps = eps
        if model is not None:
            self.setup(model)

    lr = optimizer.HyperparameterProxy('lr')
    alpha_sgd = optimizer.HyperparameterProxy('alpha_sgd')
    lr_rmsprop = optimizer.HyperparameterProxy('lr_rmsprop')
    mu1 = optimizer.HyperparameterProxy('mu1')
    mu2 = optimizer.HyperparameterProxy('mu2')
    eps = optimizer.HyperparameterProxy('eps')

    @property
    def alpha_rmsprop(self):
        """Current weight of the RMSprop term (read-only, for reporting)."""
        hp = self.hyperparam
        return alpha_rmsprop(hp.alpha_sgd, hp.lr, hp.lr_rmsprop)

    def create_update_rule(self):
        return RMSpropWarmupRule(self.hyperparam)


def _is_normalization(link):
    """Default BN test: the link's own parameters are only gamma and/or beta.

    True for :class:`chainer.links.BatchNormalization` and its subclasses,
    for any custom BN link that names its scale and shift ``gamma``/``beta``,
    and also for Layer/Group normalisation (whose affine parameters are
    usually not decayed either). False for links owning ``W`` or ``b``.
    """
    own = {name for name, _ in link.namedparams() if name.count('/') == 1}
    return bool(own) and own <= {'/gamma', '/beta'}


class WeightDecayExceptBN(object):

    """Optimizer hook: L2 weight decay, by default not on BN gamma/beta (§1).

    Adds ``rate * theta`` to the gradient of every decayed parameter before
    the update rule runs, so the decay term passes through ``m`` and both
    terms of :class:`RMSpropWarmup` (§1: "an L2 term added to the gradient
    after the allreduce").

    Order with ChainerMN: register it on the optimizer (``opt.add_hook(hook)``
    or, equivalently, on the multi-node wrapper, which forwards ``add_hook``).
    The wrapper's ``update()`` first averages the gradients over workers and
    then calls the wrapped optimizer's ``update()``, which runs its ``'pre'``
    hooks: so this hook always sees the averaged gradient.

    Which parameters are decayed: every parameter of ``optimizer.target``
    except those *owned* by a normalisation link, unless ``include_bn``.
    Biases (e.g. the classifier's ``b``) are decayed, as in Goyal et al.
    (2017), who exclude only BN's gamma and beta. A link is a normalisation
    link if it is an instance of ``bn_types`` when that is given; otherwise
    if its own (non-inherited) parameters are all named ``gamma`` or
    ``beta`` (Chainer's BatchNormalization, this project's BN without moving
    averages, LayerNormalization, GroupNormalization).

    The hook is called once per update with the optimizer
    (``call_for_each_param = False``) because a parameter does not know the
    link that owns it.

    Args:
        rate (float): Decay coefficient lambda (>= 0).
        include_bn (bool): Decay normalisation parameters too.
        bn_types (tuple of type): Link classes whose parameters are not
            decayed; ``None`` for the structural rule above.

    """
    name = 'WeightDecayExceptBN'
    call_for_each_param = False
    timing = 'pre'

    def __init__(self, rate=1e-4, include_bn=False, bn_types=None):
        if not rate >= 0:
            raise ValueError('WeightDecayExceptBN: rate must be >= 0, got '
                             '{!r}'.format(rate))
        self.rate = rate
        self.include_bn = include_bn
        self.bn_types = None if bn_types is None else tuple(bn_types)

    def is_bn(self, link):
        """Whether ``link``'s own parameters are excluded from decay."""
        if self.bn_types is not None:
            return isinstance(link, self.bn_types)
        return _is_normalization(link)

    def split_params(self, target):
        """``(decayed, excluded)``: lists of ``(path, param)`` of ``target``."""
        decayed, excluded, seen = [], [], set()
        for link_path, link in target.namedlinks():
            skip = not self.include_bn and self.is_bn(link)
            prefix = link_path.rstrip('/')
            for name, param in link.namedparams():
                if name.count('/') != 1 or id(param) in seen:
                    continue  # a child's parameter, or shared and done
                seen.add(id(param))
                (excluded if skip else decayed).append((prefix + name, param))
        return decayed, excluded

    def __call__(self, opt):
        for _, param in self.split_params(opt.target)[0]:
            p, g = param.data, param.grad
            if p is None or g is None:
                continue
            rate = self.rate
            # 'pre' optimizer hooks run before the update rule unscales the
            # gradient, as in chainer.optimizer_hooks.WeightDecay.
            if param._loss_scale is not None:
                rate *= param._loss_scale
            with chainer.using_device(param.device):
                if param.device.xp is numpy:
                    g += rate * p
                else:
                    cuda.elementwise(
                        'T p, T decay', 'T g', 'g += decay * p',
                        'weight_decay_except_bn')(p, rate, g)


class TrainingDiverged(RuntimeError):
    """A quantity that is the same on every rank stopped being finite: training stops there.

    Raised on every rank at the same iteration (the averaged gradient, the
    worker-averaged BN statistics), so the ranks stop together without more
    communication.

    Attributes:
        iteration (int): the iteration it was found at (for the gradient: the
            update that was not made, counting the first update as 1).
        what (str): the quantity, e.g. ``'the averaged gradient'``.
        names (list of str): the arrays holding NaN or infinite values.
    """

    def __init__(self, iteration, what, names):
        self.iteration = iteration
        self.what = what
        self.names = names
        super().__init__(
            'training diverged at iteration {}: NaN or infinite values in {}, in {} '
            'array(s) (first: {})'.format(iteration, what, len(names),
                                         names[0] if names else '?'))


class NonFiniteGradientCheck(object):

    """Optimizer hook: raise :class:`TrainingDiverged` before a non-finite update.

    Register it on the optimizer first (before weight decay). Through
    ChainerMN's multi-node optimizer it runs after the gradient allreduce, so
    every rank sees the same averaged gradient and stops at the same
    iteration without any extra communication; the parameters keep their
    last finite values.

    Cost per update: one sum per parameter on the device and a single
    device-to-host read of their total (NaN and infinities propagate through
    the sum); the names are looked up only when it is not finite.
    """
    name = 'NonFiniteGradientCheck'
    call_for_each_param = False
    timing = 'pre'

    def __call__(self, opt):
        grads = [param.grad for param in opt.target.params() if param.grad is not None]
        if not grads:
            return
        xp = chainer.backend.get_array_module(grads[0])
        with chainer.using_device(chainer.backend.get_device_from_array(grads[0])):
            total = float(xp.stack([g.sum(dtype=numpy.float64) for g in grads]).sum())
        if numpy.isfinite(total):
            return
        names = [name for name, param in opt.target.namedparams()
                 if param.grad is not None and not bool(xp.isfinite(param.grad).all())]
        raise TrainingDiverged(opt.t + 1, 'the averaged gradient (the update was not made)',
                               names)


def from_recipe(recipe, lr, alpha_sgd=None):
    """The recipe's optimizer, not yet set up, with initial hyperparameters.

    ``recipe.optimizer == 'rmsprop_warmup'``: :class:`RMSpropWarmup` with the
    recipe's ``lr_rmsprop``, ``mu1``, ``mu2``, ``eps`` (§1); ``'momentum_sgd'``:
    :class:`~chainer.optimizers.CorrectedMomentumSGD` with momentum ``mu1``
    (Goyal et al. 2017). ``lr`` and ``alpha_sgd`` are the values for the first
    update; the schedules set them from then on
    (:func:`chainer_resnet.schedules.from_recipe` gives both).
    """
    if recipe.optimizer == 'rmsprop_warmup':
        return RMSpropWarmup(lr=lr, alpha_sgd=alpha_sgd, lr_rmsprop=recipe.lr_rmsprop,
                             mu1=recipe.mu1, mu2=recipe.mu2, eps=recipe.eps)
    return chainer.optimizers.CorrectedMomentumSGD(lr=lr, momentum=recipe.mu1)


def hooks_from_recipe(recipe):
    """Optimizer hooks of a run, in order: the finiteness check, then weight decay if any.

    Register them after the optimizer is set up (through ChainerMN's wrapper:
    they then see the averaged gradient).
    """
    hooks = [NonFiniteGradientCheck()]
    if recipe.weight_decay > 0:
        hooks.append(WeightDecayExceptBN(rate=recipe.weight_decay,
                                         include_bn=recipe.weight_decay_bn))
    return hooks
