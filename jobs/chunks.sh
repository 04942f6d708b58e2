# shellcheck shell=bash
# jobs/chunks.sh: what happens between launches of one run. Sourced by every
# job script after jobs/common.sh (it uses log, die, slurm_nodes, PYTHON and
# the parameters described there); never run on its own.
#
# A run is a chain of jobs ("chunks") sharing one output folder, $OUT. With
# CHUNK_EPOCHS set each job trains that many epochs and submits the next one;
# without it the chain has a single job, which still skips a run that is
# already complete and reports how the run ended. The state of the run is
# $OUT/status.json, written by rank 0 of the trainer at the end of every
# launch and read here with `python -m chainer_resnet.status OUT`
# (chainer_resnet/status.py).
#
#   chunk_begin             before the launch: exit 0 if the run is complete
#   chunk_end SUBMIT_NEXT   after it: complete? otherwise, if this chunk made
#                           progress and RESUBMIT=1, SUBMIT_NEXT (pbs_resubmit,
#                           slurm_resubmit or local_resubmit) submits the next
#                           chunk
#
# State shared by these functions:
#   CHUNK_START_ITER     the iteration this chunk started from (chunk_begin),
#                        to tell progress from a chunk that did nothing
#   FORWARD_TO_NEXT_JOB  (constant) the variables the next chunk gets (PBS:
#                        qsub -v; Slurm: the exported environment); the
#                        NOTE: site block sets the rest again
FORWARD_TO_NEXT_JOB=(RECIPE DEVICE GPUS_PER_NODE OUT TRAIN_LIST VAL_LIST DATA_ROOT
                     MODULES VENV PYTHON MPIRUN MPIRUN_FLAGS SRUN_FLAGS LAUNCHER
                     SKIP_DOCTOR CHUNK_EPOCHS RESUBMIT TRAIN_ARGS REPO JOB_SCRIPT
                     CHUNK NCCL_IB_HCA NCCL_SOCKET_IFNAME NCCL_DEBUG
                     NCCL_DEBUG_SUBSYS)

# "COMPLETE ITERATION TOTAL" of the run in $OUT ("0 0 0" before its first
# launch ended). Callers: progress=$(run_status) || exit 2.
run_status() {
    "$PYTHON" -m chainer_resnet.status "$OUT" || die "cannot read the status of the run in $OUT (see the error above)"
}

chunk_begin() {
    local progress complete iteration total
    progress=$(run_status) || exit 2
    read -r complete iteration total <<<"$progress"
    if ((complete)); then
        log "already complete ($iteration/$total iterations) in $OUT: nothing to do"
        exit 0
    fi
    CHUNK_START_ITER=$iteration
    if ((iteration > 0)); then
        log "continuing from iteration $iteration/$total (newest snapshot in $OUT)"
    fi
    if [[ -n "${CHUNK_EPOCHS:-}" ]]; then
        log "wall-time chunk: $CHUNK_EPOCHS epoch(s) in this job"
    fi
}

chunk_end() {
    local submit_next=$1
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        log "dry run: would read $OUT/status.json and, if incomplete, $submit_next"
        return 0
    fi
    local progress complete iteration total
    progress=$(run_status) || exit 2
    read -r complete iteration total <<<"$progress"
    [[ -f "$OUT/status.json" ]] || die "the trainer wrote no $OUT/status.json"
    if ((complete)); then
        log "training complete: $iteration/$total iterations; results in $OUT"
        return 0
    fi
    ((iteration > CHUNK_START_ITER)) \
        || die "chunk $CHUNK made no progress (iteration $iteration): not resubmitting"
    log "stopped at iteration $iteration/$total (end of the wall-time chunk)"
    if [[ "$RESUBMIT" != 1 ]]; then
        log "RESUBMIT=$RESUBMIT: submit the same script again (same OUT) to continue"
        return 0
    fi
    CHUNK=$((CHUNK + 1))
    "$submit_next"
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
               --nodes="$(slurm_nodes)" --ntasks-per-node="$GPUS_PER_NODE" --export=ALL)
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
    id=$(env ${clean[@]+"${clean[@]}"} "${cmd[@]}") || die "sbatch failed; continue by hand: sbatch $JOB_SCRIPT (same OUT=$OUT)"
    log "submitted job $id; it starts after job $SLURM_JOB_ID ends successfully"
}

# Workstation: no scheduler to resubmit to.
local_resubmit() {
    log "run the same command again (same OUT=$OUT) to continue"
}
