#!/bin/bash
# Bring up a one-node SLURM cluster (Debian 12, Slurm 22.05) without systemd:
# munged, MariaDB, slurmdbd, slurmctld and slurmd run as plain background daemons
# with all config, state, PID files and logs under one state dir.
#
#   sweeps/slurm/start.sh            start (idempotent: exits 0 if already up)
#   sweeps/slurm/start.sh --status   exit 0 if every daemon is up and the node answers, else 1
#
# Environment:
#   SSLBENCH_SLURM_DIR        state dir (default /tmp/sslbench-slurm)
#   SSLBENCH_SLURM_PORT_BASE  first of 4 TCP ports on 127.0.0.1: slurmctld, slurmd,
#                             slurmdbd, MariaDB (default 6817 -> 6817..6820)
#   SSLBENCH_SLURM_CRED_EXPIRE  AuthInfo cred_expire in s (default 10); a requeued job
#                             waits about cred_expire+1 s before it may start again
#   SSLBENCH_SLURM_TIMEOUT    seconds to wait for the node to become idle (default 60)
#   SSLBENCH_SLURM_NODES      compute nodes (default: the running cluster's count, else 1: one
#                             slurmd on this host, on 127.0.0.1).
#                             N >= 2: N slurmd, each in its own network + UTS namespace
#                             (hostname sslb-node<i>, address <subnet>.1<i>... see below),
#                             joined by veth pairs to a bridge whose host side carries
#                             slurmctld's address <subnet>.1. Needs root and `ip netns`.
#   SSLBENCH_SLURM_SUBNET     first three octets of the private /24 (default 10.213.0)
#   SSLBENCH_SLURM_NET_PREFIX prefix of the namespaces, links and node names (default sslb)
#
# Clients (sbatch, squeue, sacct, submitit) need:  export SLURM_CONF=$S/etc/slurm.conf
# (or: source $S/env.sh).  Must run as root (munged/mariadbd run as munge/mysql).
set -euo pipefail

S=${SSLBENCH_SLURM_DIR:-/tmp/sslbench-slurm}
PORT_BASE=${SSLBENCH_SLURM_PORT_BASE:-6817}
CRED_EXPIRE=${SSLBENCH_SLURM_CRED_EXPIRE:-10}
TIMEOUT=${SSLBENCH_SLURM_TIMEOUT:-60}
NODES=${SSLBENCH_SLURM_NODES:-}  # unset: the running cluster's count, else 1 (below)
SUBNET=${SSLBENCH_SLURM_SUBNET:-10.213.0}
P=${SSLBENCH_SLURM_NET_PREFIX:-sslb}
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))

CONF=$S/etc/slurm.conf
export SLURM_CONF=$CONF
MUNGE_SOCK=$S/munge/munge.socket
DB_SOCK=$S/mysqlrun/mysqld.sock
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

[[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "SSLBENCH_SLURM_SUBNET=$SUBNET: expected three octets, e.g. 10.213.0" >&2; exit 2; }

log() { printf '[sslbench-slurm %s] %s\n' "$(date +%T)" "$*"; }
die() { printf '[sslbench-slurm %s] ERROR: %s\n' "$(date +%T)" "$*" >&2; exit 1; }

# pid_alive PIDFILE COMM: the PID in PIDFILE is running and its command name is COMM
# and it has not exited (guards against a stale PID file whose PID was reused by another
# process, and against a zombie: PID 1 here is no init and reaps exited daemons late).
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' < "$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] \
        && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]  # a killed, unreaped one
}
if [ -z "$NODES" ]; then  # idempotent start/--status of a running cluster of any size
    NODES=1
    pid_alive "$S/run/slurmctld.pid" slurmctld && [ -s "$S/run/nodes" ] && NODES=$(tr -dc 0-9 < "$S/run/nodes")
