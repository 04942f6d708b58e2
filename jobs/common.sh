# shellcheck shell=bash
# jobs/common.sh: what every job script shares. Sourced by the scripts in
# jobs/pbs, jobs/slurm and jobs/local; never run on its own.
#
# A job script sets its directives and its NOTE: site block, checks that it
# runs inside its scheduler, sources this file and then reads as:
#
#   job_setup pbs|slurm|local [NP]  nodes and ranks from the allocation,
#                                   modules + virtualenv, TRAIN_ARGV
#   mpirun_launcher                 LAUNCH=(mpirun ...) for the MPI found
#                                   (the srun script sets LAUNCH itself)
#   chunk_begin                     nothing to do if $OUT is already complete
#   preflight                       the doctor on every rank; always checks
#                                   that nodes x GPUS_PER_NODE ranks started
#   launch "${LAUNCH[@]}" "$PYTHON" train_imagenet.py "${TRAIN_ARGV[@]}"
#   chunk_end <resubmit function>   complete? otherwise submit the next chunk
#
# Parameters (environment variables; the scripts' defaults are the cluster's):
#   RECIPE         recipe name (default akiba2017); the only training choice
#   DEVICE         gpu (default) or cpu
#   GPUS_PER_NODE  ranks per node, one per GPU (default 8)
#   OUT            output folder, the same for every chunk
#                  (default results/<recipe>-<ranks>ranks in the repository)
#   TRAIN_LIST, VAL_LIST, DATA_ROOT
#                  dataset (list files or class folders; empty TRAIN_LIST:
#                  the embedded demo data, only for the demo/smoke recipes)
#   MODULES, VENV, PYTHON
#                  environment modules to load, virtualenv to use, interpreter
#   MPIRUN         the mpirun/mpiexec to use (default mpirun); its flavour
#                  (Open MPI or MPICH-family hydra) is detected
#   MPIRUN_FLAGS   extra site flags for mpirun (e.g. --mca pml ucx)
#   SRUN_FLAGS     extra site flags for srun
#   LAUNCHER       a complete launcher prefix that replaces the detected one
#   SKIP_DOCTOR    1: skip the full doctor (rank counts are still checked)
#   CHUNK_EPOCHS   epochs per job (wall-time chunk); empty: the whole run
#   RESUBMIT       1 (default): an unfinished chunk submits the next one
#   TRAIN_ARGS     extra operational trainer flags, split on spaces
#                  (e.g. "--loaderjobs 4"); hyperparameters belong in recipes
#   DRY_RUN        1: print the commands instead of running them
#   REPO, JOB_SCRIPT
#                  the repository (default: the submission folder) and the
#                  script that is resubmitted

# Variables the next chunk of a job gets (PBS: qsub -v; Slurm: the exported
# environment). The NOTE: site block sets the rest again.
FORWARD_TO_NEXT_JOB=(RECIPE DEVICE GPUS_PER_NODE OUT TRAIN_LIST VAL_LIST DATA_ROOT
                     MODULES VENV PYTHON MPIRUN MPIRUN_FLAGS SRUN_FLAGS LAUNCHER
                     SKIP_DOCTOR CHUNK_EPOCHS RESUBMIT TRAIN_ARGS REPO JOB_SCRIPT
                     CHUNK NCCL_IB_HCA NCCL_SOCKET_IFNAME NCCL_DEBUG
                     NCCL_DEBUG_SUBSYS)
# Variables every rank must see; Open MPI forwards only what -x names
# (hydra: -genvall, srun: --export=ALL forward everything). Not
# CUDA_VISIBLE_DEVICES: it belongs to each node.
FORWARD_TO_RANKS='^(PATH|LD_LIBRARY_PATH|PYTHONPATH|VIRTUAL_ENV|HOME|CUDA_HOME|CUDA_PATH|NCCL_[A-Z0-9_]+|UCX_[A-Z0-9_]+|CHAINER_[A-Z0-9_]+|CUPY_[A-Z0-9_]+|OMP_NUM_THREADS|MPLBACKEND)$'

log() { printf 'job: %s\n' "$*"; }
die() { printf 'job: error: %s\n' "$*" >&2; exit 2; }

