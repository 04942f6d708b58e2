"""pytest entry point for one MPI rank (used by tests/run_mpi.py).

Usage: mpi_pytest.py LOGDIR [pytest args]. Rank 0 writes to the terminal;
other ranks write to LOGDIR/rank<N>.log.
"""

import os
import sys

import pytest


def _rank():
    for name in ('PMI_RANK', 'OMPI_COMM_WORLD_RANK', 'PMIX_RANK'):
        if name in os.environ:
            return int(os.environ[name])
    return 0


if __name__ == '__main__':
    logdir, args = sys.argv[1], sys.argv[2:]
    rank = _rank()
    if rank != 0:
        log = open(os.path.join(logdir, 'rank{}.log'.format(rank)), 'w')
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    code = pytest.main(['-q'] + args)
    sys.stdout.flush()
    sys.exit(int(code))
