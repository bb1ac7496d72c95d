#!/usr/bin/env python
"""SSH fan-out: glmlaunch's parallel Fabric round vs the seed script's loops, side by side.

On the test hosts (tests/harness/cluster_up.sh N must be up), runs the same small command on
every host three ways and prints the median wall time of each and the ratios:
  seed-serial  : `for h in hosts; do ssh h CMD; done`           (OpenSSH CLI, one after another)
  seed-bg-wait : `for h in hosts; do ssh h CMD & done; wait`    (the seed's loop; exit codes lost)
  glmlaunch    : SSHTransport.run_many (Fabric, parallel, per-host results, timeouts)
  glmlaunch-reuse: the same on already-open connections (what later steps of a launch pay)
Only the glmlaunch rows know which host failed; the timing shows what that costs.

Usage: . /tmp/glmlaunch-tc/env.sh; .venv/bin/python bench/bench_fanout.py [repeats]
"""

import os
import statistics
import subprocess
import sys
import time

from glmlaunch.transport import Target
from glmlaunch.transport.ssh import SSHTransport

R = int(sys.argv[1]) if len(sys.argv) > 1 else 5
hosts = os.environ["GLT_HOSTS"].split()
cfg = os.environ["GLT_SSH_CONFIG"]
CMD = "hostname"


def serial():
    for h in hosts:
        subprocess.run(["ssh", "-F", cfg, h, CMD], stdout=subprocess.DEVNULL, check=True)


def bg_wait():
    subprocess.run(
        " ".join(f"ssh -F {cfg} {h} {CMD} >/dev/null &" for h in hosts) + " wait", shell=True, check=True
    )


def fabric_fresh():
    t = SSHTransport(ssh_config=cfg)
    res = t.run_many({Target(h, h): CMD for h in hosts})
    assert all(r.ok for r in res.values()), res
    t.close()


reuse_t = SSHTransport(ssh_config=cfg)
reuse_t.run_many({Target(h, h): CMD for h in hosts})


def fabric_reuse():
    res = reuse_t.run_many({Target(h, h): CMD for h in hosts})
    assert all(r.ok for r in res.values())


def med(fn):
    fn()
    ts = []
    for _ in range(R):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


rows = {
    "seed-serial": med(serial),
    "seed-bg-wait": med(bg_wait),
    "glmlaunch": med(fabric_fresh),
    "glmlaunch-reuse": med(fabric_reuse),
}
reuse_t.close()
print(f"{len(hosts)} hosts, command {CMD!r}, median of {R}")
for k, v in rows.items():
    print(
        f"{k:<16} {v:7.3f} s   {v / rows['seed-bg-wait']:5.2f}x seed-bg-wait   {v / rows['seed-serial']:5.2f}x seed-serial"
    )