# Print a command as it would be typed (quoted), then run it unless DRY_RUN=1.
launch() {
    local line
    printf -v line '%q ' "$@"
    printf 'job: + %s\n' "${line% }"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        return 0
    fi
    "$@"
}

job_setup() {
    SCHEDULER=$1
    : "${RECIPE:=akiba2017}" "${DEVICE:=gpu}" "${GPUS_PER_NODE:=8}"
    : "${SKIP_DOCTOR:=0}" "${RESUBMIT:=1}" "${CHUNK:=1}" "${MPIRUN:=mpirun}"
    [[ "$DEVICE" == gpu || "$DEVICE" == cpu ]] || die "DEVICE=$DEVICE: use gpu or cpu"
    [[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "GPUS_PER_NODE=$GPUS_PER_NODE is not a positive integer"
    [[ -z "${CHUNK_EPOCHS:-}" || "$CHUNK_EPOCHS" =~ ^[0-9]*\.?[0-9]+$ ]] \
        || die "CHUNK_EPOCHS=$CHUNK_EPOCHS is not a number of epochs"
    cd "$REPO" || die "cannot cd to REPO=$REPO"

    load_environment

    local slots
    case "$SCHEDULER" in
        pbs)
            JOB_ID=$PBS_JOBID
            NODES=$(sort -u "$PBS_NODEFILE" | grep -c .) || die "PBS_NODEFILE=$PBS_NODEFILE lists no host"
            slots=$(grep -c . "$PBS_NODEFILE")
            NP=$((NODES * GPUS_PER_NODE))
            # PBS_NODEFILE has one line per MPI slot (mpiprocs / ppn).
            ((slots >= NP)) || die "PBS_NODEFILE lists $slots MPI slot(s) on $NODES node(s) but $NP ranks ($GPUS_PER_NODE per node) are needed: request mpiprocs=$GPUS_PER_NODE (PBS Pro select) or ppn>=$GPUS_PER_NODE (Torque)"
            ;;
        slurm)
            JOB_ID=$SLURM_JOB_ID
            NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}
            [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "SLURM_JOB_NUM_NODES is not set: is this an sbatch job?"
            NP=$((NODES * GPUS_PER_NODE))
            slots=${SLURM_NTASKS:-$NP}
            ((slots == NP)) || die "the allocation has $slots task(s) on $NODES node(s) but $NP ranks ($GPUS_PER_NODE per node) are needed: submit with --ntasks-per-node=$GPUS_PER_NODE (or set GPUS_PER_NODE)"
            ;;
        local)
            JOB_ID="on ${HOSTNAME:-localhost}"
            NODES=1
            GPUS_PER_NODE=$2
            [[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "number of ranks '$2' is not a positive integer"
            NP=$GPUS_PER_NODE
            ;;
        *) die "job_setup: unknown scheduler $SCHEDULER" ;;
    esac
    : "${OUT:=$REPO/results/$RECIPE-${NP}ranks}"
    : "${JOB_SCRIPT:=$0}"
    log "$SCHEDULER job $JOB_ID, chunk $CHUNK: $NODES node(s) x $GPUS_PER_NODE = $NP ranks, recipe $RECIPE, device $DEVICE"
    log "out $OUT; python $PYTHON"

    TRAIN_ARGV=(--recipe "$RECIPE")
    if [[ -n "${TRAIN_LIST:-}" ]]; then
        [[ -n "${VAL_LIST:-}" ]] || die "TRAIN_LIST is set but VAL_LIST is not (NOTE: site block)"
        local path
        for path in "$TRAIN_LIST" "$VAL_LIST" ${DATA_ROOT:+"$DATA_ROOT"}; do
            if [[ ! -e "$path" ]]; then
                [[ "${DRY_RUN:-0}" == 1 ]] || die "$path does not exist: edit the dataset paths in the NOTE: site block (or set TRAIN_LIST, VAL_LIST, DATA_ROOT)"
                log "warning: $path does not exist (dry run)"
            fi
        done
        TRAIN_ARGV+=(--train "$TRAIN_LIST" --val "$VAL_LIST" ${DATA_ROOT:+--root "$DATA_ROOT"})
    elif [[ "$RECIPE" != demo && "$RECIPE" != smoke ]]; then
        die "TRAIN_LIST is empty: recipe $RECIPE needs ImageNet (set TRAIN_LIST, VAL_LIST and DATA_ROOT in the NOTE: site block); only the demo and smoke recipes use the embedded demo data"
    fi
    TRAIN_ARGV+=(--out "$OUT" --device "$DEVICE")

    # Scaling: the recipe pins the world size it was written for (1,024 for
    # akiba2017) so that a launcher that starts singletons fails loudly. At
    # another size the guard is lifted explicitly; preflight's rank count
    # then takes over that job.
    local facts expected batch lr
    facts=$("$PYTHON" -c 'import sys
from chainer_resnet import recipes
r = recipes.get(sys.argv[1]); n = int(sys.argv[2])
print(r.expected_workers or 0, r.global_batch(n), r.base_lr(n))' "$RECIPE" "$NP") \
        || die "cannot read recipe $RECIPE with $PYTHON (is chainer_resnet installed in VENV=${VENV:-}?)"
    read -r expected batch lr <<<"$facts"
    if ((expected != 0 && expected != NP)); then
        log "scaling: recipe $RECIPE is written for $expected workers; this job runs $NP ranks ($NODES node(s) x $GPUS_PER_NODE). Passing --set world_size_check=false; the learning rate follows the linear scaling rule (global batch $batch, base lr $lr). This is not the paper's configuration."
        TRAIN_ARGV+=(--set world_size_check=false)
    fi
    if [[ -n "${CHUNK_EPOCHS:-}" ]]; then
        TRAIN_ARGV+=(--stop-after-epochs "$CHUNK_EPOCHS")
    fi
    TRAIN_ARGV+=(--no-progress)
    local extra=()
    read -r -a extra <<<"${TRAIN_ARGS:-}"
    TRAIN_ARGV+=("${extra[@]}")
}

load_environment() {
    if [[ -n "${MODULES:-}" ]]; then
        type module >/dev/null 2>&1 \
            || die "MODULES='$MODULES' but there is no 'module' command: source your site's modules init in the NOTE: site block, or set MODULES= (empty)"
        local mods=()
        read -r -a mods <<<"$MODULES"
        # Module files are not written for `set -u`.
        set +u
        module load "${mods[@]}" || die "module load ${mods[*]} failed"
        set -u
    fi
    if [[ -n "${VENV:-}" ]]; then
        [[ -x "$VENV/bin/python" ]] \
            || die "VENV=$VENV is not a virtualenv: create it (python3 -m venv $VENV && $VENV/bin/pip install -e '${REPO}[gpu]') or set VENV= (empty) to use the python on PATH"
        # What bin/activate does, without its prompt handling.
        export VIRTUAL_ENV=$VENV
        export PATH="$VENV/bin:$PATH"
    fi
    PYTHON=$(command -v "${PYTHON:-python3}") || die "PYTHON=${PYTHON:-python3} not found on PATH"
    # NCCL reads an empty variable as a value: the ones left empty stay
    # unexported (and are passed on empty to the next chunk).
    local v
    for v in NCCL_IB_HCA NCCL_SOCKET_IFNAME NCCL_DEBUG NCCL_DEBUG_SUBSYS; do
        if [[ -n "${!v:-}" ]]; then
            export "${v?}"
        elif [[ -v "$v" ]]; then
            export -n "${v?}"
        fi
    done
    # Loader processes and BLAS threads: one thread each unless the site says so.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
}

# LAUNCH=(mpirun ...) for the MPI that $MPIRUN belongs to.
mpirun_launcher() {
    local site=()
    read -r -a site <<<"${MPIRUN_FLAGS:-}"
    if [[ -n "${LAUNCHER:-}" ]]; then
        read -r -a LAUNCH <<<"$LAUNCHER"
        log "launcher (LAUNCHER): ${LAUNCH[*]}"
        return 0
    fi
    local mpirun version flavour
    mpirun=$(command -v "$MPIRUN") || die "MPIRUN=$MPIRUN not found on PATH: load the MPI module (MODULES) or set MPIRUN"
    version=$("$mpirun" --version 2>&1 </dev/null || true)
    case "$version" in
        *"Open MPI"* | *OpenRTE* | *"Open RTE"* | *prterun* | *PRRTE*) flavour=openmpi ;;
        *HYDRA* | *"Intel(R) MPI"* | *MPICH* | *MVAPICH*) flavour=hydra ;;
        *) die "cannot tell which MPI $mpirun belongs to (its --version says: ${version%%$'\n'*}); set LAUNCHER to the full launcher prefix, e.g. LAUNCHER='mpiexec -n $NP'" ;;
    esac
    case "$flavour" in
        openmpi)
            LAUNCH=("$mpirun" -np "$NP" --map-by "ppr:$GPUS_PER_NODE:node" --bind-to none
                    --mca mpi_warn_on_fork 0)
            if [[ "$SCHEDULER" == pbs ]]; then
                # Open MPI without PBS (tm) support would otherwise start
                # every rank on this node.
                LAUNCH+=(--hostfile "$PBS_NODEFILE")
            fi
            local name
            while IFS= read -r name; do
                LAUNCH+=(-x "$name")
            done < <(compgen -e | grep -E "$FORWARD_TO_RANKS" || true)
            ;;
        hydra)
            LAUNCH=("$mpirun" -n "$NP" -ppn "$GPUS_PER_NODE" -genvall)
            if [[ "$SCHEDULER" == pbs ]]; then
                LAUNCH+=(-f "$PBS_NODEFILE")
            fi
            ;;
    esac
    LAUNCH+=("${site[@]}")
    log "launcher: $flavour ($mpirun)"
}

