"""Stop requests: the wall-time warning and the termination signals stop every rank cleanly.

Schedulers and terminals ask a job to stop with a signal before they kill it:
Slurm sends SIGTERM at the time limit, on ``scancel`` and on preemption, and
SIGKILL ``KillWait`` seconds later (30 by default); PBS sends SIGTERM at the
walltime and on ``qdel``, SIGKILL ``kill_delay`` seconds later (a queue
setting); Ctrl-C is SIGINT, a closed terminal SIGHUP; the job scripts'
wall-time warning is SIGUSR1 (jobs/common.sh). Each is a *stop request*:

- :class:`SignalFlag` records them for the whole life of the process
  (installed first thing in the trainer's ``main()``; a signal the process
  inherited as ignored, such as SIGHUP under ``nohup``, stays ignored);
- :class:`StopOnSignal` makes every rank stop at the same iteration, with a
  snapshot, when any rank received one (one small allreduce per iteration);
  ``status.json`` then says which signal stopped the run; the same
  allreduce ends every rank with one message when any rank's data failed
  in the iteration (the updater's ``failed``);
- a second termination signal (SIGTERM, SIGINT or SIGHUP) more than
  :data:`REPEAT_WINDOW` seconds after the first ends the process at once
  (exit status 128 + the signal's number), even while it waits in a
  collective or a read: the work since the newest snapshot is lost. A
  repeat within the window is the same request: one stop reaches a rank
  up to three times within milliseconds (Slurm signals every process of
  the job, the job script passes it on to the launcher, and the launcher
  forwards it to every rank).

The first request is seen by the training loop at the next iteration
boundary; the second must work when the main thread is blocked in C (an
allreduce waiting for a stalled rank), where no Python signal handler runs.
So the handlers also write to a wake-up pipe (``signal.set_wakeup_fd``) that
a thread reads: it acts on a repeat at once, whatever the main thread does.
"""

import os
import signal
import threading
import time

from chainer.training import extension

from chainer_resnet import communication

# The termination signals, strongest first; SIGUSR1 is the wall-time warning.
TERMINATION = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_SIGNALS = TERMINATION + (signal.SIGUSR1,)
# A repeat of a termination signal within this many seconds is the same request.
REPEAT_WINDOW = 2.0
# Which request wins when ranks got different ones: the allreduce takes the highest.
_STRENGTH = {signal.SIGUSR1: 1, signal.SIGHUP: 2, signal.SIGINT: 3, signal.SIGTERM: 4}
# A rank's data failed in the iteration: above every request.
_FAILED = 8


def exit_status(name):
    """The trainer's exit status after a stop requested by signal `name` (or None).

    0 for none and for SIGUSR1 (the job's own wall-time warning: the chain
    goes on); 128 + the number for a termination signal (the shell's
    convention for "ended by that signal": 143 SIGTERM, 130 SIGINT, 129
    SIGHUP), so that a script or scheduler never takes it for a success.
    """
    if name is None or name == 'SIGUSR1':
        return 0
    return 128 + int(signal.Signals[name])


