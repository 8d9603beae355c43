#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for testing the workflow's SLURM profile (profiles/slurm).
#
#   scripts/dev/slurm_localhost.sh start    # install slurm-wlm + munge (apt, as root) if missing; start munged,
#                                           # slurmctld, slurmd; wait until the node is idle (idempotent)
#   scripts/dev/slurm_localhost.sh status   # daemons, partitions, queue; exit 0 only if the cluster takes jobs
#   scripts/dev/slurm_localhost.sh stop     # stop the three daemons (state and logs stay for reading)
#   scripts/dev/slurm_localhost.sh clean    # stop, then remove the state directory
#
# Everything lives under $MECHFLOW_SLURM_DIR (default /tmp/mechflow-slurm): slurm.conf, a munge key and
# socket of its own (a system munged, if any, is left alone), spool and state directories, logs, pid files.
# The daemons are started by hand (no systemd) and run as root (SlurmUser=root): a throwaway test cluster,
# not a template for a real one. One node (this host) with its CPUs and memory, two partitions, "cpu"
# (the default) and "gpu", as in profiles/slurm/partitions.yaml; where `nvidia-smi -L` lists GPUs the node
# declares them as GRES gpu:N, otherwise the gpu partition has no GPUs and only jobs that ask for none run.
# So that sinfo/sbatch/squeue find the cluster, /etc/slurm/slurm.conf is made a link to the generated file
# when no other slurm.conf is there; otherwise export SLURM_CONF=$MECHFLOW_SLURM_DIR/slurm.conf.
# Tested on Debian 12 (slurm-wlm 22.05) in a container, as root.
set -euo pipefail

DIR=${MECHFLOW_SLURM_DIR:-/tmp/mechflow-slurm}
CTLD_PORT=${MECHFLOW_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${MECHFLOW_SLURM_SLURMD_PORT:-6818}
CONF=$DIR/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)
MUNGE_SOCKET=$DIR/munge/munge.socket.2

say() { echo "slurm_localhost: $*" >&2; }
die() { say "$*"; exit 1; }

alive() {  # alive PIDFILE: the process named in PIDFILE runs
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    [[ $(id -u) == 0 ]] || die "slurm-wlm/munge are not installed and this is not root: install them (apt-get install slurm-wlm munge)"
    command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and apt-get is not available"
    say "installing slurm-wlm and munge with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

gpu_count() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

write_config() {
    local cpus mem_mb gpus node_gres="" gres_types=""
    cpus=$(nproc)
    # what slurmd will find, less a margin: a node that reports less memory than configured is drained
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 95 / 100 / 1024 ))
    gpus=$(gpu_count)
    if (( gpus > 0 )); then
        gres_types="GresTypes=gpu"
        node_gres="Gres=gpu:$gpus"
        printf 'NodeName=%s Name=gpu File=/dev/nvidia[0-%d]\n' "$NODE" $((gpus - 1)) >"$DIR/gres.conf"
    else
        rm -f "$DIR/gres.conf"
    fi
    cat >"$CONF.new" <<EOF
# written by scripts/dev/slurm_localhost.sh: a single-node test cluster (see that script)
ClusterName=mechflow
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
# finished jobs stay visible to squeue for an hour: without accounting, squeue is the job status source
MinJobAge=3600
KillWait=5
InactiveLimit=0
$gres_types
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb $node_gres State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
    mv "$CONF.new" "$CONF"
}

link_config() {
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then
        return
    fi
    if [[ -e $ETC_CONF || -L $ETC_CONF ]]; then
        say "$ETC_CONF exists and is not ours: export SLURM_CONF=$CONF before using sbatch/sinfo"
        return
    fi
    if mkdir -p "$(dirname "$ETC_CONF")" 2>/dev/null && ln -s "$CONF" "$ETC_CONF" 2>/dev/null; then
        return
    fi
    say "could not link $ETC_CONF: export SLURM_CONF=$CONF before using sbatch/sinfo"
}

start_munge() {
    if alive "$DIR/run/munged.pid"; then
        return
    fi
    if [[ ! -s $DIR/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
    fi
    chmod 600 "$DIR/munge.key"
    mkdir -p "$DIR/munge"
    chmod 755 "$DIR/munge"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # --force: the state directory may sit in a world-writable /tmp, which munged would otherwise refuse
    munged --force --key-file="$DIR/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" 2>>"$DIR/log/munged.log" \
        || die "munged did not start: see $DIR/log/munged.log"
    for _ in $(seq 50); do
        munge -n -S "$MUNGE_SOCKET" </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 && return
        sleep 0.2
    done
    die "munged does not answer on $MUNGE_SOCKET: see $DIR/log/munged.log"
}

start_slurm() {
    export SLURM_CONF=$CONF
    if ! alive "$DIR/run/slurmctld.pid"; then
        slurmctld -f "$CONF" || die "slurmctld did not start: see $DIR/log/slurmctld.log"
    fi
    if ! alive "$DIR/run/slurmd.pid"; then
        slurmd -f "$CONF" -N "$NODE" || die "slurmd did not start: see $DIR/log/slurmd.log"
    fi
    local state=""
    for _ in $(seq 120); do
        state=$(sinfo -h -n "$NODE" -p cpu -o %T 2>/dev/null | head -n1 || true)
        case $state in
            idle|mixed|allocated|completing) break ;;
            drain*|down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    case $state in
        idle|mixed|allocated|completing) ;;
        *) die "node $NODE is '${state:-unknown}' after 60 s: see $DIR/log/slurmctld.log and $DIR/log/slurmd.log" ;;
    esac
}

start() {
    install_packages
    mkdir -p "$DIR"/{state,spool,run,log}
    local before=""
    [[ -f $CONF ]] && before=$(cat "$CONF")
    write_config
    if [[ -n $before && $before != "$(cat "$CONF")" ]] && { alive "$DIR/run/slurmctld.pid" || alive "$DIR/run/slurmd.pid"; }; then
        say "the machine changed (CPUs, memory, GPUs or ports): restarting the daemons"
        stop_daemons
    fi
    link_config
    start_munge
    start_slurm
    say "up: $(sinfo -h -o '%P %D %c %m %T' | tr '\n' ';' | sed 's/;$//') (SLURM_CONF=$CONF)"
}

stop_one() {  # stop_one NAME: SIGTERM the daemon of pid file NAME.pid, SIGKILL after 10 s
    local pidfile=$DIR/run/$1.pid pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

stop_daemons() {
    stop_one slurmd
    stop_one slurmctld
}

stop() {
    [[ -d $DIR ]] || { say "not running ($DIR does not exist)"; return 0; }
    # jobs still running would outlive slurmd (proctrack/linuxproc): cancel them first
    if alive "$DIR/run/slurmctld.pid"; then
        SLURM_CONF=$CONF scancel --quiet --partition=cpu,gpu 2>/dev/null || true
    fi
    stop_daemons
    stop_one munged
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then
        rm -f "$ETC_CONF"
    fi
    say "stopped (state and logs kept in $DIR)"
}

status() {
    local ok=0 name
    for name in munged slurmctld slurmd; do
        if alive "$DIR/run/$name.pid"; then
            echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"
        else
            echo "$name: not running"
            ok=1
        fi
    done
    if (( ok == 0 )); then
        export SLURM_CONF=$CONF
        sinfo -o '%P %a %D %c %m %G %T' || ok=1
        squeue || ok=1
    fi
    echo "config: $CONF"
    return $ok
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    clean) stop; rm -rf "$DIR" ;;
    *) echo "usage: $0 start|stop|status|clean" >&2; exit 2 ;;
esac
