"""The per-node preflight on the real test hosts: failures made real on one host (a missing file,
a Ray version mismatch, a busy port, a --save that is not shared) are found before any
`ray start`, named by host, and nothing is started."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glmlaunch import checks
from glmlaunch.cluster import RayCluster
from glmlaunch.errors import CheckFailed
from glmlaunch.hosts import read_hostfile
from glmlaunch.options import SSHOptions
from glmlaunch.plan import PortPlan, build_plan
from glmlaunch.recipe import load_recipe
from glmlaunch.resolve import resolve
from glmlaunch.run import make_transport

ON_HOST = Path(__file__).resolve().parents[1] / "harness" / "on_host.sh"
PORTS = PortPlan(base=8379, dashboard=9365)  # away from the other integration tests' clusters


@pytest.fixture
def hostfile(tmp_path, testcluster):
    p = tmp_path / "hosts"
    p.write_text("".join(f"{h} slots=8\n" for h in testcluster.hosts))
    return p


def _cluster(testcluster, hostfile, overrides):
    recipe = load_recipe("local-probe", overrides)
    alloc = read_hostfile(hostfile)
    plan = build_plan(recipe, alloc, ports=PORTS, python=sys.executable)
    found = checks.run(resolve(recipe, alloc), plan)
    assert not found.errors, found.errors
    ssh = SSHOptions(
        ssh_config=str(testcluster.ssh_config),
        key=str(testcluster.ssh_key),
        known_hosts=str(testcluster.known_hosts),
        connect_timeout=5,
    )
    return RayCluster(plan, make_transport(alloc, ssh), recipe=recipe)


def _no_ray_started(testcluster):
    for i in range(1, len(testcluster.hosts) + 1):
        ps = testcluster.on_host(i, "ps", "-eo", "cmd").stdout
        assert "--port 8379" not in ps and "gcs_server" not in ps.replace("--gcs_server_port=7379", ""), ps


def test_missing_file_on_one_host(testcluster, hostfile):
    # /tmp/ray is private to each test host: the file exists on h1 and h2 only
    path = "/tmp/ray/glmlaunch-preflight-marker"
    for i in (1, 2):
        testcluster.on_host(i, "sh", "-c", f"mkdir -p /tmp/ray && echo x > {path}")
    testcluster.on_host(3, "rm", "-f", path)
    c = _cluster(testcluster, hostfile, [f'trainer.probe_paths=["{path}"]'])
    with pytest.raises(CheckFailed) as ei:
        c.preflight()
    msgs = [str(f) for f in ei.value.findings if f.severity == "error"]
    assert any("h3" in m and path in m and "missing" in m for m in msgs), msgs
    assert not any("h1:" in m or "h2:" in m for m in msgs), msgs
    assert not c.started


def test_ray_version_mismatch_on_one_host(testcluster, hostfile, tmp_path):
    # a dist-info that says ray 2.0.0, first on PYTHONPATH on h2 only
    fake = tmp_path / "fakeray"
    (fake / "ray-2.0.0.dist-info").mkdir(parents=True)
    (fake / "ray-2.0.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ray\nVersion: 2.0.0\n"
    )
    setup = f'[ "$(hostname)" != h2 ] || export PYTHONPATH={fake}'
    c = _cluster(testcluster, hostfile, [f"cluster.setup=['{setup}']"])
    with pytest.raises(CheckFailed) as ei:
        c.preflight()
    msgs = [str(f) for f in ei.value.findings if f.severity == "error"]
    assert any("Ray versions differ" in m and "h2=2.0.0" in m for m in msgs), msgs
    assert not c.started


def test_busy_port_on_one_host(testcluster, hostfile):
    listener = textwrap.dedent("""
        import socket, time
        s = socket.socket(); s.bind(("10.79.0.12", 8380)); s.listen(); print("listening", flush=True)
        time.sleep(120)
    """)
    p = subprocess.Popen(
        [str(ON_HOST), "2", sys.executable, "-c", listener], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().startswith("listening")
        c = _cluster(testcluster, hostfile, [])
        with pytest.raises(CheckFailed) as ei:
            c.preflight()
        msgs = [str(f) for f in ei.value.findings if f.severity == "error"]
        assert any("h2: 1 planned port(s) in use: 8380 in use" in m and "--port-base" in m for m in msgs), (
            msgs
        )
        assert not any("h1: port" in m or "h3: port" in m for m in msgs), msgs
        assert p.poll() is None  # the listener is not ours to kill: untouched
        _no_ray_started(testcluster)
    finally:
        p.kill()
        p.wait()


def test_save_dir_not_shared(testcluster, hostfile):
    # a miles recipe whose --save lives in the per-host private /tmp/ray: written fine on each
    # host, but the head cannot see the others' sentinels
    recipe = load_recipe(
        "glm45-355b-a32b-gspo", ["cluster.nodes=3", "run.base_dir=/tmp/ray/glm", "cluster.hardware=cpu"]
    )
    alloc = read_hostfile(hostfile)
    plan = build_plan(recipe, alloc, ports=PORTS, python=sys.executable)
    ssh = SSHOptions(
        ssh_config=str(testcluster.ssh_config),
        key=str(testcluster.ssh_key),
        known_hosts=str(testcluster.known_hosts),
        connect_timeout=5,
    )
    c = RayCluster(plan, make_transport(alloc, ssh), recipe=recipe)
    with pytest.raises(CheckFailed) as ei:
        c.preflight()
    msgs = [str(f) for f in ei.value.findings if f.severity == "error"]
    assert any("is not shared" in m and "h2" in m for m in msgs), msgs
    assert any("config.json is missing" in m for m in msgs), msgs  # the model files are checked on every node
    assert not c.started


FAKE_SMI = """#!/bin/sh
# nvidia-smi of an NVLink machine, for `topo -m` only (anything else prints nothing)
[ "$1" = topo ] || exit 0
printf '\\tGPU0\\tGPU1\\tCPU Affinity\\nGPU0\\t X \\tNV18\\t0-55\\nGPU1\\tNV18\\t X \\t0-55\\n\\nLegend:\\n  NV#  = Connection traversing a bonded set of # NVLinks\\n'
"""


@pytest.mark.parametrize("with_nvlink", [(1, 2, 3), (1, 2)], ids=["all", "not-h3"])
def test_nvlink_probe_decides_nvls_on_the_real_hosts(testcluster, hostfile, with_nvlink):
    # an nvidia-smi that shows NVLink, in a directory private to each host (/tmp/ray), on PATH
    # through cluster.setup; a host without it has no nvidia-smi at all (docs/fidelity.md#probed-env)
    bindir = "/tmp/ray/glt-nvlink-bin"
    for i in range(1, len(testcluster.hosts) + 1):
        testcluster.on_host(i, "rm", "-rf", bindir)
    for i in with_nvlink:
        write = 'mkdir -p "$1" && printf "%s" "$2" > "$1/nvidia-smi" && chmod 755 "$1/nvidia-smi"'
        testcluster.on_host(i, "sh", "-c", write, "sh", bindir, FAKE_SMI)
    try:
        recipe = load_recipe(
            "glm45-355b-a32b-grpo",
            [
                "cluster.nodes=3",
                "cluster.hardware=cpu",
                "run.base_dir=/tmp/ray/glm",
                "checkpoint.save=",
                f'cluster.setup=["export PATH={bindir}:$PATH"]',
            ],
        )
        alloc = read_hostfile(hostfile)
        plan = build_plan(recipe, alloc, ports=PORTS, python=sys.executable)
        assert plan.probed_env == {"NCCL_NVLS_ENABLE": "nvlink"} and plan.env_vars["NCCL_NVLS_ENABLE"] == "0"
        ssh = SSHOptions(
            ssh_config=str(testcluster.ssh_config),
            key=str(testcluster.ssh_key),
            known_hosts=str(testcluster.known_hosts),
            connect_timeout=5,
        )
        c = RayCluster(plan, make_transport(alloc, ssh), recipe=recipe)
        findings = c.inspect()  # the model files are missing here: errors, but the probe is answered
        everywhere = len(with_nvlink) == len(testcluster.hosts)
        assert plan.probed and plan.env_vars["NCCL_NVLS_ENABLE"] == ("1" if everywhere else "0")
        mixed = [str(f) for f in findings if f.field == "env.vars.NCCL_NVLS_ENABLE"]
        if everywhere:
            assert not mixed
        else:
            assert len(mixed) == 1 and "h3" in mixed[0] and "h1" not in mixed[0], mixed
            assert any("h3: no nvidia-smi" in n for n in plan.notes), plan.notes
        assert not c.started
    finally:
        for i in range(1, len(testcluster.hosts) + 1):
            testcluster.on_host(i, "rm", "-rf", bindir)
