"""The trainer's updater: :class:`TimedUpdater`.

One iteration: k virtual workers' micro-batches forward and backward, each
with its own BN statistics, then the multi-node optimizer's allreduce and
update; reports throughput with and without data loading, and the data wait.
"""

import contextlib
import time

import numpy

import chainer
import chainer.links as L
from chainer.dataset import convert
from chainer.training import updaters

from chainer_resnet import health as health_module
from chainer_resnet.data.layouts import DatasetError


class TimedUpdater(updaters.StandardUpdater):
    """The trainer's updater: virtual workers, and throughput and data-wait time.

    Each iteration takes one batch from the iterator, of ``k * b`` samples
    for ``k = virtual_workers`` (a
    :class:`~chainer_resnet.data.sampling.VirtualWorkerStream` gives them in
    k micro-batches of ``b``). Each micro-batch is converted and runs forward
    and backward on its own in training mode, with its own BN statistics
    (``bn_statistics.record(j)`` keeps them for the statistics allreduce),
    and its loss scaled by 1/k, so the gradients add up to the mean over the
    rank's k workers; only one micro-batch's activations are alive at a
    time. Then the optimizer (ChainerMN's multi-node wrapper) averages the
    gradients over ranks and updates: the update is the mean over ranks x k
    workers, what ranks x k ranks of one worker compute. Chainer's moving-
    average BN links (``batch_norm='moving_average'``) keep the running
    averages after worker 0's micro-batch only, as rank ``rank * k`` of that
    run would have them. With k = 1 this is Chainer's ``StandardUpdater``
    step (the same operations in the same order).

    ``joint_bn=True`` is the negative control of the tests: the k
    micro-batches go through the model as one batch, with one BN statistic
    over all of them (what plain gradient accumulation over a larger batch
    would be), instead of the paper's per-worker statistics.

    Reported per iteration (rank 0's view; all ranks step together):
    ``perf/images_per_sec`` (global images over wall time, data loading
    included), ``perf/compute_images_per_sec`` (excluding the wait for the
    next batch) and ``perf/data_wait_sec``; as attributes, ``own_seconds``
    (this rank's data wait and forward/backward, up to the gradient
    allreduce: what chainer_resnet/watchdog.py compares over ranks to name a
    late one) and ``step_seconds`` (the whole step); the model's own reports
    (``main/loss``, ``main/accuracy``) are the mean over the rank's workers.

    A GPU runs kernels after the host has queued them, so before it reads
    the clock at the end of a phase that may have queued device work (the
    extensions of the previous iteration, then this step) the updater waits
    for the model's device (``device.device.synchronize()`` on CuPy; nothing
    on NumPy). Without that a step would seem to end when its last kernel
    was queued, and its device time would be counted wherever the host next
    waits for the device (the next batch's copy, or an extension).

    With ``health`` (a :class:`~chainer_resnet.health.RunHealth`) the step
    also tells it, every iteration, this rank's data wait and its compute up
    to the allreduce (on the device's timeline: CUDA events, no extra
    synchronisation), and, at its interval, hands it the rank's own
    gradients just before the allreduce.

    Args:
        iterator, optimizer: as for ``StandardUpdater``.
        workers (int): ranks (for the global images per second).
        virtual_workers (int): micro-batches per iteration (k).
        bn_statistics (VirtualWorkerStatistics or None): where each worker's
            BN statistics are kept.
        joint_bn (bool): the negative control above.
        health (RunHealth or None): the run's health signals.
    """

    def __init__(self, iterator, optimizer, workers=1, virtual_workers=1, bn_statistics=None,
                 joint_bn=False, health=None, **kwargs):
        super().__init__(iterator, optimizer, **kwargs)
        self.failed = None
        self.workers = workers
        self.virtual_workers = int(virtual_workers)
        self.bn_statistics = bn_statistics
        self.joint_bn = joint_bn
        self.health = health
        self._clock = None
        self._running = None
        self._last_end = None
        self.own_seconds = self.step_seconds = None

    def update_core(self):
        optimizer = self._optimizers['main']
        self._synchronize(optimizer)
        start = time.perf_counter()
        iterator = self._iterators['main']
        batch = iterator.next()
        loaded = time.perf_counter()
        k = self.virtual_workers
        if len(batch) % k:
            raise ValueError('a batch of {} samples cannot be split into {} virtual workers'
                             .format(len(batch), k))
        target = optimizer.target
        loss_func = self.loss_func or target
        parts = [batch] if self.joint_bn or k == 1 else [
            batch[j * len(batch) // k:(j + 1) * len(batch) // k] for j in range(k)]
        running = None
        if len(parts) > 1:
            if self._running is None:        # the model's BN links, found once
                self._running = _RunningAverages(target)
            running = self._running
        health = self.health
        if health is not None:
            if self._clock is None:
                self._clock = health_module.DeviceClock(target.device.xp)
            computing = self._clock.mark()
        target.cleargrads()
        try:
            observations = self._forward_backward(parts, loss_func, optimizer, running)
        except DatasetError as error:
            # This rank's data failed (too many unreadable images): it still
            # joins the gradient allreduce the other ranks are in, with zeros,
            # and the next per-iteration agreement (signals.StopOnSignal) ends
            # every rank with this error before anything is saved.
            self.failed = error
            observations = [{}]
            for param in target.params():
                param.grad = param.device.xp.zeros_like(param.array)
        if health is not None:
            computed = self._clock.mark()
            if health.due(self.iteration + 1):
                health.before_allreduce(target)      # this rank's own gradients
        # This rank's own work ends here; then it waits for the others.
        self._synchronize(optimizer)
        own_end = time.perf_counter()
        optimizer.update()        # the multi-node wrapper: mean over ranks, then the update
        _report_mean(observations)
        self._synchronize(optimizer)
        end = time.perf_counter()
        if health is not None:
            health.after_update()
            health.record_step(loaded - start, self._clock.seconds(computing, computed))
        images = len(batch) * self.workers
        wall = end - (self._last_end if self._last_end is not None else start)
        chainer.report({
            'perf/images_per_sec': images / max(wall, 1e-9),
            'perf/compute_images_per_sec': images / max(end - loaded, 1e-9),
            'perf/data_wait_sec': loaded - start,
        })
        self._last_end = end
        self.own_seconds, self.step_seconds = own_end - start, end - start
        if self.auto_new_epoch and iterator.is_new_epoch:
            optimizer.new_epoch(auto=True)

    def _forward_backward(self, parts, loss_func, optimizer, running):
        """Each micro-batch forward and backward; their reports."""
        k = self.virtual_workers
        reporters = chainer.reporter._get_reporters()
        observations = []
        for j, part in enumerate(parts):
            in_arrays = convert._call_converter(self.converter, part, self.input_device)
            observation = {}
            # Each micro-batch's reports (the model's loss, accuracy) apart, for their mean.
            with (reporters[-1].scope(observation) if reporters else contextlib.nullcontext()):
                loss = _call(loss_func, in_arrays)
            if len(parts) > 1:
                loss = loss * (1.0 / len(parts))
            loss.backward(loss_scale=optimizer._loss_scale)
            del loss
            if self.bn_statistics is not None:
                for w in range(j, j + k // len(parts)):   # joint_bn: one statistic for all
                    self.bn_statistics.record(w)
            if running is not None and j == 0:
                running.keep()
            observations.append(observation)
        if running is not None:
            running.restore()
        return observations

    @staticmethod
    def _synchronize(optimizer):
        """Wait until the model's device has run all the work queued on it."""
        device = optimizer.target.device
        if device.xp is not numpy:
            device.device.synchronize()


def _call(func, in_arrays):
    if isinstance(in_arrays, tuple):
        return func(*in_arrays)
    if isinstance(in_arrays, dict):
        return func(**in_arrays)
    return func(in_arrays)


def _report_mean(observations):
    """Report each key's mean over the micro-batches (the value itself for one)."""
    if len(observations) == 1:
        chainer.report(observations[0])
        return
    means = {}
    for key in observations[0]:
        values = [chainer.as_array(o[key]) for o in observations if key in o]
        means[key] = sum(values[1:], values[0]) / len(values)
    chainer.report(means)


class _RunningAverages:
    """The running averages of Chainer's BN links, kept after one micro-batch and put back."""

    NAMES = ('avg_mean', 'avg_var', 'N')

    def __init__(self, model):
        self.links = [link for link in model.links()
                      if isinstance(link, L.BatchNormalization)]
        self.kept = None

    def keep(self):
        self.kept = [[_copy(getattr(link, name)) for name in self.NAMES]
                     for link in self.links]

    def restore(self):
        for link, values in zip(self.links, self.kept or ()):
            for name, value in zip(self.NAMES, values):
                current = getattr(link, name)
                if hasattr(current, 'shape'):
                    current[...] = value
                else:
                    setattr(link, name, value)


def _copy(value):
    return value.copy() if hasattr(value, 'copy') else value
