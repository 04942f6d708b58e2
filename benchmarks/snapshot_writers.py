#!/usr/bin/env python
"""Snapshot writers: how long rank 0's step stalls, per writer, for a state of the real size.

    python benchmarks/snapshot_writers.py [--mb 300] [--out DIR] [--repeat 3]

A fake trainer state of ``--mb`` MB of float32 arrays (ResNet-50 with the
RMSprop warm-up's two buffers is ~300 MB) is written by
:class:`chainer_resnet.snapshots.Snapshot` with each writer. Reported per
writer: the stall (time the step waits inside the snapshot call), the time
until the file is on disk, and how much a compute loop running meanwhile on
the main thread is slowed down (GIL and memory-bandwidth contention) while the
thread writes. Numbers are printed, never asserted.
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--mb', type=float, default=300)
    p.add_argument('--out', help='folder to write into (default: a temporary one)')
    p.add_argument('--repeat', type=int, default=3)
    args = p.parse_args(argv)
    if args.out is not None:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            p.error('--out {}: cannot create the folder ({})'.format(args.out, e.strerror or e))
    out = args.out or tempfile.mkdtemp(prefix='snapshot-bench-')
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
