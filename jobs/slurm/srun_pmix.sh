#!/bin/bash
# =============================================================================
# What:      Akiba, Suzuki & Fukuda (2017), "Extremely Large Minibatch SGD:
#            Training ResNet-50 on ImageNet in 15 Minutes": ResNet-50, 90
#            epochs, 1,024 workers x 32 images = batch 32,768, RMSprop warm-up,
#            slow-start lr, fp16 allreduce (recipe akiba2017; every number is in
#            chainer_resnet/recipes/, none in this script).
# Scheduler: Slurm, launched with srun --mpi=pmix (Slurm built with PMIx and an
#            MPI built with PMIx support, e.g. Open MPI 4/5). Without PMIx, srun
#            starts N one-rank jobs: the preflight rank count stops the job.
#            For mpirun inside the allocation use jobs/slurm/mpirun.sh.
# Resources: 128 nodes x 8 GPUs (P100 in the paper) = 1,024 MPI ranks, one per
#            GPU, 2 cores per rank, InfiniBand.
# Expected:  ~15 min of training at 1,024 P100 (the paper) plus start-up,
#            doctor and evaluations: asks for 45 min. At other sizes (same
#            script, the recipe's world-size guard is lifted explicitly and the
#            lr follows the linear scaling rule): 16 nodes (128 P100) ≈ 1.7 h,
#            1 node (8 P100) ≈ 26 h, so use wall-time chunks (CHUNK_EPOCHS).
# Submit from the repository root:
#   sbatch jobs/slurm/srun_pmix.sh                         # the paper: 128 nodes
#   CHUNK_EPOCHS=45 sbatch --nodes=16 --time=01:30:00 jobs/slurm/srun_pmix.sh
# Chunks: with CHUNK_EPOCHS set, each job trains that many epochs, snapshots,
#   and submits the next job (sbatch --dependency=afterok:<this job>) until
#   the recipe's epochs are done. Warned 300 s before the time limit
#   (--signal), the training stops with a snapshot; the next job continues.
#   See jobs/README.md.
# =============================================================================
# Job name in squeue.
#SBATCH --job-name=akiba2017
# 128 nodes.
#SBATCH --nodes=128
# One MPI rank per GPU.
#SBATCH --ntasks-per-node=8
# 8 GPUs per node.
#SBATCH --gres=gpu:8
# 2 cores per rank for its data-loading processes (MN-1: 2 cores per P100).
#SBATCH --cpus-per-task=2
# Nodes not shared with other jobs.
#SBATCH --exclusive
# Wall time of this job (one chunk of the run; see CHUNK_EPOCHS).
#SBATCH --time=00:45:00
# Log file: job name and job id.
#SBATCH --output=%x-%j.out
# Wall-time warning: SIGUSR1 to this script 300 s before the limit (Slurm may
# send it up to 60 s earlier); the training stops with a snapshot and the next
# chunk is submitted.
#SBATCH --signal=B:USR1@300
# site: partition and account, enabled by removing one '#'.
##SBATCH --partition=gpu
##SBATCH --account=project
set -euo pipefail

# Guard: run only inside a Slurm job; the repository is where sbatch was run.
if [[ -z "${SLURM_JOB_ID:-}" || -z "${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}" ]]; then
    echo "error: $0 runs inside a Slurm job (SLURM_JOB_ID/SLURM_JOB_NUM_NODES are not set). Submit it from the repository root: sbatch jobs/slurm/srun_pmix.sh; on a workstation use jobs/local/." >&2
    exit 2
fi
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
[[ -f "$REPO/jobs/common.sh" ]] || { echo "error: $REPO is not the repository: sbatch from its root or set REPO" >&2; exit 2; }
JOB_SCRIPT=${JOB_SCRIPT:-$REPO/jobs/slurm/srun_pmix.sh}

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
# Site flags for srun (e.g. --mpi=pmix_v4 to pick a PMIx plugin: the last
# --mpi wins).
: "${SRUN_FLAGS=}"
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
job_setup slurm srun
chunk_begin
preflight
launch "${LAUNCH[@]}" "$PYTHON" train_imagenet.py "${TRAIN_ARGV[@]}"
chunk_end slurm_resubmit
