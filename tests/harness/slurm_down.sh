#!/usr/bin/env bash
# Stop slurmd on every host, slurmctld/slurmdbd/mariadbd on h1 (in-host pid files: kill from
# inside the host) and munged (root ns, by its pid file).
set -uo pipefail
. "$(dirname "$0")/common.sh"
D=$GLT_STATE/slurm; M=$GLT_STATE/munge
export SLURM_CONF=$D/slurm.conf
[ -f "$SLURM_CONF" ] && [ -f "$GLT_STATE/hosts/h1/init.pid" ] && timeout 10 scancel --quiet --user=root 2>/dev/null
stop_in_host() {  # stop_in_host I PIDFILE: TERM, wait up to 5 s, then KILL
  glt_on "$1" sh -c 'p=$(cat "$1" 2>/dev/null) || exit 0; kill "$p" 2>/dev/null || exit 0
                     for t in $(seq 1 50); do kill -0 "$p" 2>/dev/null || exit 0; sleep 0.1; done
                     kill -9 "$p" 2>/dev/null' sh "$2" 2>/dev/null
  rm -f "$2"
}
for f in "$D"/h*/slurmd.pid; do
  [ -f "$f" ] || continue
  h=$(basename "$(dirname "$f")"); stop_in_host "${h#h}" "$f"
done
for f in "$D/slurmctld.pid" "$D/slurmdbd.pid" "$GLT_STATE/mysql/mariadbd.pid"; do
  [ -f "$f" ] && stop_in_host 1 "$f"
done
if [ -f "$M/munged.pid" ]; then   # a root-ns pid; only kill it if it still is munged
  p=$(cat "$M/munged.pid")
  if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = munged ]; then
    kill "$p"; for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$M/munged.pid"
fi
glt_log "slurm down"
exit 0
