#!/usr/bin/env bash
# Create fake hosts h1..hN (what a host is: see common.sh).
# Usage: hosts_up.sh [N]     Result: $GLT_STATE/hosts/hI/{unshare.pid,init.pid}, /etc/hosts lines.
set -euo pipefail
. "$(dirname "$0")/common.sh"
N=${1:-$GLT_N}
need=()
command -v tini >/dev/null || need+=(tini)
command -v ping >/dev/null || need+=(iputils-ping)
glt_apt_install "${need[@]}"

if ! ip link show "$GLT_BRIDGE" >/dev/null 2>&1; then
  ip link add "$GLT_BRIDGE" type bridge
  ip addr add "$GLT_NET.1/24" dev "$GLT_BRIDGE"
  ip link set "$GLT_BRIDGE" up
fi
mkdir -p "$GLT_STATE/hosts"
for i in $(seq 1 "$N"); do
  h=h$i; d=$GLT_STATE/hosts/$h
  if [ -f "$d/init.pid" ] && kill -0 "$(cat "$d/init.pid")" 2>/dev/null; then continue; fi
  mkdir -p "$d"
  if [ ! -e "/run/netns/$h" ]; then
    ip netns add "$h"
    # a root-side veth left by an earlier run (its netns is gone) would make `ip link add` fail
    ip link show "veth-$h" >/dev/null 2>&1 && ip link del "veth-$h"
    ip link add "veth-$h" type veth peer name eth0 netns "$h"
    ip link set "veth-$h" master "$GLT_BRIDGE" up
    ip -n "$h" addr add "$(glt_ip "$i")/24" dev eth0
    ip -n "$h" link set eth0 up
    ip -n "$h" link set lo up
  fi
  for pd in $GLT_PRIVATE_DIRS; do mkdir -p "$pd" "$d/fs$pd"; done
  # Traps (all hit by the reference harness):
  # - `ip netns exec` alone is not a host: it shares PIDs (`ray stop` on h2 killed h1's GCS) and
  #   /tmp/ray (two raylets raced for one socket name), and it remounts /sys, which hides
  #   /sys/fs/cgroup (slurmd 22.05: "No filesystem mounted on /sys/fs/cgroup"). So: nsenter into
  #   the netns, then unshare uts+pid+mount, then a fresh sysfs with the cgroup mount moved back in.
  # - tini is PID 1 of the host: it reaps daemons orphaned by `ray start`/sshd. SIGKILL to tini
  #   kills the whole PID namespace. `unshare --fork` ignores SIGTERM, hence --kill-child and
  #   SIGKILL in hosts_down.sh.
  GLTH=$h GLTD=$d GLT_PRIVATE_DIRS=$GLT_PRIVATE_DIRS GLT_SHM_SIZE=$GLT_SHM_SIZE \
  setsid nsenter "--net=/run/netns/$h" unshare --uts --pid --fork --mount-proc --kill-child=SIGKILL \
    sh -c 'set -e; hostname "$GLTH"
           mkdir -p "$GLTD/cg"; mount --rbind /sys/fs/cgroup "$GLTD/cg"
           mount -t sysfs sysfs /sys; mount --move "$GLTD/cg" /sys/fs/cgroup
           for pd in $GLT_PRIVATE_DIRS; do mount --bind "$GLTD/fs$pd" "$pd"; done
           mount -t tmpfs -o "size=$GLT_SHM_SIZE,mode=1777" gltshm /dev/shm
           exec tini -s -- sleep infinity' \
    < /dev/null > "$d/init.log" 2>&1 &
  upid=$!
  echo "$upid" > "$d/unshare.pid"
  c=
  for _ in $(seq 1 100); do   # tini = the child of unshare, once it has exec'd
    c=$(awk '{print $1}' "/proc/$upid/task/$upid/children" 2>/dev/null || true)
    [ -n "$c" ] && [ "$(cat "/proc/$c/comm" 2>/dev/null)" = tini ] && break; sleep 0.05
  done
  [ -n "$c" ] && [ "$(cat "/proc/$c/comm" 2>/dev/null)" = tini ] || { glt_log "host $h did not start:"; cat "$d/init.log" >&2; exit 1; }
  echo "$c" > "$d/init.pid"     # a root-ns PID (the anchor); everything else is inside
done
for i in $(seq 1 "$N"); do      # root ns -> each host, then host -> host
  for _ in $(seq 1 50); do ping -c1 -W1 "$(glt_ip "$i")" >/dev/null 2>&1 && break; sleep 0.2; done
  ping -c1 -W1 "$(glt_ip "$i")" >/dev/null || { glt_log "h$i not reachable"; exit 1; }
done
glt_on 1 ping -c1 -W1 "$(glt_ip "$N")" >/dev/null
# Names resolve everywhere (all hosts share /etc). Rewrite in place: /etc/hosts may be a bind mount.
{ grep -v "$GLT_TAG\$" /etc/hosts || true; for i in $(seq 1 "$N"); do echo "$(glt_ip "$i") h$i $GLT_TAG"; done; } > "$GLT_STATE/hosts/etc_hosts.new"
cat "$GLT_STATE/hosts/etc_hosts.new" > /etc/hosts; rm -f "$GLT_STATE/hosts/etc_hosts.new"
echo "$N" > "$GLT_STATE/hosts/count"
glt_log "hosts up: $(for i in $(seq 1 "$N"); do printf 'h%s=%s ' "$i" "$(glt_ip "$i")"; done)"
