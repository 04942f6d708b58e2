"""No progress, no silence: a stalled rank is reported, and past a limit the job ends.

One rank that stops making progress (a read from a filesystem in D state, a
wedged NCCL call, a loader that hangs) stops every rank at the next
collective, and costs the whole allocation until its wall time. Every rank
runs a :class:`Watchdog`, a thread that watches the training loop's
progress (a beat per iteration, from :class:`StallMonitor`):

- after ``report_after`` seconds without progress it prints, once per stall,
  where this rank is: a ``watchdog:`` line (rank, host, iteration, seconds)
  and the Python stacks of all its threads (``faulthandler``). Every rank
  does, since every rank waits, so the job log shows the one rank that is
  somewhere else than in a collective. If progress resumes it says so;
- after ``abort_after`` seconds it ends the job: one ``error:`` line, rank 0
  writes ``status.json`` (``"failed": "stalled"``), and ``MPI_Abort`` with exit
  status 4 (outcome.EXIT_FAULT), so that the job ends and a re-launch resumes
  from the newest snapshot instead of the allocation burning to its limit.
  Ranks other than 0 wait 10 s before they abort, so that rank 0, if it can,
  writes the status and says it first;
- a process whose threads cannot run Python at all (a C call that holds the
  GIL forever) cannot run this thread either: ``faulthandler`` then dumps its
  stacks and ends it 60 s after ``abort_after`` (exit status 1), from a C
  thread that needs no GIL.

A stall that recovers is logged (:class:`StallMonitor`): a training step in
which one rank's own work (data loading and forward/backward, up to the
gradient allreduce) took more than ``report_after / 5`` seconds (60 by
default) longer than the fastest rank's is printed by rank 0 with its
iteration, its duration and the rank that was late, and recorded in the log
as ``stall/seconds`` and ``stall/rank`` (one small allreduce per iteration
finds them); so is a step that long in which no rank was late. A stall
outside the step (an evaluation, a snapshot) shows only in the reports above.

Defaults: report after 300 s, end after 900 s. They must never fire on a
healthy run: the longest healthy time between two iterations is a first
iteration that compiles CuPy kernels and tunes cuDNN (a minute or two from a
cold kernel cache), plus an evaluation of ImageNet's 50,000 validation images
on the fewest GPUs a run uses (about 100 s on one P100), plus a 120 s
filesystem hiccup: under 300 s. 900 s bounds what a stall costs: at 1,024
GPUs, 15 minutes are 256 GPU-hours. Operational flags of the trainer:
``--stall-report S`` and ``--stall-abort S`` (0: never).
"""

import collections
import faulthandler
import os
import socket
import sys
import threading
import time
import traceback

import numpy

from chainer.training import extension

REPORT_AFTER = 300.0
ABORT_AFTER = 900.0
# Ranks other than 0 give rank 0 this long to write the status and say it first.
_ABORT_DELAY = 10.0
# The C-level backstop fires this long after abort_after.
_BACKSTOP_MARGIN = 60.0
# A step this many times the median (and over report_after / 5) is a stall.
_STALL_FACTOR = 3.0
_RANK_BITS = 20


