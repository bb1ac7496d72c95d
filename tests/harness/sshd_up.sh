#!/usr/bin/env bash
# One OpenSSH sshd per fake host (inside it, on $GLT_NET.(10+I):22), key-only login for root.
# Usage: sshd_up.sh [N]      (after hosts_up.sh)
# Writes $GLT_STATE/ssh/:
#   id_ed25519      the client key        known_hosts   host keys of h1..hN (names and IPs)
#   ssh_config      `ssh -F $GLT_STATE/ssh/ssh_config h2 hostname` works (also for Fabric)
#   hI/sshd.pid     pid of hI's sshd *inside* hI (stop it via on_host.sh / sshd_down.sh)
set -euo pipefail
. "$(dirname "$0")/common.sh"
N=${1:-$GLT_N}
[ -x /usr/sbin/sshd ] || glt_apt_install openssh-server
S=$GLT_STATE/ssh
mkdir -p "$S" /run/sshd; chmod 711 "$S"; chmod 755 /run/sshd   # /run/sshd: sshd's privsep dir
[ -f "$S/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C glmlaunch-tc -f "$S/id_ed25519"
cp "$S/id_ed25519.pub" "$S/authorized_keys"
: > "$S/known_hosts.new"; : > "$S/ssh_config.new"
for i in $(seq 1 "$N"); do
  h=h$i; ip=$(glt_ip "$i"); d=$S/$h
  mkdir -p "$d"
  [ -f "$d/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "$h" -f "$d/ssh_host_ed25519_key"
  # UsePAM no: no PAM stack needed (and root's account is not locked, so key login works).
  # StrictModes no: keys live under $GLT_STATE in /tmp.
  # Trap: SetEnv PATH puts the venv first, but root's ~/.bashrc on some images (pyenv init) runs
  # for ssh commands and prepends its shims again, so remote commands should use absolute paths.
  cat > "$d/sshd_config" <<CFG
ListenAddress $ip:22
HostKey $d/ssh_host_ed25519_key
PidFile $d/sshd.pid
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxStartups 200:30:400
MaxSessions 200
LogLevel INFO
SetEnv PATH=$GLT_VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Subsystem sftp /usr/lib/openssh/sftp-server
CFG
  glt_alive_in_host "$i" "$d/sshd.pid" || glt_on "$i" /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log"
  echo "$h,$ip $(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >> "$S/known_hosts.new"
  cat >> "$S/ssh_config.new" <<CFG
Host $h $ip
  HostName $ip
  User root
  IdentityFile $S/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $S/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5

CFG
done
mv "$S/known_hosts.new" "$S/known_hosts"; mv "$S/ssh_config.new" "$S/ssh_config"
for i in $(seq 1 "$N"); do   # wait until each sshd answers with the right hostname
  out=
  for _ in $(seq 1 50); do
    out=$(ssh -F "$S/ssh_config" "h$i" hostname 2>/dev/null) && break; sleep 0.2
  done
  [ "$out" = "h$i" ] || { glt_log "sshd on h$i not answering (got '$out')"; tail "$S/h$i/sshd.log" >&2; exit 1; }
done
glt_log "sshd up on $N hosts; try: ssh -F $S/ssh_config h1 hostname"