fi
case "$NODES" in ''|*[!0-9]*) echo "SSLBENCH_SLURM_NODES=$NODES: expected a number 1..50" >&2; exit 2;; esac
[ "$NODES" -ge 1 ] && [ "$NODES" -le 50 ] || { echo "SSLBENCH_SLURM_NODES=$NODES: expected 1..50" >&2; exit 2; }
# name pidfile comm, in start order
DAEMONS=(
    "munged     $S/munge/munged.pid       munged"
    "mariadbd   $S/mysqlrun/mysqld.pid    mariadbd"
    "slurmdbd   $S/run/slurmdbd.pid       slurmdbd"
    "slurmctld  $S/run/slurmctld.pid      slurmctld"
)
NODE=$(uname -n); NODE=${NODE%%.*}
if [ "$NODES" = 1 ]; then
    NODE_NAMES=("$NODE")
    CTLD_ADDR=127.0.0.1
    DAEMONS+=("slurmd     $S/run/slurmd.pid         slurmd")
else
    # node i: namespace, hostname and NodeName $P-node<i>, address $SUBNET.(10+i)
    NODE_NAMES=(); for ((i = 1; i <= NODES; i++)); do NODE_NAMES+=("$P-node$i"); done
    CTLD_ADDR=$SUBNET.1
    for n in "${NODE_NAMES[@]}"; do DAEMONS+=("slurmd     $S/run/slurmd-$n.pid    slurmd"); done
