"""chainer_resnet.signals: stop requests end the launch with a snapshot.

Across real ranks: tests/test_launch.py, tests/test_faults.py and tests/test_slurm.py.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from chainer_resnet import signals, triggers


class _OneRank:
    """The communicator surface StopOnSignal uses, for one process; `other`:
    what a second rank contributes to the allreduce (MAX)."""

    rank = 0

    def __init__(self, other=0):
        self.other = other

        class mpi_comm:
            @staticmethod
            def allreduce(value, op=None):
                return max(value, self.other)
        self.mpi_comm = mpi_comm


def test_a_signal_stops_the_launch_at_the_next_iteration_with_a_snapshot(tiny_trainer):
    import os
    import signal
    trainer, _ = tiny_trainer(stop=100)
    stop = triggers.ChunkStopTrigger(8)
    trainer.stop_trigger = stop
    ext = signals.StopOnSignal(_OneRank(), stop)
    trainer.extend(ext)
    snapshots_at = []
    trainer.extend(lambda t: snapshots_at.append(t.updater.iteration),
                   trigger=triggers.PointsTrigger([8], stop), name='fake_snapshot')

    def send_at_2(t):
        if t.updater.iteration == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
    trainer.extend(send_at_2, name='sender', priority=-1000)
    before = signal.getsignal(signal.SIGUSR1)
    trainer.run()
    assert trainer.updater.iteration == 3 and ext.stopped_by == 'SIGUSR1'
    assert snapshots_at == [3]                        # the chunk end moved: a snapshot there
    assert signal.getsignal(signal.SIGUSR1) is before  # the handler is restored
    # Negative control: without the signal the launch runs to its end.
    trainer, _ = tiny_trainer(stop=100)
    stop = triggers.ChunkStopTrigger(8)
    trainer.stop_trigger = stop
    trainer.extend(signals.StopOnSignal(_OneRank(), stop))
    trainer.run()
    assert trainer.updater.iteration == 8


def _run_with_signal(tiny_trainer, signum, comm):
    trainer, _ = tiny_trainer(stop=100)
    stop = triggers.ChunkStopTrigger(8)
    trainer.stop_trigger = stop
    ext = signals.StopOnSignal(comm, stop)
    trainer.extend(ext)

    def send_at_2(t):
        if t.updater.iteration == 2 and signum:
            os.kill(os.getpid(), signum)
    trainer.extend(send_at_2, name='sender', priority=-1000)
    trainer.run()
    return trainer.updater.iteration, ext.stopped_by


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_termination_signal_is_a_stop_request(tiny_trainer, signum, capfd):
    iteration, stopped_by = _run_with_signal(tiny_trainer, signum, _OneRank())
    assert (iteration, stopped_by) == (3, signum.name)
    assert signals.exit_status(stopped_by) == 128 + signum
    err = capfd.readouterr().err
    assert err.count('stop: got {}: every rank stops at the next iteration boundary'.format(
        signum.name)) == 1


def test_the_strongest_request_of_any_rank_wins(tiny_trainer):
    # Another rank was asked from the start: this one stops with it, at iteration 1,
    # for the strongest request (the scheduler will not wait for a chain to go on).
    strength = signals._STRENGTH
    assert _run_with_signal(tiny_trainer, signal.SIGUSR1,
                            _OneRank(strength[signal.SIGTERM])) == (1, 'SIGTERM')
    assert _run_with_signal(tiny_trainer, signal.SIGTERM,
                            _OneRank(strength[signal.SIGUSR1])) == (1, 'SIGUSR1')
    # Negative control: nobody asked, the launch runs to its end.
    assert _run_with_signal(tiny_trainer, None, _OneRank()) == (8, None)
    assert signals.exit_status('SIGUSR1') == 0 and signals.exit_status(None) == 0


REPEATS = """
import sys, time
from chainer_resnet import signals
flag = signals.SignalFlag(repeat_window=float(sys.argv[1]))
print('ready', flush=True)
while True:
    time.sleep(0.05)
"""


def test_a_repeat_within_the_window_is_the_same_request_a_later_one_exits_at_once():
    proc = subprocess.Popen([sys.executable, '-c', REPEATS, '1.0'], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'ready'
        for _ in range(3):           # what Slurm, the job script and the launcher deliver
            proc.send_signal(signal.SIGTERM)
        time.sleep(2.0)
        assert proc.poll() is None   # one request, not three
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert err.count('stop: got SIGTERM') == 1
    assert err.strip().endswith('stop: a second SIGTERM: exiting at once; the work since the '
                                'newest snapshot is lost (re-launch to continue from it)')


IGNORED = """
import signal
from chainer_resnet import signals
flag = signals.SignalFlag()
print(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN,
      signal.getsignal(signal.SIGTERM) == flag._handle)
"""


def test_a_signal_inherited_as_ignored_stays_ignored():
    out = subprocess.run(['nohup', sys.executable, '-c', IGNORED], capture_output=True,
                         text=True, timeout=60).stdout   # nohup: SIGHUP ignored
    assert out.split() == ['True', 'True']
