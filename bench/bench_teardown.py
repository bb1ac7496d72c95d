#!/usr/bin/env python
"""Teardown: `glmlaunch down` on every host of the cluster against a bare `ray stop` in each,
side by side (alternating, medians of the rounds). Target: down <= 1.2x ray stop.

  glmlaunch : a cluster brought up by `glmlaunch up local-probe` on all hosts, then timed:
              `glmlaunch down --run DIR` (CLI start, the run's records, SIGTERM to each recorded
              session, workers then head, token removed, wait until each session is gone)
  ray stop  : a cluster brought up by bare `ray start` over ssh (head, then workers), then timed:
              `for h in hosts; do ssh h ray stop & done; wait` (stops every Ray process of the
              host by name: run here only after checking that every Ray process on each host is
              this benchmark's own; afterwards whatever survived is ended by its marker)

Usage (as root, under the integration lock):
  flock /tmp/glt-it.lock /work/main/.venv/bin/python bench/bench_teardown.py [--rounds R]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _hosts as H

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--rounds", type=int, default=3)
args = ap.parse_args()
WORK = Path(tempfile.mkdtemp(prefix="glmlaunch-bench-teardown-"))
HOSTS = H.HOSTS
RAY_NAMES = ("raylet", "gcs_server", "ray::", "dashboard", "ray start", "/ray/", "default_worker")


def foreign_ray(host: str, ours: set[int]) -> list[str]:
    """Ray processes on ``host`` that are not in ``ours`` (then `ray stop` must not run there)."""
    out = []
    for ln in H.ps(host).splitlines()[1:]:
        pid, _, cmd = ln.strip().partition(" ")
        if any(k in cmd for k in RAY_NAMES) and int(pid) not in ours and not cmd.startswith("ps "):
            out.append(ln.strip())
    return out


def glmlaunch_down() -> float:
    runs = Path(tempfile.mkdtemp(dir=WORK, prefix="runs-"))
    hf = H.hostfile(HOSTS, WORK)
    H.glmlaunch("up", "local-probe", "--hostfile", hf, "--ssh-config", H.SSH_CONFIG, "--runs-dir", str(runs))
    rd = H.only_run(runs)
    t0 = time.perf_counter()
    H.glmlaunch("down", "--run", str(rd))
    took = time.perf_counter() - t0
    H.glmlaunch_down(rd, HOSTS)  # --purge and the leftover check (untimed)
    return took


def ray_stop() -> float:
    head, marker, tmp = HOSTS[0], H.new_marker(), f"/tmp/{H.new_marker()}"
    try:
        subprocess.run(
            [*H.ssh_args(), head, H.ray_start_cmd(head, head, marker, tmp)], check=True, timeout=180
        )
        procs = [
            subprocess.Popen([*H.ssh_args(), w, H.ray_start_cmd(w, head, marker, tmp)]) for w in HOSTS[1:]
        ]
        for p in procs:
            p.wait(timeout=180)
        end = time.monotonic() + 180
        while H.gpus_joined(head) < 8.0 * len(HOSTS):
            if time.monotonic() > end:
                raise TimeoutError("bare cluster did not come up")
            time.sleep(0.2)
        for h in HOSTS:
            bad = foreign_ray(h, set(H.marked(h, marker)["found"]))
            if bad:
                raise RuntimeError(
                    f"{h} runs Ray processes that are not this benchmark's: {bad}; not running ray stop"
                )
        stop = shlex.join([H.RAY, "stop"])
        loop = " ".join(
            f"{shlex.join(H.ssh_args())} {h} {shlex.quote(stop)} >/dev/null 2>&1 &" for h in HOSTS
        )
        t0 = time.perf_counter()
        subprocess.run(["bash", "-c", loop + " wait"], check=True, timeout=120)
        return time.perf_counter() - t0
    finally:
        H.end_marked(HOSTS, marker, tmp)


VARIANTS = {"glmlaunch down": glmlaunch_down, "ray stop": ray_stop}
times: dict[str, list[float]] = {}
for r in range(args.rounds):
    order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
    for name in order:
        H.wait_ports_free(HOSTS)
        t = VARIANTS[name]()
        times.setdefault(name, []).append(t)
        print(f"round {r + 1} {name:<15} {t:6.2f} s", flush=True)

a, b = (statistics.median(times[k]) for k in VARIANTS)
print(f"\n{len(HOSTS)} hosts, median of {args.rounds} rounds")
print(f"glmlaunch down {a:6.2f} s   ray stop {b:6.2f} s   ratio {a / b:.2f} (target <= 1.2)")
print("rounds:", {k: [round(x, 2) for x in v] for k, v in times.items()})
for h in HOSTS:
    left = foreign_ray(h, set())
    print(f"{h}: Ray processes left: {left or 'none'}")
