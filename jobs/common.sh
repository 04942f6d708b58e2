# shellcheck shell=bash
# jobs/common.sh: the launch path every job script shares. Sourced by the
# scripts in jobs/pbs, jobs/slurm and jobs/local; never run on its own. What
# happens between launches (status.json, the next wall-time chunk) is in
# jobs/chunks.sh.
#
# A job script sets its directives and its NOTE: site block, checks that it
# runs inside its scheduler, sources this file and jobs/chunks.sh and then
# reads as:
#
#   job_setup pbs|slurm|local mpirun|srun [RANKS]
#                    parameters, modules + virtualenv, ranks from the
#                    allocation (local: RANKS), the trainer's arguments and
#                    the launcher (mpirun of the MPI found, or srun --mpi=pmix)
#   chunk_begin      (chunks.sh) nothing to do if $OUT is already complete
#   preflight        the doctor on every rank; always checks that
#                    nodes x GPUS_PER_NODE ranks started
#   launch "${LAUNCH[@]}" "$PYTHON" train_imagenet.py "${TRAIN_ARGV[@]}"
#   chunk_end SUBMIT_NEXT   (chunks.sh) complete? otherwise submit the next
#                           chunk (pbs_resubmit, slurm_resubmit, local_resubmit)
#
# The workstation script counts its GPUs first: GPUS=${GPUS:-$(visible_gpus)}.
#
# State that job_setup leaves for the rest of the job; the functions take
# everything else as arguments:
#   NP           ranks of this job: nodes x GPUS_PER_NODE
#   PYTHON       the interpreter, as a path, after the virtualenv is on PATH
#   LAUNCH       the launcher prefix (array), e.g. (mpirun -np 1024 ...)
#   TRAIN_ARGV   the trainer's arguments (array)
#   SCHEDULER    pbs, slurm or local
# and the parameters below with their defaults filled in, under their own
# names: the next chunk gets them by name (FORWARD_TO_NEXT_JOB, chunks.sh).
#
# Parameters (environment variables; the scripts' defaults are the cluster's):
#   RECIPE         recipe name (default akiba2017); the only training choice
#   DEVICE         gpu (default) or cpu
#   GPUS_PER_NODE  ranks per node, one per GPU (default 8)
#   VIRTUAL_WORKERS
#                  virtual workers per rank (default 1): each GPU runs that
#                  many micro-batches per iteration, so NP x VIRTUAL_WORKERS
#                  workers train (e.g. akiba2017's 1,024 on 64 GPUs with 16)
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
#   CHUNK          the number of this chunk (default 1; set by the previous one)
#   TRAIN_ARGS     extra operational trainer flags, split on spaces
#                  (e.g. "--loaderjobs 4"); hyperparameters belong in recipes
#   WARNING_DELAY  seconds from the trainer's launch before a wall-time
#                  warning is passed on to it (default 30: the ranks must
#                  have started and installed their SIGUSR1 handler)
#   WALLTIME_WARNING
#                  PBS: seconds before the walltime at which the job warns
#                  the trainer (default 300; 0: no warning). Slurm: the
#                  #SBATCH --signal=B:USR1@300 directive (or SBATCH_SIGNAL)
#   DRY_RUN        1: print the commands instead of running them
#   REPO, JOB_SCRIPT
#                  the repository (default: the submission folder) and the
#                  script that is resubmitted
#
# The wall-time warning: SIGUSR1 to the job script (Slurm --signal=B:USR1
# signals the batch shell only; PBS: chunks.sh's timer) is passed on, once, to
# the launcher of the training, and each launcher passes it on to every rank
# on every node (MPICH's hydra mpiexec, Open MPI's mpirun and srun do: tested
# under a real Slurm, jobs/README.md). The trainer then stops after its
# current iteration, snapshots, writes status.json with "stopped": "SIGUSR1"
# and exits 0, and chunk_end submits the next chunk.
#
# SIGTERM and SIGINT are passed on to whatever is launched; the trainer takes
# them as stop requests too (snapshot, "stopped": "SIGTERM" in status.json,
# exit status 128+N: chainer_resnet/signals.py). Then the script asks why the
# job was stopped (stop_reason): at the scheduler's time limit (Slurm:
# Reason=TimeLimit in scontrol show job; PBS: the walltime qstat -f gave at
# the start is used up) or by preemption (Slurm: PREEMPTED) the chain goes on
# (chunk_end, with an afterany dependency: afterok never accepts a job that
# hit its limit); after scancel, qdel or Ctrl-C it does not.

