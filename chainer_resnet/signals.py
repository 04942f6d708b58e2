"""A wall-time warning signal stops every rank cleanly; a rank's data error stops them all.

:class:`SignalFlag` records the signal for the whole life of the process;
:class:`StopOnSignal` makes every rank stop at the same iteration, with a
snapshot, when any rank received it, and ends every rank with one message
when any rank's data failed in the iteration (the updater's ``failed``).
"""

import signal

from chainer.training import extension

from chainer_resnet import communication


class SignalFlag:
    """A flag set when ``signum`` arrives, for the whole life of the process.

    The job script forwards the scheduler's wall-time warning to every rank
    whenever it comes: during start-up, training, or the final evaluation.
    SIGUSR1's default action terminates the process, so the handler is
    installed first thing in ``main()`` and kept until it returns; a warning
    that arrives outside the training loop is then harmless (before it, the
    first iteration stops; after it, the run is finishing anyway).
    ``restore()`` puts the previous handler back (for in-process callers).
    """

    def __init__(self, signum=signal.SIGUSR1):
        self.signum = signum
        self.received = False
        self._previous = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def restore(self):
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None


class StopOnSignal(extension.Extension):
    """Stop every rank after the current iteration when any rank receives ``signum``.

    For wall-time limits: the scheduler (Slurm's ``--signal=B:USR1@T``) warns
    the job before killing it; the job script forwards the signal to the
    ranks. The handler only sets a flag; each iteration one small allreduce
    (MAX) tells every rank whether any rank was signalled, so all stop at the
    same iteration. Then the chunk stop is moved to this iteration: the
    snapshot trigger fires (it includes the chunk end) and the trainer stops
    cleanly. Priority above the BN statistics allreduce and the snapshot, so
    they see the new end at the same iteration.

    The same allreduce (a bitwise OR) carries whether this rank's data failed
    in the iteration (``trainer.updater.failed``: too many unreadable images,
    found by one rank while the others trained): then every rank raises that
    error together (:func:`~chainer_resnet.communication.agree`), before
    any snapshot or evaluation of the iteration, and rank 0 says it once.

    Args:
        comm: the ChainerMN communicator.
        chunk_stop (ChunkStopTrigger): the trainer's stop trigger.
        signum: the signal (default SIGUSR1).
        flag (SignalFlag): a process-wide flag installed by the caller (the
            trainer's ``main()``); without one, the extension installs its own
            handler for the duration of ``trainer.run()``.
    """

    trigger = 1, 'iteration'
    priority = extension.PRIORITY_WRITER + 20

    def __init__(self, comm, chunk_stop, signum=signal.SIGUSR1, flag=None):
        if flag is not None and flag.signum != signum:
            raise ValueError('flag is for signal {}, not {}'.format(flag.signum, signum))
        self.comm = comm
        self.chunk_stop = chunk_stop
        self.signum = signum
        self.flag = flag
        self.stopped_by = None
        self._own = None

    @property
    def requested(self):
        return bool(self.flag is not None and self.flag.received)

    def initialize(self, trainer):
        if self.flag is None:
            self.flag = self._own = SignalFlag(self.signum)

    def __call__(self, trainer):
        from mpi4py import MPI
        failed = getattr(trainer.updater, 'failed', None)
        state = self.comm.mpi_comm.allreduce(
            int(self.requested) | (2 if failed is not None else 0), op=MPI.BOR)
        if state & 2:
            communication.agree(self.comm.mpi_comm, failed)    # raises on every rank
        if state & 1:
            self.chunk_stop.end = trainer.updater.iteration
            self.stopped_by = signal.Signals(self.signum).name

    def finalize(self):
        if self._own is not None:
            self._own.restore()
            self._own = self.flag = None
