"""One running job per output folder: the lock on ``<out>/run.lock``.

Two jobs on one ``--out`` (a resubmitted chain overlapping its previous job,
a user who did not see the first one) would overwrite each other's snapshots,
and the second one's start-up clean-up would delete the first one's snapshot
in flight. Rank 0 of a launch therefore takes :class:`RunLock` once, before it
touches anything in the folder, and holds it for the whole launch; the other
ranks learn the outcome in the broadcast that follows (the trainer's step 4),
so a refusal is one ``error:`` line said once, at any number of ranks.

What holds the lock, on the filesystems clusters write results to:

- **A POSIX record lock** (``fcntl``, exclusive, never waited for) on
  ``run.lock``. It is the primitive that is coherent across nodes on the most
  of them: NFSv3 serves it through the NLM lock manager (``lockd``), NFSv4 in
  the protocol itself (with a lease, 90 s by default, after which a dead
  client's lock is dropped); GPFS/Spectrum Scale and CephFS keep it
  cluster-wide; Lustre does when mounted with ``-o flock``. The kernel drops
  it when its process ends, however it ends (a crash, ``SIGKILL``, the OOM
  killer), so it never outlives its job on a live node. It is released when
  *any* descriptor of the file is closed by its process: this module opens
  ``run.lock`` once and nothing else opens it.
- **A holder record** in the file: host, process id (with its start time and
  the host's boot id, so a reused pid is not taken for the holder), the
  scheduler's job id, the start time, and a heartbeat that a thread rewrites
  every ``heartbeat`` seconds (10 by default; one small write and ``fsync`` on
  rank 0). A job that ends cleanly empties it. It serves where the lock
  primitive falls short:

  - locks that exist but are node-local (Lustre ``-o localflock``, BeeGFS
    without global locks, NFS mounted ``nolock`` or ``local_lock=all``): the
    lock is granted although a job on another node holds it. A record left
    by another host is therefore watched for up to 2.5 heartbeats (25 s) before
    it is trusted to be dead: a beating heartbeat means a live job, and the
    launch is refused. Watching the counter, not comparing clocks, keeps this
    right when the nodes' clocks disagree;
  - no lock at all (Lustre ``-o noflock`` answers ``ENOSYS``, NFS without
    ``lockd`` ``ENOLCK``): the launch says so once and relies on the record
    alone (two launches that start within the same second can both pass).

Who may take a lock over:

- a holder on this host that no longer runs (its process is gone, or the pid
  now belongs to another process, or the host rebooted): taken over, with a
  message naming it;
- a holder on another host whose heartbeat stopped (a job killed without its
  clean-up, a node that crashed): taken over, with a message, once the lock
  itself was granted (NLM keeps a crashed NFSv3 client's lock until it reboots:
  then the lock is not granted and the launch is refused);
- anything else is never stolen silently: ``take_over=True`` (the trainer's
  ``--take-over-lock``) overrides a refusal, and says what it overrode.

Start-up clean-up of a run folder (temporary files of interrupted writes,
:func:`chainer_resnet.snapshots.remove_leftovers`) runs only after the lock is
held, so it never touches a live job's files.
"""

import atexit
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time

FILENAME = 'run.lock'
# Seconds between two heartbeats of the holder.
HEARTBEAT_SECONDS = 10.0
# A record left by another host is watched this many heartbeats for a sign of life.
WATCH_HEARTBEATS = 2.5
# Errors of a filesystem without (working) POSIX locks, as opposed to a held lock.
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
# The scheduler variables that name a job, and how to end one there.
_SCHEDULERS = (('SLURM_JOB_ID', 'Slurm', 'scancel {}'), ('PBS_JOBID', 'PBS', 'qdel {}'),
               ('LSB_JOBID', 'LSF', 'bkill {}'), ('FLUX_JOB_ID', 'Flux', 'flux cancel {}'))


class LockError(RuntimeError):
    """The output folder is in use by another job, or its lock file cannot be used."""


def path(out):
    """The lock file of the run in folder `out`."""
    return os.path.join(out, FILENAME)


def _boot_id():
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            return f.read().strip()
    except OSError:
        return None


def _process_start(pid):
    """The start time of process `pid` (clock ticks since boot), or None if it does not run.

    A zombie (state Z: ended, not yet reaped by its parent, which in a
    container may be a PID 1 that never reaps) or a dying process (X) does
    not run: it holds no file lock any more.
    """
    try:
        with open('/proc/{}/stat'.format(pid)) as f:
            fields = f.read().rsplit(')', 1)[1].split()
        if fields[0] in ('Z', 'X', 'x'):
            return None
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _job():
    for variable, scheduler, _ in _SCHEDULERS:
        if os.environ.get(variable):
            return {'scheduler': scheduler, 'id': os.environ[variable]}
    return None