class SignalFlag:
    """The stop requests this process received, for its whole life (see the module docstring).

    Args:
        signums: the signals to record (default :data:`STOP_SIGNALS`).
        repeat_window (float): seconds within which a repeated termination
            signal is the same request.
        log (callable): where the receipt lines go (default: stderr, on rank 0).

    Attributes:
        rank (int or None): the rank, once known (the trainer sets it after
            creating the communicator); before, the launcher's rank variable.
        received (dict): signal name -> time first received.

    ``restore()`` puts the previous handlers back (for in-process callers).
    """

    def __init__(self, *signums, repeat_window=REPEAT_WINDOW, log=None):
        self.signums = tuple(signums) or STOP_SIGNALS
        self.repeat_window = repeat_window
        self.rank = None
        self.received = {}
        self._log = log
        self._first_termination = None
        self._lock = threading.RLock()   # a handler may interrupt another
        self._previous = {}
        for signum in self.signums:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue             # nohup, or a background job's SIGINT: stays ignored
            self._previous[signum] = signal.signal(signum, self._handle)
        self._pipe = self._thread = self._previous_wakeup = None
        try:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except ValueError:           # not the main thread: the handler acts alone
            os.close(read)
            os.close(write)
            return
        self._pipe = (read, write)
        self._thread = threading.Thread(target=self._watch, name='stop-requests', daemon=True)
        self._thread.start()

    @property
    def signum(self):
        """The strongest signal received (a ``signal.Signals``), or None."""
        if not self.received:
            return None
        return max((signal.Signals[name] for name in self.received), key=_STRENGTH.get)

    def _handle(self, signum, frame):
        # The main thread, between two bytecodes: record it now, so the next
        # iteration boundary sees it; the watcher thread acts on repeats.
        self._record(signum, from_watcher=self._thread is None)

    def _watch(self):
        read = self._pipe[0]
        while True:
            try:
                data = os.read(read, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in self.signums:
                    self._record(signum, from_watcher=True)

    def _record(self, signum, from_watcher):
        name = signal.Signals(signum).name
        now = time.monotonic()
        with self._lock:
            self.received.setdefault(name, now)
            if not from_watcher or signum not in TERMINATION:
                return
            if self._first_termination is not None:
                if now - self._first_termination <= self.repeat_window:
                    return
                self._say('stop: a second {}: exiting at once; the work since the newest '
                          'snapshot is lost (re-launch to continue from it)'.format(name))
                os._exit(128 + signum)
            self._first_termination = now
        self._say('stop: got {}: every rank stops at the next iteration boundary, with a '
                  'snapshot; a second {} more than {:.0f} s later stops at once'.format(
                      name, name, self.repeat_window))

    def _say(self, text):
        if self._log is not None:
            self._log(text)
        elif (self.rank if self.rank is not None else communication.process_rank()) == 0:
            os.write(2, (text + '\n').encode())   # unbuffered: also right before os._exit

    def restore(self):
        """Put the previous handlers and wake-up descriptor back; stop the watcher."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._pipe[1])  # the watcher reads the end of the pipe and ends
            self._thread.join()
            os.close(self._pipe[0])
            self._pipe = None


class StopOnSignal(extension.Extension):
    """Stop every rank after the current iteration when any rank received a stop request.

    For wall-time limits and the scheduler's termination signals (module
    docstring): the handlers only record; each iteration one small allreduce
    (MAX) tells every rank whether any rank was asked to stop, and by which
    signal (the strongest wins: SIGTERM > SIGINT > SIGHUP > SIGUSR1), so all
    stop at the same iteration. Then the chunk stop is moved to this
    iteration: the snapshot trigger fires (it includes the chunk end) and the
    trainer stops cleanly. A request during start-up stops the launch after
    its first iteration. Priority above the BN statistics allreduce and the
    snapshot, so they see the new end at the same iteration.

    The same allreduce carries whether this rank's data failed
    in the iteration (``trainer.updater.failed``: too many unreadable images,
    found by one rank while the others trained): then every rank raises that
    error together (:func:`~chainer_resnet.communication.agree`), before
    any snapshot or evaluation of the iteration, and rank 0 says it once.

    Args:
        comm: the ChainerMN communicator.
        chunk_stop (ChunkStopTrigger): the trainer's stop trigger.
        flag (SignalFlag): a process-wide flag installed by the caller (the
            trainer's ``main()``); without one, the extension installs its own
            for :data:`STOP_SIGNALS` for the duration of ``trainer.run()``.

    Attributes:
        stopped_by (str or None): the name of the signal that stopped the run.
    """

    trigger = 1, 'iteration'
    priority = extension.PRIORITY_WRITER + 20

    def __init__(self, comm, chunk_stop, flag=None):
        self.comm = comm
        self.chunk_stop = chunk_stop
        self.flag = flag
        self.stopped_by = None
        self._own = None

    def initialize(self, trainer):
        if self.flag is None:
            self.flag = self._own = SignalFlag()
        if self.flag.rank is None:
            self.flag.rank = self.comm.rank

    def __call__(self, trainer):
        from mpi4py import MPI
        signum = self.flag.signum
        failed = getattr(trainer.updater, 'failed', None)
        # One MAX carries both: a rank's data failure (8) outranks any request.
        state = self.comm.mpi_comm.allreduce(
            (_FAILED if failed is not None else 0) + (_STRENGTH[signum] if signum else 0),
            op=MPI.MAX)
        if state >= _FAILED:
            communication.agree(self.comm.mpi_comm, failed)    # raises on every rank
        strongest = state
        if strongest:
            self.chunk_stop.end = trainer.updater.iteration
            self.stopped_by = next(s.name for s, k in _STRENGTH.items() if k == strongest)

    def finalize(self):
        if self._own is not None:
            self._own.restore()
            self._own = self.flag = None
