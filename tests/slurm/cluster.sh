#!/bin/bash
# =============================================================================
# What:      a real Slurm on this machine for tests/test_slurm.py: one
#            slurmctld and two slurmd, node1 and node2, each in its own UTS and
#            mount namespace (hostname nodeN, a private /etc/hosts naming both
#            nodes, so MPICH's hydra and Open MPI resolve them), each with 16
#            CPUs and 8 fake GPUs (gres File= symlinks to /dev/null), so the job
#            scripts' own directives are satisfiable on 2 real cores. A job
#            with --nodes=1 is the one-node cluster, --nodes=2 the two-node one.
# Needs:     root, Debian's slurmctld slurmd slurm-client munge libpmix2
#            libpmix-dev (.ci/run installs them), no systemd.
# Expected:  up ~5 s, down ~2 s.
# Run:       tests/slurm/cluster.sh up        # start, wait until both nodes are idle
#            tests/slurm/cluster.sh status    # exit 0 when the cluster answers
#            tests/slurm/cluster.sh env       # the line for a client: export SLURM_CONF=...
#            tests/slurm/cluster.sh down      # stop what `up` started, nothing else
# Everything lives in SLURM_TEST_DIR (default /tmp/chainer_resnet-slurm):
# slurm.conf, gres.conf, state, spool, logs, and pids/ with one file per
# daemon this script started; `down` stops exactly those processes.
# =============================================================================
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/chainer_resnet-slurm}
CONF=$DIR/slurm.conf
NODES=(node1 node2)
# Ports of the controller and of the slurmds (one each: MULTIPLE_SLURMD).
CTLD_PORT=${SLURM_TEST_PORT:-17000}

log() { printf 'slurm-test: %s\n' "$*"; }
die() { printf 'slurm-test: error: %s\n' "$*" >&2; exit 2; }

# pid_of NAME: the PID recorded for a daemon started by `up`, if it still runs
# the program that was started (a PID reused by another program is not ours).
pid_of() {
    local file=$DIR/pids/$1 pid program
    [[ -f "$file" ]] || return 1
    read -r pid program <"$file"
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$program" || return 1
    printf '%s\n' "$pid"
}

# start NAME PROGRAM COMMAND...: COMMAND in its own session, in the
# background; records "PID PROGRAM" in pids/NAME. PROGRAM is what its
# command line must contain for `down` to stop it.
start() {
    local name=$1 program=$2
    shift 2
    setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    printf '%s %s\n' "$!" "$program" >"$DIR/pids/$name"
}

write_config() {
    local host
    host=$(hostname -s)
    mkdir -p "$DIR"/{state,spool,log,pids,tmp,gpu}
    local i
    for i in 0 1 2 3 4 5 6 7; do
        # slurmd drops a GPU without a device file and refuses regular files.
        ln -sfn /dev/null "$DIR/gpu/nvidia$i"
    done
    cat >"$CONF" <<EOF
# Written by tests/slurm/cluster.sh: a test cluster on one machine.
ClusterName=chainer-resnet-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
GresTypes=gpu
# The node lines below, not the 2 real cores, are the nodes' resources.
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/state/slurmctld.pid
SlurmdPidFile=$DIR/spool/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# PMIx puts its spmix_appdir_* here; one folder per node, or the second
# node's step fails with "File exists".
TmpFS=$DIR/tmp/%n
MailProg=/bin/true
SchedulerParameters=sched_interval=2
# Slurm's default grace time between SIGTERM and SIGKILL: the trainer stops
# with a snapshot in it (tests/test_slurm.py, the time limit).
KillWait=30
InactiveLimit=0
OverTimeLimit=0
ReturnToService=2
# Finished jobs stay in scontrol show job for the tests to read.
MinJobAge=3600
NodeName=node1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((CTLD_PORT + 1)) CPUs=16 RealMemory=4000 Gres=gpu:8 Feature=fakegpu State=UNKNOWN
NodeName=node2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((CTLD_PORT + 2)) CPUs=16 RealMemory=4000 Gres=gpu:8 Feature=fakegpu State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
EOF
    printf 'NodeName=node[1-2] Name=gpu File=%s/gpu/nvidia[0-7]\n' "$DIR" >"$DIR/gres.conf"
    # The nodes' /etc/hosts: this machine's, plus the node names.
    { cat /etc/hosts; printf '127.0.0.1 %s\n' "${NODES[@]}"; } >"$DIR/hosts"
    for i in "${NODES[@]}"; do mkdir -p "$DIR/tmp/$i" "$DIR/spool/$i"; done
}

