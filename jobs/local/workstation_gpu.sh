#!/bin/bash
# =============================================================================
# What:      the job scripts' launch on one workstation: the akiba2017 recipe
#            (or RECIPE=...) on every GPU of this machine, one MPI rank per GPU,
#            pure_nccl with fp16 allreduce. Away from 1,024 workers the
#            recipe's world-size guard is lifted explicitly and the lr follows
#            the linear scaling rule (printed at start).
# Resources: this machine's GPUs (nvidia-smi -L; or GPUS=N), ~2 cores per GPU.
# Expected:  akiba2017 on 8 P100 ≈ 26 h, on 8 V100 fp32 / A100 TF32 ≈ 11 h / 5.3 h;
#            stop and re-run the same command at any time: it resumes from the
#            newest snapshot (CHUNK_EPOCHS=N stops after N epochs).
# Run:       jobs/local/workstation_gpu.sh
#            DRY_RUN=1 GPUS=2 jobs/local/workstation_gpu.sh   # print commands
# No scheduler: the MPI launcher is mpiexec from the virtualenv or PATH.
# =============================================================================
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

# ---- NOTE: site: edit for your machine --------------------------------------
# Environment modules (empty: none) and the virtualenv with chainer_resnet
# (pip install -e '.[gpu]').
: "${MODULES=}"
: "${VENV=$REPO/.venv}"
# ImageNet: list files of "path label" lines (or class folders), image root.
: "${TRAIN_LIST=/data/imagenet/train.txt}"
: "${VAL_LIST=/data/imagenet/val.txt}"
: "${DATA_ROOT=/data/imagenet}"
# The launcher (Open MPI's or MPICH's mpiexec: detected) and extra flags.
: "${MPIRUN=mpiexec}"
: "${MPIRUN_FLAGS=}"
# NCCL inside one machine needs no network settings; WARN or INFO.
export NCCL_IB_HCA="${NCCL_IB_HCA-}"
export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME-}"
export NCCL_DEBUG="${NCCL_DEBUG-WARN}"
# -----------------------------------------------------------------------------

# shellcheck source=jobs/common.sh
source "$REPO/jobs/common.sh"
# shellcheck source=jobs/chunks.sh
source "$REPO/jobs/chunks.sh"
# One rank per GPU: GPUS, or those in CUDA_VISIBLE_DEVICES, or all of them.
GPUS=${GPUS:-$(visible_gpus)}
job_setup local mpirun "$GPUS"
chunk_begin
preflight
launch "${LAUNCH[@]}" "$PYTHON" train_imagenet.py "${TRAIN_ARGV[@]}"
chunk_end local_resubmit
