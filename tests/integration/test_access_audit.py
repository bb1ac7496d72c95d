"""Access audit: what a machine on the cluster network that is not part of the cluster can reach
of a cluster glmlaunch started with its defaults (issue "Security and bad input").

The outsider is a network namespace of its own (``glt-outsider``, 10.79.0.99) plugged into the
test cluster's bridge: it reaches every port of h1..h3, as another machine on the same rack
network would. The cluster is the 3-host probe cluster (``up`` over SSH, default ports). The
head h1 gets a second address (10.80.0.11 on its loopback interface, "outside the cluster network")
that the outsider can route to, for the dashboard's binding. Everything created here is removed.

- the job API (the dashboard's HTTP port) answers 401/403 to requests without the run's token or
  with a wrong one, and 200 with it;
- the GCS refuses ``ray status`` without the token, and answers it with the token (so the
  refusal is the token's doing, not the network's);
- the dashboard does not answer on the head's address outside the cluster network, while the
  GCS port, which Ray binds on every interface (README, Security), does: the route works.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glmlaunch.options import SSHOptions
from glmlaunch.run import up

NETNS = "glt-outsider"
VETH = "veth-glto"  # root side (at most 15 characters)
OUTSIDER_IP = "10.79.0.99"
OUTSIDE_NET_HEAD = "10.80.0.11"  # h1's address outside the cluster network (dummy interface)
VENV_BIN = Path(sys.executable).parent


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture(scope="module")
def outsider(testcluster):
    """Run commands in a namespace on the cluster bridge that is not a cluster host."""
    bridge = testcluster.env.get("GLT_BRIDGE", "glbr0")
    _ip("netns", "del", NETNS, check=False)
    _ip("link", "del", VETH, check=False)
    _ip("netns", "add", NETNS)
    try:
        _ip("link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
        _ip("link", "set", VETH, "master", bridge, "up")
        for cmd in (
            ("addr", "add", f"{OUTSIDER_IP}/24", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "lo", "up"),
            # the head's outside address is reached through the head itself
            ("route", "add", f"{OUTSIDE_NET_HEAD}/32", "via", testcluster.host_ips["h1"]),
        ):
            _ip("-n", NETNS, *cmd)

        def run(*cmd: str, timeout: float = 90, env: dict | None = None) -> subprocess.CompletedProcess:
            base = ["ip", "netns", "exec", NETNS, "env", "-i", f"PATH={VENV_BIN}:/usr/bin:/bin", "HOME=/root"]
            extra = [f"{k}={v}" for k, v in (env or {}).items()]
            return subprocess.run(
                [*base, *extra, "timeout", str(int(timeout)), *cmd],
                capture_output=True,
                text=True,
                timeout=timeout + 30,
            )

        yield run
    finally:
        pids = _ip("netns", "pids", NETNS, check=False).stdout.split()
        assert not pids, f"processes left in {NETNS}: {pids}"  # each run() waited for its command
        _ip("netns", "del", NETNS, check=False)
        _ip("link", "del", VETH, check=False)


@pytest.fixture(scope="module")
def cluster(testcluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("audit")
    hostfile = d / "hostfile"
    hostfile.write_text("".join(f"{h} slots=8\n" for h in testcluster.hosts))
    ssh = SSHOptions(
        ssh_config=str(testcluster.ssh_config),
        key=str(testcluster.ssh_key),
        known_hosts=str(testcluster.known_hosts),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLMLAUNCH_STATE_DIR", str(d / "state"))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        c = up("local-probe", str(hostfile), ssh=ssh, runs_dir=str(d / "runs"), join_timeout_s=120)
        try:
            yield c
        finally:
            c.down()


@pytest.fixture
def outside_address(testcluster):
    """h1 gets OUTSIDE_NET_HEAD (on its loopback interface: no dummy module needed) for the test,
    removed afterwards."""
    testcluster.on_host(1, "ip", "addr", "add", f"{OUTSIDE_NET_HEAD}/32", "dev", "lo")
    try:
        yield OUTSIDE_NET_HEAD
    finally:
        testcluster.on_host(1, "ip", "addr", "del", f"{OUTSIDE_NET_HEAD}/32", "dev", "lo", check=False)


_HTTP = r"""
import json, sys, urllib.error, urllib.request
url, token = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.dumps({"status": r.status}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code}))
"""

_CONNECT = r"""
import json, socket, sys
s = socket.socket()
s.settimeout(5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print(json.dumps({"connected": True}))
except OSError as e:
    print(json.dumps({"connected": False, "error": type(e).__name__}))
"""


def _http(outsider, url: str, token: str = "") -> int:
    r = outsider("python3", "-c", _HTTP, url, token, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["status"]


def _connect(outsider, host: str, port: int) -> dict:
    r = outsider("python3", "-c", _CONNECT, host, str(port), timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_job_api_refuses_the_outsider_without_the_token(outsider, cluster):
    api = cluster.plan.dashboard_url
    for path in ("/api/version", "/api/jobs/", f"/api/jobs/{cluster.plan.submission_id}/logs"):
        assert _http(outsider, api + path) in (401, 403), path
        assert _http(outsider, api + path, "0" * 64) in (401, 403), path
    assert _http(outsider, api + "/api/version", cluster.token) == 200


def test_the_gcs_refuses_ray_status_without_the_token(outsider, cluster):
    gcs = f"{cluster.plan.head_address}:{cluster.plan.ports.gcs}"
    t0 = time.monotonic()
    refused = outsider("ray", "status", "--address", gcs, timeout=60)
    assert refused.returncode != 0, refused.stdout
    text = (refused.stdout + refused.stderr).lower()
    assert "auth" in text or "token" in text, text[-2000:]
    assert time.monotonic() - t0 < 60  # refused, not left waiting until the timeout
    wrong = outsider(
        "ray", "status", "--address", gcs, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    )
    assert wrong.returncode != 0, wrong.stdout
    allowed = outsider(
        "ray", "status", "--address", gcs, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}
    )
    assert allowed.returncode == 0 and "GPU" in allowed.stdout, allowed.stderr[-2000:]


def test_the_dashboard_does_not_answer_outside_the_cluster_network(outsider, cluster, outside_address):
    port = cluster.plan.ports.dashboard
    assert _connect(outsider, cluster.plan.head_address, port)["connected"] is True
    outside = _connect(outsider, outside_address, port)
    assert outside == {"connected": False, "error": "ConnectionRefusedError"}, outside
    # the route to the outside address works: the GCS, bound on every interface, answers there
    assert _connect(outsider, outside_address, cluster.plan.ports.gcs)["connected"] is True
