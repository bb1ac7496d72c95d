#!/usr/bin/env bash
# Stop the sshds of sshd_up.sh. Their pid files hold in-host pids: kill from inside the host.
set -uo pipefail
. "$(dirname "$0")/common.sh"
for f in "$GLT_STATE"/ssh/h*/sshd.pid; do
  [ -f "$f" ] || continue
  h=$(basename "$(dirname "$f")")
  glt_on "${h#h}" sh -c 'kill "$(cat "$1")"' sh "$f" 2>/dev/null
  rm -f "$f"
done
glt_log "sshd down"
exit 0
