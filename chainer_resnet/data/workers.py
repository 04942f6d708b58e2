"""Loader processes that end the job, never hang it, when one of them dies.

Chainer's ``MultiprocessIterator`` reads batches in a ``multiprocessing.Pool``.
When a pool process dies (the kernel's out-of-memory killer sends it SIGKILL;
an image decoder crashes; SIGBUS when ``/dev/shm`` is full), the pool starts a
replacement but the task the dead one held is lost: the batch never comes and
its rank waits forever (Chainer warns "Stalled dataset" and waits on) while
every other rank waits in the next allreduce. :class:`LoaderIterator` is that
iterator (chainer 7.8.1, the only version ``_compat`` accepts) with three
changes:

- the pool's processes are this module's (:class:`_Pool`), and whenever the
  rank takes a batch, and while it waits for one, it checks them: one that
  ended is a :class:`LoaderDied` error naming the rank, the host, the process,
  its signal and the likely cause;
- the loader processes ignore the stop signals (SIGTERM, SIGINT, SIGHUP):
  Slurm signals every process of a job, and a loader killed by the stop
  request would lose the batch its rank needs to reach the iteration boundary
  where it stops (chainer_resnet/signals.py; the trainer's forkserver is
  started with them ignored: communication.start_forkserver). Their rank ends
  them with SIGKILL (terminating the pool, also at interpreter exit); a loader
  whose parent (the forkserver, which ends with its rank) is gone gets
  SIGKILL from the kernel;
- finalizing ends the pool before it waits for the prefetch thread: Chainer's
  order (thread first) waits forever for a lost task.
"""

import multiprocessing
import multiprocessing.context
import multiprocessing.pool
import os
import signal
import socket
import sys
import threading

from chainer.iterators import multiprocess_iterator as chainer_mpi

# How often a waiting rank looks at its loader processes (seconds).
_POLL_SECONDS = 0.1
_RANK_VARIABLES = ('PMI_RANK', 'OMPI_COMM_WORLD_RANK', 'PMIX_RANK', 'SLURM_PROCID')


class LoaderDied(RuntimeError):
    """A loader process of this rank ended while the run needed it."""


def _rank():
    for variable in _RANK_VARIABLES:
        if os.environ.get(variable, '').isdigit():
            return int(os.environ[variable])
    return 0


def cause(exitcode):
    """``(what happened, the likely cause and what to do)`` for a loader's exit code."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() \
            else 'signal {}'.format(-exitcode)
        what = 'was killed by {}'.format(name)
        if -exitcode == signal.SIGKILL:
            return what, (
                'The kernel\'s out-of-memory killer does this when the node runs out of memory '
                '(dmesg or journalctl -k: "Out of memory: Killed process <pid>"), and so does a '
                'scheduler enforcing the job\'s memory limit (Slurm --mem, PBS mem=). Give the '
                'job more memory, or use fewer loader processes (--loaderjobs)')
        if -exitcode == signal.SIGBUS:
            return what, (
                'Batches travel through shared memory: /dev/shm is probably full (a '
                'container\'s default is 64 MB: docker run --shm-size). Make /dev/shm larger, '
                'or use fewer loader processes (--loaderjobs)')
        if -exitcode in (signal.SIGSEGV, signal.SIGABRT, signal.SIGILL):
            return what, (
                'A crash in native code: an image decoder on a damaged file, or a broken '
                'library (Pillow, libjpeg). Check the newest images with --check-images')
        return what, 'Something outside the job sent it that signal'
    return 'exited with status {}'.format(exitcode), 'Its error is printed above'


def _loader_setup(dataset, mem_size, mem_bulk):
    """Initialise a loader process: Chainer's set-up, the stop signals ignored, and an
    end with the process that started it (the forkserver, which ends with its rank)."""
    chainer_mpi._fetch_setup(dataset, mem_size, mem_bulk)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    parent = os.getppid()
    if sys.platform.startswith('linux'):
        import ctypes
        # PR_SET_PDEATHSIG: SIGKILL when the parent ends; the rank's own ending
        # reaches a loader that way even if it waits on a lock a dead loader held.
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))
    if os.getppid() != parent:       # the parent ended before prctl took effect
        os._exit(0)


def _killing(popen):
    # terminate() is also called directly on the Popen by multiprocessing's
    # clean-up at exit: SIGKILL, since the loaders ignore SIGTERM.
    popen.terminate = popen.kill
    return popen


# The context's process classes, terminated with SIGKILL; module-level, so
# that the forkserver can unpickle them by name.
class LoaderForkServerProcess(multiprocessing.context.ForkServerProcess):
    """A forkserver loader process whose terminate() is kill()."""

    @staticmethod
    def _Popen(process_obj):
        return _killing(multiprocessing.context.ForkServerProcess._Popen(process_obj))


class LoaderForkProcess(multiprocessing.context.ForkProcess):
    """A forked loader process whose terminate() is kill()."""

    @staticmethod
    def _Popen(process_obj):
        return _killing(multiprocessing.context.ForkProcess._Popen(process_obj))


class LoaderSpawnProcess(multiprocessing.context.SpawnProcess):
    """A spawned loader process whose terminate() is kill()."""

    @staticmethod
    def _Popen(process_obj):
        return _killing(multiprocessing.context.SpawnProcess._Popen(process_obj))


_CLASSES = {multiprocessing.context.ForkServerProcess: LoaderForkServerProcess,
            multiprocessing.context.ForkProcess: LoaderForkProcess,
            multiprocessing.context.SpawnProcess: LoaderSpawnProcess}


class _Pool(multiprocessing.pool.Pool):
    """A Pool that knows every process it started, and whose terminate() cannot hang.

    Python's own terminate sends SIGTERM (which the loaders ignore) and then
    takes the pool's queue locks, which a process that died holding them (an
    idle loader holds the task queue's read lock while it waits) never gives
    back. Here terminate() stops the replacement of processes, kills them,
    and leaves the pool's bookkeeping threads (daemons) to the interpreter's
    exit; close() and join() then return at once.
    """

    def __init__(self, *args, **kwargs):
        self.started = []
        self.ending = False
        # Pool builds its processes through self.Process (also in its worker thread).
        self.Process = self._process
        super().__init__(*args, **kwargs)

    def _process(self, ctx, *args, **kwargs):
        process = _CLASSES[ctx.Process](*args, **kwargs)
        self.started.append(process)
        return process

    def ended(self):
        """``(pid, exit code)`` of the processes that ended; [] once ending on purpose."""
        if self.ending:
            return []
        running = set(map(id, list(self._pool)))
        # A process leaves the pool's list only after the pool joined it: its exit
        # code is final, and reading it here races with nothing.
        return [(p.pid, p.exitcode) for p in list(self.started)
                if id(p) not in running and p.exitcode is not None]

    def terminate(self):
        if self.ending:
            return
        self.ending = True
        for handler in (self._worker_handler, self._task_handler, self._result_handler):
            handler._state = multiprocessing.pool.TERMINATE
        self._change_notifier.put(None)
        self._state = multiprocessing.pool.TERMINATE
        self._terminate.cancel()     # Python's clean-up, which may wait on a dead loader's lock
        started = [p for p in list(self.started) if p._popen is not None]
        for process in started:
            if process.exitcode is None:
                process.kill()
        for process in started:
            process.join(timeout=5)

    def close(self):
        if not self.ending:
            super().close()

    def join(self):
        if not self.ending:
            super().join()


class _Communicator(chainer_mpi._Communicator):
    """Chainer's batch queue, whose ``get()`` checks the loaders instead of waiting blindly."""

    watch = None                     # called with the lock held; raises LoaderDied

    def get(self):
        with self._lock:
            if self.watch is not None:
                self.watch()
            while not self._batch_queue:
                self._not_empty_cond.wait(_POLL_SECONDS)
                if not self._batch_queue and self.watch is not None:
                    self.watch()
            batch, prefetch_state = self._batch_queue.pop(0)
            self._not_full_cond.notify()
            return batch, prefetch_state


