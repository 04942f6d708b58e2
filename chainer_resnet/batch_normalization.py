"""Batch normalization without moving averages (``docs/method.md`` §3).

With about 39 iterations per epoch a moving average of BN statistics is a poor estimate, so
Akiba et al. (2017) keep, on each worker, only the statistics of its **last training minibatch**
and average them over all workers just before every evaluation (and before saving a model).
:class:`LastBatchNormalization` is the per-worker half of that; the averaging is an extension
(:class:`BNStatisticsAllreduce`, below) that reads and writes the ``mean`` and ``var``
persistents of every link returned by :func:`bn_links`.

Which variance is stored
    By default the **biased** (population) variance of the minibatch, ``mean((x - mean)**2)``:
    exactly the variance that normalised that minibatch in training, so evaluating on the last
    training minibatch reproduces the training output. Chainer's ``L.BatchNormalization`` instead
    stores the *unbiased* variance (``× m / (m − 1)``, ``m`` values per channel) in its running
    average; ``unbiased=True`` stores that one. The two differ by ``1 / (m − 1)`` relative:
    negligible in res2 (``m = 32 × 56 × 56`` at 224² and batch 32), 0.06 % in res5
    (``m = 32 × 7 × 7``).

Averaging the statistics over workers
    Averaging the per-worker variances ignores the spread of the per-worker means. For ``W``
    workers with equal-size batches, means ``μ_i`` and biased variances ``σ²_i``, the mean and
    biased variance of the union of the batches are

        μ  = mean_i(μ_i)
        σ² = mean_i(σ²_i) + mean_i(μ_i²) − μ²        (= mean_i(σ²_i) + mean_i((μ_i − μ)²))

    so an allreduce-mean of ``mean``, ``var`` and ``mean**2`` is enough;
    :func:`combine_statistics` is the single-process reference of that formula. Plain averaging of
    ``var`` (what the paper-era ChainerMN ``AllreducePersistent`` extension does with every
    persistent) underestimates σ² by ``mean_i((μ_i − μ)²)``.
"""

import copy

import numpy

import chainer
import chainer.functions as F
from chainer import backend
from chainer.training import extension

from chainer_resnet import optimizers


def _initializer(value, default, dtype):
    if value is None:
        value = default
    if isinstance(value, chainer.Initializer):
        # Copy so that setting the dtype does not change the caller's initializer.
        value = copy.copy(value)
        value.dtype = dtype
        return value
    return chainer.initializers.Constant(value, dtype=dtype)


def _reduction_axis(ndim):
    if ndim < 2:
        raise ValueError('LastBatchNormalization needs input of shape (N, C, ...), got {} '
                         'dimension(s)'.format(ndim))
    return (0,) + tuple(range(2, ndim))


