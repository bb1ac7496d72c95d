#!/usr/bin/env python
"""CLI and check latency, measured side by side in one run (no cluster needed).

Prints, for each command, the median wall time over N runs and its ratio to a bare
`python -c pass` (the floor any Python CLI pays). Targets: `glmlaunch --help` and
`glmlaunch check` within a few times the floor (heavy imports stay lazy); `check --deep`
is allowed to cost megatron-core's import (seconds), and is shown beside the shallow check.

Usage: .venv/bin/python bench/bench_cli.py [N]
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BIN = Path(sys.executable).parent
CASES = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "glmlaunch --help": [str(BIN / "glmlaunch"), "--help"],
    "glmlaunch render 355B (64 GPUs)": [
        str(BIN / "glmlaunch"),
        "render",
        "glm45-355b-a32b-gspo",
        "--nodes",
        "8",
        "--format",
        "json",
    ],
    "glmlaunch check 355B": [str(BIN / "glmlaunch"), "check", "glm45-355b-a32b-gspo", "--nodes", "8"],
    "glmlaunch check 355B --deep": [
        str(BIN / "glmlaunch"),
        "check",
        "glm45-355b-a32b-gspo",
        "--nodes",
        "8",
        "--deep",
    ],
}


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


results = {}
for name, cmd in CASES.items():
    timed(cmd)  # warm the page cache
    runs = N if "deep" not in name else max(1, N // 2)
    results[name] = statistics.median(timed(cmd) for _ in range(runs))
floor = results["python -c pass (floor)"]
print(f"{'command':<36} {'median s':>9} {'x floor':>8}")
for name, t in results.items():
    print(f"{name:<36} {t:9.3f} {t / floor:8.1f}")
print(
    f"deep / shallow check: {results['glmlaunch check 355B --deep'] / results['glmlaunch check 355B']:.1f}x"
)