class Watchdog:
    """The thread that watches one rank's progress (see the module docstring).

    Args:
        rank (int): this rank.
        report_after (float or None): seconds without progress before the
            stacks are printed (None or 0: never).
        abort_after (float or None): seconds without progress before the job
            ends (None or 0: never).
        on_abort (callable): called with the error message on rank 0 before
            the abort (the trainer writes status.json there).
        abort (callable): ends the job with an exit status (default:
            ``communication.abort_if_distributed``, then ``os._exit``).
        clock: ``time.monotonic`` (tests pass a fake).
    """

    def __init__(self, rank=0, report_after=REPORT_AFTER, abort_after=ABORT_AFTER,
                 on_abort=None, abort=None, clock=time.monotonic, file=None):
        self.rank = rank
        self.report_after = report_after or None
        self.abort_after = abort_after or None
        self.on_abort = on_abort
        self._abort = abort or _abort
        self._clock = clock
        self._file = file or sys.stderr
        self.iteration = None
        self.last_progress = None
        self.reported = False
        self._stop = threading.Event()
        self._thread = None
        self._backstop = False

    def start(self, iteration=0):
        """Start watching from now (iteration `iteration`)."""
        self.beat(iteration)
        if self._thread is None and (self.report_after or self.abort_after):
            self._arm_backstop()
            self._thread = threading.Thread(target=self._watch, name='stall-watchdog',
                                            daemon=True)
            self._thread.start()
        return self

    def beat(self, iteration):
        """Progress: the loop reached `iteration` (called once per iteration; cheap)."""
        self.iteration = iteration
        self.last_progress = self._clock()

    def stop(self):
        """Stop watching (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        if self._backstop:
            faulthandler.cancel_dump_traceback_later()
            self._backstop = False

    def _arm_backstop(self):
        if self.abort_after and _fault_file(self._file) is not None:
            faulthandler.dump_traceback_later(self.abort_after + _BACKSTOP_MARGIN, exit=True,
                                              file=_fault_file(self._file))
            self._backstop = True

    def _watch(self):
        period = min(t for t in (self.report_after, self.abort_after) if t) / 10
        period = min(max(period, 0.2), 10.0)
        seen = self.last_progress
        while not self._stop.wait(period):
            last, iteration = self.last_progress, self.iteration
            if last != seen:
                seen = last
                self._arm_backstop()
                if self.reported:
                    self._say('watchdog: rank {} on host {}: progress again at iteration {}'
                              .format(self.rank, socket.gethostname(), iteration))
                    self.reported = False
            idle = self._clock() - last
            if self.report_after and idle >= self.report_after and not self.reported:
                self.reported = True
                self.report(idle)
            if self.abort_after and idle >= self.abort_after:
                self._end(idle)
                return

    def report(self, idle):
        """Print where this rank is: one line, then the stacks of all its threads."""
        self._say('watchdog: rank {} on host {} (pid {}): no progress for {:.0f} s, since '
                  'iteration {}; the Python stacks of its threads follow (a rank that is not '
                  'waiting in a collective is the one the others wait for):'.format(
                      self.rank, socket.gethostname(), os.getpid(), idle, self.iteration))
        target = _fault_file(self._file)
        if target is not None:
            faulthandler.dump_traceback(file=target, all_threads=True)
        else:                 # a stream without a file descriptor (a notebook, a capture)
            for ident, frame in sys._current_frames().items():
                self._file.write('Thread 0x{:x} (most recent call last):\n{}\n'.format(
                    ident, ''.join(traceback.format_stack(frame))))
        self._file.flush()

    def _end(self, idle):
        message = (
            'rank {} on host {}: no training progress for {:.0f} s (since iteration {}; the '
            'stacks of every rank that could print them are above, after "watchdog:" lines). '
            'A stalled rank holds the whole allocation, so the job ends here; the snapshots '
            'are intact: re-launch to resume from the newest. Check the node of the rank '
            'that was not waiting in a collective (a process in state D waits for a '
            'filesystem; --stall-abort sets this limit).'.format(
                self.rank, socket.gethostname(), idle, self.iteration))
        if self.rank != 0:
            time.sleep(_ABORT_DELAY)
        self._say('error: ' + message)
        if self.rank == 0 and self.on_abort is not None:
            try:
                self.on_abort(message)
            except Exception as e:  # the abort must happen whatever the status write does
                self._say('watchdog: could not record the stall in status.json: {}'.format(e))
        from chainer_resnet import outcome
        self._abort(outcome.EXIT_FAULT)

    def _say(self, text):
        print(text, file=self._file, flush=True)


def _fault_file(stream):
    """`stream` if faulthandler can write to it (it needs a file descriptor), else
    the process's original stderr if that has one, else None."""
    for candidate in (stream, sys.__stderr__):
        try:
            if candidate is not None and candidate.fileno() >= 0:
                return candidate
        except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation too
            continue
    return None


