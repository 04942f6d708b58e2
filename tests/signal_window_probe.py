"""Sends SIGUSR1 to this rank before and after the training loop, then trains.

Usage: signal_window_probe.py main|run TRAINER-ARGS...  `main` goes through
train_imagenet.main() (the handler is installed first thing); `run` calls
run() directly, the negative control: the early warning kills the rank.
"""

import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import train_imagenet  # noqa: E402
from chainer_resnet.data import shards  # noqa: E402

real_open_data = shards.open_data
real_wait = train_imagenet.snapshots.Snapshot.wait


def open_data(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGUSR1)      # during start-up, before the loop
    return real_open_data(*args, **kwargs)


def wait(self):
    os.kill(os.getpid(), signal.SIGUSR1)      # after the loop, before the final save
    return real_wait(self)


shards.open_data = open_data
train_imagenet.snapshots.Snapshot.wait = wait
entry = {'main': train_imagenet.main, 'run': train_imagenet.run}[sys.argv[1]]
sys.exit(entry(sys.argv[2:]) if sys.argv[1] == 'main' else (entry(sys.argv[2:]) and 0))
