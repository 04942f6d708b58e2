"""chainer_resnet.watchdog: a stalled rank is reported and ends the job; a recovered stall logged.

Real ranks (one rank held in its data loading; a step that stalls and
recovers): tests/test_faults.py.
"""

import re
import threading
import time
import types

import numpy
import pytest

import chainer

from chainer_resnet import watchdog


@pytest.fixture
def out_file(tmp_path):
    with open(tmp_path / 'stderr.txt', 'w+') as f:   # faulthandler needs a real file
        yield f


def read(f):
    f.flush()
    f.seek(0)
    return f.read()


def test_no_progress_is_reported_with_stacks_then_ends_the_job(out_file):
    ended, recorded = [], []
    dog = watchdog.Watchdog(0, report_after=0.3, abort_after=1.2, file=out_file,
                            on_abort=recorded.append, abort=ended.append)
    try:
        dog.start(7)
        deadline = time.monotonic() + 30
        while not ended and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dog.stop()
    text = read(out_file)
    assert ended == [4]                                  # outcome.EXIT_FAULT
    assert text.count('watchdog: rank 0 on host ') == 1  # reported once per stall
    assert 'since iteration 7; the Python stacks of its threads follow' in text
    assert 'most recent call first' in text              # faulthandler's stacks
    assert 'error: rank 0 on host ' in text and 'no training progress for 1 s' in text
    assert recorded and recorded[0].startswith('rank 0 on host ')


def test_progress_keeps_it_quiet_and_a_resumed_run_says_so(out_file):
    ended = []
    dog = watchdog.Watchdog(3, report_after=0.4, abort_after=30, file=out_file,
                            abort=ended.append)
    try:
        dog.start(0)
        for k in range(20):                              # steady progress: silent
            time.sleep(0.05)
            dog.beat(k)
        assert read(out_file) == ''
        time.sleep(1.0)                                  # a stall: reported
        for k in range(21, 31):                          # ... and over: progress again
            dog.beat(k)
            time.sleep(0.05)
    finally:
        dog.stop()
    text = read(out_file)
    assert text.count('watchdog: rank 3 on host') == 2      # the report, then its end
    assert 'since iteration 19' in text
    assert re.search(r'progress again at iteration (2\d|30)\n$', text), text[-300:]
    assert ended == []


def test_other_ranks_let_rank_0_speak_first(out_file, monkeypatch):
    monkeypatch.setattr(watchdog, '_ABORT_DELAY', 0.5)
    ended, recorded = [], []
    dog = watchdog.Watchdog(1, report_after=None, abort_after=0.2, file=out_file,
                            on_abort=recorded.append, abort=ended.append)
    try:
        start = time.monotonic()
        dog.start(0)
        while not ended and time.monotonic() - start < 30:
            time.sleep(0.05)
    finally:
        dog.stop()
    assert ended == [4] and time.monotonic() - start >= 0.7
    assert recorded == []                                # status.json is rank 0's
    assert 'watchdog: rank' not in read(out_file)        # no report asked for


class _Ranks:
    """StallMonitor's communicator: this rank, and what another rank contributes."""

    def __init__(self, rank, other_own_seconds, other_rank):
        self.rank = rank
        other_ms = int(other_own_seconds * 1000)
        self.other = numpy.array([(other_ms << 20) | other_rank, -other_ms])

        class mpi_comm:
            @staticmethod
            def Allreduce(send, receive, op=None):
                receive[...] = numpy.maximum(send, self.other)
        self.mpi_comm = mpi_comm


def _steps(monitor, steps, own=0.5):
    trainer = types.SimpleNamespace(updater=types.SimpleNamespace(iteration=0))
    observed = []
    for k, step in enumerate(steps, start=1):
        trainer.updater.iteration, trainer.updater.step_seconds = k, step
        trainer.updater.own_seconds = own
        observation = {}
        with chainer.reporter.Reporter().scope(observation):
            monitor(trainer)
        observed.append(observation)
    return observed


def test_a_late_rank_is_named_with_how_long_the_others_waited():
    lines = []
    dog = watchdog.Watchdog(0, report_after=None, abort_after=None)
    monitor = watchdog.StallMonitor(_Ranks(0, other_own_seconds=9.5, other_rank=1), dog,
                                    log_after=2.0, log=lines.append)
    observed = _steps(monitor, [10.0])
    assert dog.iteration == 1                            # every iteration beats
    assert lines == ["stall: iteration 1 took 10.0 s; rank 1 was late by 9.0 s: its data "
                     "loading and forward/backward took 9.5 s, the fastest rank's 0.5 s (the "
                     "others waited in the gradient allreduce)"]
    assert observed == [{'stall/seconds': 10.0, 'stall/rank': 1}]


def test_a_busy_machine_slows_every_rank_alike_and_is_no_stall():
    lines = []
    monitor = watchdog.StallMonitor(_Ranks(0, other_own_seconds=9.0, other_rank=1),
                                    watchdog.Watchdog(0, None, None), log_after=2.0,
                                    log=lines.append)
    observed = _steps(monitor, [10.0] * 6, own=9.5)      # both ranks slow, 0.5 s apart
    assert lines == [] and not any(observed)


def test_a_long_step_where_no_rank_was_late_is_logged_after_the_warm_up():
    lines = []
    monitor = watchdog.StallMonitor(_Ranks(0, other_own_seconds=0.2, other_rank=1),
                                    watchdog.Watchdog(0, None, None), log_after=2.0,
                                    log=lines.append)
    observed = _steps(monitor, [12.0, 1.0, 1.0, 1.0, 12.0, 2.5])
    assert lines == ['stall: iteration 5 took 12.0 s (the median step of this launch: 1.00 s); '
                     'no rank was late (own work at most 0.5 s, rank 0): the time went in the '
                     'gradient allreduce or the update (the network, NCCL)']
    assert observed[4] == {'stall/seconds': 12.0, 'stall/rank': -1}
    assert not observed[0]                               # the first step is not judged


def test_a_stall_is_logged_on_rank_0_only():
    lines = []
    monitor = watchdog.StallMonitor(_Ranks(1, other_own_seconds=9.0, other_rank=0),
                                    watchdog.Watchdog(1, None, None), log_after=2.0,
                                    log=lines.append)
    _steps(monitor, [10.0])
    assert lines == []


def test_stop_cancels_the_thread_and_the_c_level_backstop():
    dog = watchdog.Watchdog(0, report_after=0.2, abort_after=0.5, abort=lambda code: None)
    dog.start(0)
    dog.stop()
    assert not any(t.name == 'stall-watchdog' for t in threading.enumerate())
    time.sleep(0.8)                                      # nothing fires after stop()


def test_a_stream_without_a_file_descriptor_is_no_error(monkeypatch):
    """Under a notebook or pytest's capture, stderr has no fileno(): the watchdog
    still starts, and its stacks go to the process's own stderr (or, without
    one, are formatted by Python)."""
    import io
    stream = io.StringIO()
    dog = watchdog.Watchdog(0, report_after=10, abort_after=20, file=stream)
    dog.start(0)                       # arms the C-level backstop: needs a descriptor
    dog.stop()
    monkeypatch.setattr(watchdog.sys, '__stderr__', None)
    assert watchdog._fault_file(stream) is None
    dog.report(12.0)
    text = stream.getvalue()
    assert 'no progress for 12 s' in text and 'in report' in text   # this very frame
