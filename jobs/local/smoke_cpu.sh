#!/bin/bash
# =============================================================================
# What:      the job scripts' launch path, end to end, on CPU: the doctor, then
#            the smoke recipe (a few iterations of ResNet-50 on a slice of the
#            embedded demo data) on NP MPI ranks with the naive communicator.
#            Nothing to download; checks an installation before a cluster run.
# Resources: NP (default 2) CPU ranks on this machine.
# Expected:  ~40 s on 2 cores (NP=2), most of it building the demo data once.
# Run:       jobs/local/smoke_cpu.sh          # NP=2, output in results/smoke-2ranks
#            RECIPE=demo NP=1 jobs/local/smoke_cpu.sh   # the 10-epoch demo, ~10 min
# =============================================================================
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

# ---- NOTE: site: edit for your machine --------------------------------------
# Environment modules (empty: none) and the virtualenv with chainer_resnet and
# an MPI (make builds .venv with MPICH from PyPI).
: "${MODULES=}"
: "${VENV=$REPO/.venv}"
# No dataset paths: the smoke and demo recipes use the embedded demo data.
: "${TRAIN_LIST=}"
# The launcher (MPICH's or Open MPI's mpiexec: detected) and extra flags.
: "${MPIRUN=mpiexec}"
: "${MPIRUN_FLAGS=}"
# No NCCL on CPU.
export NCCL_DEBUG="${NCCL_DEBUG-}"
# -----------------------------------------------------------------------------

: "${RECIPE:=smoke}" "${DEVICE:=cpu}" "${NP:=2}"
# shellcheck source=jobs/common.sh
source "$REPO/jobs/common.sh"
# shellcheck source=jobs/chunks.sh
source "$REPO/jobs/chunks.sh"
job_setup local mpirun "$NP"
chunk_begin
preflight
launch "${LAUNCH[@]}" "$PYTHON" train_imagenet.py "${TRAIN_ARGV[@]}"
chunk_end local_resubmit
