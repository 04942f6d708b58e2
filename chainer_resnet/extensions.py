"""Trainer-side pieces that are not schedules.

- :class:`BNStatisticsAllreduce`: average the last-batch BN statistics over
  all workers right before evaluation and before a snapshot (docs/method.md §3).
- :class:`ExactEvaluator`: top-1/top-5 over the whole validation set, each
  image counted exactly once whatever the world size.
- :class:`TimedUpdater`: a StandardUpdater that reports images/s with and
  without data-loading time, and the time spent waiting for data.
- :class:`ChunkStopTrigger`, :class:`PointsTrigger` and :func:`points`: when
  a launch stops, evaluates and snapshots.
- :func:`extend_reporting`, :class:`LogPlots`: rank 0's log, printed table, plots, progress.
- :class:`StopOnSignal`, :class:`SignalFlag`: a wall-time warning signal stops every
  rank cleanly.
"""

import contextlib
import functools
import os
import signal
import sys
import time

import numpy

import chainer
import chainer.functions as F
import chainer.links as L
from chainer.dataset import convert
from chainer.training import extension
from chainer.training import trigger as trigger_module
from chainer.training import extensions as chainer_extensions
from chainer.training import updaters

from chainer_resnet import batch_normalization, optimizers


def _to_host(array):
    return chainer.backend.CpuDevice().send(array)


class BNStatisticsAllreduce(extension.Extension):
    """Average the kept BN statistics of every worker (docs/method.md §3).

    Each worker's :class:`~chainer_resnet.batch_normalization.LastBatchNormalization`
    links hold the statistics of that worker's last training batch. This
    extension replaces them, on every worker, by their average over workers,
    so evaluation and saved models use statistics of the last *global* batch.
    It is a collective: every rank must run it at the same iterations.

    With virtual workers (``virtual``, a
    :class:`~chainer_resnet.batch_normalization.VirtualWorkerStatistics`),
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
    """

    priority = extension.PRIORITY_WRITER + 10   # before evaluator and snapshot

    def __init__(self, comm, model, mode='mean', virtual=None):
        if mode not in ('mean', 'union'):
            raise ValueError("BN statistics mode must be 'mean' or 'union', "
                             'got {!r}'.format(mode))
        self.comm = comm
        self.model = model
        self.mode = mode
        self.virtual = virtual

    def __call__(self, trainer=None):
        links = batch_normalization.bn_links(self.model)
        if not links:
            return
        k = self.virtual.k if self.virtual is not None else 1
        if self.comm.size * k > 1:
            self._average(links, k)
        # The averaged statistics are the same on every rank: all stop together.
        bad = [name for name, link in self.model.namedlinks() if link in links
               and not (numpy.isfinite(_to_host(link.mean)).all()
                        and numpy.isfinite(_to_host(link.var)).all())]
        if bad:
            raise optimizers.TrainingDiverged(
                trainer.updater.iteration if trainer is not None else -1,
                'the worker-averaged BN statistics', bad)

    def _average(self, links, k):
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
        local = numpy.concatenate([means.sum(axis=0), second.sum(axis=0)]) * weight
        total = numpy.empty_like(local)
        self.comm.mpi_comm.Allreduce(local, total)
        avg_mean, avg_second = numpy.split(total / (self.comm.size * k), 2)
        avg_var = avg_second - avg_mean ** 2 if self.mode == 'union' else avg_second
        offset = 0
        for link in links:
            end = offset + link.mean.size
            link.set_statistics(avg_mean[offset:end].astype(link.mean.dtype),
                                avg_var[offset:end].astype(link.var.dtype))
            offset = end
        if self.virtual is not None:
            self.virtual.clear()


