#!/usr/bin/env python
"""Snapshot writers: how long rank 0's step stalls, per writer, for a state of the real size.

    python benchmarks/snapshot_writers.py [--mb 300] [--out DIR] [--repeat 3]
    python benchmarks/snapshot_writers.py --stop [--out DIR] [--repeat 3]

A fake trainer state of ``--mb`` MB of float32 arrays (ResNet-50 with the
RMSprop warm-up's two buffers is ~300 MB) is written by
:class:`chainer_resnet.snapshots.Snapshot` with each writer. Reported per
writer: the stall (time the step waits inside the snapshot call), the time
until the file is on disk, and how much a compute loop running meanwhile on
the main thread is slowed down (GIL and memory-bandwidth contention) while the
thread writes. Numbers are printed, never asserted.

``--stop``: what a stop request (chainer_resnet/signals.py) costs after the
current iteration, for the real state: the akiba2017 ResNet-50 (25.6 M
parameters, 1,000 classes) with RMSpropWarmup's two buffers per parameter,
serialised as the trainer does, written as a snapshot (``fsync`` included)
and then as ``model.npz``: the time from the iteration boundary to the
process's exit, to compare with the scheduler's grace time (Slurm's
``KillWait``, 30 s by default).
"""

import argparse
import os
import shutil
import tempfile
import time
import types

import numpy

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
from chainer_resnet import recipes, snapshots


class _State:
    """Something npz.serialize can walk: named float32 arrays."""

    def __init__(self, mb):
        n = int(mb * 2 ** 20 / 4 / 160)
        self.arrays = {'p{}'.format(i): numpy.random.rand(n).astype(numpy.float32)
                       for i in range(160)}

    def serialize(self, serializer):
        for name, array in self.arrays.items():
            serializer(name, array)


class _OneRank:
    rank, size = 0, 1


def _compute_rate(seconds):
    """Matrix products per second on the main thread for `seconds`."""
    a = numpy.random.rand(256, 256).astype(numpy.float32)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        count += 1
    return count / (time.perf_counter() - start)


def measure(writer, state, out, iteration):
    ext = snapshots.Snapshot(_OneRank(), recipes.get('smoke'), writer=writer, keep=1)
    trainer = types.SimpleNamespace(out=out, updater=types.SimpleNamespace(iteration=iteration))
    real_serialize = snapshots.npz.serialize
    snapshots.npz.serialize = lambda target: real_serialize(state)
    try:
        start = time.perf_counter()
        ext(trainer)
        stall = time.perf_counter() - start
        rate = None
        if writer == 'thread':
            busy_start = time.perf_counter()
            count = 0
            a = numpy.random.rand(256, 256).astype(numpy.float32)
            while ext._thread is not None and ext._thread.is_alive():
                a @ a
                count += 1
            rate = count / max(time.perf_counter() - busy_start, 1e-9)
        ext.wait()
        done = time.perf_counter() - start
    finally:
        snapshots.npz.serialize = real_serialize
    return stall, done, rate


class _ResNetState:
    """The akiba2017 model and its optimizer after one update: what a snapshot holds."""

    def __init__(self):
        from chainer_resnet import optimizers, resnet
        recipe = recipes.get('akiba2017')
        numpy.random.seed(0)
        self.model = resnet.from_recipe(recipe)
        self.optimizer = optimizers.from_recipe(recipe, lr=0.1, alpha_sgd=0.5)
        self.optimizer.setup(self.model)
        for param in self.model.params():
            param.grad = numpy.zeros_like(param.array)
        self.optimizer.update()              # the optimizer's state exists after one
        self.parameters = sum(p.size for p in self.model.params())

    def serialize(self, serializer):
        self.model.serialize(serializer['updater/model:main/predictor'])
        self.optimizer.serialize(serializer['updater/optimizer:main'])


def measure_stop(state, out, iteration):
    """Seconds to serialise the trainer state, write it as a snapshot, write model.npz."""
    start = time.perf_counter()
    arrays = snapshots.npz.serialize(state)
    serialised = time.perf_counter()
    snapshots.write_npz_atomic(snapshots.snapshot_path(out, iteration), arrays)
    written = time.perf_counter()
    snapshots.write_npz_atomic('{}/model.npz'.format(out), snapshots.npz.serialize(state.model))
    done = time.perf_counter()
    size = sum(numpy.asarray(a).nbytes for a in arrays.values())
    return size, serialised - start, written - serialised, done - written


def main_stop(out, repeat):
    state = _ResNetState()
    print('ResNet-50 (akiba2017): {:,} parameters; RMSpropWarmup state of one update'.format(
        state.parameters))
    print('| snapshot (MB) | serialise (s) | snapshot written and fsync-ed (s) | model.npz (s) '
          '| total (s) |')
    print('|---|---|---|---|---|')
    for k in range(repeat):
        size, ser, snap, model = measure_stop(state, out, k + 1)
        print('| {:.0f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |'.format(
            size / 2 ** 20, ser, snap, model, ser + snap + model))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--mb', type=float, default=300)
    p.add_argument('--out', help='folder to write into (default: a temporary one)')
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--stop', action='store_true',
                   help='the cost of a stop request with the real ResNet-50 state')
    args = p.parse_args(argv)
    if args.out is not None:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            p.error('--out {}: cannot create the folder ({})'.format(args.out, e.strerror or e))
    out = args.out or tempfile.mkdtemp(prefix='snapshot-bench-')
    if args.stop:
        try:
            main_stop(out, args.repeat)
        finally:
            if args.out is None:
                shutil.rmtree(out, ignore_errors=True)
        return 0
    state = _State(args.mb)
    idle = _compute_rate(1.0)
    print('state {:.0f} MB in {}; compute loop alone: {:.0f} products/s'.format(
        args.mb, out, idle))
    print('| writer | stall of the step (s) | on disk after (s) | compute loop while writing |')
    print('|---|---|---|---|')
    try:
        for writer in ('sync', 'thread'):
            for k in range(args.repeat):
                stall, done, rate = measure(writer, state, out, k + 1)
                print('| {} | {:.3f} | {:.3f} | {} |'.format(
                    writer, stall, done,
                    '-' if rate is None else '{:.0%} of alone'.format(rate / idle)))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