def identity(heartbeat=HEARTBEAT_SECONDS):
    """The holder record of this process (without its heartbeat fields)."""
    pid = os.getpid()
    return {'host': socket.gethostname(), 'pid': pid, 'pid_start': _process_start(pid),
            'boot_id': _boot_id(), 'job': _job(),
            'started': datetime.datetime.now(datetime.timezone.utc).strftime(
                '%Y-%m-%d %H:%M:%S UTC'),
            'command': ' '.join(os.path.basename(a) for a in sys.argv[:1]),
            'heartbeat_seconds': heartbeat}


def describe(holder, now=None):
    """``'host H, process P, Slurm job J, started T, last heartbeat S s ago'``."""
    parts = ['host {}'.format(holder.get('host')), 'process {}'.format(holder.get('pid'))]
    job = holder.get('job')
    if job:
        parts.append('{} job {}'.format(job.get('scheduler'), job.get('id')))
    if holder.get('started'):
        parts.append('started {}'.format(holder['started']))
    beat = holder.get('heartbeat')
    if isinstance(beat, (int, float)):
        age = max(0.0, (now if now is not None else time.time()) - beat)
        parts.append('last heartbeat {:.0f} s ago'.format(age))
    return ', '.join(parts)


def _how_to_end(holder):
    job = holder.get('job') or {}
    for _, scheduler, command in _SCHEDULERS:
        if job.get('scheduler') == scheduler:
            return ' (or end it: {})'.format(command.format(job.get('id')))
    return ' (or end it: kill {} on {})'.format(holder.get('pid'), holder.get('host'))


