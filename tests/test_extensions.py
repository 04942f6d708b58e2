"""Single-process parts of chainer_resnet.extensions: triggers and rank 0's reporting.

The collective extensions (BN statistics allreduce, exact evaluator) are
tested across ranks in tests/test_distributed.py.
"""

import numpy
import pytest

import chainer

from chainer_resnet import extensions as cr_ext


def test_points_at_fractional_intervals_and_the_end():
    # 39.1 iterations per epoch: rounded multiples, and the last iteration.
    assert cr_ext.points(39.1, 120) == [39, 78, 117, 120]
    assert cr_ext.points(4, 16) == [4, 8, 12, 16]
    assert cr_ext.points(0.3, 3) == [1, 2, 3]          # at least one iteration apart
    assert cr_ext.points(50, 16) == [16]




def test_extend_reporting_logs_prints_and_plots_the_scheduled_names(tmp_path, tiny_trainer):
    trainer, _ = tiny_trainer()
    plots = cr_ext.extend_reporting(trainer, 2, ('lr', 'alpha_sgd'),
                                    plot_trigger=(2, 'iteration'), progress_bar=False)
    assert plots == ['loss.png', 'accuracy.png', 'lr.png']
    trainer.run()
    log = trainer.get_extension('LogReport').log
    assert [e['iteration'] for e in log] == [2, 4]
    assert log[-1]['lr'] == pytest.approx(0.1) and log[-1]['alpha_sgd'] == 0.5
    printed = trainer.get_extension('ResumablePrintReport')._entries
    assert printed[-4:] == ['lr', 'alpha_sgd', 'perf/images_per_sec', 'elapsed_time']
    for name in plots:
        assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG', name


def test_extend_reporting_without_a_warmup_has_no_alpha_column(tmp_path, tiny_trainer):
    trainer, _ = tiny_trainer(stop=2)
    cr_ext.extend_reporting(trainer, 2, ('lr',), plot_trigger=(2, 'iteration'),
                            progress_bar=False)
    trainer.run()
    assert 'alpha_sgd' not in trainer.get_extension('LogReport').log[-1]
    assert 'alpha_sgd' not in trainer.get_extension('ResumablePrintReport')._entries


def test_batch_sums_count_nan_rows_and_ties_as_wrong():
    from chainer_resnet.extensions import _batch_sums
    labels = numpy.array([0, 1, 2, 0], dtype=numpy.int32)
    logits = numpy.array([
        [3.0, 1.0, 0.0, 0.0, 0.0, 0.0],      # right
        [numpy.nan] * 6,                     # diverged: wrong, not "nothing scores higher"
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],      # all tied: wrong in the top 1 and the top 5
        [0.0, numpy.inf, 5.0, 0.0, 0.0, 0.0],  # a non-finite row is wrong
    ], dtype=numpy.float32)
    _, top1, top5, count = _batch_sums(logits, labels)
    assert (top1, top5, count) == (1, 1, 4)
    # Negative control: the same logits, made finite and untied, are all right in the top 5.
    clean = numpy.array([[3, 1, 0, 0, 0, 0], [0, 3, 1, 0, 0, 0], [0, 1, 2, 3, 4, 5],
                         [9, 0, 5, 0, 0, 0]], dtype=numpy.float32)
    _, top1, top5, _ = _batch_sums(clean, labels)
    assert (top1, top5) == (3, 4)


def test_bn_statistics_check_stops_on_non_finite_averaged_statistics():
    import types
    from chainer_resnet.batch_normalization import LastBatchNormalization
    from chainer_resnet.optimizers import TrainingDiverged
    model = chainer.Sequential(LastBatchNormalization(3), LastBatchNormalization(3))
    sync = cr_ext.BNStatisticsAllreduce(types.SimpleNamespace(size=1), model)
    sync()                                           # finite: nothing happens
    model[1].var[1] = numpy.inf
    trainer = types.SimpleNamespace(updater=types.SimpleNamespace(iteration=7))
    with pytest.raises(TrainingDiverged, match=r'iteration 7: .*BN statistics.*\(first: /1\)'):
        sync(trainer)


class _OneRank:
    """The communicator surface StopOnSignal uses, for one process."""

    class mpi_comm:
        @staticmethod
        def allreduce(value, op=None):
            return value


