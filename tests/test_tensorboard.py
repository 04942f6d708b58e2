"""chainer_resnet.tensorboard: event files read back by TensorBoard's own reader.

The oracle is ``tensorboard.backend.event_processing.event_accumulator``,
the loader TensorBoard itself uses (the test extra installs it); the raw
records are also parsed, to see that no step is in the files twice.
"""

import os
import sys

import numpy
import pytest

import chainer
from chainer.training import extensions

from chainer_resnet import health, reporting, tensorboard

event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
pytest.importorskip('tensorboardX')


def _scalars(folder):
    acc = event_accumulator.EventAccumulator(str(folder),
                                             size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def _raw_steps(folder, tag):
    from tensorboardX.proto.event_pb2 import Event
    steps = []
    for path in tensorboard.event_files(str(folder)):
        for data in tensorboard.read_records(path):
            event = Event.FromString(data)
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def _trainer(tiny_trainer, out, stop=8, lr=0.1):
    trainer, model = tiny_trainer(stop=stop, out=out)
    trainer.updater.get_optimizer('main').lr = lr
    observations = health.Observations()

    class Signal(chainer.training.Extension):
        trigger = (2, 'iteration')
        priority = chainer.training.PRIORITY_WRITER

        def __call__(self, trainer):
            it = trainer.updater.iteration
            observations.put(it, {'sig/max': float(it), 'sig/max_at': 'W'},
                             {'sig/layer/W': 10.0 * it})
    trainer.extend(Signal())
    reporting.extend_reporting(trainer, 2, ('lr',), plot_trigger=(stop, 'iteration'),
                               progress_bar=False, observations=observations)
    return trainer


def test_every_log_entry_and_complete_signal_is_in_the_event_file(tiny_trainer, tmp_path):
    trainer = _trainer(tiny_trainer, tmp_path)
    trainer.run()
    log = trainer.get_extension('LogReport').log
    scalars = _scalars(tmp_path)
    assert scalars['main/loss'] == [(e['iteration'], pytest.approx(e['main/loss']))
                                    for e in log]
    assert scalars['sig/max'] == [(s, s) for s in (2, 4, 6, 8)]
    assert scalars['sig/layer/W'] == [(s, 10 * s) for s in (2, 4, 6, 8)]
    assert 'sig/max_at' not in scalars              # names are for the log only
    assert log[-1]['sig/max_at'] == 'W'
    assert len(tensorboard.event_files(str(tmp_path))) == 1


def test_a_resumed_run_appends_without_duplicated_steps(tiny_trainer, tmp_path):
    # The first launch snapshots at 4, writes events to 8, then "dies".
    first = _trainer(tiny_trainer, tmp_path)
    first.extend(extensions.snapshot(filename='snap_{.updater.iteration}'),
                 trigger=(4, 'iteration'))
    first.run()
    first_loss = dict(_scalars(tmp_path)['main/loss'])
    # The re-launch resumes from iteration 4 with another learning rate, so that
    # its steps 6 and 8 differ from the first launch's.
    second = _trainer(tiny_trainer, tmp_path, lr=0.05)
    chainer.serializers.load_npz(str(tmp_path / 'snap_4'), second)
    second.run()
    log = second.get_extension('LogReport').log
    scalars = _scalars(tmp_path)
    assert [s for s, _ in scalars['main/loss']] == [2, 4, 6, 8]
    assert sorted(_raw_steps(tmp_path, 'main/loss')) == [2, 4, 6, 8]   # in the files too
    loss = dict(scalars['main/loss'])
    assert loss[2] == first_loss[2] and loss[4] == first_loss[4]
    assert loss[8] == pytest.approx(log[-1]['main/loss']) and loss[8] != first_loss[8]
    assert [s for s, _ in scalars['sig/layer/W']] == [2, 4, 6, 8]
    assert len(tensorboard.event_files(str(tmp_path))) == 2


def test_a_torn_last_record_is_dropped_on_resume(tmp_path):
    from tensorboardX import FileWriter
    from tensorboardX.proto.summary_pb2 import Summary
    writer = FileWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.add_summary(Summary(value=[Summary.Value(tag='x', simple_value=step)]), step)
    writer.close()
    path = tensorboard.event_files(str(tmp_path))[0]
    whole = os.path.getsize(path)
    with open(path, 'ab') as f:
        f.write(b'\x40\x00\x00\x00\x00\x00\x00\x00\x01\x02')   # a kill during a write
    assert tensorboard.trim_events(str(tmp_path), 2) == 2
    assert _raw_steps(tmp_path, 'x') == [1, 2]
    assert os.path.getsize(path) < whole
    # A folder whose events are all after the resumed step loses the file.
    assert tensorboard.trim_events(str(tmp_path), 0) is None
    assert tensorboard.event_files(str(tmp_path)) == []


def test_without_tensorboardx_the_run_goes_on_and_says_so(tiny_trainer, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.setitem(sys.modules, 'tensorboardX', None)
    trainer = _trainer(tiny_trainer, tmp_path, stop=2)
    trainer.run()
    assert 'tensorboard: no event files' in capsys.readouterr().err
    assert tensorboard.event_files(str(tmp_path)) == []
    assert numpy.isfinite(trainer.get_extension('LogReport').log[-1]['main/loss'])
