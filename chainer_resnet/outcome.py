"""How a launch ends: the model file, ``status.json`` and the closing lines, or a divergence.

:func:`finish` is rank 0's work at the end of a launch that trained (to the
end, to its chunk's end, or stopped by a signal); :func:`diverged` records a
run that stopped on a non-finite state and returns the :class:`Diverged`
error the trainer's ``main()`` reports. Exit statuses of the trainer (the
README's "When things go wrong" has a row per case):

- 0: done, or stopped to be continued (the chunk's end, or the wall-time
  warning SIGUSR1), with a snapshot;
- :data:`EXIT_USER_ERROR` (2): a user error, said in one ``error:`` line
  (also: the output folder is in use by another job); fix and re-launch;
- :data:`EXIT_DIVERGED` (3): the run diverged; the last finite snapshot is kept;
- :data:`EXIT_FAULT` (4): a process of the job failed: a loader process died
  (chainer_resnet/data/workers.py) or the ranks made no progress for the
  stall limit (chainer_resnet/watchdog.py); the snapshots are intact, a
  re-launch resumes;
- 128 + N: stopped by termination signal N (143 SIGTERM, 130 SIGINT, 129
  SIGHUP): with a snapshot at the iteration it stopped at, or, after a
  second such signal, at once without one (chainer_resnet/signals.py).
"""

import json
import os

import numpy

import chainer

from chainer_resnet import model_file, optimizers, snapshots, status

# A user error: one `error:` line, fix it and re-launch.
EXIT_USER_ERROR = 2
# A run stopped because its state stopped being finite.
EXIT_DIVERGED = 3
# A process of the job died or stalled: re-launch to resume.
EXIT_FAULT = 4


def summary_lines(recipe, comm, n_train, sched, device, out):
    """What rank 0 prints before training: the run's derived quantities, the device.

    ``sched`` (:class:`~chainer_resnet.schedules.RecipeSchedules`) gives the
    peak learning rate. On CPU the ``naive`` communicator averages in fp32:
    the recipe's fp16 wire format belongs to ``pure_nccl`` on GPUs.
    """
    summary = dict(recipe.summary(comm.size, n_train), peak_lr=sched.peak('lr'))
    dtype = recipe.allreduce_grad_dtype
    if device.xp is numpy and dtype != 'float32':
        dtype = 'float32 (naive communicator on CPU; the recipe\'s {} is pure_nccl\'s, ' \
                'on GPUs)'.format(dtype)
    return '\n'.join([
        'chainer_resnet: ' + ', '.join('{}={}'.format(k, v) for k, v in summary.items()),
        'device={} communicator={} allreduce_grad_dtype={} out={}'.format(
            device, type(comm).__name__, dtype, out)])


class Diverged(Exception):
    """Training stopped on a non-finite state; ``collective``: every rank stopped together."""

    def __init__(self, message, rank, collective):
        super().__init__(message)
        self.rank = rank
        self.collective = collective


def diverged(error, comm, trainer, out, total_iters):
    """Rank 0 records why the run stopped; the error for main() to report."""
    newest = snapshots.list_snapshots(out)
    if newest:
        message = ('{}. The last finite snapshot, {}, is kept; nothing non-finite was saved. '
                   'Lower the learning rate (e.g. --set lr_per_256=...) and start a new run '
                   'with another --out, or continue from that snapshot with the new value '
                   'and --allow-recipe-change.'.format(error, newest[0][1]))
    else:
        message = ('{}. No snapshot was written yet; nothing non-finite was saved. Lower '
                   'the learning rate (e.g. --set lr_per_256=...) and start again with '
                   'another --out (or empty this one).'.format(error))
    if comm.rank == 0:
        status.write(out, {'iteration': trainer.updater.iteration, 'total_iters': total_iters,
                           'complete': False, 'failed': 'diverged', 'error': message,
                           'snapshot': newest[0][1] if newest else None})
    return Diverged(message, comm.rank,
                    collective=isinstance(error, optimizers.TrainingDiverged))


def stalled(out, iteration, total_iters, message):
    """Rank 0, from the stall watchdog before it ends the job: ``status.json`` says so."""
    newest = snapshots.list_snapshots(out)
    status.write(out, {'iteration': iteration or 0, 'total_iters': total_iters,
                       'complete': False, 'failed': 'stalled', 'error': message,
                       'snapshot': newest[0][1] if newest else None})


def finish(trainer, predictor, out, total_iters, plots, stopped_by=None, description=None):
    """Rank 0 at the end of a launch: model.npz, status.json and the closing lines.

    ``description`` (:func:`chainer_resnet.model_file.describe`) goes into
    model.npz with the iteration and the last evaluation, so that the file
    describes itself.
    """
    iteration = trainer.updater.iteration
    done = iteration >= total_iters
    model_path = os.path.join(out, 'model.npz')
    weights = chainer.serializers.npz.serialize(predictor)
    bad = snapshots.non_finite_entries(weights)
    if bad:
        raise snapshots.NonFiniteStateError(
            'the model at iteration {} holds NaN or infinite values in {} (first: {}); '
            'model.npz was not written'.format(iteration, len(bad), bad[0]))
    st = {'iteration': iteration, 'total_iters': total_iters, 'complete': done,
          'log': os.path.join(out, 'log'), 'model': model_path,
          'plots': [os.path.join(out, name) for name in plots]}
    evaluations = [e for e in trainer.get_extension('LogReport').log
                   if 'validation/main/accuracy' in e]
    if evaluations:
        st['val_top1'] = evaluations[-1]['validation/main/accuracy']
        st['val_top5'] = evaluations[-1]['validation/main/top5']
    if description is not None:
        description = dict(description, iteration=iteration, validation={
            'top1': st['val_top1'], 'top5': st['val_top5'],
            'iteration': evaluations[-1]['iteration']} if evaluations else None)
        weights[model_file.META_KEY] = numpy.array(json.dumps(description, sort_keys=True))
    snapshots.write_npz_atomic(model_path, weights)
    if stopped_by is not None and not done:
        st['stopped'] = stopped_by
    status.write(out, st)
    if done:
        print('\nTraining complete at iteration {}/{}.'.format(iteration, total_iters))
    elif stopped_by is not None:
        print('\nStopped by {} at iteration {}/{} (re-launch to continue).'.format(
            stopped_by, iteration, total_iters))
    else:
        print('\nStopped at iteration {}/{} (re-launch to continue).'.format(
            iteration, total_iters))
    if evaluations:
        last = evaluations[-1]['iteration']
        print('validation top-1 {:.2%}, top-5 {:.2%}{}'.format(
            st['val_top1'], st['val_top5'],
            '' if last == iteration else ' (the last evaluation, at iteration {})'.format(last)))
    print('log:   {}\nplots: {}\nmodel: {}'.format(st['log'], ', '.join(st['plots']),
                                                  model_path), flush=True)