def test_a_signal_stops_the_launch_at_the_next_iteration_with_a_snapshot(tiny_trainer):
    import os
    import signal
    trainer, _ = tiny_trainer(stop=100)
    stop = cr_ext.ChunkStopTrigger(8)
    trainer.stop_trigger = stop
    ext = cr_ext.StopOnSignal(_OneRank(), stop)
    trainer.extend(ext)
    snapshots_at = []
    trainer.extend(lambda t: snapshots_at.append(t.updater.iteration),
                   trigger=cr_ext.PointsTrigger([8], stop), name='fake_snapshot')

    def send_at_2(t):
        if t.updater.iteration == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
    trainer.extend(send_at_2, name='sender', priority=-1000)
    before = signal.getsignal(signal.SIGUSR1)
    trainer.run()
    assert trainer.updater.iteration == 3 and ext.stopped_by == 'SIGUSR1'
    assert snapshots_at == [3]                        # the chunk end moved: a snapshot there
    assert signal.getsignal(signal.SIGUSR1) is before  # the handler is restored
    # Negative control: without the signal the launch runs to its end.
    trainer, _ = tiny_trainer(stop=100)
    stop = cr_ext.ChunkStopTrigger(8)
    trainer.stop_trigger = stop
    trainer.extend(cr_ext.StopOnSignal(_OneRank(), stop))
    trainer.run()
    assert trainer.updater.iteration == 8


def test_plots_are_drawn_at_most_every_interval_and_at_the_end(tiny_trainer, tmp_path):
    trainer, _ = tiny_trainer(stop=6)
    cr_ext.extend_reporting(trainer, 1, ('lr',), plot_trigger=(1, 'iteration'),
                            progress_bar=False, plot_interval_s=3600)
    drawn = []
    plots = trainer.get_extension('LogPlots')
    real = plots.draw
    plots.draw = lambda log, out: (drawn.append(len(log)), real(log, out))
    trainer.run()
    assert drawn == [1, 6]          # the first point, then only the end of the launch
    assert (tmp_path / 'lr.png').read_bytes()[:4] == b'\x89PNG'


# ---------------------------------------------------------------------------
# TimedUpdater: the clock that ends a device phase is read after a synchronize

class _FakeDevice(object):
    """A device whose arrays are not NumPy's (as CuPy's), recording synchronize()."""

    xp = object()

    def __init__(self, events):
        self.device = self
        self.events = events

    def synchronize(self):
        self.events.append('synchronize')


class _StepModel(chainer.Link):
    """A parameterless model on `device` that records when it computes."""

    def __init__(self, events, device=None):
        super().__init__()
        self.events = events
        self.fake_device = device

    @property
    def device(self):
        return self.fake_device or super().device

    def forward(self, x):
        self.events.append('step')
        return chainer.Variable(numpy.asarray(x.sum(), numpy.float32))


class _Clock(object):
    def __init__(self, events):
        self.events = events

    def perf_counter(self):
        self.events.append('clock')
        return float(len(self.events))


def _timed_updater(model):
    it = chainer.iterators.SerialIterator([numpy.ones(2, numpy.float32)] * 4, 2)
    opt = chainer.optimizers.SGD()
    opt.setup(model)
    return cr_ext.TimedUpdater(it, opt)


def test_timed_updater_synchronizes_the_device_before_reading_the_clock(monkeypatch):
    events = []
    updater = _timed_updater(_StepModel(events, _FakeDevice(events)))
    monkeypatch.setattr(cr_ext, 'time', _Clock(events))
    with chainer.reporter.Reporter().scope({}):
        updater.update()
    # start (after the previous phase's device work), loaded, then the step,
    # whose end is read only once the device has finished it.
    assert events == ['synchronize', 'clock', 'clock', 'step', 'synchronize', 'clock']


def test_timed_updater_on_numpy_reports_without_synchronizing(monkeypatch):
    events = []
    updater = _timed_updater(_StepModel(events))   # a NumPy device: no synchronize()
    monkeypatch.setattr(cr_ext, 'time', _Clock(events))
    observation = {}
    with chainer.reporter.Reporter().scope(observation):
        updater.update()
    assert events == ['clock', 'clock', 'step', 'clock']
    # clock values 1, 2 and 4: data wait 1 s, compute 2 s for 2 images
    assert observation['perf/data_wait_sec'] == 1.0
    assert observation['perf/compute_images_per_sec'] == 1.0


def test_the_log_has_every_evaluation_point_and_the_last_iteration(tiny_trainer):
    # Log interval 4 over 7 iterations, an evaluation point at 3: without the
    # points the log would hold iteration 4 only, and the last iteration's
    # observations (akiba2017's final evaluation, say) would never be written.
    trainer, _ = tiny_trainer(stop=100)
    stop = cr_ext.ChunkStopTrigger(7)
    trainer.stop_trigger = stop
    cr_ext.extend_reporting(trainer, 4, ('lr',), plot_trigger=cr_ext.PointsTrigger([3], stop),
                            progress_bar=False)
    trainer.run()
    assert [e['iteration'] for e in trainer.get_extension('LogReport').log] == [3, 4, 7]


def test_the_printed_table_has_no_terminal_escapes_in_a_log_file(tiny_trainer, capsys):
    trainer, _ = tiny_trainer(stop=4)
    cr_ext.extend_reporting(trainer, 2, ('lr',), plot_trigger=(4, 'iteration'),
                            progress_bar=False)
    trainer.run()
    printed = capsys.readouterr().out
    assert '\x1b' not in printed
    assert [line.split()[1] for line in printed.splitlines()[1:3]] == ['2', '4']
