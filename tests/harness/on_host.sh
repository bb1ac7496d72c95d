#!/usr/bin/env bash
# Run a command inside fake host hI (its net, uts, pid and mount namespaces), as root.
# Usage: on_host.sh I CMD [ARGS...]      e.g.  on_host.sh 2 sh -c 'sleep 100 & echo $!'
# PIDs seen or printed in there are in-host PIDs: kill them with on_host.sh too.
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -ge 2 ] || { echo "usage: $0 I CMD [ARGS...]" >&2; exit 2; }
i=$1; shift
glt_on "$i" "$@"
