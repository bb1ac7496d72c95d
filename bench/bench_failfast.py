#!/usr/bin/env python
"""Fail-fast: how long until an unreachable host is reported, against the connect timeout.

The last host of the cluster is made unreachable three ways, one after another:
  refused  : its sshd is stopped (SIGTERM): the TCP connect is refused at once
  stopped  : its sshd is frozen (SIGSTOP): the kernel still accepts TCP, no SSH banner ever comes
  listener : the hostfile points it at a spare port inside the host where a Python socket
             listens and never accepts (TCP completes in the backlog, nothing answers)
For each, side by side (alternating, medians of the rounds):
  glmlaunch : `glmlaunch up local-probe --hostfile F --connect-timeout T`: seconds until it
              exits naming the host (target: within T + 1 s), and its exit code
  seed      : the seed's loop `for h in hosts; do ssh h CMD & done; wait` with plain ssh as the
              seed runs it (the cluster's ssh_config without its ConnectTimeout), capped at CAP
              seconds: seconds until `wait` returns and whether anything was reported (the
              loop's exit status; `wait` without arguments always returns 0)
sshd is resumed/restarted and the listener ended in `finally` (only the processes this script
started or stopped; the harness's own sshd command line).

Usage (as root, under the integration lock):
  flock /tmp/glt-it.lock /work/main/.venv/bin/python bench/bench_failfast.py [--rounds R] [--timeout T]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _hosts as H

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--timeout", type=float, default=3.0, help="glmlaunch's --connect-timeout, seconds")
ap.add_argument("--cap", type=float, default=60.0, help="seconds after which the seed's loop is stopped")
args = ap.parse_args()
WORK = Path(tempfile.mkdtemp(prefix="glmlaunch-bench-failfast-"))
BAD = H.HOSTS[-1]
SSHD_DIR = H.STATE / "ssh" / BAD
SPARE_PORT = 2299
# the seed's ssh: the cluster's config minus ConnectTimeout (the seed's plain `ssh root@ip`)
SEED_CFG = WORK / "ssh_config.seed"
SEED_CFG.write_text(
    "".join(
        ln for ln in Path(H.SSH_CONFIG).read_text().splitlines(True) if "connecttimeout" not in ln.lower()
    )
)


SSHD_PID = [0]  # read before it is stopped: a stopped sshd removes its pid file


def sshd_pid() -> int:
    SSHD_PID[0] = int((SSHD_DIR / "sshd.pid").read_text())
    return SSHD_PID[0]


def sshd_restore() -> None:
    """Resume the host's sshd, or start it again with the harness's own command; wait until it answers."""
    pid = str(SSHD_PID[0])
    H.on_host(BAD, "kill", "-CONT", pid, check=False)
    alive = H.on_host(BAD, "kill", "-0", pid, check=False).returncode == 0
    if not alive or not (SSHD_DIR / "sshd.pid").exists():
        H.on_host(
            BAD, "/usr/sbin/sshd", "-f", str(SSHD_DIR / "sshd_config"), "-E", str(SSHD_DIR / "sshd.log")
        )
    for _ in range(100):
        r = subprocess.run(
            [*H.ssh_args(), BAD, "hostname"], capture_output=True, text=True, timeout=20, check=False
        )
        if r.stdout.strip() == BAD:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{BAD}'s sshd did not come back")


def refused() -> tuple[dict | None, callable]:
    H.on_host(BAD, "kill", "-TERM", str(sshd_pid()))
    for _ in range(100):
        if f"{H.IPS[BAD]}:22" not in H.on_host(BAD, "ss", "-ltnH").stdout:
            break
        time.sleep(0.1)
    return None, sshd_restore


def stopped() -> tuple[dict | None, callable]:
    H.on_host(BAD, "kill", "-STOP", str(sshd_pid()))
    return None, sshd_restore


LISTENER = (
    "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    f"s.bind(('{H.IPS[BAD]}', {SPARE_PORT})); s.listen(64); time.sleep(3600)"
)


def listener() -> tuple[dict | None, callable]:
    r = H.on_host(
        BAD, "sh", "-c", 'setsid "$@" </dev/null >/dev/null 2>&1 & echo $!', "sh", "python3", "-c", LISTENER
    )
    pid = r.stdout.strip()
    for _ in range(100):
        if f":{SPARE_PORT}" in H.on_host(BAD, "ss", "-ltnH").stdout:
            break
        time.sleep(0.1)

    def undo() -> None:
        H.on_host(BAD, "kill", "-KILL", pid, check=False)

    return {BAD: SPARE_PORT}, undo


def run_glmlaunch(ports: dict | None) -> tuple[float, str]:
    runs = Path(tempfile.mkdtemp(dir=WORK, prefix="runs-"))
    hf = H.hostfile(H.HOSTS, WORK, ports)
    t0 = time.perf_counter()
    r = H.glmlaunch(
        "up", "local-probe", "--hostfile", hf, "--ssh-config", H.SSH_CONFIG, "--runs-dir", str(runs),
        "--connect-timeout", str(args.timeout), "--join-timeout", "60", check=False, timeout=args.cap + 60,
    )  # fmt: skip
    took = time.perf_counter() - t0
    named = BAD in (r.stderr + r.stdout)
    attempt = ""
    if any(runs.iterdir()):
        rd = H.only_run(runs)
        m = json.loads((rd / "manifest.json").read_text())
        pre = [e for e in m["events"] if e["event"] == "phase" and e["step"] == "preflight"]
        if pre and BAD in pre[0]["hosts"]:
            s = pre[0]["hosts"][BAD]["seconds"]
            attempt = f", {s:.2f} s from its connect attempt to the report"
            first_attempt[0] = s
        if r.returncode == 0:  # it should not have come up; take it down
            H.glmlaunch_down(rd, H.HOSTS)
    return took, f"exit {r.returncode}, {BAD} {'named' if named else 'NOT named'}{attempt}"


first_attempt = [0.0]


def run_seed(ports: dict | None) -> tuple[float, str]:
    loop = ""
    for h in H.HOSTS:
        port = f"-p {ports[h]} " if ports and h in ports else ""
        loop += f"ssh -F {shlex.quote(str(SEED_CFG))} {port}{h} true & "
    t0 = time.perf_counter()
    r = subprocess.run(
        ["timeout", str(args.cap), "bash", "-c", loop + "wait"], capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - t0
    if r.returncode == 124:
        return took, f"still waiting at the {args.cap:.0f} s cap (nothing reported)"
    return (
        took,
        f"wait returned {r.returncode} (the failure is not reported), ssh printed: {r.stderr.strip()[:80]!r}",
    )


CASES = {"refused": refused, "stopped": stopped, "listener": listener}
results: dict[tuple[str, str], list[float]] = {}
notes: dict[tuple[str, str], str] = {}
for rnd in range(args.rounds):
    for case, make in CASES.items():
        order = [("glmlaunch", run_glmlaunch), ("seed", run_seed)]
        if rnd % 2:
            order.reverse()
        for name, fn in order:
            ports, undo = make()
            try:
                t, note = fn(ports)
            finally:
                undo()
            results.setdefault((case, name), []).append(t)
            if name == "glmlaunch":
                results.setdefault((case, "attempt"), []).append(first_attempt[0])
            notes[case, name] = note
            print(f"round {rnd + 1} {case:<9} {name:<10} {t:6.2f} s  {note}", flush=True)

print(
    f"\n{BAD} unreachable; glmlaunch --connect-timeout {args.timeout:g} s (target: within {args.timeout + 1:g} s)"
)
print("glmlaunch s: from the command (CLI start, plan and checks included); attempt s: from the")
print("connection attempt to the host's failure (the preflight round's record in the manifest)")
print(f"{'case':<9} {'glmlaunch s':>11} {'attempt s':>9} {'vs T+1':>7} {'seed loop s':>11}  seed")
for case in CASES:
    a, c, b = (statistics.median(results[case, k]) for k in ("glmlaunch", "attempt", "seed"))
    ok = "ok" if a <= args.timeout + 1 else ("ok*" if c <= args.timeout + 1 else "MISSED")
    print(f"{case:<9} {a:11.2f} {c:9.2f} {ok:>7} {b:11.2f}  {notes[case, 'seed']}")
    print(f"{'':<9} glmlaunch: {notes[case, 'glmlaunch']}")
print("ok*: within T + 1 s of the connection attempt, not of the command")
print("rounds:", {f"{c}/{k}": [round(x, 2) for x in v] for (c, k), v in results.items()})
