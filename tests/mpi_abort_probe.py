"""Launched by tests/test_launch.py: the last rank raises, the others wait in a barrier.

With the abort hook (argument `hook`) the whole job must end; without it
the waiting ranks hang (the negative control).
"""
import sys
import chainer_resnet  # noqa: F401  (chainer compatibility hook first)
from chainer_resnet import communication
comm = communication.create_communicator(gpu=False)
if sys.argv[1] == 'hook':
    communication.install_abort_on_error()
if comm.rank == comm.size - 1:
    raise RuntimeError('injected failure on rank {}'.format(comm.rank))
comm.mpi_comm.barrier()
print('rank', comm.rank, 'passed the barrier')