class ExactEvaluator(chainer_extensions.Evaluator):
    """Top-1/top-5 accuracy and loss over a validation set split across ranks.

    Each rank evaluates its own, disjoint part of the validation set (no
    padding with duplicates) and the sums of correct predictions, loss and
    image counts are added over ranks, so every image counts exactly once.
    Reports ``validation/main/{loss,accuracy,top5,images}`` on every rank.
    """

    default_name = 'validation'

    def __init__(self, iterator, model, comm, device=None, converter=None):
        kwargs = {'device': device}
        if converter is not None:
            kwargs['converter'] = converter
        super().__init__(iterator, model, **kwargs)
        self.comm = comm

    def evaluate(self):
        iterator = self._iterators['main']
        model = self._targets['main']
        if hasattr(iterator, 'reset'):
            iterator.reset()
        sums = numpy.zeros(4, dtype=numpy.float64)  # loss, top1, top5, count
        with chainer.using_config('train', False), \
                chainer.using_config('enable_backprop', False):
            for batch in iterator:
                x, t = convert._call_converter(self.converter, batch, self.device)
                y = model.predictor(x) if hasattr(model, 'predictor') else model(x)
                sums += _batch_sums(chainer.as_variable(y).array, t)
        total = numpy.empty_like(sums)
        self.comm.mpi_comm.Allreduce(sums, total)
        count = max(total[3], 1.0)
        prefix = (self.name or self.default_name) + '/main/'
        result = {prefix + 'loss': total[0] / count,
                  prefix + 'accuracy': total[1] / count,
                  prefix + 'top5': total[2] / count,
                  prefix + 'images': total[3]}
        return result


