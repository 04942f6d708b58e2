"""Launch a command the way a hostile test must: in its own process group, with a time limit.

:func:`launch` runs `cmd` (an ``mpiexec`` launch of the trainer, say) in a
session of its own and returns ``(exit status, output)``. The test fails, and
every process of the group is killed, when the launch outlives `timeout` or
any of its processes (a rank, a loader process, hydra's proxy) outlives the
launcher by 10 s: a fault that leaves a rank behind is a hang on a cluster.
"""

import os
import signal
import subprocess
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