log() { printf 'job: %s\n' "$*"; }
die() { printf 'job: error: %s\n' "$*" >&2; exit 2; }

# State of the launch in progress and of the warning (the traps' side).
LAUNCH_PID=''           # the launcher running now (doctor or trainer)
TRAINER_SINCE=''        # $SECONDS when the trainer's launcher started
WARNING_RECEIVED=0      # the job got SIGUSR1
WARNING_FORWARDED=0     # ... and passed it on to the trainer
WAIT_INTERRUPTED=0      # a trap ran while run_launch waited
STOP_SIGNAL=''          # the job got SIGTERM or SIGINT (TERM or INT)
JOB_DEADLINE=''         # PBS: $SECONDS at which the walltime ends (chunk_begin)
DEPENDENCY=afterok      # how the next chunk waits for this one (afterany after a time limit)

on_warning() {
    WAIT_INTERRUPTED=1
    ((WARNING_RECEIVED == 0)) || return 0
    WARNING_RECEIVED=1
    if [[ -z "$TRAINER_SINCE" || -z "$LAUNCH_PID" ]]; then
        log "wall-time warning (SIGUSR1) at $SECONDS s, before the training started"
        return 0
    fi
    # A rank that has not installed its handler yet would die of SIGUSR1.
    local early=$((TRAINER_SINCE + ${WARNING_DELAY:-30} - SECONDS))
    if ((early > 0)); then
        log "wall-time warning (SIGUSR1) at $SECONDS s, $((SECONDS - TRAINER_SINCE)) s after the training's launch: passing it on in $early s (WARNING_DELAY)"
        sleep "$early"
    fi
    if kill -USR1 "$LAUNCH_PID" 2>/dev/null; then
        # shellcheck disable=SC2034  # read by chunk_end (chunks.sh)
        WARNING_FORWARDED=1
        log "wall-time warning (SIGUSR1) passed on to the training at $SECONDS s (launcher PID $LAUNCH_PID); it stops after its current iteration with a snapshot"
    fi
}

on_stop() {
    WAIT_INTERRUPTED=1
    STOP_SIGNAL=${STOP_SIGNAL:-$1}
    log "got SIG$1: passing it on to the launch in progress"
    if [[ -n "$LAUNCH_PID" ]]; then kill "-$1" "$LAUNCH_PID" 2>/dev/null || true; fi
}

# run_launch trainer|doctor COMMAND...: print COMMAND as it would be typed
# (quoted), then run it unless DRY_RUN=1. In the background, waited for: bash
# runs a trap only between commands, and the warning must reach the trainer
# while it runs.
run_launch() {
    local kind=$1
    shift
    local line
    printf -v line '%q ' "$@"
    printf 'job: + %s\n' "${line% }"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        return 0
    fi
    "$@" &
    LAUNCH_PID=$!
    if [[ "$kind" == trainer ]]; then TRAINER_SINCE=$SECONDS; fi
    local rc
    while :; do
        WAIT_INTERRUPTED=0
        rc=0
        wait "$LAUNCH_PID" || rc=$?
        # A trap that runs ends the wait early (status > 128): wait again.
        ((WAIT_INTERRUPTED && rc > 128)) || break
    done
    LAUNCH_PID=''
    TRAINER_SINCE=''
    return "$rc"
}

