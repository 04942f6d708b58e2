#!/bin/bash
# =============================================================================
# What:      Akiba, Suzuki & Fukuda (2017), "Extremely Large Minibatch SGD:
#            Training ResNet-50 on ImageNet in 15 Minutes": ResNet-50, 90
#            epochs, 1,024 workers x 32 images = batch 32,768, RMSprop warm-up,
#            slow-start lr, fp16 allreduce (recipe akiba2017; every number is in
#            chainer_resnet/recipes/, none in this script).
# Scheduler: Torque (nodes=N:ppn=C:gpus=G syntax), launched with the site's
#            mpirun (Open MPI or an MPICH-family hydra: detected).
# Resources: 128 nodes x 8 GPUs (P100 in the paper) = 1,024 MPI ranks, one per
#            GPU, 16 cores per node, InfiniBand.
# Expected:  ~15 min of training at 1,024 P100 (the paper) plus start-up,
#            doctor and evaluations: asks for 45 min. At other sizes (same
#            script, the recipe's world-size guard is lifted explicitly and the
#            lr follows the linear scaling rule): 16 nodes (128 P100) ≈ 1.7 h,
#            1 node (8 P100) ≈ 26 h, so use wall-time chunks (CHUNK_EPOCHS).
# Submit from the repository root:
#   qsub jobs/pbs/torque.sh                                # the paper: 128 nodes
#   qsub -l nodes=16:ppn=16:gpus=8 -l walltime=01:30:00 \
#        -v CHUNK_EPOCHS=45 jobs/pbs/torque.sh             # 16 nodes, 2 chunks
# Chunks: with CHUNK_EPOCHS set, each job trains that many epochs, snapshots,
#   and submits the next job (qsub -W depend=afterok:<this job>) until the
#   recipe's epochs are done. PBS sends no warning before the walltime: the
#   script warns the training itself WALLTIME_WARNING (300) s before it, and
#   the training stops with a snapshot; the next job continues. Torque's
#   qsub -v cannot carry commas: keep them out of variables passed at
#   submission. See jobs/README.md.
# =============================================================================
# Job name in qstat.
#PBS -N akiba2017
# 128 nodes, each 16 cores (ppn: 16 lines per node in PBS_NODEFILE) and 8 GPUs;
# the script starts 8 ranks per node (GPUS_PER_NODE), one per GPU.
#PBS -l nodes=128:ppn=16:gpus=8
# Nodes not shared with other jobs (node-exclusive).
#PBS -n
# Wall time of this job (one chunk of the run; see CHUNK_EPOCHS).
#PBS -l walltime=00:45:00
# Standard error into the standard output file.
#PBS -j oe
# site: queue and account, enabled by removing one '#' (e.g. -q gpu, -A abc123).
##PBS -q gpu
##PBS -A project
set -euo pipefail

# Guard: run only inside a PBS job; the repository is where qsub was run.
if [[ -z "${PBS_JOBID:-}" || -z "${PBS_NODEFILE:-}" || ! -r "${PBS_NODEFILE:-}" ]]; then
    echo "error: $0 runs inside a PBS job (PBS_JOBID/PBS_NODEFILE are not set). Submit it from the repository root: qsub jobs/pbs/torque.sh; on a workstation use jobs/local/." >&2
    exit 2
fi
REPO=${REPO:-${PBS_O_WORKDIR:-$PWD}}
[[ -f "$REPO/jobs/common.sh" ]] || { echo "error: $REPO is not the repository: qsub from its root or set REPO (qsub -v REPO=...)" >&2; exit 2; }
JOB_SCRIPT=${JOB_SCRIPT:-$REPO/jobs/pbs/torque.sh}

# ---- NOTE: site: edit for your cluster --------------------------------------
# Environment modules loaded in the job (empty: none): CUDA 12 (the libraries
# CuPy 13 runs on; cuDNN 8.9 and NCCL come from pip with '.[gpu]': README,
# "Supported GPU stacks") and the MPI mpi4py must be built against.
: "${MODULES=cuda/12.4 openmpi/4.1}"
# Virtualenv with chainer_resnet installed (pip install -e '.[gpu]').
: "${VENV=$HOME/venvs/chainer_resnet}"
# ImageNet: list files of "path label" lines (or class folders), image root.
: "${TRAIN_LIST=/data/imagenet/train.txt}"
: "${VAL_LIST=/data/imagenet/val.txt}"
: "${DATA_ROOT=/data/imagenet}"
# mpirun of the loaded MPI, and site flags for it (e.g. --mca pml ucx).
: "${MPIRUN=mpirun}"
: "${MPIRUN_FLAGS=}"
# NCCL: HCA ports to restrict it to (empty: every HCA NCCL finds, all
# rails; a name the nodes do not have moves NCCL to sockets, which the
# doctor fails), the interface for its bootstrap sockets (empty: NCCL picks
# one; a name some node lacks fails NCCL's start there: one every node has,
# from ip -br addr), WARN or INFO.
export NCCL_IB_HCA="${NCCL_IB_HCA-}"
export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME-}"
export NCCL_DEBUG="${NCCL_DEBUG-WARN}"
# -----------------------------------------------------------------------------

# shellcheck source=jobs/common.sh
source "$REPO/jobs/common.sh"
# shellcheck source=jobs/chunks.sh
source "$REPO/jobs/chunks.sh"
job_setup pbs mpirun
chunk_begin
preflight
launch "${LAUNCH[@]}" "$PYTHON" train_imagenet.py "${TRAIN_ARGV[@]}"
chunk_end pbs_resubmit
