"""Launch a command the way a hostile test must: in its own process group, with a time limit.

:func:`launch` runs `cmd` (an ``mpiexec`` launch of the trainer, say) in a
session of its own and returns ``(exit status, output)``. The test fails, and
every process of the group is killed, when the launch outlives `timeout` or
any of its processes (a rank, a loader process, hydra's proxy) outlives the
launcher by 10 s: a fault that leaves a rank behind is a hang on a cluster.
:class:`Launch` is the same for a launch that a test acts on while it runs
(signals it, kills one of its processes).
"""

import os
import signal
import subprocess
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(cmd, timeout, env=None, cwd=ROOT):
    """Run `cmd` in a process group of its own; (exit status, stdout and stderr)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    problem = None
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        problem = 'the launch hung for {} s'.format(timeout)
    if problem is None:
        for _ in range(50):
            if not group_alive(proc.pid):
                return proc.returncode, output
            time.sleep(0.2)
        problem = 'processes of the launch were left running'
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    output = proc.communicate()[0] if problem.startswith('the launch hung') else output
    pytest.fail('{}: {}\n{}'.format(problem, ' '.join(map(str, cmd)), (output or '')[-4000:]))


def group_alive(pgid):
    """Whether any process of process group `pgid` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Launch:
    """A launch to act on while it runs (a signal, a kill): its own process group and time
    limit, its output collected as it comes.

    ``finish()`` returns ``(exit status, output)`` and fails, killing everything,
    when the launch outlives its limit or leaves a process behind: of its group,
    or a rank or loader process seen while it ran (``ranks()``), which live in
    sessions of their own under hydra.
    """

    def __init__(self, cmd, env=None, cwd=ROOT):
        self.cmd = [str(c) for c in cmd]
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, text=True,
                                     start_new_session=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.seen = set()

    def _read(self):
        for line in self.proc.stdout:
            self._lines.append(line)

    @property
    def output(self):
        return ''.join(self._lines)

    def wait_for(self, condition, timeout=240):
        """Wait until `condition()` (or, for a string, until the output holds it)."""
        check = (lambda: condition in self.output) if isinstance(condition, str) else condition
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                self._reader.join(5)
                if check():
                    return
                pytest.fail('the launch ended ({}) before {!r}:\n{}'.format(
                    self.proc.returncode, condition, self.output[-4000:]))
            if time.monotonic() > deadline:
                self._kill()
                pytest.fail('no {!r} within {} s:\n{}'.format(condition, timeout,
                                                                self.output[-4000:]))
            time.sleep(0.2)

    def ranks(self, marker):
        """{rank: pid} of the trainer processes whose command line holds `marker`."""
        found = {}
        for pid in _pids():
            cmdline = _read('/proc/{}/cmdline'.format(pid)).split('\0')
            if any(marker in a for a in cmdline) and 'python' in os.path.basename(
                    cmdline[0]) and not any('mpiexec' in a for a in cmdline[:1]):
                environ = _read('/proc/{}/environ'.format(pid)).split('\0')
                rank = [e.split('=', 1)[1] for e in environ if e.startswith('PMI_RANK=')]
                if rank:
                    found[int(rank[0])] = pid
        self.seen.update(found.values())
        for pid in found.values():
            self.seen.update(descendants(pid))
        return found

    def signal(self, signum):
        """Send `signum` to the launcher (mpiexec), as a scheduler or a terminal would."""
        os.kill(self.proc.pid, signum)

    def finish(self, timeout=240):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            pytest.fail('the launch hung for {} s: {}\n{}'.format(
                timeout, ' '.join(self.cmd), self.output[-4000:]))
        self._reader.join(10)
        for _ in range(50):
            left = [pid for pid in self.seen if _running(pid)]
            if not group_alive(self.proc.pid) and not left:
                return self.proc.returncode, self.output
            time.sleep(0.2)
        self._kill()
        pytest.fail('processes of the launch were left running ({}): {}\n{}'.format(
            left, ' '.join(self.cmd), self.output[-4000:]))

    def _kill(self):
        if group_alive(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in self.seen:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _pids():
    return [int(name) for name in os.listdir('/proc') if name.isdigit()]


def _read(path):
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')
    except OSError:
        return ''


def _running(pid):
    stat = _read('/proc/{}/stat'.format(pid))
    return bool(stat) and stat.rsplit(')', 1)[1].split()[0] != 'Z'


def descendants(pid):
    """The pids of `pid`'s children, their children, and so on."""
    parents = {}
    for other in _pids():
        stat = _read('/proc/{}/stat'.format(other))
        if stat:
            parents.setdefault(int(stat.rsplit(')', 1)[1].split()[1]), []).append(other)
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
