#!/bin/bash
# Install the Debian packages needed for the local SLURM cluster (one or more nodes)
# (slurmctld, slurmd, slurmdbd, client tools, munge, MariaDB for accounting).
#
# Idempotent: exits 0 at once when everything is already installed.
# Must run as root (apt-get). Non-interactive; safe in CI on a fresh Debian 12.
# Nothing is started here: start.sh starts the daemons by hand (no systemd).
set -euo pipefail

# iproute2 (`ip`): the namespaces and links of a multi-node cluster (SSLBENCH_SLURM_NODES >= 2)
PKGS=(slurm-wlm slurmctld slurmd slurm-client slurmdbd munge mariadb-server mariadb-client iproute2)
# Binaries start.sh relies on; checked too, in case a package is half-installed.
BINS=(slurmctld slurmd slurmdbd sbatch squeue sinfo sacct sacctmgr scontrol scancel
      munged munge unmunge mariadbd mariadb mariadb-install-db mariadb-admin)

missing_pkgs() {
    local p
    for p in "${PKGS[@]}"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || echo "$p"
    done
}
missing_bins() {
    local b
    for b in "${BINS[@]}"; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || [ -x "/usr/bin/$b" ] || echo "$b"
    done
}

todo=$(missing_pkgs)
if [ -z "$todo" ] && [ -z "$(missing_bins)" ]; then
    echo "sslbench-slurm: packages already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "sslbench-slurm: install.sh must run as root (missing: ${todo:-binaries $(missing_bins | xargs)})" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Keep the packages' postinst scripts from starting daemons (munge, mariadb) through
# invoke-rc.d: without systemd they would be started by init scripts, outside our
# control and on the default ports. Docker images usually ship such a file already.
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"
    chmod 755 "$POLICY"
    added_policy=1
fi
cleanup() { [ "$added_policy" = 1 ] && rm -f "$POLICY"; return 0; }
trap cleanup EXIT

t0=$(date +%s%N)
echo "sslbench-slurm: installing:" ${todo:-"${PKGS[@]}"}
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${PKGS[@]}" >/tmp/sslbench-slurm-apt.log 2>&1 || {
    echo "sslbench-slurm: apt-get install failed; log follows" >&2
    tail -n 50 /tmp/sslbench-slurm-apt.log >&2
    exit 1
}

left=$(missing_pkgs; missing_bins)
if [ -n "$left" ]; then
    echo "sslbench-slurm: still missing after install: $(echo $left)" >&2
    exit 1
fi
awk -v a="$t0" -v b="$(date +%s%N)" \
    'BEGIN{printf "sslbench-slurm: installed in %.1f s (apt log: /tmp/sslbench-slurm-apt.log)\n", (b-a)/1e9}'
