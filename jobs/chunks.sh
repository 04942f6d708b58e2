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
#   chunk_begin             before the launch: exit 0 if the run is complete;
#                           under PBS, note when the walltime ends and arm the
#                           wall-time warning timer
#   chunk_end SUBMIT_NEXT   after it: complete? otherwise, if this chunk made
#                           progress (stopped at CHUNK_EPOCHS, by the wall-time
#                           warning, or by SIGTERM at the time limit: launch in
#                           common.sh) and RESUBMIT=1, SUBMIT_NEXT
#                           (pbs_resubmit, slurm_resubmit or local_resubmit)
#                           submits the next chunk, with this job's resources
#
# State shared by these functions:
#   CHUNK_START_ITER     the iteration this chunk started from (chunk_begin),
#                        to tell progress from a chunk that did nothing
#   FORWARD_TO_NEXT_JOB  (constant) the variables the next chunk gets (PBS:
#                        qsub -v; Slurm: the exported environment); the
#                        NOTE: site block sets the rest again
FORWARD_TO_NEXT_JOB=(RECIPE DEVICE GPUS_PER_NODE VIRTUAL_WORKERS OUT TRAIN_LIST VAL_LIST DATA_ROOT
                     MODULES VENV PYTHON MPIRUN MPIRUN_FLAGS SRUN_FLAGS LAUNCHER
                     SKIP_DOCTOR CHUNK_EPOCHS RESUBMIT TRAIN_ARGS REPO JOB_SCRIPT
                     CHUNK WARNING_DELAY WALLTIME_WARNING NCCL_IB_HCA
                     NCCL_SOCKET_IFNAME NCCL_DEBUG NCCL_DEBUG_SUBSYS)

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
    if [[ "$SCHEDULER" == pbs ]]; then
        pbs_warning_timer
    fi
}

# PBS: "LIMIT USED", this job's walltime and what it used so far (qstat -f),
# in seconds (LIMIT 0: none).
pbs_walltime() {
    printf '%s %s\n' "$(pbs_seconds "$(pbs_job_attribute Resource_List.walltime)")" \
        "$(pbs_seconds "$(pbs_job_attribute resources_used.walltime)")"
}

# PBS Pro and Torque send no signal ahead of the walltime (at the limit:
# SIGTERM, then SIGKILL after the server's kill_delay): a timer sends this
# script the SIGUSR1 that Slurm's --signal=B:USR1@300 would, WALLTIME_WARNING
# seconds before this job's walltime (qstat -f).
pbs_warning_timer() {
    local margin=${WALLTIME_WARNING:-300}
    [[ "$margin" =~ ^[0-9]+$ ]] || die "WALLTIME_WARNING=$margin is not a number of seconds"
    local limit used
    read -r limit used < <(pbs_walltime)
    if ((limit > 0)); then
        # When the walltime is used up: stop_reason (common.sh) tells it from a qdel.
        # shellcheck disable=SC2034  # read by stop_reason (common.sh)
        JOB_DEADLINE=$((SECONDS + limit - used))
    fi
    ((margin > 0)) || return 0
    if ((limit == 0)); then
        log "no walltime in qstat -f $PBS_JOBID: no wall-time warning"
        return 0
    fi
    local delay=$((limit - used - margin))
    ((delay > 0)) || delay=0
    log "wall-time warning (SIGUSR1) in $delay s, $margin s before the walltime (WALLTIME_WARNING)"
    warning_timer "$delay" "$$" </dev/null >/dev/null 2>&1 &
    WARNING_TIMER=$!
    trap 'kill "$WARNING_TIMER" 2>/dev/null || true' EXIT
}

# warning_timer SECONDS PID (in the background): SIGUSR1 to PID after SECONDS;
# stopped with SIGTERM (its sleep with it).
warning_timer() {
    local sleeper
    sleep "$1" &
    sleeper=$!
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    if wait "$sleeper"; then kill -USR1 "$2" 2>/dev/null || true; fi
}

