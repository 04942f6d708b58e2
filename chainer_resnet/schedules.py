"""Schedules: pure functions of training progress, and one thin extension.

Progress ``epoch`` is in epochs and may be fractional: by default
``iteration / iterations_per_epoch`` (:func:`progress_epochs`). Every function
takes its numbers as arguments; the recipe supplies them. Each accepts a
Python number (and returns a Python float) or a NumPy array (and returns an
array of the same shape).

:class:`HyperparameterSchedule` writes ``fn(progress)`` into an optimizer
hyperparameter before every update, at initialisation too, so a resumed run
is right by construction.

The recipe's named schedules come from :func:`from_recipe`, which also tells
the reporting which hyperparameters to log and plot.

Section numbers (§) refer to ``docs/method.md``.
"""

import functools
import math

import numpy

from chainer.training import extension


def _result(value, like):
    """A Python float for a scalar input, an ndarray otherwise."""
    if numpy.ndim(like) == 0:
        return float(value)
    return value


def alpha_sgd(epoch, center=10.0, period=5.0, k=1.0):
    """Weight of the SGD term of :class:`~chainer_resnet.optimizers.RMSpropWarmup` (§1).

    An ELU-shaped hand-over from RMSprop to SGD::

        0.5 * exp(2 (e - center) / period)     e < center
        0.5 + k (e - center) / period          center <= e < center + period / 2
        1                                      otherwise

    With the default ``k = 1`` the curve is continuous with a continuous
    slope, and meets 1 exactly at ``center + period / 2`` (12.5 epochs).
    ``k = 2`` is the variant printed in the sources: reproduced as printed,
    not clipped, it overshoots to 1.5 just before 12.5 epochs (then the
    RMSprop weight is negative) and drops to 1 there.

    Reference values (k = 1): 0.00916 at 0, 0.0677 at 5, 0.5 at 10, 0.7 at
    11, 0.9 at 12, 1 from 12.5 on.
    """
    if not period > 0:
        raise ValueError('alpha_sgd: period must be positive, got '
                         '{!r}'.format(period))
    e = numpy.asarray(epoch, dtype=numpy.float64)
    x = (e - center) / period
    # min(x, 0) keeps exp from overflowing where that branch is not taken.
    value = numpy.where(
        x < 0, 0.5 * numpy.exp(2 * numpy.minimum(x, 0)),
        numpy.where(x < 0.5, 0.5 + k * x, 1.0))
    return _result(value, epoch)


# (end of the interval as a fraction of 90 epochs, factor of eta_base), §2
_SLOW_START = ((40, 0.5), (70, 0.075), (85, 0.01), (None, 0.001))


def slow_start_lr(epoch, base_lr, total_epochs=90):
    """Akiba et al.'s piecewise-constant ("slow-start") learning rate (§2).

    ``base_lr`` is eta_base = 0.1 * global_batch / 256 (12.8 for 32,768; see
    :meth:`chainer_resnet.recipes.Recipe.base_lr`). Intervals are left-closed; their ends are at
    40, 70 and 85 epochs of 90 and scale with ``total_epochs``::

        [0, 40)  0.5 eta_base      [40, 70)  0.075 eta_base
        [70, 85) 0.01 eta_base     [85, ...) 0.001 eta_base

    There is no linear warm-up: the RMSprop warm-up replaces it.
    """
    if not total_epochs > 0:
        raise ValueError('slow_start_lr: total_epochs must be positive, got '
                         '{!r}'.format(total_epochs))
    e = numpy.asarray(epoch, dtype=numpy.float64)
    value = numpy.full(e.shape, _SLOW_START[-1][1] * base_lr)
    # Walk from the last interval back so that earlier ones win.
    for end, factor in reversed(_SLOW_START[:-1]):
        # end * T / 90, not end / 90 * T: exact at the default 90 epochs.
        value = numpy.where(e < end * total_epochs / 90, factor * base_lr,
                            value)
    return _result(value, epoch)


