#!/usr/bin/env bash
# A real Slurm 22.05 (Debian bookworm) on the fake hosts, with accounting so `sacct` works:
#   munged     root ns, default socket /run/munge/munge.socket.2 (a path: every host sees it)
#   mariadbd   on h1, listening on h1's own 127.0.0.1:3307;  slurmdbd on h1
#   slurmctld  on h1 (SlurmctldHost=h1: the UTS namespace makes the hostname match)
#   slurmd     one per host, NodeName=hI NodeAddr=$GLT_NET.(10+I), Gres=gpu:$GLT_FAKE_GPUS (fake)
# Usage: slurm_up.sh [N]   (after hosts_up.sh)   Env: GLT_FAKE_GPUS=8, GLT_SLURM_CPUS=2
# Then:  export SLURM_CONF=$GLT_STATE/slurm/slurm.conf; sinfo; srun -N3 hostname
# All config and state live under $GLT_STATE; nothing is written to /etc/slurm or /etc/munge.
set -euo pipefail
. "$(dirname "$0")/common.sh"
N=${1:-$GLT_N}
GPUS=${GLT_FAKE_GPUS:-8}
CPUS=${GLT_SLURM_CPUS:-2}    # may exceed the real core count (SlurmdParameters=config_overrides)
D=$GLT_STATE/slurm; M=$GLT_STATE/munge; DB=$GLT_STATE/mysql
ctl_ip=$(glt_ip 1)

pkgs=()
for c in slurmctld slurmd sbatch munged; do command -v $c >/dev/null || { pkgs=(slurmctld slurmd slurm-client munge); break; }; done
command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null || pkgs+=(slurmdbd mariadb-server)
glt_apt_install "${pkgs[@]}"
mkdir -p "$D/ctld"

# ---- munge. Traps: munged refuses a socket dir that is not o+x ("Socket is inaccessible"),
# hence 711; and sacctmgr/sacct ignore AuthInfo=socket= when talking to slurmdbd, so the socket
# must be the compiled-in default /run/munge/munge.socket.2.
mkdir -p "$M"; chmod 711 "$M"
[ -f "$M/munge.key" ] || { mungekey -c -k "$M/munge.key"; chmod 600 "$M/munge.key"; }
if ! { [ -f "$M/munged.pid" ] && kill -0 "$(cat "$M/munged.pid")" 2>/dev/null; }; then
  mkdir -p /run/munge; chmod 755 /run/munge
  munged --key-file="$M/munge.key" --socket=/run/munge/munge.socket.2 --pid-file="$M/munged.pid" \
         --log-file="$M/munged.log" --seed-file="$M/munged.seed"
fi

# ---- MariaDB (inside h1) for slurmdbd
mkdir -p "$DB"
[ -d "$DB/data/mysql" ] || mariadb-install-db --no-defaults --datadir="$DB/data" --user=root \
    --auth-root-authentication-method=socket --skip-test-db > "$DB/install.log" 2>&1
if ! glt_alive_in_host 1 "$DB/mariadbd.pid"; then
  rm -f "$DB/mysqld.sock"
  glt_on 1 sh -c 'exec setsid mariadbd --no-defaults --datadir="$1/data" --socket="$1/mysqld.sock" \
      --port=3307 --bind-address=127.0.0.1 --skip-name-resolve --user=root \
      --pid-file="$1/mariadbd.pid" --log-error="$1/mariadbd.err" \
      --innodb-buffer-pool-size=32M --performance-schema=OFF </dev/null >/dev/null 2>&1 &' sh "$DB"
  for _ in $(seq 1 200); do [ -S "$DB/mysqld.sock" ] && break; sleep 0.1; done
  [ -S "$DB/mysqld.sock" ] || { glt_log "mariadbd did not start"; tail "$DB/mariadbd.err" >&2; exit 1; }
  mariadb --no-defaults -S "$DB/mysqld.sock" -u root -e \
    "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'gltpass';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
fi

# ---- configs (trap: CredType= is a parse error in slurmdbd.conf; it belongs in slurm.conf only)
cat > "$D/slurmdbd.conf" <<CFG
DbdHost=h1
DbdPort=6819
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=/run/munge/munge.socket.2
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=gltpass
StorageLoc=slurm_acct_db
LogFile=$D/slurmdbd.log
PidFile=$D/slurmdbd.pid
DebugLevel=info
CFG
chmod 600 "$D/slurmdbd.conf"     # slurmdbd refuses a world-readable config
{
cat <<CFG
ClusterName=glmlaunch
SlurmctldHost=h1($ctl_ip)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=/run/munge/munge.socket.2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$ctl_ip
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/%n/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/%n/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/%n/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=600
GresTypes=gpu
CFG
for i in $(seq 1 "$N"); do
  echo "NodeName=h$i NodeAddr=$(glt_ip "$i") CPUs=$CPUS RealMemory=2000 Gres=gpu:$GPUS State=UNKNOWN"
done
echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
} > "$D/slurm.conf"

# Fake GPUs. Trap: gres/gpu drops GPUs without a device file (node goes INVAL: "gres/gpu count
# reported lower than configured (0 < 8)") and rejects regular files ("not a valid character or
# block device"). Copies of /dev/null (char 1,3) work; jobs get CUDA_VISIBLE_DEVICES as usual.
mkdir -p "$D/fakedev"
for g in $(seq 0 $((GPUS - 1))); do [ -c "$D/fakedev/nvidia$g" ] || mknod -m 666 "$D/fakedev/nvidia$g" c 1 3; done
cat > "$D/gres.conf" <<CFG
AutoDetect=off
NodeName=h[1-$N] Name=gpu File=$D/fakedev/nvidia[0-$((GPUS - 1))]
CFG
export SLURM_CONF=$D/slurm.conf

# ---- daemons (their pid files hold in-host pids: check and kill them from inside the host)
if ! glt_alive_in_host 1 "$D/slurmdbd.pid"; then
  glt_on 1 env SLURM_CONF="$SLURM_CONF" slurmdbd
  # trap: sacctmgr hangs ~2 s per failed try, hence the `timeout`
  for _ in $(seq 1 100); do timeout 5 sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.1; done
  timeout 5 sacctmgr -n show cluster >/dev/null || { glt_log "slurmdbd not answering"; tail "$D/slurmdbd.log" >&2; exit 1; }
fi
timeout 10 sacctmgr -n show cluster format=cluster | grep -qw glmlaunch || timeout 10 sacctmgr -i add cluster glmlaunch >/dev/null
glt_alive_in_host 1 "$D/slurmctld.pid" || glt_on 1 env SLURM_CONF="$SLURM_CONF" slurmctld -c -f "$SLURM_CONF"  # -c: clean state
for i in $(seq 1 "$N"); do
  mkdir -p "$D/h$i/spool"
  glt_alive_in_host "$i" "$D/h$i/slurmd.pid" || glt_on "$i" env SLURM_CONF="$SLURM_CONF" slurmd -f "$SLURM_CONF" -N "h$i"
done
idle=0
for _ in $(seq 1 240); do   # wait until every node is idle
  idle=$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)
  [ "$idle" -ge "$N" ] && break; sleep 0.25
done
sinfo -N -o '%N %T %c %G' >&2
[ "$idle" -ge "$N" ] || { glt_log "only $idle/$N nodes idle"; tail -20 "$D/slurmctld.log" >&2; exit 1; }
glt_log "slurm up: $N nodes; export SLURM_CONF=$SLURM_CONF"
