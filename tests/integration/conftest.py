"""Integration-test fixtures: the fake multi-host cluster of tests/harness.

tests/run.sh brings the cluster up (tests/harness/cluster_up.sh) and tears it down.
The cluster describes itself in $GLT_STATE/env.sh (GLT_STATE defaults to /tmp/glmlaunch-tc).
These tests never import glmlaunch's internals here; they only describe the cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HARNESS = REPO / "tests" / "harness"
DEFAULT_STATE = "/tmp/glmlaunch-tc"


def pytest_collection_modifyitems(config, items):
    # This hook sees every collected item of the session: mark only those under this folder.
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _read_env_sh(path: Path) -> dict[str, str]:
    """Parse the `export K='V'` lines that cluster_up.sh writes."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        parts = shlex.split(line, comments=True)
        if len(parts) == 2 and parts[0] == "export" and "=" in parts[1]:
            key, value = parts[1].split("=", 1)
            env[key] = value
    return env


@dataclass(frozen=True)
class ClusterInfo:
    """The running test cluster: hosts h1..hN, each with sshd and slurmd."""

    state_dir: Path
    hosts: list[str]
    host_ips: dict[str, str]
    ssh_config: Path
    ssh_key: Path
    known_hosts: Path
    slurm_conf: Path
    env: dict[str, str] = field(repr=False)

    def on_host(
        self, i: int, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run CMD inside host h<i> (its net, uts, pid, mount namespaces) as root.

        PIDs seen in there are in-host PIDs: kill them with on_host() as well.
        """
        return subprocess.run(
            [str(HARNESS / "on_host.sh"), str(i), *map(str, cmd)],
            env={**os.environ, "GLT_STATE": str(self.state_dir)},
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def slurm_env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF, for srun/sbatch/submitit in subprocesses."""
        return {**os.environ, "SLURM_CONF": str(self.slurm_conf)}

    def index(self, host: str) -> int:
        """h2 -> 2 (the I of on_host)."""
        return self.hosts.index(host) + 1

    def spawn(self, i: int, *cmd: str) -> int:
        """Start CMD detached inside h<i> (a session of its own, no output kept) and return its
        in-host PID. Kill it with kill() (never from the root ns)."""
        r = self.on_host(i, "sh", "-c", 'setsid "$@" </dev/null >/dev/null 2>&1 & echo $!', "sh", *cmd)
        return int(r.stdout.strip())

    def kill(self, i: int, pid: int, sig: str = "KILL") -> None:
        """Send SIG to the in-host PID of h<i> (no error if it is gone)."""
        self.on_host(i, "kill", f"-{sig}", str(pid), check=False)

    def processes(self, i: int, marker: str | None = None) -> list[dict]:
        """Live processes of h<i> (zombies left out): pid, ppid, sid, state, comm, args, and
        ``marked``: whether ``marker`` occurs in the command line or the environment."""
        r = self.on_host(i, sys.executable, "-c", _PS_SRC, marker or "", timeout=60)
        return json.loads(r.stdout)

    def pid_alive(self, i: int, pid: int) -> bool:
        return any(p["pid"] == pid for p in self.processes(i))

    def listening(self, i: int) -> list[str]:
        """Local addresses (``ip:port``) with a listening TCP socket inside h<i>."""
        out = self.on_host(i, "ss", "-ltnH").stdout
        return [line.split()[3] for line in out.splitlines() if line.strip()]


# Runs inside a test host (its own /proc): every live process, as JSON.
_PS_SRC = r"""
import json, os, sys
marker = sys.argv[1].encode()
out = []
for name in os.listdir("/proc"):
    if not name.isdigit():
        continue
    try:
        with open(f"/proc/{name}/stat") as f:
            data = f.read()
        rest = data[data.rfind(")") + 2:].split()
        comm = data[data.find("(") + 1:data.rfind(")")]
        with open(f"/proc/{name}/cmdline", "rb") as f:
            args = f.read()
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            env = b""
    except OSError:
        continue
    if rest[0] == "Z" or int(name) == os.getpid():
        continue
    out.append({"pid": int(name), "ppid": int(rest[1]), "sid": int(rest[3]), "state": rest[0], "comm": comm,
                "args": args.replace(b"\0", b" ").decode(errors="replace").strip(),
                "marked": bool(marker) and (marker in args or marker in env)})
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def testcluster() -> ClusterInfo:
    state = Path(os.environ.get("GLT_STATE", DEFAULT_STATE))
    env_sh = state / "env.sh"
    if not env_sh.is_file():
        msg = (
            f"test cluster is not up: {env_sh} is missing. "
            "Run tests through tests/run.sh, or: bash tests/harness/cluster_up.sh 3"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {msg}", pytrace=False)
        pytest.skip(msg)
    env = _read_env_sh(env_sh)
    hosts = env["GLT_HOSTS"].split()
    host_ips = dict(pair.split("=", 1) for pair in env["GLT_HOST_IPS"].split())
    return ClusterInfo(
        state_dir=Path(env["GLT_STATE"]),
        hosts=hosts,
        host_ips=host_ips,
        ssh_config=Path(env["GLT_SSH_CONFIG"]),
        ssh_key=Path(env["GLT_SSH_KEY"]),
        known_hosts=Path(env["GLT_KNOWN_HOSTS"]),
        slurm_conf=Path(env["SLURM_CONF"]),
        env=env,
    )