def goyal_lr(epoch, base_lr, warmup_epochs=5, milestones=(30, 60, 80),
             start_lr=0.1, gamma=0.1):
    """Goyal et al. (2017): linear warm-up, then step decay (§2, baseline).

    Linear in ``epoch`` from ``start_lr`` at 0 to ``base_lr`` at
    ``warmup_epochs``; from there ``base_lr * gamma ** n`` where ``n`` is
    the number of milestones ``<= epoch``.
    """
    e = numpy.asarray(epoch, dtype=numpy.float64)
    n = numpy.zeros(e.shape, numpy.int64)
    for milestone in milestones:
        n = n + (e >= milestone)
    value = base_lr * gamma ** n
    if warmup_epochs > 0:
        ramp = start_lr + (base_lr - start_lr) * e / warmup_epochs
        value = numpy.where(e < warmup_epochs, ramp, value)
    return _result(value, epoch)


def progress_epochs(iteration, iters_per_epoch, whole_epochs=False):
    """Training progress in epochs after ``iteration`` updates.

    ``iteration / iters_per_epoch`` (may be fractional, and so may
    ``iters_per_epoch``: 1,281,167 / 32,768 = 39.1); with ``whole_epochs``
    the number of completed epochs, ``floor`` of that.
    """
    if not iters_per_epoch > 0:
        raise ValueError('progress_epochs: iters_per_epoch must be positive, '
                         'got {!r}'.format(iters_per_epoch))
    e = iteration / iters_per_epoch
    return float(math.floor(e)) if whole_epochs else e


class HyperparameterSchedule(extension.Extension):

    """Trainer extension: ``optimizer.<attr> = fn(epoch)`` before every update.

    Iteration convention: the update that takes ``updater.iteration`` from
    ``t`` to ``t + 1`` uses ``fn(t / iters_per_epoch)``. Chainer calls
    extensions *after* each update, so the call that sees iteration ``t``
    sets the value for the next update; :meth:`initialize`, which Chainer
    calls before the first update of every ``trainer.run()`` (a fresh start
    and a resume from a snapshot alike), sets it for the first one. The
    extension keeps no state: the value depends on ``updater.iteration``
    only, which the snapshot restores.

    Extensions with a higher priority than this one (e.g.
    ``observe_lr``, ``PRIORITY_WRITER``) still see the value that the update
    just made used. The priority is below the snapshot extension's, so that
    :meth:`initialize` runs after a snapshot was autoloaded.

    Works through ChainerMN's multi-node optimizer, which forwards attribute
    assignment to the wrapped optimizer. Note that the multi-node optimizer's
    first ``update()`` only broadcasts the parameters and does not update.

    Args:
        attr (str): Hyperparameter to set, e.g. ``'lr'`` or ``'alpha_sgd'``.
        fn (callable): Progress in epochs -> value, e.g.
            ``functools.partial(slow_start_lr, base_lr=12.8)`` or
            :func:`alpha_sgd`.
        iters_per_epoch (float): Iterations (global batches) per epoch.
        whole_epochs (bool): Pass completed epochs instead of fractional ones.
        optimizer_name (str): Name of the updater's optimizer.

    """
    trigger = 1, 'iteration'
    # Below the snapshot extension's -100: Chainer initialises extensions in
    # priority order, and initialize() must see the iteration a snapshot
    # autoload restored, not 0.
    priority = -200

    def __init__(self, attr, fn, iters_per_epoch, whole_epochs=False,
                 optimizer_name='main'):
        if not iters_per_epoch > 0:
            raise ValueError('HyperparameterSchedule: iters_per_epoch must be '
                             'positive, got {!r}'.format(iters_per_epoch))
        self.attr = attr
        self.fn = fn
        self.iters_per_epoch = iters_per_epoch
        self.whole_epochs = whole_epochs
        self.optimizer_name = optimizer_name

    @property
    def default_name(self):
        return 'schedule_{}'.format(self.attr)

    def value_at(self, iteration):
        """The value used by the update from ``iteration`` to ``iteration + 1``."""
        return self.fn(progress_epochs(iteration, self.iters_per_epoch,
                                       self.whole_epochs))

    def initialize(self, trainer):
        self(trainer)

    def __call__(self, trainer):
        updater = trainer.updater
        optimizer = updater.get_optimizer(self.optimizer_name)
        setattr(optimizer, self.attr, self.value_at(updater.iteration))


