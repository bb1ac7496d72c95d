#!/usr/bin/env bash
# Stop everything cluster_up.sh started, remove namespaces, bridge and /etc/hosts lines.
# Processes that tests started inside hosts (Ray, ...) die with their host's tini anchor.
# Usage: cluster_down.sh [--purge]    --purge also deletes $GLT_STATE, /run/munge, /run/sshd
set -uo pipefail
H=$(cd "$(dirname "$0")" && pwd); . "$H/common.sh"
t0=$(date +%s.%N)
rm -f "$GLT_STATE/env.sh"
"$H/slurm_down.sh"
"$H/sshd_down.sh"
"$H/hosts_down.sh"
if [ "${1:-}" = --purge ]; then
  case "$GLT_STATE" in /|/tmp|/tmp/|"") glt_log "refusing to delete GLT_STATE=$GLT_STATE" ;; *) rm -rf "$GLT_STATE" ;; esac
  rmdir /run/munge /run/sshd 2>/dev/null
fi
glt_log "cluster down ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s)"
exit 0
