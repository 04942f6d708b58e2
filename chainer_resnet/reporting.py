"""Rank 0's reporting: the log, the printed table, the plots, the progress bar.

:func:`extend_reporting` adds them to a trainer; :class:`ResumablePrintReport`
does not reprint a restored log; :class:`LogPlots` redraws PNGs from the log
at most every few minutes (rank 0's side work is every rank's wait).
"""

import functools
import os
import sys
import time

from chainer.training import extension
from chainer.training import trigger as trigger_module
from chainer.training import extensions as chainer_extensions

from chainer_resnet import triggers


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

_SPREAD = ('min', 'median', 'max')
HEALTH_PLOTS = (
    ('fp16.png', ('fp16/overflow', 'fp16/underflow', 'fp16/flushed', 'fp16/range'), 'symlog'),
    ('layers.png', tuple('layers/update_ratio/' + s for s in _SPREAD), 'log'),
    ('ranks.png', tuple('ranks/{}/{}'.format(k, s) for k in ('compute_s', 'data_wait_s')
                        for s in _SPREAD), 'linear'),
    ('bn.png', tuple('bn/{}/{}'.format(k, s) for k in ('mean_spread', 'var_spread')
                     for s in _SPREAD), 'log'))
"""The health signals' plots (chainer_resnet.health; README.md, "Watching a run")."""

HEALTH_PRINTED = ('fp16/overflow', 'layers/update_ratio/max')


def extend_reporting(trainer, log_interval_iters, scheduled, plot_trigger, progress_bar=True,
                     plot_interval_s=300, observations=None):
    """Rank 0's reporting: log, printed table, plots, progress bar, TensorBoard.

    ``scheduled`` names the optimizer hyperparameters the schedules set
    (:attr:`chainer_resnet.schedules.RecipeSchedules.names`): each is
    observed into the log, printed, and plotted in ``lr.png`` (with the
    RMSprop weight α_RMSprop beside α_SGD). ``observations``
    (:class:`chainer_resnet.health.Observations`): the health signals'
    summaries go into the next log entry, two of them are printed, and they
    have plots of their own (:data:`HEALTH_PLOTS`); with tensorboardX
    installed, every log entry and every signal's complete values also go
    to a TensorBoard event file in the output folder
    (:mod:`chainer_resnet.tensorboard`). Plots are
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
    log_trigger = triggers.EveryOrAt(log_interval_iters, trigger_module.get_trigger(plot_trigger))
    merge = None
    if observations is not None:
        def merge(entry):
            entry.update(observations.pop_fields())
    trainer.extend(chainer_extensions.LogReport(trigger=log_trigger, postprocess=merge))
    if 'alpha_sgd' in scheduled:
        scheduled = tuple(scheduled) + ('alpha_rmsprop',)
    for name in scheduled:
        if name == 'lr':
            trainer.extend(chainer_extensions.observe_lr(), trigger=log_trigger)
        else:
            trainer.extend(chainer_extensions.observe_value(
                name, functools.partial(_hyperparameter, name=name)),
                trigger=log_trigger)
    keys = (['epoch', 'iteration', 'main/loss', 'main/accuracy', 'validation/main/loss',
             'validation/main/accuracy', 'validation/main/top5'] + list(scheduled)
            + list(HEALTH_PRINTED if observations is not None else ())
            + ['perf/images_per_sec', 'elapsed_time'])
    trainer.extend(ResumablePrintReport(keys), trigger=log_trigger)
    plots = PLOTS + (('lr.png', tuple(scheduled), 'log'),)
    if observations is not None:
        plots += HEALTH_PLOTS
    trainer.extend(LogPlots(plots, min_interval_s=plot_interval_s), trigger=plot_trigger)
    if progress_bar and sys.stdout.isatty():
        trainer.extend(chainer_extensions.ProgressBar(update_interval=1))
    from chainer_resnet import tensorboard
    events = tensorboard.TensorBoardLog.create(trainer.out, observations)
    if events is not None:
        trainer.extend(events, trigger=log_trigger)
    return [plot[0] for plot in plots]


class LogPlots(extension.Extension):
    """PNG plots of LogReport's log, drawn at the trigger but at most every ``min_interval_s``.

    Stateless (the log is the data, and the snapshot restores the log), so a
    resumed run redraws the whole curve. A trigger of
    :class:`~chainer_resnet.triggers.PointsTrigger` with the chunk stop draws at the
    evaluation points and at the end of every launch; the end of a launch always draws,
    the others once ``min_interval_s`` has passed since the previous drawing or the
    launch's start.

    Args:
        plots: ``[(file name, keys)]`` or ``[(file name, keys, y scale)]``
            (a Matplotlib scale: ``'linear'``, ``'log'``, ``'symlog'``); x is
            the iteration.
        min_interval_s (float): the least time between two drawings.
        log_report (str): the name of the LogReport extension.
    """

    priority = extension.PRIORITY_READER - 10   # after LogReport at the same iteration

    def __init__(self, plots, min_interval_s=300, log_report='LogReport'):
        self.plots = [(plot[0], tuple(plot[1]), plot[2] if len(plot) > 2 else 'linear')
                      for plot in plots]
        self.min_interval_s = min_interval_s
        self.log_report = log_report
        self._last = None

    def initialize(self, trainer):
        # The interval runs from the launch's start: a launch shorter than it
        # draws once, at its end (a drawing of the 7 plots costs rank 0 ~2 s
        # on a CPU core while every other rank waits).
        self._last = time.perf_counter()

    def __call__(self, trainer):
        now = time.perf_counter()
        final = triggers.at_end(trainer)
        if not final and self._last is not None and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.draw(trainer.get_extension(self.log_report).log, trainer.out)

    def draw(self, log, out):
        """Write every plot of ``log`` into ``out`` (each PNG replaced atomically)."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        for file_name, keys, scale in self.plots:
            figure, axes = plt.subplots()
            for key in keys:
                points = [(entry['iteration'], entry[key]) for entry in log if key in entry]
                if points:
                    x, y = zip(*points)
                    axes.plot(x, y, marker='x', label=key)
            # symlog: fractions that are often exactly 0 (fp16 overflow) stay visible.
            axes.set_yscale(scale, **({'linthresh': 1e-6} if scale == 'symlog' else {}))
            axes.set_xlabel('iteration')
            axes.grid(True)
            if axes.has_data():
                axes.legend(loc='best')
            temp = os.path.join(out, '.tmp-' + file_name)
            figure.savefig(temp, format='png', bbox_inches='tight')
            plt.close(figure)
            os.replace(temp, os.path.join(out, file_name))


def _hyperparameter(trainer, name):
    return getattr(trainer.updater.get_optimizer('main'), name)
