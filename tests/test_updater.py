"""chainer_resnet.updater: the clock that ends a device phase is read after a synchronize.

Virtual workers' micro-batches: tests/test_virtual_workers.py.
"""

import numpy

import chainer

from chainer_resnet import updater as cr_updater



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
    return cr_updater.TimedUpdater(it, opt)


def test_timed_updater_synchronizes_the_device_before_reading_the_clock(monkeypatch):
    events = []
    updater = _timed_updater(_StepModel(events, _FakeDevice(events)))
    monkeypatch.setattr(cr_updater, 'time', _Clock(events))
    with chainer.reporter.Reporter().scope({}):
        updater.update()
    # start (after the previous phase's device work), loaded, then the step:
    # this rank's own work ends once the device has finished forward/backward
    # (own_seconds, for the stall monitor), the step once it has finished the update.
    assert events == ['synchronize', 'clock', 'clock', 'step', 'synchronize', 'clock',
                      'synchronize', 'clock']


def test_timed_updater_on_numpy_reports_without_synchronizing(monkeypatch):
    events = []
    updater = _timed_updater(_StepModel(events))   # a NumPy device: no synchronize()
    monkeypatch.setattr(cr_updater, 'time', _Clock(events))
    observation = {}
    with chainer.reporter.Reporter().scope(observation):
        updater.update()
    assert events == ['clock', 'clock', 'step', 'clock', 'clock']
    # clock values 1, 2, 4 and 5: data wait 1 s, compute 3 s for 2 images,
    # own work 3 s of a 4 s step
    assert observation['perf/data_wait_sec'] == 1.0
    assert observation['perf/compute_images_per_sec'] == 2 / 3
    assert (updater.own_seconds, updater.step_seconds) == (3.0, 4.0)