class LastBatchNormalization(chainer.Link):
    """Batch normalization that keeps the last training minibatch's statistics, not an average.

    Training (``chainer.config.train`` is True): normalises with the statistics of the current
    minibatch through ``chainer.functions.batch_normalization`` (so gradients flow through the
    statistics, exactly as in Chainer's ``L.BatchNormalization``), and *replaces* the stored
    ``mean`` and ``var`` with that minibatch's mean and variance.

    Evaluation (``chainer.config.train`` is False): normalises with the stored ``mean`` and
    ``var`` through ``chainer.functions.fixed_batch_normalization``. Before any training
    minibatch they are 0 and 1.

    Statistics are taken over every axis but the channel axis 1: ``(0, 2, 3)`` for (N, C, H, W)
    input, ``(0,)`` for (N, C) input. They are computed from ``x.array`` outside the graph, with
    the array module of ``x`` (NumPy or CuPy), in the same precision Chainer uses internally
    (``x.dtype`` promoted with ``dtype``). On GPU, cuDNN normalises the batch with its own copy of
    the statistics, so there the stored values match the ones that normalised the batch only to
    rounding.

    Parameters: ``gamma`` (scale), ``beta`` (shift). Persistents: exactly ``mean`` and ``var``,
    shape ``(size,)`` and dtype ``dtype``. There is no decay, no ``avg_mean``/``avg_var`` and no
    sample count.

    Args:
        size (int): Number of channels.
        eps (float): Added to the variance before the square root (Chainer's default, 2e-5).
        dtype: dtype of ``gamma``, ``beta``, ``mean`` and ``var``.
        initial_gamma: Initializer, scalar or array for ``gamma``; ``None`` means 1.
        initial_beta: Initializer, scalar or array for ``beta``; ``None`` means 0.
        unbiased (bool): Store the unbiased variance ``var · m / (m − 1)`` (``m`` = values per
            channel in the minibatch) as Chainer's BN does, instead of the biased variance that
            normalised the minibatch (default). See the module docstring.
    """

    def __init__(self, size, eps=2e-5, dtype=numpy.float32, initial_gamma=None,
                 initial_beta=None, unbiased=False):
        super().__init__()
        dtype = numpy.dtype(dtype)
        self.size = size
        self.eps = eps
        self.dtype = dtype
        self.unbiased = unbiased
        with self.init_scope():
            self.gamma = chainer.Parameter(_initializer(initial_gamma, 1, dtype), (size,))
            self.beta = chainer.Parameter(_initializer(initial_beta, 0, dtype), (size,))
        self.mean = numpy.zeros(size, dtype=dtype)
        self.register_persistent('mean')
        self.var = numpy.ones(size, dtype=dtype)
        self.register_persistent('var')

    def forward(self, x):
        """Normalise ``x`` (N, C, ...); in training, also store its statistics."""
        x_array = x.array if isinstance(x, chainer.Variable) else x
        axis = _reduction_axis(x_array.ndim)
        if not chainer.config.train:
            return F.fixed_batch_normalization(x, self.gamma, self.beta, self.mean, self.var,
                                               eps=self.eps, axis=axis)
        interm_dtype = numpy.promote_types(x_array.dtype, self.gamma.dtype)
        mean = x_array.mean(axis=axis, dtype=interm_dtype)
        var = x_array.var(axis=axis, dtype=interm_dtype)
        if self.unbiased:
            m = x_array.size // x_array.shape[1]
            # Same guard as Chainer's BN: a single value per channel keeps its (zero) variance.
            var = var * (m / max(m - 1, 1))
        # In place, so that anyone holding these arrays (e.g. an allreduce) sees the new values.
        self.mean[...] = mean
        self.var[...] = var
        self.batch_size = x_array.shape[0]    # for the workers' agreement (BNStatisticsAllreduce)
        return F.batch_normalization(x, self.gamma, self.beta, eps=self.eps, axis=axis)

    def set_statistics(self, mean, var):
        """Overwrite the stored ``mean`` and ``var`` in place (e.g. with worker-averaged ones).

        Args:
            mean: Array of shape ``(size,)``, on any device; copied to the link's device and dtype.
            var: Array of shape ``(size,)``, same convention as the stored variance.
        """
        for name, value in (('mean', mean), ('var', var)):
            target = getattr(self, name)
            if tuple(value.shape) != target.shape:
                raise ValueError('set_statistics: {} has shape {}, the link expects {}'
                                 .format(name, tuple(value.shape), target.shape))
            target[...] = backend.get_device_from_array(target).send(value)


def bn_links(model):
    """All :class:`LastBatchNormalization` links of ``model``, in ``model.namedlinks()`` order.

    The order is deterministic and the same on every worker, which the statistics allreduce needs.
    """
    return [link for _, link in model.namedlinks()
            if isinstance(link, LastBatchNormalization)]


class VirtualWorkerStatistics:
    """The kept BN statistics of each of a rank's k virtual workers.

    With virtual workers (``recipe.virtual_workers_per_rank = k``) a rank
    runs k training micro-batches per iteration through the same
    :class:`LastBatchNormalization` links, so after the iteration the links
    hold only the last micro-batch's statistics. The updater calls
    :meth:`record` after micro-batch ``j``'s forward pass; the statistics
    allreduce then averages all k of every rank (:class:`BNStatisticsAllreduce`),
    as a run with k times more ranks averages one per rank.

    The copies stay on the links' device (one concatenation per micro-batch,
    2 x 26,560 values for ResNet-50) until the allreduce takes them to the host.
    """

    def __init__(self, model, k):
        self.links = bn_links(model)
        self.k = int(k)
        self.clear()

    def clear(self):
        """Forget the records (after they were averaged: every worker then holds the average)."""
        self._means = [None] * self.k
        self._vars = [None] * self.k

    def record(self, j):
        """Keep the links' current statistics as virtual worker ``j``'s."""
        if not self.links:
            return
        xp = backend.get_array_module(self.links[0].mean)
        self._means[j] = xp.concatenate([link.mean for link in self.links])
        self._vars[j] = xp.concatenate([link.var for link in self.links])

    @property
    def complete(self):
        """Whether all k workers have recorded since the last :meth:`clear`."""
        return bool(self.links) and all(m is not None for m in self._means)

    def stacked(self):
        """``(means, vars)``: float64 NumPy arrays (k, N), worker ``j`` in row ``j``."""
        if not self.complete:
            raise RuntimeError('not every virtual worker has recorded its BN statistics')
        host = backend.CpuDevice()
        return (numpy.stack([host.send(m) for m in self._means]).astype(numpy.float64),
                numpy.stack([host.send(v) for v in self._vars]).astype(numpy.float64))