class RecipeSchedules:
    """The hyperparameter schedules a recipe prescribes at one world size.

    ``named`` maps an optimizer hyperparameter (``'lr'``, and ``'alpha_sgd'``
    for the RMSprop warm-up) to a pure function of progress in epochs. The
    same names drive the trainer's schedule extensions, what rank 0 logs and
    what it plots, so a schedule added here is reported without more code.

    Args:
        named (dict): hyperparameter name -> ``fn(epoch)``, in report order.
        iters_per_epoch (float): iterations (global batches) per epoch.
        total_iters (int): iterations of the whole run.
        whole_epochs (bool): pass completed epochs to the functions.
    """

    def __init__(self, named, iters_per_epoch, total_iters, whole_epochs=False):
        self.named = dict(named)
        self.iters_per_epoch = iters_per_epoch
        self.total_iters = total_iters
        self.whole_epochs = whole_epochs

    @property
    def names(self):
        """The scheduled hyperparameters, in report order."""
        return tuple(self.named)

    def value_at(self, name, iteration):
        """Value of ``name`` for the update from ``iteration`` to ``iteration + 1``."""
        return self.named[name](progress_epochs(iteration, self.iters_per_epoch,
                                                self.whole_epochs))

    def initial_values(self):
        """``{name: value}`` for the first update of the run."""
        return {name: self.value_at(name, 0) for name in self.named}

    def peak(self, name):
        """The largest value ``name`` takes over the iterations of the run."""
        iterations = numpy.arange(self.total_iters)
        progress = iterations / self.iters_per_epoch
        if self.whole_epochs:
            progress = numpy.floor(progress)
        return float(numpy.max(self.named[name](progress)))

    def extensions(self):
        """``[(extension name, HyperparameterSchedule)]`` to register on a trainer."""
        return [('{}_schedule'.format(name),
                 HyperparameterSchedule(name, fn, self.iters_per_epoch,
                                        whole_epochs=self.whole_epochs))
                for name, fn in self.named.items()]


def from_recipe(recipe, workers, train_images=None):
    """The schedules of ``recipe`` for ``workers`` workers (§1, §2).

    ``lr``: :func:`slow_start_lr` or :func:`goyal_lr` with eta_base from the
    linear scaling rule (:meth:`~chainer_resnet.recipes.Recipe.base_lr`);
    ``alpha_sgd`` (RMSprop warm-up only): :func:`alpha_sgd` with the recipe's
    centre, period and ``k``. ``train_images``: the size of the training set
    actually used (default: the recipe's).

    Returns:
        RecipeSchedules
    """
    base_lr = recipe.base_lr(workers)
    if recipe.lr_schedule == 'slow_start':
        lr = functools.partial(slow_start_lr, base_lr=base_lr,
                               total_epochs=recipe.epochs)
    else:
        lr = functools.partial(
            goyal_lr, base_lr=base_lr, warmup_epochs=recipe.goyal_warmup_epochs,
            milestones=recipe.goyal_milestones_epochs, start_lr=recipe.goyal_start_lr)
    named = {'lr': lr}
    if recipe.optimizer == 'rmsprop_warmup':
        named['alpha_sgd'] = functools.partial(
            alpha_sgd, center=recipe.warmup_center_epochs,
            period=recipe.warmup_period_epochs, k=recipe.warmup_k)
    return RecipeSchedules(
        named, recipe.iters_per_epoch(workers, train_images),
        recipe.total_iters(workers, train_images),
        whole_epochs=recipe.whole_epoch_progress)
