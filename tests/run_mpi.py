#!/usr/bin/env python
"""Run the ``mpi``-marked tests under mpiexec, once per requested world size.

    python tests/run_mpi.py --np 1 --np 2

Every rank runs the same pytest session (same tests, same order); rank 0
prints, the other ranks' output goes to a log that is shown if they fail.
Each launch runs inside a timeout, so a deadlocked collective fails the run
instead of hanging it.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def mpiexec():
    """The mpiexec next to this Python (the virtualenv's MPICH), else PATH's."""
    local = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    return local if os.path.exists(local) else shutil.which('mpiexec')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--np', type=int, action='append', required=True)
    p.add_argument('--timeout', type=int, default=600)
    p.add_argument('pytest_args', nargs='*')
    args = p.parse_args(argv)
    launcher = mpiexec()
    if launcher is None:
        print('run_mpi: no mpiexec found; install an MPI (make installs MPICH '
              'from PyPI into the virtualenv)', file=sys.stderr)
        return 2
    status = 0
    for n in args.np:
        logdir = tempfile.mkdtemp(prefix='mpi-tests-')
        cmd = [launcher, '-n', str(n), sys.executable,
               os.path.join(HERE, 'mpi_pytest.py'), logdir, '-m', 'mpi',
               '-p', 'no:cacheprovider', HERE] + args.pytest_args
        print('run_mpi: ' + ' '.join(cmd), flush=True)
        try:
            code = subprocess.run(cmd, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            print('run_mpi: -n {} timed out after {} s (a rank is stuck in a '
                  'collective?)'.format(n, args.timeout), flush=True)
            code = 124
        if code != 0:
            status = code
            for name in sorted(os.listdir(logdir)):
                print('---- {} ----'.format(name))
                with open(os.path.join(logdir, name)) as f:
                    print(f.read()[-6000:])
        shutil.rmtree(logdir, ignore_errors=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
