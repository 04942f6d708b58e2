"""chainer_resnet.data.workers: a dead loader process is an error, never a hang.

Whole launches (a loader of rank 1 killed with SIGKILL): tests/test_faults.py.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy
import pytest

import chainer

from chainer_resnet.data import workers


class Slow(chainer.dataset.DatasetMixin):
    """Sample i is (i, i) after `delay` seconds: every loader holds a task most of the time."""

    def __init__(self, n=64, delay=0.05):
        self.n, self.delay = n, delay

    def __len__(self):
        return self.n

    def get_example(self, i):
        time.sleep(self.delay)
        return numpy.full(3, i, dtype=numpy.int32), numpy.int32(i)


def loader_pids(it):
    return [p.pid for p in it._prefetch_loop._pool.started]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open('/proc/{}/stat'.format(pid)) as f:
        return f.read().rsplit(')', 1)[1].split()[0] != 'Z'


def test_batches_are_chainers_in_the_same_order():
    dataset = Slow(24, delay=0)
    ours = workers.LoaderIterator(dataset, 5, n_processes=2, repeat=False, shuffle=False)
    reference = chainer.iterators.SerialIterator(dataset, 5, repeat=False, shuffle=False)
    try:
        for a, b in zip(ours, reference):
            assert [int(t) for _, t in a] == [int(t) for _, t in b]
        assert ours.epoch == 1
    finally:
        ours.finalize()


@pytest.mark.parametrize('method', ['fork', 'forkserver'])   # the trainer's: forkserver
def test_a_killed_loader_is_an_error_naming_it_and_the_likely_cause(method):
    it = workers.LoaderIterator(Slow(), 4, what='training', n_processes=2,
                                context=multiprocessing.get_context(method))
    try:
        it.next()                                  # the pool runs
        victim = loader_pids(it)[0]
        os.kill(victim, signal.SIGKILL)            # what the OOM killer does
        start = time.monotonic()
        with pytest.raises(workers.LoaderDied) as info:
            for _ in range(50):
                it.next()
        assert time.monotonic() - start < 30
    finally:
        it.finalize()
    message = str(info.value)
    assert 'loader process {} (training data, one of 2) was killed by SIGKILL'.format(
        victim) in message
    assert 'out-of-memory killer' in message and '--loaderjobs' in message


NEGATIVE_CONTROL = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import chainer_resnet, chainer
from test_data_workers import Slow
it = chainer.iterators.MultiprocessIterator(Slow(delay=0.5), 4, n_processes=2,
                                            dataset_timeout=None)
it.next()
for p in list(it._prefetch_loop._pool._pool):
    os.kill(p.pid, signal.SIGKILL)       # each held a task: both are lost
print('killed', flush=True)
it.next()
print('got a batch', flush=True)
"""


def test_negative_control_chainers_iterator_waits_forever():
    proc = subprocess.Popen([sys.executable, '-c', NEGATIVE_CONTROL,
                             os.path.dirname(os.path.abspath(__file__))],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == 'killed'
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=8)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_loaders_ignore_the_stop_signals_and_end_with_the_iterator():
    it = workers.LoaderIterator(Slow(delay=0.01), 4, n_processes=2)
    for _ in range(4):              # the loaders have run tasks: their set-up is done
        it.next()
    pids = loader_pids(it)
    for pid in pids:                # Slurm signals every process of the job
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGHUP)
    time.sleep(0.5)
    for _ in range(10):
        it.next()                   # still served: no loader died, none was replaced
    assert loader_pids(it) == pids and all(alive(pid) for pid in pids)
    start = time.monotonic()
    it.finalize()                   # ends them (SIGKILL), without waiting for a task
    assert time.monotonic() - start < 10
    assert not any(alive(pid) for pid in pids)


@pytest.mark.parametrize('exitcode, what, why', [
    (-9, 'was killed by SIGKILL', 'out-of-memory killer'),
    (-7, 'was killed by SIGBUS', '/dev/shm'),
    (-11, 'was killed by SIGSEGV', 'native code'),
    (1, 'exited with status 1', 'printed above'),
])
def test_causes(exitcode, what, why):
    text = workers.cause(exitcode)
    assert text[0] == what and why in text[1]
