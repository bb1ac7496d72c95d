# Shared settings and helpers of glmlaunch's integration-test cluster. Source it:
#   . "$(dirname "$0")/common.sh"
# Every setting can be overridden from the environment.
#
# A fake host hI is a set of namespaces held open by one `tini` process (PID 1 inside it):
#   net    netns hI; eth0 = $GLT_NET.(10+I)/24 on bridge $GLT_BRIDGE ($GLT_NET.1 in the root ns).
#          No default route; the root ns does not forward, so hosts reach only the bridge subnet.
#   uts    `hostname` prints hI (also for sshd sessions, Slurm job steps and Ray workers)
#   pid    own process table: `ray stop`, `ps`, `pkill` inside hI see only hI's processes
#   mount  own /proc, private /tmp/ray (bind mount of $GLT_STATE/hosts/hI/fs/tmp/ray) and a
#          private tmpfs /dev/shm. Everything else (the checkout, the venv, $GLT_STATE, /etc, /run)
#          is shared by all hosts, like an NFS home.
# Based on the tested reference in shared/testcluster (see its README for the measurements).

GLT_HARNESS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GLT_REPO=$(cd "$GLT_HARNESS/../.." && pwd)
GLT_STATE=${GLT_STATE:-/tmp/glmlaunch-tc}        # config, keys, logs, pid files, databases
GLT_VENV=${GLT_VENV:-$GLT_REPO/.venv}            # put first on PATH for ssh sessions (absolute)
GLT_N=${GLT_N:-3}                                # hosts h1..hN
GLT_BRIDGE=${GLT_BRIDGE:-glbr0}
GLT_NET=${GLT_NET:-10.79.0}                      # this /24 exists only on $GLT_BRIDGE
GLT_SHM_SIZE=${GLT_SHM_SIZE:-2g}                 # per-host /dev/shm (Ray's object store lives there)
GLT_PRIVATE_DIRS=${GLT_PRIVATE_DIRS:-/tmp/ray}   # per-host private dirs (space separated)
GLT_TAG="# glmlaunch-tc"                         # marks our /etc/hosts lines

glt_ip() { echo "$GLT_NET.$((10 + $1))"; }      # glt_ip I -> address of hI
glt_log() { echo "[glt $(date +%H:%M:%S)] $*" >&2; }

# Run a command on host hI, in all its namespaces, as root, cwd /.
# Trap: PIDs printed or written (pid files) by processes inside a host are in-host PIDs.
# Never kill them from the root ns (that number belongs to some other process there):
# kill them through glt_on.
glt_on() {
  local i=$1; shift
  local p; p=$(cat "$GLT_STATE/hosts/h$i/init.pid" 2>/dev/null) || { echo "host h$i is not up" >&2; return 1; }
  nsenter -t "$p" -n -u -m -p --wd=/ -- "$@"
}

# True if the daemon whose in-host pid file is $2 runs on host h$1.
glt_alive_in_host() { glt_on "$1" sh -c '[ -f "$1" ] && kill -0 "$(cat "$1")"' sh "$2" 2>/dev/null; }

# Install Debian packages that are missing. Trap: Debian's postinst scripts start the packaged
# services (a system sshd on :22, munge, slurm, mariadb); a policy-rc.d that exits 101 stops
# that. We create it only if there is none, and remove only the one we created.
glt_apt_install() {
  [ $# -gt 0 ] || return 0
  local own=0
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own=1; }
  glt_log "apt-get install $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  [ "$own" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}
