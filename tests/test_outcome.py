"""chainer_resnet.outcome: what a launch leaves when it ends, or diverges."""

import json
import types

import numpy
import pytest

from chainer.training import extensions

from chainer_resnet import optimizers, outcome, snapshots


def _trained(tiny_trainer, stop=4):
    trainer, model = tiny_trainer(stop=stop)
    trainer.extend(extensions.LogReport(trigger=(2, 'iteration')))
    trainer.run()
    return trainer, model


def test_finish_writes_the_model_and_the_status(tmp_path, tiny_trainer, capsys):
    trainer, model = _trained(tiny_trainer)
    outcome.finish(trainer, model.predictor, str(tmp_path), 4, ['loss.png'])
    weights = numpy.load(str(tmp_path / 'model.npz'))
    numpy.testing.assert_array_equal(weights['W'], model.predictor.W.array)
    status = json.loads((tmp_path / 'status.json').read_text())
    assert (status['iteration'], status['complete']) == (4, True)
    assert status['plots'] == [str(tmp_path / 'loss.png')] and 'stopped' not in status
    printed = capsys.readouterr().out
    assert 'Training complete at iteration 4/4.' in printed
    assert 'model: {}'.format(tmp_path / 'model.npz') in printed


def test_finish_of_a_stopped_launch_says_what_stopped_it(tmp_path, tiny_trainer, capsys):
    trainer, model = _trained(tiny_trainer)
    outcome.finish(trainer, model.predictor, str(tmp_path), 8, [], stopped_by='SIGUSR1')
    status = json.loads((tmp_path / 'status.json').read_text())
    assert (status['complete'], status['stopped']) == (False, 'SIGUSR1')
    assert 'Stopped by SIGUSR1 at iteration 4/8 (re-launch to continue).' in \
        capsys.readouterr().out


def test_an_evaluation_of_an_earlier_launch_is_labelled(tmp_path, tiny_trainer, capsys):
    trainer, model = _trained(tiny_trainer)
    log = trainer.get_extension('LogReport').log
    log[0].update({'validation/main/accuracy': 0.5, 'validation/main/top5': 0.75})
    outcome.finish(trainer, model.predictor, str(tmp_path), 8, [])
    assert ('validation top-1 50.00%, top-5 75.00% (the last evaluation, at iteration 2)'
            in capsys.readouterr().out)
    log[-1].update({'validation/main/accuracy': 0.5, 'validation/main/top5': 0.75})
    outcome.finish(trainer, model.predictor, str(tmp_path), 8, [])
    assert 'validation top-1 50.00%, top-5 75.00%\n' in capsys.readouterr().out


def test_finish_refuses_a_non_finite_model(tmp_path, tiny_trainer):
    trainer, model = _trained(tiny_trainer)
    model.predictor.W.array[0, 0] = numpy.nan
    with pytest.raises(snapshots.NonFiniteStateError, match='model.npz was not written'):
        outcome.finish(trainer, model.predictor, str(tmp_path), 4, [])
    assert not (tmp_path / 'model.npz').exists()


def test_diverged_records_the_failure_on_rank_0_only(tmp_path):
    trainer = types.SimpleNamespace(updater=types.SimpleNamespace(iteration=3))
    error = optimizers.TrainingDiverged(3, 'the averaged gradient', ['/W'])
    rank1 = outcome.diverged(error, types.SimpleNamespace(rank=1), trainer, str(tmp_path), 9)
    assert not (tmp_path / 'status.json').exists()          # rank 1 writes nothing
    rank0 = outcome.diverged(error, types.SimpleNamespace(rank=0), trainer, str(tmp_path), 9)
    assert (rank0.rank, rank0.collective, rank1.rank) == (0, True, 1)
    assert 'No snapshot was written yet' in str(rank0) and 'that snapshot' not in str(rank0)
    status = json.loads((tmp_path / 'status.json').read_text())
    assert (status['failed'], status['iteration'], status['snapshot']) == ('diverged', 3, None)
    # A non-finite state found by rank 0 alone (its snapshot) is not collective.
    alone = outcome.diverged(snapshots.NonFiniteStateError('x'), types.SimpleNamespace(rank=0),
                             trainer, str(tmp_path), 9)
    assert alone.collective is False


def test_exit_statuses_are_the_documented_ones():
    # README "When things go wrong": 2 a user error, 3 a run that diverged.
    assert (outcome.EXIT_USER_ERROR, outcome.EXIT_DIVERGED) == (2, 3)
