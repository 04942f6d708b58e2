"""Preflight check for a distributed run: ``mpiexec -n N python -m chainer_resnet.doctor``.

Launch it exactly like the training (same launcher, same ranks, same
environment). Rank 0 prints

1. the software stack: Python, NumPy, Chainer/ChainerMN, CuPy, cuDNN (on or
   off, and why), the convolution path that will run, NCCL,
   mpi4py and the MPI library it runs against, next to the ``mpiexec`` /
   ``mpirun`` found on PATH (an MPI of another family than mpi4py's is the
   usual reason why N processes start as N one-rank "jobs");
2. one row per rank: host, rank within the node, the local-rank variable the
   launcher set, ``CUDA_VISIBLE_DEVICES`` and the GPU the trainer will use
   (``comm.intra_rank``, as :func:`chainer_resnet.communication.select_gpu`);
3. the checks, each ``OK``/``WARN``/``FAIL``: the world size and ranks per
   node the job asked for (``--expect-world-size``, ``--expect-gpus-per-node``),
   the same Python and ``NCCL_*`` variables on every rank, one MPI allreduce,
   one allreduce through the ChainerMN communicator the trainer uses
   (``naive`` on CPU, ``pure_nccl`` on GPU) and one fp16 allreduce.

Every ``FAIL:`` line is followed by a ``fix:`` line. Rank 0 decides and
broadcasts the exit status, so every rank exits 0 (all checks passed) or 1;
2 is a usage error. ``--ranks-only`` keeps just the rank-count checks (what the
job scripts still run with ``SKIP_DOCTOR=1``).
"""

# The modules, in the order a run uses them (this docstring is also the text
# of --help, so the map stays here):
#   cli     the flags and the run: gather, probe, let rank 0 judge and print
#   facts   what each rank and rank 0 find out: launcher variables, the rank
#           row, software versions, the mpiexec/mpirun on PATH
#   probes  the collectives every rank runs: MPI sum, ChainerMN, fp16
#   checks  Report and the pure checks: plain data in, OK/WARN/FAIL lines out
from chainer_resnet.doctor.cli import main, run  # noqa: F401  (the entry points)