# Read $OUT/status.json (written by rank 0 at the end of every launch).
read_status() {
    STATUS_COMPLETE=0 STATUS_ITER=0 STATUS_TOTAL=0
    [[ -f "$OUT/status.json" ]] || return 0
    local s
    s=$("$PYTHON" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(int(bool(d.get("complete"))), int(d.get("iteration", 0)), int(d.get("total_iters", 0)))' \
        "$OUT/status.json") || die "cannot read $OUT/status.json"
    read -r STATUS_COMPLETE STATUS_ITER STATUS_TOTAL <<<"$s"
}

chunk_begin() {
    read_status
    if ((STATUS_COMPLETE)); then
        log "already complete ($STATUS_ITER/$STATUS_TOTAL iterations) in $OUT: nothing to do"
        exit 0
    fi
    START_ITER=$STATUS_ITER
    if ((START_ITER > 0)); then
        log "continuing from iteration $START_ITER/$STATUS_TOTAL (newest snapshot in $OUT)"
    fi
    if [[ -n "${CHUNK_EPOCHS:-}" ]]; then
        log "wall-time chunk: $CHUNK_EPOCHS epoch(s) in this job"
    fi
}

# The doctor on every rank, with the launcher of the training. SKIP_DOCTOR=1
# keeps only the rank counts: with world_size_check lifted (scaling), this is
# what catches a launcher that starts singletons.
preflight() {
    local args=(-m chainer_resnet.doctor --device "$DEVICE"
                --expect-world-size "$NP" --expect-gpus-per-node "$GPUS_PER_NODE")
    if [[ "$SKIP_DOCTOR" == 1 ]]; then
        args+=(--ranks-only)
        log "SKIP_DOCTOR=1: checking the rank counts only"
    fi
    launch "${LAUNCH[@]}" "$PYTHON" "${args[@]}" \
        || die "preflight failed (see the FAIL: lines above); nothing was trained. SKIP_DOCTOR=1 skips the full doctor, never the rank count."
}

chunk_end() {
    local resubmit=$1
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        log "dry run: would read $OUT/status.json and, if incomplete, $resubmit"
        return 0
    fi
    read_status
    [[ -f "$OUT/status.json" ]] || die "the trainer wrote no $OUT/status.json"
    if ((STATUS_COMPLETE)); then
        log "training complete: $STATUS_ITER/$STATUS_TOTAL iterations; results in $OUT"
        return 0
    fi
    ((STATUS_ITER > START_ITER)) \
        || die "chunk $CHUNK made no progress (iteration $STATUS_ITER): not resubmitting"
    log "stopped at iteration $STATUS_ITER/$STATUS_TOTAL (end of the wall-time chunk)"
    if [[ "$RESUBMIT" != 1 ]]; then
        log "RESUBMIT=$RESUBMIT: submit the same script again (same OUT) to continue"
        return 0
    fi
    CHUNK=$((CHUNK + 1))
    "$resubmit"
}

# PBS (Pro and Torque): the same script again, with the same resources, after
# this job ends successfully (afterok), with the parameters in -v.
pbs_resubmit() {
    local vars=() name value
    for name in "${FORWARD_TO_NEXT_JOB[@]}"; do
        [[ -v "$name" ]] || continue
        value=${!name}
        # qsub -v separates variables with commas; PBS Pro takes a quoted
        # value with commas in it (Torque does not: avoid commas there).
        [[ "$value" == *,* ]] && value="'$value'"
        vars+=("$name=$value")
    done
    local list
    list=$(printf '%s,' "${vars[@]}")
    local cmd=(qsub -W "depend=afterok:$PBS_JOBID" -v "${list%,}")
    [[ -n "${PBS_QUEUE:-}" ]] && cmd+=(-q "$PBS_QUEUE")
    local resource
    while IFS= read -r resource; do
        [[ -n "$resource" ]] && cmd+=(-l "$resource")
    done < <(pbs_job_resources)
    cmd+=("$JOB_SCRIPT")
    local line
    printf -v line '%q ' "${cmd[@]}"
    log "next chunk ($CHUNK): $line"
    local id
    id=$("${cmd[@]}") || die "qsub failed; continue by hand: qsub $JOB_SCRIPT (same OUT=$OUT)"
    log "submitted job $id; it starts after job $PBS_JOBID ends successfully"
}

# This job's select/place/walltime (PBS Pro) or nodes/walltime (Torque), so a
# job submitted with `qsub -l select=16:...` continues at 16 nodes.
pbs_job_resources() {
    command -v qstat >/dev/null 2>&1 || return 0
    qstat -f "$PBS_JOBID" 2>/dev/null | awk '
        /^\t/ { sub(/^\t+/, ""); line = line $0; next }   # continuation lines
        { if (line != "") print line; line = $0 }
        END { if (line != "") print line }' | awk -F' = ' '
        $1 ~ /^ *Resource_List\.(select|place|walltime|nodes)$/ {
            key = $1; sub(/^ *Resource_List\./, "", key); value[key] = $2 }
        END {
            if ("select" in value) print "select=" value["select"]
            else if ("nodes" in value) print "nodes=" value["nodes"]
            if ("place" in value) print "place=" value["place"]
            if ("walltime" in value) print "walltime=" value["walltime"] }'
}

# Slurm: the same script again after this job ends successfully, with this
# job's node count, time limit, partition and account, and the parameters in
# the exported environment. This job's SLURM_* variables are removed from
# what sbatch exports: the next job gets its own.
slurm_resubmit() {
    local name
    for name in "${FORWARD_TO_NEXT_JOB[@]}"; do
        if [[ -v "$name" ]]; then export "${name?}"; fi
    done
    local cmd=(sbatch --parsable --dependency="afterok:$SLURM_JOB_ID"
               --nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE" --export=ALL)
    [[ -n "${SLURM_JOB_PARTITION:-}" ]] && cmd+=(--partition="$SLURM_JOB_PARTITION")
    [[ -n "${SLURM_JOB_ACCOUNT:-}" ]] && cmd+=(--account="$SLURM_JOB_ACCOUNT")
    local limit=''
    if command -v squeue >/dev/null 2>&1; then
        limit=$(squeue -h -j "$SLURM_JOB_ID" -o %l 2>/dev/null || true)
    fi
    [[ "$limit" =~ ^[0-9] ]] && cmd+=(--time="$limit")
    cmd+=("$JOB_SCRIPT")
    local clean=()
    while IFS= read -r name; do
        [[ "$name" == SLURM_CONF ]] || clean+=(-u "$name")
    done < <(compgen -e | grep '^SLURM_' || true)
    local line
    printf -v line '%q ' "${cmd[@]}"
    log "next chunk ($CHUNK): $line"
    local id
    id=$(env "${clean[@]}" "${cmd[@]}") || die "sbatch failed; continue by hand: sbatch $JOB_SCRIPT (same OUT=$OUT)"
    log "submitted job $id; it starts after job $SLURM_JOB_ID ends successfully"
}

# Workstation: no scheduler to resubmit to.
local_resubmit() {
    log "run the same command again (same OUT=$OUT) to continue"
}