# [[HH:]MM:]SS as seconds (0 for an empty value).
pbs_seconds() {
    local parts=() total=0 part
    IFS=: read -r -a parts <<<"${1:-0}"
    for part in ${parts[@]+"${parts[@]}"}; do
        total=$((total * 60 + 10#${part%%.*}))
    done
    printf '%s\n' "$total"
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
    if [[ "$DEPENDENCY" == afterany ]]; then
        log "stopped at iteration $iteration/$total by SIG$STOP_SIGNAL at the job's time limit"
    elif ((WARNING_FORWARDED)); then
        log "stopped at iteration $iteration/$total by the wall-time warning (SIGUSR1)"
    else
        log "stopped at iteration $iteration/$total (end of the wall-time chunk)"
    fi
    if [[ "$RESUBMIT" != 1 ]]; then
        log "RESUBMIT=$RESUBMIT: submit the same script again (same OUT) to continue"
        return 0
    fi
    CHUNK=$((CHUNK + 1))
    "$submit_next"
}

# PBS (Pro and Torque): the same script again, with this job's resources,
# after this job ends successfully (afterok; afterany after a stop at the
# walltime, which PBS does not count as a success), with the parameters in -v.
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
    list=$(printf '%s,' ${vars[@]+"${vars[@]}"})
    local cmd=(qsub -W "depend=$DEPENDENCY:$PBS_JOBID" -v "${list%,}")
    local option
    while read -r option value; do
        [[ -n "$option" ]] && cmd+=("$option" "$value")
    done < <(pbs_job_resources)
    cmd+=("$JOB_SCRIPT")
    local line
    printf -v line '%q ' "${cmd[@]}"
    log "next chunk ($CHUNK): $line"
    local id
    id=$("${cmd[@]}") || die "qsub failed; continue by hand: qsub $JOB_SCRIPT (same OUT=$OUT)"
    log "submitted job $id; it starts after job $PBS_JOBID ends ($DEPENDENCY)"
}

# This job's attributes from `qstat -f`, one "NAME = VALUE" a line (PBS
# wraps long values onto lines that begin with a tab).
pbs_job_attributes() {
    command -v qstat >/dev/null 2>&1 || return 0
    qstat -f "$PBS_JOBID" 2>/dev/null | awk '
        /^\t/ { sub(/^\t+/, ""); line = line $0; next }   # continuation lines
        { if (line != "") print line; line = $0 }
        END { if (line != "") print line }' | sed -n 's/^ *\([A-Za-z_.]*\) = /\1 = /p'
}

# pbs_job_attribute NAME: the value of one attribute ('' if absent).
pbs_job_attribute() {
    pbs_job_attributes | awk -F' = ' -v name="$1" '$1 == name { print substr($0, length(name) + 4); exit }'
}

# The qsub options ("OPTION VALUE" lines) that give the next chunk this job's
# resources, read with `qstat -f`: select/nodes, place, walltime, the queue it
# was submitted to, Account_Name, project (PBS Pro; not its default) and the
# job name. A job submitted with `qsub -l select=16:... -A abc123` continues
# at 16 nodes on that account.
pbs_job_resources() {
    pbs_job_attributes | awk -F' = ' -v submit_queue="${PBS_O_QUEUE:-}" -v exec_queue="${PBS_QUEUE:-}" '
        { value[$1] = substr($0, length($1) + 4) }
        END {
            if ("Resource_List.select" in value) print "-l select=" value["Resource_List.select"]
            else if ("Resource_List.nodes" in value) print "-l nodes=" value["Resource_List.nodes"]
            if ("Resource_List.place" in value) print "-l place=" value["Resource_List.place"]
            if ("Resource_List.walltime" in value) print "-l walltime=" value["Resource_List.walltime"]
            # The queue it was submitted to (a routing queue) before the one it runs in.
            queue = submit_queue != "" ? submit_queue : ("queue" in value ? value["queue"] : exec_queue)
            if (queue != "") print "-q " queue
            if ("Account_Name" in value) print "-A " value["Account_Name"]
            if ("project" in value && value["project"] != "_pbs_project_default") print "-P " value["project"]
            if ("Job_Name" in value) print "-N " value["Job_Name"]
        }'
}

# Slurm: the same script again after this job ends successfully (afterok;
# afterany after a stop at the time limit: the job ends as TIMEOUT), with this
# job's resources (slurm_job_resources) and the parameters in the exported
# environment. This job's SLURM_* variables are removed from what sbatch
# exports: the next job gets its own. sbatch's own input variables (SBATCH_*,
# e.g. SBATCH_SIGNAL) stay, so they apply to every chunk.
slurm_resubmit() {
    local name
    for name in "${FORWARD_TO_NEXT_JOB[@]}"; do
        if [[ -v "$name" ]]; then export "${name?}"; fi
    done
    local cmd=(sbatch --parsable --dependency="$DEPENDENCY:$SLURM_JOB_ID" --kill-on-invalid-dep=yes
               --nodes="$(slurm_nodes)" --ntasks-per-node="$GPUS_PER_NODE" --export=ALL)
    local option
    while IFS= read -r option; do
        [[ -n "$option" ]] && cmd+=("$option")
    done < <(slurm_job_resources)
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
    log "submitted job $id; it starts after job $SLURM_JOB_ID ends ($DEPENDENCY)"
}

# The sbatch options, one a line, that give the next chunk what this job has
# (scontrol show job): a resubmitted script re-reads its #SBATCH lines, so
# everything given on the first sbatch command line would otherwise be lost.
# GPUs (--gres, --gpus, --gpus-per-task), --cpus-per-task, --mem or
# --mem-per-cpu, --time, --partition, --account, --qos, --reservation,
# --constraint, --job-name, and --output/--error with this job's id turned
# back into %j (Slurm shows them expanded), so chunk N logs to its own file.
# Not shown by scontrol, so not carried: --signal (set it in the directive or
# in SBATCH_SIGNAL, which every chunk inherits).
slurm_job_resources() {
    command -v scontrol >/dev/null 2>&1 || return 0
    scontrol show job "$SLURM_JOB_ID" 2>/dev/null | awk -v id="$SLURM_JOB_ID" '
        # The id as %j where it stands as a number of its own.
        function pattern(path,   out, i, n) {
            out = ""; n = length(id)
            while ((i = index(path, id)) > 0) {
                if (substr(path, i - 1, 1) !~ /[0-9]/ && substr(path, i + n, 1) !~ /[0-9]/)
                    out = out substr(path, 1, i - 1) "%j"
                else
                    out = out substr(path, 1, i + n - 1)
                path = substr(path, i + n)
            }
            return out path
        }
        function set(v) { return v != "" && v != "(null)" && v != "N/A" && v != "None" }
        # gres:gpu:4 (22.05) or gres/gpu:4 (23.02+), comma-separated.
        function gres(v,   items, k, out) {
            n = split(v, items, ",")
            out = ""
            for (k = 1; k <= n; k++) {
                sub(/^gres[:\/]/, "", items[k])
                out = out (out == "" ? "" : ",") items[k]
            }
            return out
        }
        function gpus(v,   items, k) {
            n = split(v, items, ",")
            for (k = 1; k <= n; k++)
                if (items[k] ~ /^gres[:\/]gpu:/) { sub(/^gres[:\/]gpu:/, "", items[k]); return items[k] }
            return ""
        }
        # Paths stand alone on their line and may hold spaces.
        /^ *(StdOut|StdErr)=/ { sub(/^ */, ""); p = index($0, "="); v[substr($0, 1, p - 1)] = substr($0, p + 1); next }
        { for (i = 1; i <= NF; i++) { p = index($i, "="); if (p > 1) v[substr($i, 1, p - 1)] = substr($i, p + 1) } }
        /^JobId=/ { p = index($0, "JobName="); if (p) v["JobName"] = substr($0, p + 8) }
        END {
            if (set(v["TresPerNode"])) print "--gres=" gres(v["TresPerNode"])
            if (set(v["TresPerJob"]) && gpus(v["TresPerJob"]) != "") print "--gpus=" gpus(v["TresPerJob"])
            if (set(v["TresPerTask"]) && gpus(v["TresPerTask"]) != "") print "--gpus-per-task=" gpus(v["TresPerTask"])
            if (set(v["CPUs/Task"])) print "--cpus-per-task=" v["CPUs/Task"]
            if (set(v["MinMemoryNode"]) && v["MinMemoryNode"] !~ /^0[A-Z]?$/) print "--mem=" v["MinMemoryNode"]
            if (set(v["MinMemoryCPU"]) && v["MinMemoryCPU"] !~ /^0[A-Z]?$/) print "--mem-per-cpu=" v["MinMemoryCPU"]
            if (v["TimeLimit"] ~ /^[0-9]/) print "--time=" v["TimeLimit"]
            if (set(v["Partition"])) print "--partition=" v["Partition"]
            if (set(v["Account"])) print "--account=" v["Account"]
            if (set(v["QOS"])) print "--qos=" v["QOS"]
            if (set(v["Reservation"])) print "--reservation=" v["Reservation"]
            if (set(v["Features"])) print "--constraint=" v["Features"]
            if (set(v["JobName"])) print "--job-name=" v["JobName"]
            if (set(v["StdOut"])) print "--output=" pattern(v["StdOut"])
            if (set(v["StdErr"]) && v["StdErr"] != v["StdOut"]) print "--error=" pattern(v["StdErr"])
        }'
}

# Workstation: no scheduler to resubmit to.
local_resubmit() {
    log "run the same command again (same OUT=$OUT) to continue"
}
