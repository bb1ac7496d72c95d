#!/usr/bin/env python
"""Plan and CLI latency, side by side in one run (no cluster needed; formerly bench_cli.py).

Part 1, wall time of each command (median of N, the order rotating each round) and its ratio to
a bare `python -c pass` (the floor any Python CLI pays). Targets: `glmlaunch --help` < 0.3 s;
`render` of the 355B recipe (glm45-355b-a32b-gspo) for 64 GPUs < 0.3 s, from 8 placeholder
nodes and from a hostfile of 8 x slots=8; `check --deep` < 10 s. Render and check for 256 and
1024 GPUs (32 and 128 placeholder nodes) show how the time grows with the nodes.

Part 2, where the time of `check --deep` goes, in one process: importing glmlaunch, the shallow
plan (load, resolve, build, checks), importing torch + megatron-core, megatron-core's own checks,
SGLang's ServerArgs resolution (a subprocess in .venv-sglang, its import included).

Usage: PYTHONPATH=. /work/main/.venv/bin/python bench/bench_plan.py [N]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BIN = Path(sys.executable).parent
GL = str(BIN / "glmlaunch")
R = "glm45-355b-a32b-gspo"
HF = Path(tempfile.mkdtemp(prefix="glmlaunch-bench-plan-")) / "hostfile-8x8"
HF.write_text("".join(f"10.79.9.{i} slots=8\n" for i in range(1, 9)))  # addresses: no name lookups
CASES = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "glmlaunch --help": [GL, "--help"],
    "render 355B, 8 nodes (64 GPUs)": [GL, "render", R, "--nodes", "8", "--format", "json"],
    "render 355B, hostfile 8x8": [GL, "render", R, "--hostfile", str(HF), "--format", "json"],
    "render 355B, 32 nodes (256 GPUs)": [GL, "render", R, "--nodes", "32", "--format", "json"],
    "render 355B, 128 nodes (1024 GPUs)": [GL, "render", R, "--nodes", "128", "--format", "json"],
    "check 355B, 8 nodes": [GL, "check", R, "--nodes", "8"],
    "check 355B, 32 nodes": [GL, "check", R, "--nodes", "32"],
    "check 355B, 128 nodes": [GL, "check", R, "--nodes", "128"],
    "check 355B, 8 nodes --deep": [GL, "check", R, "--nodes", "8", "--deep"],
}
TARGET = {"glmlaunch --help": 0.3, "render 355B, 8 nodes (64 GPUs)": 0.3, "render 355B, hostfile 8x8": 0.3}
TARGET["check 355B, 8 nodes --deep"] = 10.0


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


results: dict[str, list[float]] = {k: [] for k in CASES}
for cmd in CASES.values():
    timed(cmd)  # warm the page cache
for r in range(N):
    names = list(CASES)
    names = names[r % len(names) :] + names[: r % len(names)]
    for name in names:
        if "deep" in name and r >= max(1, N // 2):
            continue
        results[name].append(timed(CASES[name]))
med = {k: statistics.median(v) for k, v in results.items()}
floor = med["python -c pass (floor)"]
print(f"{'command':<36} {'median s':>9} {'x floor':>8} {'target':>7}")
for name, t in med.items():
    tgt = TARGET.get(name)
    mark = "" if tgt is None else (f"<{tgt:g} ok" if t < tgt else f"<{tgt:g} MISSED")
    print(f"{name:<36} {t:9.3f} {t / floor:8.1f} {mark:>7}")
for what in ("render", "check"):
    a, b = med[f"{what} 355B, 8 nodes" + (" (64 GPUs)" if what == "render" else "")], None
    b = med[f"{what} 355B, 128 nodes" + (" (1024 GPUs)" if what == "render" else "")]
    print(f"{what}: 8 -> 128 nodes {b / a:.2f}x ({b - a:+.3f} s)")

SPLIT = r"""
import json, time
t = [time.perf_counter()]
from glmlaunch.run import plan_launch
from glmlaunch.deepcheck import FLAG_FIELDS
t.append(time.perf_counter())
p = plan_launch("glm45-355b-a32b-gspo", nodes=8)
t.append(time.perf_counter())
import torch, megatron.core  # noqa
t.append(time.perf_counter())
from glmlaunch.deep.megatron import check_megatron
m = check_megatron(p.plan.argv, p.plan.world_size, FLAG_FIELDS)
t.append(time.perf_counter())
from glmlaunch.deep.sglang import check_sglang
s = check_sglang(p.plan.argv, p.plan.gpus_per_node, None, flag_fields=FLAG_FIELDS)
t.append(time.perf_counter())
names = ["import glmlaunch", "shallow plan + checks", "import torch + megatron-core",
         "megatron-core checks", "SGLang ServerArgs (subprocess)"]
print(json.dumps({"split": dict(zip(names, [b - a for a, b in zip(t, t[1:])])),
                  "findings": [len(m), len(s)]}))
"""
r = subprocess.run(
    [sys.executable, "-c", SPLIT], capture_output=True, text=True, check=False, env={**os.environ}
)
print("\ncheck --deep, one process, seconds:")
try:
    d = json.loads(r.stdout.strip().splitlines()[-1])
    for k, v in d["split"].items():
        print(f"  {k:<32} {v:7.3f}")
    print(
        f"  {'total':<32} {sum(d['split'].values()):7.3f}  (findings: megatron {d['findings'][0]}, sglang {d['findings'][1]})"
    )
except (ValueError, IndexError, KeyError):
    print("  (split failed)", r.stderr[-1500:])