class _PrefetchLoop(chainer_mpi._PrefetchLoop):
    """Chainer's prefetch loop with :class:`_Pool` and a terminate() that cannot hang."""

    context = None

    def launch_thread(self):
        self._pool = _Pool(processes=self.n_processes, initializer=_loader_setup,
                           initargs=(self.dataset, self.mem_size, self.mem_bulk),
                           maxtasksperchild=self.maxtasksperchild,
                           context=self.context or multiprocessing.get_context())
        self._thread = threading.Thread(target=self._run, name='prefetch_loop', daemon=True)
        self._thread.start()
        return self._thread

    def terminate(self):
        self._terminating = True
        if self._pool is not None:
            self._pool.terminate()   # first: a lost task would keep the thread waiting
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(chainer_mpi._response_time)
        self._thread = None
        self._pool = None


class LoaderIterator(chainer_mpi.MultiprocessIterator):
    """``MultiprocessIterator`` whose dead loader process is an error, not a hang.

    Takes ``MultiprocessIterator``'s arguments (``dataset_timeout`` is unused:
    a stall of the whole rank is chainer_resnet/watchdog.py's), plus ``what``:
    the data it loads, for messages (``'training'``, ``'validation'``), and
    ``context``: the multiprocessing context (default: the start method set,
    the forkserver in the trainer).

    Raises (from ``next()``):
        LoaderDied: a loader process ended; the message names the rank, the
            host, the process, how it ended and the likely cause.
    """

    def __init__(self, dataset, batch_size, what='training', context=None, **kwargs):
        self.what = what
        self.context = context
        kwargs['dataset_timeout'] = None
        super().__init__(dataset, batch_size, **kwargs)

    def _initialize_loop(self):
        self._comm = _Communicator(self.n_prefetch, self.dataset_timeout)
        self._comm.watch = self._check
        self.reset()
        self._prefetch_loop = _PrefetchLoop(
            self.dataset, self.batch_size, self.repeat, self.n_processes, self.n_prefetch,
            self.shared_mem, self._comm, self.order_sampler, self._interruption_testing,
            self._maxtasksperchild)
        self._prefetch_loop.context = self.context

    def _check(self):
        loop = self._prefetch_loop
        pool = loop._pool if loop is not None else None
        if pool is None:
            return
        ended = pool.ended()
        if ended:
            pid, exitcode = ended[0]
            what, why = cause(exitcode)
            raise LoaderDied(
                'rank {} on host {}: loader process {} ({} data, one of {}) {}. {}. The '
                'snapshots are intact: re-launch to resume from the newest one.'.format(
                    _rank(), socket.gethostname(), pid, self.what, self.n_processes, what, why))
        if loop._thread is not None and not loop._thread.is_alive() and not loop._terminating:
            raise LoaderDied(
                'rank {} on host {}: the thread that collects {} batches from the loader '
                'processes ended unexpectedly (its error is printed above). Re-launch to resume '
                'from the newest snapshot.'.format(_rank(), socket.gethostname(), self.what))
