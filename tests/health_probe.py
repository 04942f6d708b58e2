"""train_imagenet.py with a failure injected on one rank, for the health signals' tests.

    mpiexec -n 2 python tests/health_probe.py [--slow-compute R] [--slow-data R]
        [--shift-inputs R] -- TRAIN_IMAGENET_ARGS...

--slow-compute R: rank R's training forward passes take 6 times as long plus 0.3 s (a slow
GPU or node; in proportion, so that a busy test machine cannot hide it);
--slow-data R: rank R's training iterator sleeps 0.3 s per batch (a slow filesystem);
--shift-inputs R: rank R's images are scaled by 3 and shifted by 2 after normalisation
(workers whose BN statistics disagree: another data distribution on one node).
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import train_imagenet  # noqa: E402
import chainer  # noqa: E402
from mpi4py import MPI  # noqa: E402
from chainer_resnet.data import loader  # noqa: E402

DELAY_S = 0.3


def main(argv):
    p = argparse.ArgumentParser()
    for name in ('--slow-compute', '--slow-data', '--shift-inputs'):
        p.add_argument(name, type=int)
    args, rest = p.parse_known_args(argv)
    rank = MPI.COMM_WORLD.rank
    if args.slow_compute == rank:
        forward = chainer.links.Classifier.forward

        def slow_forward(self, *a, **k):
            start = time.perf_counter()
            out = forward(self, *a, **k)
            if chainer.config.train:
                time.sleep(5 * (time.perf_counter() - start) + DELAY_S)
            return out
        chainer.links.Classifier.forward = slow_forward
    if args.slow_data == rank:
        next_batch = chainer.iterators.SerialIterator.__next__

        def slow_next(self):
            if self.repeat:                      # the training iterator
                time.sleep(DELAY_S)
            return next_batch(self)
        chainer.iterators.SerialIterator.__next__ = slow_next
        chainer.iterators.SerialIterator.next = slow_next
    if args.shift_inputs == rank:
        normalize = loader.Normalize.normalize
        loader.Normalize.normalize = lambda self, x: normalize(self, x) * 3 + 2
    return train_imagenet.main([a for a in rest if a != '--'])


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
