"""Integration-test fixtures: the fake multi-host cluster of tests/harness.

tests/run.sh brings the cluster up (tests/harness/cluster_up.sh) and tears it down.
The cluster describes itself in $GLT_STATE/env.sh (GLT_STATE defaults to /tmp/glmlaunch-tc).
These tests never import glmlaunch's internals here; they only describe the cluster.
"""

from __future__ import annotations

import os
import shlex
import subprocess
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