def _batch_sums(logits, labels):
    """(summed loss, top-1 correct, top-5 correct, count) of one batch.

    The true class is in the top k when fewer than k *other* classes score at
    least as high: a tie counts against it, and a row with any NaN or
    infinite logit counts as wrong (comparisons with NaN are false, so a
    "strictly higher" count would call every NaN row correct).
    """
    xp = chainer.backend.get_array_module(logits)
    loss = F.softmax_cross_entropy(logits, labels, reduce='no').array.sum()
    k = min(5, logits.shape[1])
    true_scores = logits[xp.arange(len(labels)), labels][:, None]
    rank = (logits >= true_scores).sum(axis=1) - 1
    finite = xp.isfinite(logits).all(axis=1)
    return numpy.array([float(loss), float((finite & (rank < 1)).sum()),
                        float((finite & (rank < k)).sum()), float(len(labels))])


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
    next batch) and ``perf/data_wait_sec``; the model's own reports
    (``main/loss``, ``main/accuracy``) are the mean over the rank's workers.

    A GPU runs kernels after the host has queued them, so before it reads
    the clock at the end of a phase that may have queued device work (the
    extensions of the previous iteration, then this step) the updater waits
    for the model's device (``device.device.synchronize()`` on CuPy; nothing
    on NumPy). Without that a step would seem to end when its last kernel
    was queued, and its device time would be counted wherever the host next
    waits for the device (the next batch's copy, or an extension).

    Args:
        iterator, optimizer: as for ``StandardUpdater``.
        workers (int): ranks (for the global images per second).
        virtual_workers (int): micro-batches per iteration (k).
        bn_statistics (VirtualWorkerStatistics or None): where each worker's
            BN statistics are kept.
        joint_bn (bool): the negative control above.
    """

    def __init__(self, iterator, optimizer, workers=1, virtual_workers=1, bn_statistics=None,
                 joint_bn=False, **kwargs):
        super().__init__(iterator, optimizer, **kwargs)
        self.workers = workers
        self.virtual_workers = int(virtual_workers)
        self.bn_statistics = bn_statistics
        self.joint_bn = joint_bn
        self._running = None
        self._last_end = None

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
        reporters = chainer.reporter._get_reporters()
        observations = []
        target.cleargrads()
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
        optimizer.update()        # the multi-node wrapper: mean over ranks, then the update
        _report_mean(observations)
        self._synchronize(optimizer)
        end = time.perf_counter()
        images = len(batch) * self.workers
        wall = end - (self._last_end if self._last_end is not None else start)
        chainer.report({
            'perf/images_per_sec': images / max(wall, 1e-9),
            'perf/compute_images_per_sec': images / max(end - loaded, 1e-9),
            'perf/data_wait_sec': loaded - start,
        })
        self._last_end = end
        if self.auto_new_epoch and iterator.is_new_epoch:
            optimizer.new_epoch(auto=True)

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


class ChunkStopTrigger:
    """Stop trigger for a run done in wall-time-sized chunks.

    Stops at `total_iters`, or `chunk_iters` iterations after the iteration
    this launch started from (after any resume), whichever comes first. It
    keeps no serialized state, so a re-launch starts a fresh chunk.
    """

    def __init__(self, total_iters, chunk_iters=None):
        if chunk_iters is not None and chunk_iters < 1:
            raise ValueError('chunk_iters must be >= 1, got {}'.format(chunk_iters))
        self.total_iters = total_iters
        self.chunk_iters = chunk_iters
        self.end = None

    def __call__(self, trainer):
        iteration = trainer.updater.iteration
        if self.end is None:
            # First call: after extensions were initialised (and a snapshot
            # possibly autoloaded), before the first update of this launch.
            self.end = self.total_iters if self.chunk_iters is None else min(
                self.total_iters, iteration + self.chunk_iters)
        return iteration >= self.end

    def get_training_length(self):
        return self.total_iters, 'iteration'


def points(interval_iters, total_iters):
    """Iterations ``k * interval_iters`` (rounded) up to ``total_iters``, and ``total_iters``.

    ``interval_iters`` may be fractional (an epoch is 39.1 iterations in the
    paper) and is at least one iteration.
    """
    interval = max(interval_iters, 1.0)
    found = sorted({int(round(k * interval))
                    for k in range(1, int(total_iters // interval) + 1)}
                   | {total_iters})
    return [p for p in found if 0 < p <= total_iters]


class PointsTrigger:
    """Fires at the given iterations (and at the end of the current chunk).

    Stateless, unlike Chainer's interval and schedule triggers, so one
    instance can be shared by several extensions (the BN-statistics allreduce
    and the evaluator must fire together) and nothing needs resuming.
    """

    def __init__(self, points, chunk_stop=None):
        self.points = frozenset(points)
        self.chunk_stop = chunk_stop

    def __call__(self, trainer):
        iteration = trainer.updater.iteration
        return iteration in self.points or (
            self.chunk_stop is not None and self.chunk_stop.end is not None
            and iteration == self.chunk_stop.end)


class EveryOrAt:
    """Fires every ``interval`` iterations and whenever ``points`` fires.

    The log's trigger: with an interval alone, the evaluation at an
    iteration that is not a multiple of the interval (the last one of
    akiba2017's 3,519 iterations, logged every 10) would be reported only
    at the next log iteration, which never comes after the last. Stateless.
    """

    def __init__(self, interval, points):
        self.interval = int(interval)
        self.points = points

    def __call__(self, trainer):
        return trainer.updater.iteration % self.interval == 0 or self.points(trainer)


class _Stdout:
    """``sys.stdout`` as it is at each write, without terminal escapes when it is no terminal.

    Chainer's PrintReport writes ``ESC [J`` (erase to the end of the screen)
    before every row, for its progress bar; in a batch job's log file it is
    noise before each line.
    """

    def write(self, text):
        out = sys.stdout
        if text == '\033[J' and not (hasattr(out, 'isatty') and out.isatty()):
            return
        out.write(text)

    def flush(self):
        sys.stdout.flush()


class ResumablePrintReport(chainer_extensions.PrintReport):
    """PrintReport that does not print the restored log again on resume.

    Chainer's PrintReport does not save how many entries it printed, so after
    a snapshot is loaded it prints the whole restored log. The priority is
    below the snapshot extension's (-100) so that initialize() runs after an
    autoload and sees the restored log. Without a terminal it writes no
    escape codes (:class:`_Stdout`).
    """

    priority = -150

    def __init__(self, entries, log_report='LogReport', out=None):
        super().__init__(entries, log_report=log_report, out=_Stdout() if out is None else out)

    def initialize(self, trainer):
        log_report = self._log_report
        if isinstance(log_report, str):
            log_report = trainer.get_extension(log_report)
        self._log_len = len(log_report.log)


PLOTS = (('loss.png', ('main/loss', 'validation/main/loss')),
         ('accuracy.png', ('main/accuracy', 'validation/main/accuracy',
                           'validation/main/top5')))
"""Plots every run draws; ``lr.png`` adds the scheduled hyperparameters."""


def extend_reporting(trainer, log_interval_iters, scheduled, plot_trigger, progress_bar=True,
                     plot_interval_s=300):
    """Rank 0's reporting: log, printed table, plots, progress bar.

    ``scheduled`` names the optimizer hyperparameters the schedules set
    (:attr:`chainer_resnet.schedules.RecipeSchedules.names`): each is
    observed into the log, printed, and plotted in ``lr.png``. Plots are
    drawn from the log at ``plot_trigger`` (the evaluation points and the end
    of a launch), at most every ``plot_interval_s`` seconds but always at the
    end: redrawing PNGs costs rank 0 time that every other rank waits for.
    The log (and the printed table) is written every ``log_interval_iters``
    and at ``plot_trigger`` too, so no evaluation is left out of it. The
    progress bar is shown only when ``progress_bar`` and stdout is a
    terminal (in a batch log it would be escape codes). Returns the plot
    file names.
    """
    # Every log_interval_iters, and at the evaluation points and the end of
    # the launch, so that every evaluation and the last iteration are logged.
    log_trigger = EveryOrAt(log_interval_iters, trigger_module.get_trigger(plot_trigger))
    trainer.extend(chainer_extensions.LogReport(trigger=log_trigger))
    for name in scheduled:
        if name == 'lr':
            trainer.extend(chainer_extensions.observe_lr(), trigger=log_trigger)
        else:
            trainer.extend(chainer_extensions.observe_value(
                name, functools.partial(_hyperparameter, name=name)),
                trigger=log_trigger)
    keys = (['epoch', 'iteration', 'main/loss', 'main/accuracy', 'validation/main/loss',
             'validation/main/accuracy', 'validation/main/top5'] + list(scheduled)
            + ['perf/images_per_sec', 'elapsed_time'])
    trainer.extend(ResumablePrintReport(keys), trigger=log_trigger)
    plots = PLOTS + (('lr.png', tuple(scheduled)),)
    trainer.extend(LogPlots(plots, min_interval_s=plot_interval_s), trigger=plot_trigger)
    if progress_bar and sys.stdout.isatty():
        trainer.extend(chainer_extensions.ProgressBar(update_interval=1))
    return [file_name for file_name, _ in plots]


class LogPlots(extension.Extension):
    """PNG plots of LogReport's log, drawn at the trigger but at most every ``min_interval_s``.

    Stateless (the log is the data, and the snapshot restores the log), so a
    resumed run redraws the whole curve. A trigger of
    :class:`PointsTrigger` with the chunk stop draws at the evaluation points
    and at the end of every launch; the end of a launch always draws.

    Args:
        plots: ``[(file name, keys)]``; x is the iteration.
        min_interval_s (float): the least time between two drawings.
        log_report (str): the name of the LogReport extension.
    """

    priority = extension.PRIORITY_READER - 10   # after LogReport at the same iteration

    def __init__(self, plots, min_interval_s=300, log_report='LogReport'):
        self.plots = [(name, tuple(keys)) for name, keys in plots]
        self.min_interval_s = min_interval_s
        self.log_report = log_report
        self._last = None

    def __call__(self, trainer):
        now = time.perf_counter()
        final = _at_end(trainer)
        if not final and self._last is not None and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.draw(trainer.get_extension(self.log_report).log, trainer.out)

    def draw(self, log, out):
        """Write every plot of ``log`` into ``out`` (each PNG replaced atomically)."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        for file_name, keys in self.plots:
            figure, axes = plt.subplots()
            for key in keys:
                points = [(entry['iteration'], entry[key]) for entry in log if key in entry]
                if points:
                    x, y = zip(*points)
                    axes.plot(x, y, marker='x', label=key)
            axes.set_xlabel('iteration')
            axes.grid(True)
            if axes.has_data():
                axes.legend(loc='best')
            temp = os.path.join(out, '.tmp-' + file_name)
            figure.savefig(temp, format='png', bbox_inches='tight')
            plt.close(figure)
            os.replace(temp, os.path.join(out, file_name))


def _at_end(trainer):
    """Whether this iteration is the last of the launch (without calling the stop trigger)."""
    stop = trainer.stop_trigger
    end = getattr(stop, 'end', None)
    if end is None:
        length, unit = stop.get_training_length()
        end = length if unit == 'iteration' else None
    return end is not None and trainer.updater.iteration >= end


class SignalFlag:
    """A flag set when ``signum`` arrives, for the whole life of the process.

    The job script forwards the scheduler's wall-time warning to every rank
    whenever it comes: during start-up, training, or the final evaluation.
    SIGUSR1's default action terminates the process, so the handler is
    installed first thing in ``main()`` and kept until it returns; a warning
    that arrives outside the training loop is then harmless (before it, the
    first iteration stops; after it, the run is finishing anyway).
    ``restore()`` puts the previous handler back (for in-process callers).
    """

    def __init__(self, signum=signal.SIGUSR1):
        self.signum = signum
        self.received = False
        self._previous = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def restore(self):
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None


class StopOnSignal(extension.Extension):
    """Stop every rank after the current iteration when any rank receives ``signum``.

    For wall-time limits: the scheduler (Slurm's ``--signal=B:USR1@T``) warns
    the job before killing it; the job script forwards the signal to the
    ranks. The handler only sets a flag; each iteration one small allreduce
    (MAX) tells every rank whether any rank was signalled, so all stop at the
    same iteration. Then the chunk stop is moved to this iteration: the
    snapshot trigger fires (it includes the chunk end) and the trainer stops
    cleanly. Priority above the BN statistics allreduce and the snapshot, so
    they see the new end at the same iteration.

    Args:
        comm: the ChainerMN communicator.
        chunk_stop (ChunkStopTrigger): the trainer's stop trigger.
        signum: the signal (default SIGUSR1).
        flag (SignalFlag): a process-wide flag installed by the caller (the
            trainer's ``main()``); without one, the extension installs its own
            handler for the duration of ``trainer.run()``.
    """

    trigger = 1, 'iteration'
    priority = extension.PRIORITY_WRITER + 20

    def __init__(self, comm, chunk_stop, signum=signal.SIGUSR1, flag=None):
        if flag is not None and flag.signum != signum:
            raise ValueError('flag is for signal {}, not {}'.format(flag.signum, signum))
        self.comm = comm
        self.chunk_stop = chunk_stop
        self.signum = signum
        self.flag = flag
        self.stopped_by = None
        self._own = None

    @property
    def requested(self):
        return bool(self.flag is not None and self.flag.received)

    def initialize(self, trainer):
        if self.flag is None:
            self.flag = self._own = SignalFlag(self.signum)

    def __call__(self, trainer):
        from mpi4py import MPI
        if self.comm.mpi_comm.allreduce(int(self.requested), op=MPI.MAX):
            self.chunk_stop.end = trainer.updater.iteration
            self.stopped_by = signal.Signals(self.signum).name

    def finalize(self):
        if self._own is not None:
            self._own.restore()
            self._own = self.flag = None


def _hyperparameter(trainer, name):
    return getattr(trainer.updater.get_optimizer('main'), name)
