#!/bin/bash
# Stop the cluster started by start.sh (one node, or SSLBENCH_SLURM_NODES >= 2 in
# namespaces): cancel its jobs, then stop slurmd(s), slurmctld, slurmdbd, mariadbd and munged by their PID files (never by
# name), wait for each to exit (SIGKILL after a grace period), then remove the node
# namespaces, their veth pairs and the bridge. Idempotent.
#
# Environment: SSLBENCH_SLURM_DIR (default /tmp/sslbench-slurm), as for start.sh.
# Set SSLBENCH_SLURM_PURGE=1 to also delete the state dir (DB, job state, logs).
set -uo pipefail

S=${SSLBENCH_SLURM_DIR:-/tmp/sslbench-slurm}
CONF=$S/etc/slurm.conf
export SLURM_CONF=$CONF
P=${SSLBENCH_SLURM_NET_PREFIX:-sslb}  # namespaces/links of a multi-node cluster (start.sh)
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
GRACE=${SSLBENCH_SLURM_STOP_GRACE:-20}

log() { printf '[sslbench-slurm %s] %s\n' "$(date +%T)" "$*"; }

# pid_of PIDFILE COMM: print the PID if it is alive and named COMM (stale PID files
# whose PID was reused by an unrelated process are ignored).
pid_of() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' < "$1")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

alive() { [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
ZOMBIES=()

# stop_pid NAME PID: SIGTERM, wait up to GRACE s, then SIGKILL
stop_pid() {
    local name=$1 pid=$2 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < GRACE * 10; i++)); do
        # exited (a zombie has exited too: PID 1 here is no init and reaps it a bit later)
        if ! alive "$pid"; then log "stopped $name (pid $pid)"; ZOMBIES+=("$pid"); return 0; fi
        sleep 0.1
    done
    log "$name (pid $pid) still alive after ${GRACE}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do alive "$pid" || { ZOMBIES+=("$pid"); return 0; }; sleep 0.1; done
    log "WARNING: $name (pid $pid) did not exit"
}

# Processes of this cluster that outlive slurmd: slurmstepd (one per job step) and
# the job processes under it. Found by SLURM_CONF=<our conf> in their environment
# (inherited from slurmd / from the submitting shell), so other clusters' are untouched.
our_leftovers() {
    local d pid comm
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ "$pid" = $$ ] && continue
        comm=$(cat "$d/comm" 2>/dev/null) || continue
        [ "$comm" = slurmstepd ] || continue
        tr '\0' '\n' 2>/dev/null < "$d/environ" | grep -x "SLURM_CONF=$CONF" >/dev/null && echo "$pid"
    done
}
descendants() {  # all descendants of PID $1 (depth first)
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done
}

# the namespaces, veth pairs and bridge of a multi-node cluster (start.sh, N >= 2): whatever
# still runs inside a node namespace is a job process of that node (started through its
# slurmd) and is killed by PID; deleting a namespace deletes its veth end and so the pair.
net_down() {
    local ns p i
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -x "$P-node[0-9]*"); do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        for ((i = 0; i < 30; i++)); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
        ip netns del "$ns" && log "removed namespace $ns"
        ip link del "${ns}h" 2>/dev/null || true
    done
    if ip link show "$P-br0" >/dev/null 2>&1; then
        ip link del "$P-br0" && log "removed bridge $P-br0"
    fi
}

if [ ! -d "$S" ]; then
    net_down
    log "nothing to stop ($S does not exist)"
    exit 0
fi

ctld=$(pid_of "$S/run/slurmctld.pid" slurmctld)
if [ -n "$ctld" ]; then
    jobs=$(timeout 5 squeue -h -o %A 2>/dev/null | sort -u | xargs)
    if [ -n "$jobs" ]; then
        log "cancelling jobs: $jobs"
        timeout 10 scancel $jobs 2>/dev/null
        for ((i = 0; i < 150; i++)); do
            [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
fi

stopped_any=0
# slurmd of a multi-node cluster (SSLBENCH_SLURM_NODES >= 2): one PID file per node
slurmds=""
for f in "$S"/run/slurmd-*.pid; do [ -e "$f" ] && slurmds="$slurmds slurmd:run/${f##*/}"; done
for spec in "slurmd run/slurmd.pid" $slurmds "slurmctld run/slurmctld.pid" "slurmdbd run/slurmdbd.pid" \
            "mariadbd mysqlrun/mysqld.pid" "munged munge/munged.pid"; do
    spec=${spec/:/ }
    read -r name rel <<<"$spec"
    pid=$(pid_of "$S/$rel" "$name") || pid=
    if [ -n "$pid" ]; then
        stop_pid "$name" "$pid"; stopped_any=1
    fi
    rm -f "$S/$rel"
    if [ "$name" = slurmd ]; then
        for p in $(our_leftovers); do
            for q in $(descendants "$p") "$p"; do kill -KILL "$q" 2>/dev/null; done
            log "killed leftover slurmstepd $p and its children"
        done
    fi
done
[ "$stopped_any" = 1 ] || log "no daemon was running"
rm -f "$S/run/nodes"

net_down
# give the reaper a moment so that no <defunct> entries are left behind
for ((i = 0; i < 30; i++)); do
    left=0; for z in "${ZOMBIES[@]}"; do [ -d "/proc/$z" ] && left=1; done
    [ "$left" = 0 ] && break; sleep 0.1
done

if [ "${SSLBENCH_SLURM_PURGE:-0}" = 1 ]; then
    rm -rf "$S"; log "removed $S"
fi
[ -d "$S" ] && log "done (state dir $S kept; SSLBENCH_SLURM_PURGE=1 removes it)"
exit 0
