"""Holds one rank in its data loading, as a read from a hung filesystem would, then trains on.

Usage: stall_probe.py RANK READS SECONDS TRAINER-ARGS...  On rank RANK (the
launcher's rank variable), the READS-th image read of the launch (counted
from 1, in the main process: use --loaderjobs 0) first sleeps SECONDS. Then
train_imagenet.main() runs with TRAINER-ARGS and its exit status is this
process's.
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import train_imagenet  # noqa: E402
from chainer_resnet.data import loader  # noqa: E402

rank, reads, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
real_get = loader.PILImages.get_example
count = [0]


def get_example(self, i):
    count[0] += 1
    if count[0] == reads:
        print('probe: rank {} holds read {} for {:g} s'.format(rank, reads, seconds),
              file=sys.stderr, flush=True)
        time.sleep(seconds)
    return real_get(self, i)


if int(os.environ.get('PMI_RANK', '0')) == rank:
    loader.PILImages.get_example = get_example
sys.exit(train_imagenet.main(sys.argv[4:]))
