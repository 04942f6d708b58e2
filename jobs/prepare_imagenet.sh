#!/bin/bash
# =============================================================================
# What:      ImageNet (ILSVRC-2012) from its three official archives to the
#            trainer's layouts, before the first training job: class folders
#            and list files under DATA_ROOT, labels in one order for train
#            and val, checked by the trainer's own dataset checks
#            (python -m chainer_resnet.data.prepare; nothing is downloaded).
# Scheduler: Slurm (sbatch) or PBS Pro / Torque (qsub): each reads its own
#            directives below and ignores the other's.
# Resources: one node, no GPU, CPUS cores: one process per core reads its
#            own classes from the archives in place (no unpacked copy).
#            DATA_ROOT needs ~147 GB free (the images as they are; about
#            a third with RESIZE=shorter) and must be visible to every
#            training node.
# Expected:  copying: bound by the filesystem (~147 GB read and as much
#            written; 0.2-0.4 CPU-hours per million images); pre-resizing:
#            1.5-1.7 CPU-hours per million images, ~8 min on 16 cores
#            (benchmarks/README.md, "ImageNet from its archives"). 4 h asked
#            for; if the job is killed, submit it again: it continues with
#            the classes not yet written.
# Submit from the repository root:
#   sbatch jobs/prepare_imagenet.sh
#   qsub jobs/prepare_imagenet.sh
#   RESIZE=square sbatch jobs/prepare_imagenet.sh   # 256x256 (pre_resized)
# Other parameters: CPUS (default: the allocation's cores), SUBSET=1 (accept
#   other counts than ILSVRC-2012's), DRY_RUN=1 (print the command), PYTHON.
# =============================================================================
# Slurm: job name in squeue.
#SBATCH --job-name=prepare-imagenet
# Slurm: one node, one task with CPUS cores.
#SBATCH --nodes=1
# Slurm: one process (it starts its own workers).
#SBATCH --ntasks=1
# Slurm: cores for the worker processes.
#SBATCH --cpus-per-task=16
# Slurm: wall time (submit again to continue after a kill).
#SBATCH --time=04:00:00
# Slurm: log file: job name and job id.
#SBATCH --output=%x-%j.out
# PBS: job name in qstat.
#PBS -N prepare-imagenet
# PBS: one node with 16 cores (PBS Pro reads this form as select=1:ncpus=16).
#PBS -l nodes=1:ppn=16
# PBS: wall time.
#PBS -l walltime=04:00:00
# PBS: stdout and stderr in one log.
#PBS -j oe
set -euo pipefail

# Guard: run only inside a Slurm or PBS job; the repository is where it was submitted.
if [[ -z "${SLURM_JOB_ID:-}" && -z "${PBS_JOBID:-}" ]]; then
    echo "error: $0 runs inside a Slurm or PBS job (neither SLURM_JOB_ID nor PBS_JOBID is set). Submit it from the repository root: sbatch jobs/prepare_imagenet.sh or qsub jobs/prepare_imagenet.sh; on a workstation run python -m chainer_resnet.data.prepare (README, \"Running it yourself\")." >&2
    exit 2
fi
REPO=${REPO:-${SLURM_SUBMIT_DIR:-${PBS_O_WORKDIR:-$PWD}}}
[[ -f "$REPO/jobs/common.sh" ]] || { echo "error: $REPO is not the repository: submit from its root or set REPO" >&2; exit 2; }

# ---- NOTE: site: edit for your cluster --------------------------------------
# Environment modules loaded in the job (empty: none; no MPI or CUDA needed).
: "${MODULES=}"
# Virtualenv with chainer_resnet installed (pip install -e .).
: "${VENV=$HOME/venvs/chainer_resnet}"
# The three archives as downloaded from image-net.org.
: "${ARCHIVES=/data/archives/ilsvrc2012}"
: "${TRAIN_TAR=$ARCHIVES/ILSVRC2012_img_train.tar}"
: "${VAL_TAR=$ARCHIVES/ILSVRC2012_img_val.tar}"
: "${DEVKIT=$ARCHIVES/ILSVRC2012_devkit_t12.tar.gz}"
# The output: the folder the training scripts' TRAIN_LIST, VAL_LIST and
# DATA_ROOT point into ($DATA_ROOT/train.txt, $DATA_ROOT/val.txt).
: "${DATA_ROOT=/data/imagenet}"
# Pre-resizing: empty (copy the files), shorter (shorter side SIZE) or
# square (SIZE x SIZE, for the pre_resized augmentation).
: "${RESIZE=}"
: "${SIZE=256}"
# -----------------------------------------------------------------------------

# shellcheck source=jobs/common.sh
source "$REPO/jobs/common.sh"
trap 'on_stop TERM' TERM
trap 'on_stop INT' INT
cd "$REPO" || die "cannot cd to REPO=$REPO"
load_environment
PYTHON=$(command -v "${PYTHON:-python3}") || die "PYTHON=${PYTHON:-python3} not found on PATH"
# The cores this job was given (the command's default, the CPUs it may run
# on, is all of them where the scheduler does not confine the job).
CPUS=${CPUS:-${SLURM_CPUS_PER_TASK:-${NCPUS:-${PBS_NUM_PPN:-}}}}
[[ -z "$CPUS" || "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "CPUS=$CPUS is not a positive integer"
[[ -z "$RESIZE" || "$RESIZE" == shorter || "$RESIZE" == square ]] \
    || die "RESIZE=$RESIZE: use shorter, square or nothing (NOTE: site block)"
PREPARE_ARGV=(--train-tar "$TRAIN_TAR" --val-tar "$VAL_TAR" --devkit "$DEVKIT"
              --out "$DATA_ROOT" ${CPUS:+--jobs "$CPUS"}
              ${RESIZE:+--resize "$RESIZE" --size "$SIZE"} ${SUBSET:+--subset})
log "${SLURM_JOB_ID:+slurm job $SLURM_JOB_ID}${PBS_JOBID:+pbs job $PBS_JOBID}: ImageNet archives to $DATA_ROOT on ${CPUS:-all} core(s); python $PYTHON"
run_launch prepare "$PYTHON" -m chainer_resnet.data.prepare "${PREPARE_ARGV[@]}"
