"""Shared pieces of the cluster benchmarks (bench_bringup, bench_teardown, bench_failfast,
bench_memory): the test cluster's description, hostfiles, the seed's and the limit's bare
``ray start`` over plain ``ssh``, and a teardown that ends only what one variant started.

Every Ray process a bare variant starts carries ``GLT_BENCH_RUN=<marker>`` in its environment
(inherited from ``ray start``); teardown ends exactly the processes of a host that carry it
(SIGTERM, then SIGKILL after a grace period), read inside the host's namespace through
tests/harness/on_host.sh. glmlaunch's own runs are ended by ``glmlaunch down``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("GLT_STATE", "/tmp/glmlaunch-tc"))


def cluster_env() -> dict[str, str]:
    """The `export K='V'` lines of $GLT_STATE/env.sh (written by tests/harness/cluster_up.sh)."""
    env = {}
    for line in (STATE / "env.sh").read_text().splitlines():
        parts = shlex.split(line, comments=True)
        if len(parts) == 2 and parts[0] == "export" and "=" in parts[1]:
            k, v = parts[1].split("=", 1)
            env[k] = v
    return env


ENV = cluster_env()
# glmlaunch and ray of this interpreter's venv, else of the cluster's ($GLT_VENV: what the hosts run)
BIN = Path(sys.executable).parent
if not (BIN / "glmlaunch").exists():
    BIN = Path(ENV["GLT_VENV"]) / "bin"
GLMLAUNCH = str(BIN / "glmlaunch")
RAY = str(BIN / "ray")
HOSTS = ENV["GLT_HOSTS"].split()
IPS = dict(kv.split("=") for kv in ENV["GLT_HOST_IPS"].split())
SSH_CONFIG = ENV["GLT_SSH_CONFIG"]
HARNESS = REPO / "tests" / "harness"
BENCH_STATE = Path(tempfile.mkdtemp(prefix="glmlaunch-bench-state-"))
# the launcher's environment for glmlaunch (its own current-run pointer, no usage stats)
RUN_ENV = {
    **os.environ,
    **ENV,
    "GLMLAUNCH_STATE_DIR": str(BENCH_STATE),
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONPATH": str(REPO),
}
PORT_BASE = 6379
DASHBOARD = 8265


def index(host: str) -> int:
    """h2 -> 2 (the I of on_host.sh)."""
    return HOSTS.index(host) + 1


def on_host(host: str, *cmd: str, timeout: float = 60, check: bool = True, stdin: str | None = None):
    return subprocess.run(
        [str(HARNESS / "on_host.sh"), str(index(host)), *cmd],
        env={**os.environ, "GLT_STATE": str(STATE)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        input=stdin,
    )


def hostfile(hosts: list[str], d: Path, ports: dict[str, int] | None = None) -> str:
    """An OpenMPI hostfile, ``slots=8`` each (``--num-gpus 8``); ``ports``: host -> ssh_port."""
    p = d / f"hostfile-{len(hosts)}-{secrets.token_hex(3)}"
    p.write_text(
        "".join(
            f"{h} slots=8" + (f" ssh_port={ports[h]}" if ports and h in ports else "") + "\n" for h in hosts
        )
    )
    return str(p)


def ssh_args() -> list[str]:
    return ["ssh", "-F", SSH_CONFIG]


# ----------------------------------------------------------------------------- bare ray start


def ray_ports() -> list[str]:
    """The same pinned ports glmlaunch's plan uses (port_base .. +9, dashboard), for every variant."""
    b = PORT_BASE
    return [
        "--node-manager-port", str(b + 1), "--object-manager-port", str(b + 2),
        "--runtime-env-agent-port", str(b + 3), "--dashboard-agent-grpc-port", str(b + 4),
        "--dashboard-agent-listen-port", str(b + 5), "--metrics-export-port", str(b + 6),
        "--min-worker-port", "10002", "--max-worker-port", "14999",
    ]  # fmt: skip


def ray_start_cmd(host: str, head: str, marker: str, tmp: str) -> str:
    """A bare, non-blocking ``ray start`` for ``host`` (head when ``host == head``), as the seed
    runs it (``--num-gpus 8``, its own temp dir), with the marker in its environment."""
    ip = IPS[host]
    if host == head:
        argv = [RAY, "start", "--head", "--node-ip-address", ip, "--port", str(PORT_BASE)]
        argv += ["--ray-client-server-port", str(PORT_BASE + 7), "--dashboard-host", ip]
        argv += ["--dashboard-port", str(DASHBOARD)]
    else:
        argv = [RAY, "start", "--address", f"{IPS[head]}:{PORT_BASE}", "--node-ip-address", ip]
    argv += [*ray_ports(), "--num-gpus", "8", "--temp-dir", f"{tmp}/{host}", "--disable-usage-stats"]
    env = [
        f"GLT_BENCH_RUN={marker}",
        "RAY_USAGE_STATS_ENABLED=0",
        f"AUTOSCALER_METRIC_PORT={PORT_BASE + 8}",
        f"DASHBOARD_METRIC_PORT={PORT_BASE + 9}",
    ]
    return "env " + " ".join(env) + " " + shlex.join(argv) + " >/dev/null 2>&1"


