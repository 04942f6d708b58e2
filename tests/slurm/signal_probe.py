"""A stand-in rank for tests/test_slurm.py: does SIGUSR1 reach it?

``python tests/slurm/signal_probe.py FOLDER``, started by a launcher in
place of the trainer (tests/slurm/probe_job.sh): installs a SIGUSR1 handler,
writes ``FOLDER/ready.<rank>``, waits up to 60 s for the signal, prints one
line and exits 0 if it came, 3 if not. No MPI: only the launcher's delivery
of the signal is under test.
"""

import os
import signal
import socket
import sys
import time

# The rank as each launcher numbers it: hydra, Open MPI, srun --mpi=pmix, srun.
RANK_VARIABLES = ('PMI_RANK', 'OMPI_COMM_WORLD_RANK', 'PMIX_RANK', 'SLURM_PROCID')


def main(folder):
    rank = next((os.environ[n] for n in RANK_VARIABLES if n in os.environ), '?')
    got = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    with open(os.path.join(folder, 'ready.' + rank), 'w'):
        pass
    deadline = time.monotonic() + 60
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    print('probe: rank {} on {}: {}'.format(
        rank, socket.gethostname(), 'got SIGUSR1' if got else 'no SIGUSR1 in 60 s'),
        flush=True)
    return 0 if got else 3


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