class RunLock:
    """The lock of one output folder, for the life of a launch (see the module docstring).

    Args:
        out (str): the run's output folder (it must exist).
        take_over (bool): override a refusal (the trainer's ``--take-over-lock``).
        heartbeat (float): seconds between two heartbeats of the holder.
        log (callable): where notes go (default: stderr).
        sleep, clock: ``time.sleep`` and ``time.time`` (tests pass fakes).

    :meth:`acquire` raises :class:`LockError` with the holder and what to do;
    :meth:`release` (also registered with ``atexit``) empties the record and
    drops the lock. The lock file itself stays: removing it would let a job
    that opened it just before lock an orphaned file while a third creates
    and locks a new one.
    """

    def __init__(self, out, take_over=False, heartbeat=HEARTBEAT_SECONDS, log=None,
                 sleep=time.sleep, clock=time.time):
        self.out = out
        self.path = path(out)
        self.take_over = take_over
        self.heartbeat = float(heartbeat)
        self._log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self._sleep = sleep
        self._clock = clock
        self._fd = None
        self._record = None
        self._stop = threading.Event()
        self._thread = None
        self.locked = False          # the POSIX lock is held (not only the record)

    # --- acquire ------------------------------------------------------------------
    def acquire(self):
        """Take the lock, or raise :class:`LockError` naming the holder and what to do."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise LockError('cannot open the lock file {} ({}). Pass an --out you can '
                            'write to.'.format(self.path, e.strerror or e)) from None
        try:
            self._take(fd)
        except BaseException:
            os.close(fd)             # drops the POSIX lock, if it was taken
            raise
        self._fd = fd
        self._record = dict(identity(self.heartbeat), beats=0)
        self._write_record()
        self._thread = threading.Thread(target=self._beat, name='run-lock-heartbeat',
                                        daemon=True)
        self._thread.start()
        atexit.register(self.release)
        return self

    def _take(self, fd):
        held_elsewhere = False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.locked = True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                held_elsewhere = True
            elif e.errno in _NO_LOCKS:
                self._log('run.lock: {} cannot hold POSIX locks ({}: {}); relying on the '
                          'holder record and its heartbeat alone'.format(
                              self.out, errno.errorcode.get(e.errno, e.errno), e.strerror))
            else:
                raise LockError('cannot lock {} ({})'.format(self.path, e.strerror or e))
        holder = self._read(fd)
        if held_elsewhere:
            self._refuse_or_override(holder or {}, 'holds its lock')
            self._log('run.lock: --take-over-lock: running although {} holds the lock; the '
                      'file lock stays with it'.format(describe(holder or {})))
            return
        if not holder or self._is_me(holder):
            return
        if holder.get('host') == socket.gethostname():
            if holder.get('boot_id') == _boot_id() and self._alive_here(holder):
                self._refuse_or_override(holder, 'is running')
                return
            self._log('run.lock: taking over the lock of {}: that process no longer runs '
                      '(it ended without releasing the lock)'.format(describe(holder)))
            return
        if self.take_over:
            self._log('run.lock: --take-over-lock: taking over from {}'.format(
                describe(holder)))
            return
        if self._beating(fd, holder):
            self._refuse_or_override(holder, 'is running (its heartbeat goes on although the '
                                     'lock was granted: file locks on this filesystem are '
                                     'probably node-local)')
            return
        self._log('run.lock: taking over the lock of {}: its heartbeat stopped (the job ended '
                  'without releasing the lock)'.format(describe(holder, self._clock())))

    def _refuse_or_override(self, holder, what):
        if self.take_over:
            return
        raise LockError(
            'the output folder {} is in use by another job: {} ({} {}). Two jobs on one '
            'folder overwrite each other\'s snapshots. Wait for that job to end{}, or pass '
            'another --out. If it does not run any more (its node crashed), pass '
            '--take-over-lock.'.format(self.out, describe(holder, self._clock()), self.path,
                                       what, _how_to_end(holder)))

    def _is_me(self, holder):
        return (holder.get('host') == socket.gethostname() and holder.get('pid') == os.getpid()
                and holder.get('boot_id') == _boot_id())

    @staticmethod
    def _alive_here(holder):
        pid = holder.get('pid')
        if not isinstance(pid, int) or pid <= 0:
            return False
        start = _process_start(pid)
        if start is None:
            return False
        recorded = holder.get('pid_start')
        return recorded is None or recorded == start

    def _beating(self, fd, holder):
        """Whether `holder`'s heartbeat counter moves within WATCH_HEARTBEATS of its period."""
        period = holder.get('heartbeat_seconds')
        period = float(period) if isinstance(period, (int, float)) and period > 0 else \
            HEARTBEAT_SECONDS
        window = WATCH_HEARTBEATS * period
        self._log('run.lock: the lock of {} is free but its record was not cleared (a job that '
                  'ended without its clean-up, or a live job on a filesystem with node-local '
                  'locks): watching its heartbeat for up to {:.0f} s'.format(
                      self.out, window))
        waited = 0.0
        while waited < window:
            step = min(1.0, window - waited)
            self._sleep(step)
            waited += step
            now = self._read(fd)
            if now and now.get('beats') != holder.get('beats'):
                return True
        return False

    @staticmethod
    def _read(fd):
        """The record in the lock file: a dict, or None (empty, or not a record)."""
        for attempt in range(3):
            try:
                data = os.pread(fd, 1 << 16, 0)
            except OSError:
                return None
            if not data.strip():
                return None
            try:
                record = json.loads(data.decode('utf-8'))
                return record if isinstance(record, dict) else None
            except ValueError:
                time.sleep(0.1)      # a heartbeat being rewritten: read again
        return None

    # --- hold ---------------------------------------------------------------------
    def _write_record(self):
        self._record['heartbeat'] = self._clock()
        data = json.dumps(self._record, sort_keys=True).encode('utf-8') + b'\n'
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)

    def _beat(self):
        while not self._stop.wait(self.heartbeat):
            try:
                self._record['beats'] += 1
                self._write_record()
            except OSError:
                return               # the folder went away: the POSIX lock still holds

    # --- release ------------------------------------------------------------------
    def release(self):
        """Empty the record and drop the lock (idempotent)."""
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)           # drops the POSIX lock
        self._fd = None
        self.locked = False


def take(comm, out, take_over=False, check_folder=None, errors=()):
    """The :class:`RunLock` of `out`, taken by rank 0 alone, once per launch.

    Rank 0 runs ``check_folder(out)`` (creating and checking the folder), then
    :meth:`RunLock.acquire`; every rank learns the outcome in one broadcast
    (:func:`chainer_resnet.communication.from_rank0`), so a :class:`LockError`
    (or a type in `errors`) is raised on every rank together and said once.
    The returned lock is held on rank 0 only; :meth:`RunLock.release` is a
    no-op on the others.
    """
    from chainer_resnet import communication
    lock = RunLock(out, take_over=take_over)

    def on_rank0():
        if check_folder is not None:
            check_folder(out)
        lock.acquire()
    communication.from_rank0(comm, on_rank0, errors=(LockError,) + tuple(errors))
    return lock
