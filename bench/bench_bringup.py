#!/usr/bin/env python
"""Bring-up scaling: time from the command to "every node and GPU joined", three ways, side by
side in one run (the order rotates each round; medians over the rounds):

  (a) glmlaunch : `glmlaunch up local-probe --hostfile F` (hostfile `h slots=8`: --num-gpus 8);
                  includes its CLI start, the checks, preflight, token, head, workers, join wait
  (b) seed      : the seed's loop: `ssh head ray start --head ...`, then
                  `for h in workers; do ssh h ray start ... & done; wait`, then the GPU wait the
                  seed lacks: `until ssh head ray status | grep "/G GPU"; do sleep 1; done`
  (c) limit     : bare `ray start` over plain ssh, head first, then every worker at once,
                  the head's state API polled every 0.1 s until every GPU is registered

All three use the same pinned ports (6379.., dashboard 8265) and a Ray temp dir of their own.
Each is torn down fully before the next: (a) by `glmlaunch down --purge`, (b)/(c) by ending
exactly the processes that carry their marker (tests/harness/on_host.sh, inside each host).

Usage (as root, under the integration lock):
  flock /tmp/glt-it.lock /work/main/.venv/bin/python bench/bench_bringup.py [--rounds R] [COUNT ...]
COUNT: host counts (default 1..N over the hosts of $GLT_STATE/env.sh).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _hosts as H

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("counts", nargs="*", type=int)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--cap", type=float, default=180.0, help="seconds before a variant counts as failed")
args = ap.parse_args()
counts = args.counts or list(range(1, len(H.HOSTS) + 1))
if max(counts) > len(H.HOSTS):
    ap.error(f"the cluster has {len(H.HOSTS)} hosts")
WORK = Path(tempfile.mkdtemp(prefix="glmlaunch-bench-bringup-"))


def run_glmlaunch(hosts: list[str]) -> float:
    runs = Path(tempfile.mkdtemp(dir=WORK, prefix="runs-"))
    hf = H.hostfile(hosts, WORK)
    t0 = time.perf_counter()
    try:
        H.glmlaunch(
            "up", "local-probe", "--hostfile", hf, "--ssh-config", H.SSH_CONFIG,
            "--runs-dir", str(runs), "--join-timeout", str(args.cap),
        )  # fmt: skip
        return time.perf_counter() - t0
    finally:
        if any(runs.iterdir()):
            H.glmlaunch_down(H.only_run(runs), hosts)


def run_seed(hosts: list[str]) -> float:
    head, workers = hosts[0], hosts[1:]
    marker, tmp = H.new_marker(), f"/tmp/{H.new_marker()}"
    ssh = shlex.join(H.ssh_args())
    total = 8 * len(hosts)
    status = shlex.join([H.RAY, "status", "--address", f"{H.IPS[head]}:{H.PORT_BASE}"])
    script = f"{ssh} {head} {shlex.quote(H.ray_start_cmd(head, head, marker, tmp))}\n"
    for w in workers:
        script += f"{ssh} {w} {shlex.quote(H.ray_start_cmd(w, head, marker, tmp))} &\n"
    script += "wait\n"
    script += (
        f"until {ssh} {head} {shlex.quote(status)} 2>/dev/null | grep -q '/{total}.0 GPU'; do sleep 1; done\n"
    )
    t0 = time.perf_counter()
    p = subprocess.Popen(["timeout", str(args.cap), "bash", "-c", script], start_new_session=True)
    try:
        if p.wait() != 0:
            raise RuntimeError(f"seed: exit {p.returncode}")
        return time.perf_counter() - t0
    finally:
        if p.poll() is None:  # interrupted: end the loop (its own process group) first
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
        H.end_marked(hosts, marker, tmp)


def run_limit(hosts: list[str]) -> float:
    head, workers = hosts[0], hosts[1:]
    marker, tmp = H.new_marker(), f"/tmp/{H.new_marker()}"
    total = 8.0 * len(hosts)
    procs: list[subprocess.Popen] = []
    t0 = time.perf_counter()
    try:
        subprocess.run(
            [*H.ssh_args(), head, H.ray_start_cmd(head, head, marker, tmp)], check=True, timeout=args.cap
        )
        procs = [subprocess.Popen([*H.ssh_args(), w, H.ray_start_cmd(w, head, marker, tmp)]) for w in workers]
        while H.gpus_joined(head) < total:
            if time.perf_counter() - t0 > args.cap:
                raise TimeoutError(f"limit: not all {total:g} GPUs joined within {args.cap} s")
            time.sleep(0.1)
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.wait(timeout=args.cap)
        H.end_marked(hosts, marker, tmp)


VARIANTS = {"glmlaunch": run_glmlaunch, "seed": run_seed, "limit": run_limit}
times: dict[tuple[int, str], list[float]] = {}
for r in range(args.rounds):
    for n in counts:
        order = list(VARIANTS)
        order = order[r % 3 :] + order[: r % 3]
        for name in order:
            H.wait_ports_free(H.HOSTS[:n])
            t = VARIANTS[name](H.HOSTS[:n])
            times.setdefault((n, name), []).append(t)
            print(f"round {r + 1} hosts {n} {name:<10} {t:6.2f} s", flush=True)

print(f"\nmedian of {args.rounds} rounds, seconds from the command to all nodes and GPUs joined")
print(f"{'hosts':>5} {'glmlaunch':>10} {'seed+wait':>10} {'limit':>8} {'(a)/(c)':>8} {'(b)/(c)':>8}")
med = {k: statistics.median(v) for k, v in times.items()}
for n in counts:
    a, b, c = med[n, "glmlaunch"], med[n, "seed"], med[n, "limit"]
    print(f"{n:5d} {a:10.2f} {b:10.2f} {c:8.2f} {a / c:8.2f} {b / c:8.2f}")
if len(counts) > 1:
    lo, hi = min(counts), max(counts)
    print(f"growth {lo} -> {hi} hosts: " + "  ".join(f"{k} {med[hi, k] / med[lo, k]:.2f}x" for k in VARIANTS))
print("rounds:", {f"{n}/{k}": [round(x, 2) for x in v] for (n, k), v in times.items()})
for h in H.HOSTS:
    left = [ln for ln in H.ps(h).splitlines() if "ray" in ln or "glt-bench" in ln]
    print(f"{h}: left running: {left or 'nothing of ours'}")