def combine_statistics(means, vars):
    """Mean and biased variance of the union of equal-size batches from their per-batch stats.

    ``mean = mean_i(means_i)`` and ``var = mean_i(vars_i) + mean_i(means_i²) − mean²``, computed
    as ``mean_i(vars_i) + mean_i((means_i − mean)²)`` to avoid cancellation. Exact for biased
    (population) variances of batches with the same number of values per channel; for links built
    with ``unbiased=True`` convert to biased variances first.

    Plain averaging of the variances — the behaviour of the paper-era ChainerMN
    ``AllreducePersistent`` extension, which averages every persistent — drops the second term
    and so underestimates the variance when the per-worker means differ.

    Args:
        means: Array (W, C): per-worker (per-batch) channel means.
        vars: Array (W, C): per-worker biased channel variances.

    Returns:
        tuple: ``(mean, var)``, each of shape (C,), NumPy or CuPy like the inputs.
    """
    if means.ndim != 2 or means.shape != vars.shape:
        raise ValueError('combine_statistics expects means and vars of the same shape (W, C), '
                         'got {} and {}'.format(means.shape, vars.shape))
    mean = means.mean(axis=0)
    var = vars.mean(axis=0) + ((means - mean) ** 2).mean(axis=0)
    return mean, var


def _to_host(array):
    return chainer.backend.CpuDevice().send(array)