cluster_answers() {
    SLURM_CONF=$CONF timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'
}

nodes_idle() {
    local states
    states=$(SLURM_CONF=$CONF timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null || true)
    local node
    for node in "${NODES[@]}"; do
        grep -Eq "^$node (idle|allocated|mixed)" <<<"$states" || return 1
    done
}

up() {
    for program in slurmctld slurmd munged scontrol; do
        command -v "$program" >/dev/null || [[ -x /usr/sbin/$program ]] \
            || die "$program is not installed: apt-get install slurmctld slurmd slurm-client munge libpmix2 libpmix-dev"
    done
    if pid_of slurmctld >/dev/null && cluster_answers; then
        log "already up ($CONF)"
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "needs root (the daemons run as root, each slurmd in namespaces of its own)"
    down quiet
    rm -rf "$DIR"
    write_config
    local begin=$SECONDS
    # munge: ours unless one already answers (then it is not ours to stop).
    if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        chown munge:munge /run/munge /var/log/munge /var/lib/munge
        [[ -f /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (the munge package creates it)"
        # setpriv execs munged (runuser would stay as its parent).
        start munged munged setpriv --reuid=munge --regid=munge --clear-groups \
            /usr/sbin/munged -F
        local tries
        for tries in $(seq 50); do
            munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
            ((tries < 50)) || die "munged did not start: $DIR/log/munged.out"
            sleep 0.1
        done
    fi
    start slurmctld slurmctld /usr/sbin/slurmctld -D -f "$CONF"
    local node
    for node in "${NODES[@]}"; do
        # A UTS and mount namespace of its own: hostname nodeN and the
        # private hosts file, bind-mounted (the real /etc/hosts is unchanged).
        # shellcheck disable=SC2016  # expanded by that sh, from its arguments
        start "slurmd-$node" slurmd unshare --uts --mount sh -c \
            'mount --bind "$1" /etc/hosts && hostname "$2" && exec /usr/sbin/slurmd -D -N "$2" -f "$3"' \
            sh "$DIR/hosts" "$node" "$CONF"
    done
    local waited
    for waited in $(seq 120); do
        cluster_answers && nodes_idle && break
        ((waited < 120)) || {
            tail -n 20 "$DIR"/log/*.log >&2 || true
            die "the cluster did not come up in 30 s (logs above, all in $DIR/log)"
        }
        sleep 0.25
    done
    log "up in $((SECONDS - begin)) s: ${NODES[*]} (16 CPUs, gpu:8 each); export SLURM_CONF=$CONF"
}

# down [quiet]: cancel the test jobs, stop the daemons `up` started (their PID
# files), leave everything else alone.
down() {
    local quiet=${1:-}
    if pid_of slurmctld >/dev/null && cluster_answers; then
        SLURM_CONF=$CONF scancel --partition=debug 2>/dev/null || true
        # The jobs' steps end with them (the trainer stops at SIGTERM).
        local left i
        for i in $(seq 40); do
            left=$(SLURM_CONF=$CONF squeue -h -t running,completing -o %i 2>/dev/null | wc -l)
            ((left == 0)) && break
            sleep 0.25
        done
    fi
    local name pid stopped=''
    for name in slurmd-node1 slurmd-node2 slurmctld munged; do
        if pid=$(pid_of "$name"); then
            kill "$pid" 2>/dev/null || true
            stopped+=" $name:$pid"
        fi
        rm -f "$DIR/pids/$name"
    done
    local entry
    for entry in $stopped; do
        pid=${entry#*:}
        for i in $(seq 40); do
            [[ -d "/proc/$pid" ]] || break
            ((i < 40)) || kill -KILL "$pid" 2>/dev/null || true
            sleep 0.25
        done
    done
    if [[ -z "$quiet" ]]; then
        if [[ -n "$stopped" ]]; then
            log "stopped$stopped"
        else
            log "nothing of ours was running ($DIR/pids)"
        fi
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status)
        if cluster_answers; then
            log "up: $(SLURM_CONF=$CONF sinfo -h -N -o '%N %T' | tr '\n' ' ')"
        else
            log "no cluster answers at $CONF"
            exit 1
        fi
        ;;
    env) printf 'export SLURM_CONF=%s\n' "$CONF" ;;
    *) die "usage: $0 up|down|status|env" ;;
esac
