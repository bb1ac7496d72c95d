#!/usr/bin/env bash
# Tear down the hosts of hosts_up.sh: SIGKILL each host's tini anchor (by its root-ns pid file);
# the kernel then kills every process of that host, and the waiting `unshare` exits.
# Then delete the netns, each host's root-side veth, the bridge and our /etc/hosts lines. Logs under $GLT_STATE stay.
set -uo pipefail
. "$(dirname "$0")/common.sh"
running() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
for d in "$GLT_STATE"/hosts/h*; do
  [ -d "$d" ] || continue
  h=$(basename "$d")
  if [ -f "$d/unshare.pid" ]; then
    upid=$(cat "$d/unshare.pid"); ipid=$(cat "$d/init.pid" 2>/dev/null || echo)
    [ -n "$ipid" ] && [ "$(cat "/proc/$ipid/comm" 2>/dev/null)" = tini ] && kill -KILL "$ipid" 2>/dev/null
    # Trap: this machine's PID 1 reaps orphans late, so a dead unshare may linger as a zombie:
    # test the process state, not kill -0.
    for _ in $(seq 1 50); do running "$upid" || break; sleep 0.05; done
    running "$upid" && [ "$(cat "/proc/$upid/comm" 2>/dev/null)" = unshare ] && kill -KILL "$upid" 2>/dev/null
    rm -f "$d/unshare.pid" "$d/init.pid"
  fi
  if [ -e "/run/netns/$h" ]; then
    pids=$(ip netns pids "$h" 2>/dev/null || true)   # anything put there with plain `ip netns exec`
    [ -z "$pids" ] || { glt_log "killing leftover pids in netns $h: $pids"; kill -9 $pids 2>/dev/null; sleep 0.2; }
    ip netns del "$h"
  fi
  # The root-side end of the host's veth pair can outlive the netns (a namespace still pinned by a
  # dying process, a crashed hosts_up.sh); left there, the next hosts_up.sh fails with "File exists".
  ip link show "veth-$h" >/dev/null 2>&1 && ip link del "veth-$h"
done
ip link show "$GLT_BRIDGE" >/dev/null 2>&1 && ip link del "$GLT_BRIDGE"
for pd in $GLT_PRIVATE_DIRS; do rmdir "$pd" 2>/dev/null; done   # the mount points, if empty
if grep -q "$GLT_TAG\$" /etc/hosts; then
  grep -v "$GLT_TAG\$" /etc/hosts > "$GLT_STATE/etc_hosts.clean"
  cat "$GLT_STATE/etc_hosts.clean" > /etc/hosts; rm -f "$GLT_STATE/etc_hosts.clean"
fi
rm -f "$GLT_STATE/hosts/count"
glt_log "hosts down"
exit 0