fi
node_addr() { local i=${1##*-node}; echo "$SUBNET.$((10 + i))"; }
running() { local p c; read -r _ p c <<<"$1"; pid_alive "$p" "$c"; }
all_running() { local d; for d in "${DAEMONS[@]}"; do running "$d" || return 1; done; }
node_state() { timeout 5 sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n1 | tr -d '*~#!%$@^-'; }
node_ready() { case "$(node_state "$1")" in idle|mixed|allocated|completing) return 0;; esac; return 1; }
nodes_ready() { local n; for n in "${NODE_NAMES[@]}"; do node_ready "$n" || return 1; done; }
# the node count a running cluster was started with (run/nodes), if any
running_nodes() { cat "$S/run/nodes" 2>/dev/null || echo 1; }

dump_logs() {
    local f
    echo "---- daemon logs (last 25 lines each) ----" >&2
    for f in "$S"/log/*.log; do
        [ -f "$f" ] || continue
        echo "==> $f <==" >&2
        tail -n 25 "$f" >&2
    done
    echo "---- sinfo ----" >&2
    timeout 5 sinfo -N -l >&2 2>&1 || true
}
fail() { printf '[sslbench-slurm %s] ERROR: %s\n' "$(date +%T)" "$*" >&2; dump_logs; exit 1; }
# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.1 s
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + secs ))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
        sleep 0.1
    done
}

if [ "${1:-}" = "--status" ]; then
    [ "$(running_nodes)" = "$NODES" ] && all_running && [ -f "$CONF" ] && nodes_ready && { echo "up: $S (SLURM_CONF=$CONF)"; exit 0; }
    echo "not running: $S"; exit 1
fi
[ $# -eq 0 ] || die "usage: $0 [--status]"

if pid_alive "$S/run/slurmctld.pid" slurmctld && [ "$(running_nodes)" != "$NODES" ]; then
    die "the cluster in $S runs with $(running_nodes) node(s), not $NODES: stop it first (sweeps/slurm/stop.sh)"
fi
if all_running && nodes_ready; then
    log "already running (state dir $S)"
    log "export SLURM_CONF=$CONF   # or: source $S/env.sh"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "start.sh must run as root"
for b in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr sinfo \
         $([ "$NODES" -gt 1 ] && echo ip unshare nsenter); do
    command -v "$b" >/dev/null || die "$b not found: run sweeps/slurm/install.sh first"
done

t_start=$(date +%s%N)
NCPU=$(nproc)
MEM_MB=$(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo)
# slurmd drains a node whose RealMemory is above what it detects; leave some slack.
MEM_MB=$(( MEM_MB * 95 / 100 ))

mkdir -p "$S"/etc "$S"/state "$S"/spool "$S"/run "$S"/log "$S"/munge "$S"/mysql "$S"/mysqlrun
chmod 755 "$S" "$S"/etc "$S"/run "$S"/log

# ---------------------------------------------------------------- config files
write_if_changed() {  # write stdin to $1 only when the content differs
    local tmp; tmp=$(mktemp "$1.XXXXXX")
    cat > "$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

if [ "$NODES" = 1 ]; then
    SUFFIX= SUFFIX_DIR= SLURMD_TIMEOUT=60
    NODE_LINES="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN"
else
    # one slurmd per namespace: per-node PID file, log and spool (%n = NodeName)
    SUFFIX=-%n SUFFIX_DIR=/%n SLURMD_TIMEOUT=${SSLBENCH_SLURM_SLURMD_TIMEOUT:-30}
    NODE_LINES=$(for n in "${NODE_NAMES[@]}"; do
        echo "NodeName=$n NodeAddr=$(node_addr "$n") CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN"; done)
fi
write_if_changed "$CONF" <<CONF
# Generated by sweeps/slurm/start.sh -- $NODES-node local cluster, do not edit by hand.
ClusterName=sslbench
SlurmctldHost=$NODE($CTLD_ADDR)
SlurmUser=root
SlurmdUser=root
DisableRootJobs=NO
AuthType=auth/munge
CredType=cred/munge
# short cred_expire: a requeued job may start again after cred_expire+1 s (default 120)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
MpiDefault=none
# no cgroups in this environment: linuxproc + task/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# with slurmdbd this names the munge socket used to talk to slurmdbd (AuthInfo is not used for it)
AccountingStoragePass=$MUNGE_SOCK
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=$SLURMD_TIMEOUT
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool$SUFFIX_DIR
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd$SUFFIX.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd$SUFFIX.log
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
$NODE_LINES
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

# cgroups are not usable here (no systemd, freezer not mounted); nothing is constrained.
# Read only if a cgroup plugin were configured; kept so the setup is explicit.
write_if_changed "$S/etc/cgroup.conf" <<CONF
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainSwapSpace=no
ConstrainDevices=no
CONF

DB_PASS=sslbench-slurmdbd
write_if_changed "$S/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$S/log/slurmdbd.log
PidFile=$S/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
chmod 600 "$S/etc/slurmdbd.conf"   # slurmdbd refuses a conf readable by others

cat > "$S/env.sh" <<ENV
# source this file to use the local cluster
export SLURM_CONF=$CONF
ENV

# ---------------------------------------------------------------- munge
if ! pid_alive "$S/munge/munged.pid" munged; then
    log "starting munged"
    KEY=/etc/munge/munge.key
    if [ ! -s "$KEY" ]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile="$KEY"
        chown munge:munge "$KEY"; chmod 400 "$KEY"
    fi
    chown munge:munge "$S/munge"; chmod 755 "$S/munge"
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$S/munge/munged.pid"
    su -s /bin/sh munge -c "exec munged --socket=$MUNGE_SOCK --pid-file=$S/munge/munged.pid \
        --log-file=$S/munge/munged.log --seed-file=$S/munge/munged.seed" \
        || { cat "$S/munge/munged.log" >&2 2>/dev/null; die "munged failed to start"; }
    ln -sf "$S/munge/munged.log" "$S/log/munged.log"
    wait_for 10 "munged" pid_alive "$S/munge/munged.pid" munged
fi
munge --socket="$MUNGE_SOCK" -n | unmunge --socket="$MUNGE_SOCK" >/dev/null \
    || fail "munge round trip failed"

# ---------------------------------------------------------------- mariadb
# a throw-away accounting DB: no fsyncs (halves init time and slurmdbd's schema creation)
DB_FAST="--innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --innodb-flush-method=nosync --skip-name-resolve"
db() { mariadb --no-defaults --socket="$DB_SOCK" -u root "$@"; }
if ! pid_alive "$S/mysqlrun/mysqld.pid" mariadbd; then
    log "starting mariadbd (127.0.0.1:$DB_PORT)"
    chown mysql:mysql "$S/mysql" "$S/mysqlrun"
    if [ ! -d "$S/mysql/mysql" ]; then
        mariadb-install-db --no-defaults --user=mysql --datadir="$S/mysql" \
            --auth-root-authentication-method=socket --skip-test-db $DB_FAST \
            > "$S/log/mariadb-install.log" 2>&1 \
            || { cat "$S/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    rm -f "$DB_SOCK" "$S/mysqlrun/mysqld.pid"
    # own datadir/socket/port: independent of /etc/mysql and of any system MariaDB.
    # The error log must be in a mysql-owned dir or it is silently not written.
    setsid mariadbd --no-defaults --user=mysql --datadir="$S/mysql" --socket="$DB_SOCK" \
        --pid-file="$S/mysqlrun/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --log-error="$S/mysqlrun/mariadb.err" --innodb-lock-wait-timeout=900 \
        --skip-log-bin $DB_FAST \
        </dev/null >/dev/null 2>&1 &
    ln -sf "$S/mysqlrun/mariadb.err" "$S/log/mariadb.log"
    wait_for 30 "mariadbd" db -e 'SELECT 1' >/dev/null 2>&1
    wait_for 5 "mariadbd pid file" pid_alive "$S/mysqlrun/mysqld.pid" mariadbd
fi
db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
       CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
       CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
    || fail "could not create the accounting database/user"

# ---------------------------------------------------------------- slurmdbd
sacctmgr_ok() { timeout 5 sacctmgr -n show cluster >/dev/null 2>&1; }
if ! pid_alive "$S/run/slurmdbd.pid" slurmdbd; then
    log "starting slurmdbd (127.0.0.1:$DBD_PORT)"
    rm -f "$S/run/slurmdbd.pid"
    SLURM_CONF=$CONF slurmdbd || fail "slurmdbd failed to start"
fi
wait_for 30 "slurmdbd" sacctmgr_ok
# register cluster (creates the 'root' account and root's association) and an account
if ! timeout 10 sacctmgr -n -P show cluster format=cluster | grep -x sslbench >/dev/null; then
    timeout 10 sacctmgr -i add cluster sslbench >/dev/null || fail "sacctmgr add cluster failed"
fi
if ! timeout 10 sacctmgr -n -P show account format=account | grep -x sslbench >/dev/null; then
    timeout 10 sacctmgr -i add account sslbench cluster=sslbench \
        description=sslbench organization=sslbench >/dev/null || fail "sacctmgr add account failed"
fi

# NOTE: under pipefail, `cmd | grep -q x` fails when grep exits at its first match and cmd then
# dies of SIGPIPE (exit 141): `|| ip addr add` ran on an address already there ("Address
# already assigned", a multi-node test flaked on it). Pipelines here read all of their input
# (`grep ... >/dev/null`).
# ---------------------------------------------------------------- network (N >= 2)
# bridge $P-br0 ($CTLD_ADDR/24 on the host side) + per node: namespace $P-node<i>, a veth
# pair (host end $P-node<i>h on the bridge, eth0 inside with $SUBNET.(10+i)). Idempotent.
net_up() {
    local n i addr
    ip link show "$P-br0" >/dev/null 2>&1 || ip link add "$P-br0" type bridge \
        || fail "cannot create bridge $P-br0"
    ip -o addr show dev "$P-br0" | grep -F " $CTLD_ADDR/24 " >/dev/null || ip addr add "$CTLD_ADDR/24" dev "$P-br0"
    ip link set "$P-br0" up
    for n in "${NODE_NAMES[@]}"; do
        addr=$(node_addr "$n")
        [ -e "/run/netns/$n" ] || ip netns add "$n" || fail "cannot create network namespace $n"
        if ! ip -n "$n" -o addr show dev eth0 2>/dev/null | grep -F " $addr/24 " >/dev/null; then
            ip link del "${n}h" 2>/dev/null || true
            ip link add "${n}h" type veth peer name "${n}c" || fail "cannot create veth ${n}h"
            ip link set "${n}c" netns "$n"
            ip -n "$n" link set "${n}c" name eth0
            ip -n "$n" addr add "$addr/24" dev eth0
        fi
        ip link set "${n}h" master "$P-br0" up
        ip -n "$n" link set lo up
        ip -n "$n" link set eth0 up
    done
}
if [ "$NODES" -gt 1 ]; then
    net_up
    {   echo "# Generated by sweeps/slurm/start.sh: names of the $NODES-node test cluster,"
        echo "# bind-mounted on /etc/hosts inside the node namespaces only."
        echo "$CTLD_ADDR $NODE"
        for n in "${NODE_NAMES[@]}"; do echo "$(node_addr "$n") $n"; done
        grep -vw -e "$NODE" /etc/hosts 2>/dev/null || echo "127.0.0.1 localhost"
    } | write_if_changed "$S/etc/hosts"
    chmod 644 "$S/etc/hosts"
fi

# ---------------------------------------------------------------- slurmctld + slurmd
if ! pid_alive "$S/run/slurmctld.pid" slurmctld; then
    log "starting slurmctld ($CTLD_ADDR:$CTLD_PORT)"
    rm -f "$S/run/slurmctld.pid"
    slurmctld || fail "slurmctld failed to start"
    echo "$NODES" > "$S/run/nodes"  # the node set this slurmctld was started with
fi
wait_for 30 "slurmctld" bash -c 'timeout 5 scontrol ping 2>/dev/null | grep -q UP'
if [ "$NODES" = 1 ]; then
    if ! pid_alive "$S/run/slurmd.pid" slurmd; then
        log "starting slurmd (node $NODE, $NCPU CPUs, ${MEM_MB} MB)"
        rm -f "$S/run/slurmd.pid"
        slurmd -N "$NODE" || fail "slurmd failed to start"
    fi
else
    for n in "${NODE_NAMES[@]}"; do
        pid_alive "$S/run/slurmd-$n.pid" slurmd && continue
        log "starting slurmd in namespace $n ($(node_addr "$n"), $NCPU CPUs, ${MEM_MB} MB)"
        rm -f "$S/run/slurmd-$n.pid"
        mkdir -p "$S/spool/$n"
        # own network (nsenter: not `ip netns exec`, which remounts /sys and so hides the
        # cgroup fs slurmd needs), own hostname (--uts) and a private mount namespace in which
        # $S/etc/hosts is bound on /etc/hosts so that node names resolve. Everything else
        # (files, the munge socket, PIDs) is shared with the host.
        nsenter --net="/run/netns/$n" unshare --uts --mount --propagation private sh -c \
            'hostname "$1" && mount --bind "$2" /etc/hosts && exec slurmd -N "$1"' \
            sh "$n" "$S/etc/hosts" || fail "slurmd of $n failed to start"
    done
fi
for n in "${NODE_NAMES[@]}"; do
    wait_for "$TIMEOUT" "node $n to become idle" node_ready "$n"
done
all_running || fail "a daemon exited during start-up"

awk -v a="$t_start" -v b="$(date +%s%N)" 'BEGIN{printf "[sslbench-slurm] up in %.1f s\n", (b-a)/1e9}'
log "$(sinfo -h -o 'partition=%P state=%T nodes=%N cpus=%c mem=%m')"
log "state dir: $S   logs: $S/log/   (slurmctld.log slurmd.log slurmdbd.log munged.log mariadb.log)"
log "clients need:  export SLURM_CONF=$CONF   # or: source $S/env.sh"
log "stop with: $(dirname "$0")/stop.sh"