class BNStatisticsAllreduce(extension.Extension):
    """Average the kept BN statistics of every worker (docs/method.md §3).

    Each worker's :class:`LastBatchNormalization`
    links hold the statistics of that worker's last training batch. This
    extension replaces them, on every worker, by their average over workers,
    so evaluation and saved models use statistics of the last *global* batch.
    It is a collective: every rank must run it at the same iterations.

    With virtual workers (``virtual``, a :class:`VirtualWorkerStatistics`),
    each rank contributes the statistics of each of its k workers' last
    micro-batch, and the average is over ranks x k, as a run with k times more
    ranks would take it; before any training step since the last average, each
    worker holds the links' values.

    Args:
        comm: a ChainerMN communicator.
        model: the link whose BN links are averaged.
        mode: ``'mean'`` averages means and variances separately, as the
            paper-era ChainerMN ``AllreducePersistent`` did; ``'union'`` gives
            the exact variance of the union of the workers' batches
            (mean of variances plus variance of means).
        virtual: the rank's virtual workers' statistics, or None (one worker).
        observations (chainer_resnet.health.Observations or None): where rank
            0 puts how far the workers' statistics were from their mean (below).

    The workers' agreement (with ``observations``, once per iteration, before
    the averaging, inside the same allreduce: it also sums the squares of the
    workers' means and variances). For each BN link, with n the images of a
    worker's batch, σ²_c the workers' mean variance of channel c and Var_w
    the variance over the W = ranks x k workers:

        bn/mean_spread = median_c sqrt(Var_w(mean_wc) / (σ²_c / n))
        bn/var_spread  = median_c sqrt(Var_w(var_wc)) / σ²_c / sqrt(2 / n)

    the spread of the workers' channel means and variances in units of what
    sampling n images gives (the standard errors of the mean and of the
    variance of n normal values, as if an image's pixels were one value:
    its pixels are correlated). Workers that see the same data distribution
    stay near or below 1; workers fed different data (shards sorted by
    class, a broken augmentation on some nodes) go far above. The median
    over the channels keeps a few near-constant channels from deciding. The
    log gets min/median/max over the links and the link of the maximum
    (``.../max_at``); TensorBoard every link.
    """

    priority = extension.PRIORITY_WRITER + 10   # before evaluator and snapshot

    def __init__(self, comm, model, mode='mean', virtual=None, observations=None):
        if mode not in ('mean', 'union'):
            raise ValueError("BN statistics mode must be 'mean' or 'union', "
                             'got {!r}'.format(mode))
        self.comm = comm
        self.model = model
        self.mode = mode
        self.virtual = virtual
        self.observations = observations
        self._observed = None

    def __call__(self, trainer=None):
        links = bn_links(self.model)
        if not links:
            return
        k = self.virtual.k if self.virtual is not None else 1
        iteration = trainer.updater.iteration if trainer is not None else None
        # Once per iteration: a second call (the snapshot's) sees averaged statistics.
        observe = (self.observations is not None and iteration is not None
                   and iteration != self._observed)
        if self.comm.size * k > 1:
            self._average(links, k, iteration if observe else None)
        # The averaged statistics are the same on every rank: all stop together.
        bad = [name for name, link in self.model.namedlinks() if link in links
               and not (numpy.isfinite(_to_host(link.mean)).all()
                        and numpy.isfinite(_to_host(link.var)).all())]
        if bad:
            raise optimizers.TrainingDiverged(
                trainer.updater.iteration if trainer is not None else -1,
                'the worker-averaged BN statistics', bad)

    def _average(self, links, k, observe_at=None):
        if self.virtual is not None and self.virtual.complete:
            means, variances = self.virtual.stacked()           # (k, N): one row per worker
        else:
            means = numpy.concatenate([_to_host(bn.mean) for bn in links]).astype(
                numpy.float64)[None]
            variances = numpy.concatenate([_to_host(bn.var) for bn in links]).astype(
                numpy.float64)[None]
        # 'union': average E[x^2] = var + mean^2 and take E[x^2] - E[x]^2.
        second = variances + means ** 2 if self.mode == 'union' else variances
        # Sums over this rank's workers (k equal rows when none recorded), then over ranks.
        weight = k // len(means)
        sums = [means.sum(axis=0), second.sum(axis=0)]
        if observe_at is not None:
            sums += [(means ** 2).sum(axis=0), (variances ** 2).sum(axis=0)]
        local = numpy.concatenate(sums) * weight
        total = numpy.empty_like(local)
        self.comm.mpi_comm.Allreduce(local, total)
        parts = numpy.split(total / (self.comm.size * k), len(sums))
        avg_mean, avg_second = parts[:2]
        avg_var = avg_second - avg_mean ** 2 if self.mode == 'union' else avg_second
        if observe_at is not None:
            self._observed = observe_at
            if self.comm.rank == 0:
                mean_sq, var_sq = parts[2:]
                # The workers' mean variance ('union' averaged var + mean**2).
                var_mean = avg_second - mean_sq if self.mode == 'union' else avg_second
                self._observe(links, observe_at, avg_mean, var_mean, mean_sq, var_sq)
        offset = 0
        for link in links:
            end = offset + link.mean.size
            link.set_statistics(avg_mean[offset:end].astype(link.mean.dtype),
                                avg_var[offset:end].astype(link.var.dtype))
            offset = end
        if self.virtual is not None:
            self.virtual.clear()

    def _observe(self, links, iteration, mean, var, mean_sq, var_sq):
        """Put each link's spread of the workers' statistics (class docstring) in observations."""
        from chainer_resnet import health
        names = {id(link): name.lstrip('/') for name, link in self.model.namedlinks()}
        spreads, offset = {'mean_spread': [], 'var_spread': []}, 0
        for link in links:
            end = offset + link.mean.size
            n = getattr(link, 'batch_size', 1)
            scale = var[offset:end] + link.eps
            spread = numpy.maximum(mean_sq[offset:end] - mean[offset:end] ** 2, 0)
            spreads['mean_spread'].append(numpy.median(numpy.sqrt(spread / scale * n)))
            spread = numpy.maximum(var_sq[offset:end] - var[offset:end] ** 2, 0)
            spreads['var_spread'].append(numpy.median(
                numpy.sqrt(spread) / scale / numpy.sqrt(2 / n)))
            offset = end
        link_names = [names[id(link)] for link in links]
        fields, complete = {}, {}
        for key, values in spreads.items():
            fields.update(health.summarise('bn/' + key, values, link_names))
            complete.update({'bn/{}/{}'.format(key, name): float(v)
                             for name, v in zip(link_names, values)})
        self.observations.put(iteration, fields, complete)