def _abort(code):
    from chainer_resnet import communication
    communication.abort_if_distributed(code)
    os._exit(code)


class StallMonitor(extension.Extension):
    """Each iteration: a beat for the :class:`Watchdog`, and a recovered stall logged.

    One small allreduce (MAX of two integers) per iteration gives every rank
    the longest own work in the step (``updater.own_seconds``: data loading
    and forward/backward, up to the gradient allreduce), whose it was, and
    the shortest. Their difference is how long the fastest rank waited for
    the slowest in the gradient allreduce: a measure that a busy machine,
    which slows every rank alike, leaves alone. Rank 0 prints, and reports
    for the log as ``stall/seconds`` and ``stall/rank``:

    - a step in which one rank was late by more than ``log_after`` seconds,
      naming it;
    - a step longer than ``log_after`` and 3 times the median step of the
      launch in which no rank was late (the time went in the allreduce or the
      update: the network, NCCL); the first three steps, which compile and
      warm up, are not judged.

    Args:
        comm: the ChainerMN communicator.
        watchdog (Watchdog): started at the first iteration of the loop
            (stopped by the trainer after the launch's last save).
        log_after (float): the shortest stall logged (default: the
            watchdog's report_after / 5, 60 s).
    """

    trigger = 1, 'iteration'
    priority = extension.PRIORITY_WRITER

    def __init__(self, comm, watchdog, log_after=None, log=None):
        self.comm = comm
        self.watchdog = watchdog
        report = watchdog.report_after or REPORT_AFTER
        self.log_after = log_after if log_after is not None else report / 5
        self._log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self._steps = collections.deque(maxlen=50)
        self._buffer = numpy.zeros(2, dtype=numpy.int64)

    def initialize(self, trainer):
        self.watchdog.start(trainer.updater.iteration)

    def __call__(self, trainer):
        from mpi4py import MPI
        updater = trainer.updater
        self.watchdog.beat(updater.iteration)
        own, step = getattr(updater, 'own_seconds', None), getattr(updater, 'step_seconds',
                                                                     None)
        if own is None or step is None:
            return
        # Milliseconds above the rank in one int64, so MAX gives the longest and
        # whose; the shortest as the MAX of its negative.
        own_ms = min(int(own * 1000), 2 ** 42)
        send = numpy.array([(own_ms << _RANK_BITS) | self.comm.rank, -own_ms],
                           dtype=numpy.int64)
        self.comm.mpi_comm.Allreduce(send, self._buffer, op=MPI.MAX)
        late_rank = int(self._buffer[0]) & ((1 << _RANK_BITS) - 1)
        longest = (int(self._buffer[0]) >> _RANK_BITS) / 1000.0
        shortest = -int(self._buffer[1]) / 1000.0
        typical = float(numpy.median(self._steps)) if len(self._steps) >= 3 else None
        self._steps.append(step)
        if longest - shortest > self.log_after:
            what = ('rank {} was late by {:.1f} s: its data loading and forward/backward took '
                    '{:.1f} s, the fastest rank\'s {:.1f} s (the others waited in the gradient '
                    'allreduce)'.format(late_rank, longest - shortest, longest, shortest))
        elif typical is not None and step > max(self.log_after, _STALL_FACTOR * typical):
            what = ('no rank was late (own work at most {:.1f} s, rank {}): the time went in '
                    'the gradient allreduce or the update (the network, NCCL)'.format(
                        longest, late_rank))
            late_rank = -1
        else:
            return
        import chainer
        chainer.report({'stall/seconds': step, 'stall/rank': late_rank})
        if self.comm.rank == 0:
            self._log('stall: iteration {} took {:.1f} s{}; {}'.format(
                updater.iteration, step, '' if typical is None else
                ' (the median step of this launch: {:.2f} s)'.format(typical), what))