def gpus_joined(head: str, timeout: float = 2.0) -> float:
    """Total GPUs of ALIVE nodes, from the head's state API (0 while it does not answer)."""
    url = f"http://{IPS[head]}:{DASHBOARD}/api/v0/nodes?limit=1000&detail=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (test-cluster address)
            data = json.loads(r.read().decode())
    except (OSError, ValueError):
        return 0.0
    res = data.get("data", {}).get("result", {})
    nodes = res.get("result", res) if isinstance(res, dict) else res
    return sum(float(n.get("resources_total", {}).get("GPU", 0)) for n in nodes if n.get("state") == "ALIVE")


# ----------------------------------------------------------------------------- teardown

# Runs inside a host: the live processes of every session in which a process's environment or
# argv holds the marker (given reversed in argv, so that this script's own command line never
# matches; each bare `ray start` runs in the session sshd made for its command), then with
# "kill" SIGTERM, up to GRACE s, SIGKILL; prints {"found": [...], "left": [...], "rss_kb": N}.
_MARKED_SRC = r"""
import json, os, signal, sys, time
marker, action, grace = sys.argv[1][::-1].encode(), sys.argv[2], float(sys.argv[3])
sids = set()
def ours():
    out, procs = {}, {}
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            rest = st[st.rfind(")") + 2:].split()
            if rest[0] == "Z":
                continue
            with open(f"/proc/{p}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                args = f.read()
            rss = 0
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
        except OSError:
            continue
        sid = int(rest[3])
        procs[int(p)] = (sid, rss, args.replace(b"\0", b" ").decode(errors="replace")[:120])
        if (marker in env or marker in args) and sid > 1:
            sids.add(sid)  # its session: Ray's agents rewrite argv and environ (setproctitle)
    for p, (sid, rss, a) in procs.items():
        if sid in sids:
            out[p] = (rss, a)
    return out
found = ours()
if action == "kill":
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for p in ours():
            try:
                os.kill(p, sig)
            except OSError:
                pass
        end = time.time() + wait
        while ours() and time.time() < end:
            time.sleep(0.1)
print(json.dumps({"found": sorted(found), "args": [a for _, a in found.values()],
                  "rss_kb": sum(r for r, _ in found.values()), "left": sorted(ours())}))
"""


def marked(host: str, marker: str, action: str = "list", grace: float = 5.0) -> dict:
    """The processes of ``host`` that carry ``marker`` (``action="kill"``: end them)."""
    r = on_host(host, "python3", "-c", _MARKED_SRC, marker[::-1], action, str(grace), timeout=grace + 60)
    return json.loads(r.stdout)


def end_marked(hosts: list[str], marker: str, tmp: str | None = None) -> None:
    """End every process carrying ``marker`` on ``hosts`` (in parallel) and remove ``tmp``.
    Raises RuntimeError if any survives."""
    with ThreadPoolExecutor(len(hosts)) as ex:
        res = dict(zip(hosts, ex.map(lambda h: marked(h, marker, "kill"), hosts), strict=True))
    if tmp:
        with ThreadPoolExecutor(len(hosts)) as ex:
            list(ex.map(lambda h: on_host(h, "rm", "-rf", "--", tmp, check=False), hosts))
    left = {h: r["left"] for h, r in res.items() if r["left"]}
    if left:
        raise RuntimeError(f"processes survived the teardown: {left}")


def new_marker() -> str:
    return "glt-bench-" + secrets.token_hex(6)


# ----------------------------------------------------------------------------- glmlaunch runs


def only_run(runs: Path) -> Path:
    dirs = [p for p in runs.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def glmlaunch(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [GLMLAUNCH, *args], env=RUN_ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and r.returncode != 0:
        raise RuntimeError(
            f"glmlaunch {' '.join(args)}: exit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
        )
    return r


def glmlaunch_down(run_dir: Path, hosts: list[str]) -> None:
    """``glmlaunch down --purge`` of a run, then check that nothing of it is left on ``hosts``
    (its processes carry its state directory in their environment)."""
    glmlaunch("down", "--run", str(run_dir), "--purge")
    state_dir = json.loads((run_dir / "manifest.json").read_text())["state_dir"]
    for h in hosts:
        left = marked(h, state_dir)["found"]
        if left:
            raise RuntimeError(f"{h}: processes of {run_dir.name} survived glmlaunch down: {left}")


def wait_ports_free(hosts: list[str], timeout: float = 30.0) -> None:
    """Wait until no socket listens on Ray's pinned ports on ``hosts`` (the next variant binds them)."""
    ports = {str(p) for p in [*range(PORT_BASE, PORT_BASE + 10), DASHBOARD]}
    end = time.monotonic() + timeout
    for h in hosts:
        while True:
            out = on_host(h, "ss", "-ltnH").stdout
            busy = [ln.split()[3] for ln in out.splitlines() if ln.split()[3].rsplit(":", 1)[-1] in ports]
            if not busy:
                break
            if time.monotonic() > end:
                raise RuntimeError(f"{h}: Ray ports still in use: {busy}")
            time.sleep(0.2)


def ps(host: str) -> str:
    """``ps -eo pid,args`` inside ``host`` (what is left running there)."""
    return on_host(host, "ps", "-eo", "pid,args").stdout