# launch COMMAND...: the one launch of the training (the wall-time warning is
# passed on to it). After SIGTERM or SIGINT it returns 0 only when the job was
# stopped by its time limit or preempted (the chain goes on: chunk_end), and
# otherwise ends the script with the trainer's status.
launch() {
    if ((WARNING_RECEIVED)); then
        die "the wall-time warning (SIGUSR1) came before the training started: the job's time limit leaves no time to train. Ask for a longer --time / walltime, or for an earlier warning: SBATCH_SIGNAL=B:USR1@SECONDS (Slurm), WALLTIME_WARNING=SECONDS (PBS)"
    fi
    local rc=0
    run_launch trainer "$@" || rc=$?
    if [[ -n "$STOP_SIGNAL" ]]; then
        local reason
        reason=$(stop_reason)
        case "$reason" in
            "time limit" | walltime | preemption)
                log "the training ended (status $rc) after SIG$STOP_SIGNAL: the job's $reason; the chain goes on"
                # shellcheck disable=SC2034  # read by chunk_end and the resubmits (chunks.sh)
                DEPENDENCY=afterany
                return 0 ;;
        esac
        log "the training ended (status $rc) after SIG$STOP_SIGNAL: $reason, so the chain ends here (nothing is submitted); submit the same script again (same OUT=$OUT) to continue"
        exit "$((rc == 0 ? 1 : rc))"
    fi
    return "$rc"
}

