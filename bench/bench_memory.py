#!/usr/bin/env python
"""Memory: the launcher's own peak RSS during `glmlaunch launch local-probe` on the cluster's
hosts, and what each Ray node costs.

- launcher: `glmlaunch launch local-probe --hostfile F --keep` as a child process; its peak RSS
  (VmHWM) sampled from /proc/<pid>/status every 0.1 s, and ru_maxrss from os.wait4 (the largest
  of it and the children it waited for);
- per node: while the kept cluster is up (the probe ran on it), the sum of VmRSS of every
  process of the run on each host (its processes carry the run's state directory in their
  environment; read inside the host's namespace through tests/harness/on_host.sh); then
  `glmlaunch down --purge` and a check that nothing of the run is left.

Usage (as root, under the integration lock):
  flock /tmp/glt-it.lock /work/main/.venv/bin/python bench/bench_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import _hosts as H

work = Path(tempfile.mkdtemp(prefix="glmlaunch-bench-memory-"))
runs = work / "runs"
runs.mkdir()
hf = H.hostfile(H.HOSTS, work)
cmd = [H.GLMLAUNCH, "launch", "local-probe", "--hostfile", hf, "--ssh-config", H.SSH_CONFIG]
cmd += ["--runs-dir", str(runs), "--keep"]
p = subprocess.Popen(cmd, env=H.RUN_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
hwm, ru = 0, None
while p.poll() is None:
    try:
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = max(hwm, int(line.split()[1]))
    except OSError:
        pass
    try:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    except ChildProcessError:
        break
    if pid:
        p.returncode = os.waitstatus_to_exitcode(status)
        break
    time.sleep(0.1)
try:
    rd = H.only_run(runs)
    m = json.loads((rd / "manifest.json").read_text())
    print(f"launch exit {p.returncode}; {len(H.HOSTS)} hosts, run {rd.name}")
    maxrss = f"{ru.ru_maxrss / 1024:.0f} MiB" if ru else "n/a"
    print(f"launcher peak RSS: VmHWM {hwm / 1024:.0f} MiB, ru_maxrss {maxrss}")
    print(f"{'host':<6} {'role':<7} {'processes':>9} {'RSS MiB':>8}")
    for h in H.HOSTS:
        r = H.marked(h, m["state_dir"])
        role = m["nodes"].get(h, {}).get("role", "?")
        print(f"{h:<6} {role:<7} {len(r['found']):9d} {r['rss_kb'] / 1024:8.0f}")
finally:
    if any(runs.iterdir()):
        H.glmlaunch_down(H.only_run(runs), H.HOSTS)
    print("down: nothing of the run left on", ", ".join(H.HOSTS))
