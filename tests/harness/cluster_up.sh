#!/usr/bin/env bash
# The whole integration-test cluster: Debian packages (if missing), N fake hosts, sshd, Slurm.
# Ray is NOT started (glmlaunch under test does that over ssh / inside Slurm jobs), and no
# Python package is installed (the venv is tests/run.sh's business; $GLT_VENV is only put on
# the ssh PATH).
# Usage: cluster_up.sh [N]           (default 3; settings: see common.sh)
# Writes $GLT_STATE/env.sh: source it to point tests at the cluster.
set -euo pipefail
H=$(cd "$(dirname "$0")" && pwd); . "$H/common.sh"
N=${1:-$GLT_N}
t0=$(date +%s.%N)
lap() { glt_log "$1 ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s)"; }

need=()
command -v tini >/dev/null     || need+=(tini)
command -v ping >/dev/null     || need+=(iputils-ping)
[ -x /usr/sbin/sshd ]          || need+=(openssh-server)
command -v munged >/dev/null   || need+=(munge)
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null   || need+=(slurmd)
command -v sbatch >/dev/null   || need+=(slurm-client)
command -v slurmdbd >/dev/null || need+=(slurmdbd)
command -v mariadbd >/dev/null || need+=(mariadb-server)
if [ ${#need[@]} -gt 0 ]; then glt_apt_install "${need[@]}"; lap "apt done"; fi

mkdir -p "$GLT_STATE"; rm -f "$GLT_STATE/env.sh"   # env.sh exists only for a cluster that is up
"$H/hosts_up.sh" "$N"; lap "hosts up"
"$H/sshd_up.sh" "$N";  lap "sshd up"
"$H/slurm_up.sh" "$N"; lap "slurm up"

hosts=$(for i in $(seq 1 "$N"); do printf 'h%s ' "$i"; done); hosts=${hosts% }
ips=$(for i in $(seq 1 "$N"); do printf 'h%s=%s ' "$i" "$(glt_ip "$i")"; done); ips=${ips% }
cat > "$GLT_STATE/env.sh.new" <<ENV
# Written by tests/harness/cluster_up.sh: source it to use the test cluster.
export GLT_STATE='$GLT_STATE'
export GLT_HARNESS='$H'
export GLT_VENV='$GLT_VENV'
export GLT_HOSTS='$hosts'
export GLT_HOST_IPS='$ips'
export GLT_SSH_CONFIG='$GLT_STATE/ssh/ssh_config'
export GLT_SSH_KEY='$GLT_STATE/ssh/id_ed25519'
export GLT_KNOWN_HOSTS='$GLT_STATE/ssh/known_hosts'
export SLURM_CONF='$GLT_STATE/slurm/slurm.conf'
ENV
mv "$GLT_STATE/env.sh.new" "$GLT_STATE/env.sh"
lap "cluster up: $ips; source $GLT_STATE/env.sh"