# Why this job got its stop signal: "time limit" (Slurm: while the job ends,
# scontrol shows JobState=COMPLETING Reason=TimeLimit, then TIMEOUT), "walltime"
# (PBS: the walltime qstat -f gave at the start is used up, within 120 s: the
# server's clock and ours, and how often it checks), "preemption" (Slurm:
# PREEMPTED, or Reason=Preempted), or what else it was: scancel (COMPLETING
# with Reason=None, then CANCELLED), qdel, Ctrl-C.
stop_reason() {
    case "$SCHEDULER" in
        slurm)
            local fields state reason
            fields=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -o -E '(JobState|Reason)=[^ ]*' || true)
            state=$(grep -o -E '^JobState=.*' <<<"$fields" | head -n 1 || true)
            reason=$(grep -o -E '^Reason=.*' <<<"$fields" | head -n 1 || true)
            state=${state#JobState=} reason=${reason#Reason=}
            case "$state/$reason" in
                TIMEOUT/* | */TimeLimit) echo "time limit" ;;
                PREEMPTED/* | */Preempt*) echo "preemption" ;;
                /) echo "a signal (scontrol show job $SLURM_JOB_ID gave no state)" ;;
                CANCELLED/* | COMPLETING/None) echo "cancelled (scancel)" ;;
                *) echo "a signal while JobState=$state Reason=$reason (scancel, or sent by hand)" ;;
            esac ;;
        pbs)
            if [[ -n "$JOB_DEADLINE" ]] && ((SECONDS >= JOB_DEADLINE - 120)); then
                echo walltime
            else
                echo "deleted (qdel) or signalled before the walltime"
            fi ;;
        *) echo "a signal (Ctrl-C, kill)" ;;
    esac
}

# job_setup SCHEDULER LAUNCHER [RANKS]: everything before the first launch.
# SCHEDULER: pbs, slurm or local (RANKS ranks on this machine); LAUNCHER:
# mpirun or srun. Sets NP, PYTHON, TRAIN_ARGV, LAUNCH and SCHEDULER, and the
# traps that pass the wall-time warning and SIGTERM/SIGINT on.
job_setup() {
    local scheduler=$1 launcher=$2
    : "${RECIPE:=akiba2017}" "${DEVICE:=gpu}" "${GPUS_PER_NODE:=8}"
    : "${SKIP_DOCTOR:=0}" "${RESUBMIT:=1}" "${CHUNK:=1}" "${MPIRUN:=mpirun}"
    : "${VIRTUAL_WORKERS:=1}"
    [[ "$VIRTUAL_WORKERS" =~ ^[1-9][0-9]*$ ]] || die "VIRTUAL_WORKERS=$VIRTUAL_WORKERS is not a positive integer (virtual workers per rank)"
    [[ "$DEVICE" == gpu || "$DEVICE" == cpu ]] || die "DEVICE=$DEVICE: use gpu or cpu"
    [[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "GPUS_PER_NODE=$GPUS_PER_NODE is not a positive integer"
    [[ -z "${CHUNK_EPOCHS:-}" || "$CHUNK_EPOCHS" =~ ^[0-9]*\.?[0-9]+$ ]] \
        || die "CHUNK_EPOCHS=$CHUNK_EPOCHS is not a number of epochs"
    [[ -z "${WARNING_DELAY:-}" || "$WARNING_DELAY" =~ ^[0-9]+$ ]] \
        || die "WARNING_DELAY=$WARNING_DELAY is not a number of seconds"
    trap on_warning USR1
    trap 'on_stop TERM' TERM
    trap 'on_stop INT' INT
    # shellcheck disable=SC2034  # read by chunk_begin (chunks.sh)
    SCHEDULER=$scheduler
    cd "$REPO" || die "cannot cd to REPO=$REPO"

    load_environment
    PYTHON=$(command -v "${PYTHON:-python3}") || die "PYTHON=${PYTHON:-python3} not found on PATH"

    local job_id nodes slots
    case "$scheduler" in
        pbs)
            job_id=$PBS_JOBID
            nodes=$(sort -u "$PBS_NODEFILE" | grep -c .) || die "PBS_NODEFILE=$PBS_NODEFILE lists no host"
            slots=$(grep -c . "$PBS_NODEFILE")
            NP=$((nodes * GPUS_PER_NODE))
            # PBS_NODEFILE has one line per MPI slot (mpiprocs / ppn).
            ((slots >= NP)) || die "PBS_NODEFILE lists $slots MPI slot(s) on $nodes node(s) but $NP ranks ($GPUS_PER_NODE per node) are needed: request mpiprocs=$GPUS_PER_NODE (PBS Pro select) or ppn>=$GPUS_PER_NODE (Torque)"
            ;;
        slurm)
            job_id=$SLURM_JOB_ID
            nodes=$(slurm_nodes)
            [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "SLURM_JOB_NUM_NODES is not set: is this an sbatch job?"
            NP=$((nodes * GPUS_PER_NODE))
            slots=${SLURM_NTASKS:-$NP}
            ((slots == NP)) || die "the allocation has $slots task(s) on $nodes node(s) but $NP ranks ($GPUS_PER_NODE per node) are needed: submit with --ntasks-per-node=$GPUS_PER_NODE (or set GPUS_PER_NODE)"
            ;;
        local)
            job_id="on ${HOSTNAME:-localhost}"
            nodes=1
            GPUS_PER_NODE=$3
            [[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "number of ranks '$3' is not a positive integer"
            NP=$GPUS_PER_NODE
            ;;
        *) die "job_setup: unknown scheduler $scheduler" ;;
    esac
    local per_rank=""
    if ((VIRTUAL_WORKERS > 1)); then
        per_rank=" x $VIRTUAL_WORKERS virtual workers = $((NP * VIRTUAL_WORKERS)) workers"
        : "${OUT:=$REPO/results/$RECIPE-${NP}ranks-x${VIRTUAL_WORKERS}}"
    fi
    : "${OUT:=$REPO/results/$RECIPE-${NP}ranks}"
    : "${JOB_SCRIPT:=$0}"
    log "$scheduler job $job_id, chunk $CHUNK: $nodes node(s) x $GPUS_PER_NODE = $NP ranks$per_rank, recipe $RECIPE, device $DEVICE"
    log "out $OUT; python $PYTHON"

    train_argv "$nodes"
    if [[ -n "${LAUNCHER:-}" ]]; then
        read -r -a LAUNCH <<<"$LAUNCHER"
        ((${#LAUNCH[@]} > 0)) || die "LAUNCHER='$LAUNCHER' holds no command"
        log "launcher (LAUNCHER): ${LAUNCH[*]}"
    else
        case "$launcher" in
            mpirun) mpirun_launcher "$scheduler" ;;
            srun) srun_launcher ;;
            *) die "job_setup: unknown launcher $launcher" ;;
        esac
    fi
}

# This Slurm job's node count.
slurm_nodes() {
    printf '%s\n' "${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}"
}

load_environment() {
    if [[ -n "${MODULES:-}" ]]; then
        type module >/dev/null 2>&1 \
            || die "MODULES='$MODULES' but there is no 'module' command: source your site's modules init in the NOTE: site block, or set MODULES= (empty)"
        local mods=()
        read -r -a mods <<<"$MODULES"
        # Module files are not written for `set -u`.
        set +u
        module load ${mods[@]+"${mods[@]}"} || die "module load $MODULES failed"
        set -u
    fi
    if [[ -n "${VENV:-}" ]]; then
        [[ -x "$VENV/bin/python" ]] \
            || die "VENV=$VENV is not a virtualenv: create it (python3 -m venv $VENV && $VENV/bin/pip install -e '${REPO}[gpu]') or set VENV= (empty) to use the python on PATH"
        # What bin/activate does, without its prompt handling.
        export VIRTUAL_ENV=$VENV
        export PATH="$VENV/bin:$PATH"
    fi
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
    # CuPy's kernel cache on node-local disk: 1,024 ranks compiling into one
    # shared $HOME is a start-up storm (the site may point it elsewhere).
    export CUPY_CACHE_DIR="${CUPY_CACHE_DIR:-${TMPDIR:-/tmp}/cupy-kernel-cache-${USER:-$(id -u)}}"
}

# train_argv NODES: TRAIN_ARGV for $NP ranks on NODES node(s).
train_argv() {
    local nodes=$1
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
    # Virtual workers count as workers: 64 ranks x 16 is akiba2017's 1,024.
    local facts expected batch lr fit workers=$((NP * VIRTUAL_WORKERS))
    facts=$("$PYTHON" -m chainer_resnet.recipes facts "$RECIPE" "$NP" "$VIRTUAL_WORKERS") \
        || die "cannot read recipe $RECIPE with $PYTHON (is chainer_resnet installed in VENV=${VENV:-}?)"
    read -r expected batch lr fit <<<"$facts"
    if ((VIRTUAL_WORKERS > 1)); then
        TRAIN_ARGV+=(--set "virtual_workers_per_rank=$VIRTUAL_WORKERS")
    fi
    if ((expected != 0 && expected != workers)); then
        local hint=""
        if ((fit > 0)); then
            hint=" (VIRTUAL_WORKERS=$fit would give its $expected workers on these $NP ranks)"
        fi
        log "scaling: recipe $RECIPE is written for $expected workers; this job runs $NP ranks ($nodes node(s) x $GPUS_PER_NODE)${per_rank:-}$hint. Passing --set world_size_check=false; the learning rate follows the linear scaling rule (global batch $batch, base lr $lr). This is not the paper's configuration."
        TRAIN_ARGV+=(--set world_size_check=false)
    fi
    if [[ -n "${CHUNK_EPOCHS:-}" ]]; then
        TRAIN_ARGV+=(--stop-after-epochs "$CHUNK_EPOCHS")
    fi
    TRAIN_ARGV+=(--no-progress)
    local extra=()
    read -r -a extra <<<"${TRAIN_ARGS:-}"
    TRAIN_ARGV+=(${extra[@]+"${extra[@]}"})
}

# mpirun_launcher SCHEDULER: LAUNCH=(mpirun ...) for the MPI that $MPIRUN
# belongs to, $NP ranks, GPUS_PER_NODE per node.
mpirun_launcher() {
    local scheduler=$1
    # Variables every rank must see; Open MPI forwards only what -x names
    # (hydra: -genvall, srun: --export=ALL forward everything). Not
    # CUDA_VISIBLE_DEVICES: it belongs to each node.
    local to_ranks='^(PATH|LD_LIBRARY_PATH|PYTHONPATH|VIRTUAL_ENV|HOME|CUDA_HOME|CUDA_PATH|NCCL_[A-Z0-9_]+|UCX_[A-Z0-9_]+|CHAINER_[A-Z0-9_]+|CUPY_[A-Z0-9_]+|MPI4PY_[A-Z0-9_]+|OMP_NUM_THREADS|MPLBACKEND)$'
    local site=()
    read -r -a site <<<"${MPIRUN_FLAGS:-}"
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
            # odls_base_sigkill_timeout: Open MPI's mpirun answers SIGTERM by
            # killing the ranks 1 s later; they need the scheduler's grace time
            # to stop with a snapshot (chainer_resnet/signals.py).
            LAUNCH=("$mpirun" -np "$NP" --map-by "ppr:$GPUS_PER_NODE:node" --bind-to none
                    --mca mpi_warn_on_fork 0 --mca odls_base_sigkill_timeout 120)
            if [[ "$scheduler" == pbs ]]; then
                # Open MPI without PBS (tm) support would otherwise start
                # every rank on this node.
                LAUNCH+=(--hostfile "$PBS_NODEFILE")
            fi
            local name
            while IFS= read -r name; do
                LAUNCH+=(-x "$name")
            done < <(compgen -e | grep -E "$to_ranks" || true)
            ;;
        hydra)
            LAUNCH=("$mpirun" -n "$NP" -ppn "$GPUS_PER_NODE" -genvall)
            if [[ "$scheduler" == pbs ]]; then
                LAUNCH+=(-f "$PBS_NODEFILE")
            fi
            ;;
    esac
    LAUNCH+=(${site[@]+"${site[@]}"})
    log "launcher: $flavour ($mpirun)"
}

# LAUNCH=(srun --mpi=pmix ...) for $NP ranks, GPUS_PER_NODE per node. srun
# forwards the whole environment (--export=ALL) to every rank; no CPU binding
# (the loader processes need the cores); one failing rank ends all. Slurm >=
# 22.05 no longer passes sbatch's --cpus-per-task on to srun.
srun_launcher() {
    local site=()
    read -r -a site <<<"${SRUN_FLAGS:-}"
    LAUNCH=(srun --mpi=pmix --ntasks="$NP" --ntasks-per-node="$GPUS_PER_NODE"
            ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"}
            --export=ALL --cpu-bind=none --kill-on-bad-exit=1 ${site[@]+"${site[@]}"})
}

# The GPUs this machine gives a workstation job: those in CUDA_VISIBLE_DEVICES
# if set, else all that nvidia-smi lists. Callers: GPUS=$(visible_gpus).
visible_gpus() {
    local visible=() count
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
        count=${#visible[@]}
    else
        count=$(nvidia-smi -L 2>/dev/null | grep -c ^GPU || true)
    fi
    [[ "$count" -gt 0 ]] || die "no GPU found (nvidia-smi -L): set GPUS=N, or use jobs/local/smoke_cpu.sh on a machine without GPUs"
    printf '%s\n' "$count"
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
    # The doctor's report also goes to a file: a doctor that printed no
    # verdict line died before its report (below).
    local report rc=0
    report=$(mktemp "${TMPDIR:-/tmp}/doctor.XXXXXX")
    run_launch doctor "${LAUNCH[@]}" "$PYTHON" "${args[@]}" | tee "$report" || rc=$?
    if ((rc != 0)) && ! grep -q '^doctor: ' "$report"; then
        doctor_died "$rc"
    fi
    rm -f "$report"
    ((rc == 0)) || die "preflight failed (see the FAIL: lines above); nothing was trained. SKIP_DOCTOR=1 skips the full doctor, never the rank count."
}

# The doctor's ranks ended (status RC) before rank 0 printed its report: most
# often MPI_Init aborted because the MPI library mpi4py loads cannot talk to
# the launcher (its error is above). The FAIL line the doctor would print.
doctor_died() {
    local rc=$1 launcher=${LAUNCH[0]##*/}
    local fix word mpi=''
    # srun's interface: the last --mpi= wins (SRUN_FLAGS come after ours).
    for word in "${LAUNCH[@]}"; do
        if [[ "$word" == --mpi=* ]]; then mpi=$word; fi
    done
    case "$launcher" in
        srun)
            fix="the MPI library mpi4py runs on cannot speak the PMI that 'srun ${mpi:-(no --mpi)}' offers (MPICH from PyPI, MVAPICH or Intel MPI under --mpi=pmix: 'unsupported PMI version PMIx'; Open MPI under --mpi=pmi2 or none: 'OMPI was not built with SLURM's PMI support'). Launch with that MPI's own mpirun (jobs/slurm/mpirun.sh), or with a PMI it speaks (SRUN_FLAGS: Open MPI --mpi=pmix, the MPICH family --mpi=pmi2), or load the site's MPI (MODULES) and rebuild mpi4py against it: env MPICC=\$(which mpicc) pip install --no-binary=mpi4py --force-reinstall mpi4py" ;;
        *)
            fix="the MPI library mpi4py runs on and '$launcher' are probably of different MPIs (see the error above): launch with the mpirun of the MPI mpi4py uses (MPIRUN, or MODULES), or rebuild mpi4py against this one: env MPICC=\$(which mpicc) pip install --no-binary=mpi4py --force-reinstall mpi4py" ;;
    esac
    printf 'FAIL: the doctor ended (exit status %s) before its report: MPI did not start under %s\n  fix: %s\n' \
        "$rc" "$launcher" "$fix"
}
