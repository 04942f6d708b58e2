"""chainer_resnet.runlock: one running job per output folder.

Holders are real processes (POSIX locks belong to a process: a lock held by
this test process would not conflict with itself). Two launches of the
trainer on one folder: tests/test_faults.py.
"""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from chainer_resnet import communication, runlock

HOLDER = """
import sys
from chainer_resnet import runlock
lock = runlock.RunLock(sys.argv[1], heartbeat=float(sys.argv[2])).acquire()
print('held', flush=True)
sys.stdin.read()                     # until the test closes stdin
if sys.argv[3] != 'release':
    import os
    os._exit(9)                      # as a SIGKILL would: no clean-up, the record stays
lock.release()
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the lock of tmp_path; stops it at the end."""
    procs = []

    def start(heartbeat=10.0, end='release', **env):
        proc = subprocess.Popen([sys.executable, '-c', HOLDER, str(tmp_path), str(heartbeat),
                                 end], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=dict(os.environ, **env), text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == 'held'
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=30)


def record(out):
    text = (out / runlock.FILENAME).read_text()
    return json.loads(text) if text.strip() else None


def test_the_holder_is_recorded_and_a_release_empties_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    lock = runlock.RunLock(str(tmp_path), heartbeat=0.05).acquire()
    try:
        assert lock.locked
        held = record(tmp_path)
        assert held['host'] == socket.gethostname() and held['pid'] == os.getpid()
        assert held['job'] == {'scheduler': 'Slurm', 'id': '4242'}
        import time
        time.sleep(0.5)
        assert record(tmp_path)['beats'] > 0              # the heartbeat goes on
    finally:
        lock.release()
    assert record(tmp_path) is None and (tmp_path / runlock.FILENAME).exists()
    lock.release()                                         # idempotent


def test_a_second_job_is_refused_naming_the_holder(tmp_path, holder):
    proc = holder(SLURM_JOB_ID='77')
    with pytest.raises(runlock.LockError) as info:
        runlock.RunLock(str(tmp_path)).acquire()
    message = str(info.value)
    assert message.startswith('the output folder {} is in use by another job: host {}, '
                              'process {}, Slurm job 77, started '.format(
                                  tmp_path, socket.gethostname(), proc.pid))
    assert 'scancel 77' in message and '--take-over-lock' in message
    assert record(tmp_path)['pid'] == proc.pid             # the holder's record is untouched


def test_take_over_overrides_a_held_lock_and_says_so(tmp_path, holder):
    proc = holder()
    notes = []
    lock = runlock.RunLock(str(tmp_path), take_over=True, log=notes.append).acquire()
    try:
        assert not lock.locked and record(tmp_path)['pid'] == os.getpid()
        assert 'process {}'.format(proc.pid) in notes[0] and 'take-over-lock' in notes[0]
    finally:
        lock.release()


def test_a_dead_holder_on_this_host_is_taken_over_with_a_message(tmp_path, holder):
    proc = holder(end='exit')
    proc.stdin.close()
    proc.wait(timeout=30)                 # ended without releasing: the record stays
    assert record(tmp_path)['pid'] == proc.pid
    notes = []
    lock = runlock.RunLock(str(tmp_path), log=notes.append).acquire()
    try:
        assert lock.locked and record(tmp_path)['pid'] == os.getpid()
        assert notes[0].startswith('run.lock: taking over the lock of host {}, process {}, '
                                   'started '.format(socket.gethostname(), proc.pid))
        assert notes[0].endswith('that process no longer runs (it ended without releasing '
                                 'the lock)')
    finally:
        lock.release()


def _leave_record(out, **changes):
    held = dict(runlock.identity(), beats=3, heartbeat=1e9, **changes)
    (out / runlock.FILENAME).write_text(json.dumps(held))
    return held


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path):
    # A live process (this one's parent) whose start time is not the recorded one.
    _leave_record(tmp_path, pid=os.getppid(), pid_start=1)
    notes = []
    runlock.RunLock(str(tmp_path), log=notes.append).acquire().release()
    assert 'no longer runs' in notes[0]


def test_another_hosts_record_is_watched_and_taken_over_when_silent(tmp_path):
    _leave_record(tmp_path, host='node-elsewhere', pid=12345)
    slept, notes = [], []
    lock = runlock.RunLock(str(tmp_path), log=notes.append, sleep=slept.append).acquire()
    lock.release()
    assert sum(slept) == pytest.approx(25.0)              # 2.5 heartbeats of 10 s
    assert 'watching its heartbeat for up to 25 s' in notes[0]
    assert 'taking over the lock of host node-elsewhere, process 12345' in notes[1]
    assert 'its heartbeat stopped' in notes[1]


def test_another_hosts_beating_record_is_refused_node_local_locks(tmp_path):
    held = _leave_record(tmp_path, host='node-elsewhere', pid=12345)

    def beat(seconds):                  # that job's heartbeat goes on meanwhile
        held['beats'] += 1
        (tmp_path / runlock.FILENAME).write_text(json.dumps(held))
    with pytest.raises(runlock.LockError) as info:
        runlock.RunLock(str(tmp_path), log=lambda text: None, sleep=beat).acquire()
    assert 'host node-elsewhere, process 12345' in str(info.value)
    assert 'probably node-local' in str(info.value)


def test_without_posix_locks_the_record_still_refuses_a_live_holder(tmp_path, holder,
                                                                    monkeypatch):
    proc = holder()

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, 'No locks available')
    monkeypatch.setattr(runlock.fcntl, 'lockf', no_locks)
    notes = []
    with pytest.raises(runlock.LockError) as info:
        runlock.RunLock(str(tmp_path), log=notes.append).acquire()
    assert 'process {}'.format(proc.pid) in str(info.value)
    assert 'cannot hold POSIX locks (ENOLCK' in notes[0]


def test_take_on_one_rank_checks_the_folder_then_locks(tmp_path):
    comm = communication.create_communicator(gpu=False)
    out = tmp_path / 'new' / 'run'
    checked = []
    lock = runlock.take(comm, str(out), check_folder=lambda o: (os.makedirs(o),
                                                                 checked.append(o)))
    try:
        assert checked == [str(out)] and lock.locked
    finally:
        lock.release()
    with pytest.raises(runlock.LockError) as info:   # a folder that cannot hold the file
        runlock.take(comm, str(tmp_path / 'missing'))
    assert info.value.collective_rank == 0            # said once, by rank 0


def test_a_zombie_holder_does_not_run():
    """A holder killed but not reaped (a container's PID 1 may never reap the
    ranks a killed mpiexec left) is dead: its lock is taken over, not refused."""
    import time
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while open('/proc/{}/stat'.format(pid)).read().rsplit(')', 1)[1].split()[0] != 'Z':
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert runlock._process_start(pid) is None
    finally:
        os.waitpid(pid, 0)
    # Negative control: a running process has a start time.
    assert runlock._process_start(os.getpid()) is not None
