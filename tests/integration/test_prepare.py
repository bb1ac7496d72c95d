"""``glmlaunch prepare`` on the test hosts h1..h3 over SSH: real torchrun rendezvous over the
test network (10.79.0.x, gloo) with the stand-in converter (tests/unit/fake_converter.py) under
a fake miles_dir on the shared filesystem (the checkout and /tmp are shared by every host;
/tmp/ray is private to each host, tests/harness/common.sh).

Cases: a conversion that verifies, the node-local copies into each host's private /tmp/ray, and
a rerun that skips everything; a converter killed on one node (named, nothing marked done); the
shared-filesystem check failing for a base_dir under the per-host private /tmp/ray.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest

from glmlaunch.errors import PrepareError
from glmlaunch.models import MODELS
from glmlaunch.options import SSHOptions
from glmlaunch.prep import prepare
from glmlaunch.prep.verify import STAMP, TRACKER

UNIT = Path(__file__).resolve().parents[1] / "unit"
ARGS = list(MODELS["glm4.5-106B-A12B"].args)
PORT = 29517


@pytest.fixture(scope="module", autouse=True)
def _isolated_state(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLMLAUNCH_STATE_DIR", str(tmp_path_factory.mktemp("glmlaunch-state")))
        yield


def _ssh(tc) -> SSHOptions:
    return SSHOptions(ssh_config=str(tc.ssh_config), key=str(tc.ssh_key), known_hosts=str(tc.known_hosts))


@pytest.fixture
def setup(tmp_path, testcluster):
    tc = testcluster
    miles = tmp_path / "miles"
    (miles / "tools").mkdir(parents=True)
    shutil.copy(UNIT / "fake_converter.py", miles / "tools" / "convert_hf_to_torch_dist.py")
    base = tmp_path / "base"
    (base / "GLM-4.5-Air").mkdir(parents=True)
    (base / "GLM-4.5-Air" / "config.json").write_text("{}")
    expect = {"world_size": 6, "nnodes": 3, "model_args": ARGS, "hf_checkpoint": str(base / "GLM-4.5-Air")}
    (miles / "tools" / "expect.json").write_text(json.dumps(expect))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{h} slots=2\n" for h in tc.hosts))
    private = f"/tmp/ray/glt-prepare-{secrets.token_hex(4)}"
    over = [
        f"run.base_dir={base}",
        f"trainer.miles_dir={miles}",
        "cluster.actor_nodes=3",
        "cluster.nodes=3",
        f"checkpoint.model_local_dir={private}/local",
    ]
    yield tc, tmp_path, base, miles, over, expect, str(hostfile), private
    for i in range(1, len(tc.hosts) + 1):  # what this test made in each host's private /tmp/ray
        tc.on_host(i, "rm", "-rf", private, check=False)


def run(tc, tmp_path, hostfile, over, steps):
    return prepare(
        "glm45-air-p2p", hostfile, overrides=over, steps=steps, ssh=_ssh(tc),
        runs_dir=str(tmp_path / "runs"), convert_port=PORT, convert_timeout_s=400, copy_timeout_s=120,
    )  # fmt: skip


STEPS = "shared-fs,convert,verify-convert,local-copy"


def _plan_nodes(res):
    from glmlaunch.plan import LaunchPlan

    log = next(Path(res.run_dir).glob("hosts/*/convert-command.log")).read_text()
    assert "torch.distributed.run" in log
    return LaunchPlan.model_validate_json(Path(res.run_dir, "plan.json").read_text()).nodes


def test_convert_on_three_hosts_copy_and_skip_on_rerun(setup):
    tc, tmp_path, base, _miles, over, _e, hostfile, private = setup
    res = run(tc, tmp_path, hostfile, over, STEPS)
    assert [s.state for s in res.steps] == ["done", "done", "done", "done"], res
    assert [n.node for n in res.step("convert").nodes] == tc.hosts
    out = base / "GLM-4.5-Air_torch_dist"
    assert (out / TRACKER).read_text() == "release" and (out / STAMP).is_file()
    logs = {h: (Path(res.run_dir) / "hosts" / h / "convert.log").read_text() for h in tc.hosts}
    for i, h in enumerate(tc.hosts):  # node rank i ran ranks 2i, 2i+1 of the 6
        assert f"converter rank {2 * i}/6 on node {i}" in logs[h]
    for i in range(1, len(tc.hosts) + 1):  # each host's private copy
        r = tc.on_host(i, "cat", f"{private}/local/GLM-4.5-Air_torch_dist/{TRACKER}")
        assert r.stdout == "release"
        r = tc.on_host(i, "cat", f"{private}/local/GLM-4.5-Air/config.json")
        assert r.stdout == "{}"
    convert_dirs = {n.state_dir + "-convert" for n in _plan_nodes(res)}
    for i in range(1, len(tc.hosts) + 1):  # each node's conversion directory is gone
        assert tc.on_host(i, "ls", *convert_dirs, check=False).returncode != 0
    again = run(tc, tmp_path, hostfile, over, STEPS)
    assert [s.state for s in again.steps] == ["done", "skipped", "skipped", "skipped"]
    assert {n.detail for n in again.step("local-copy").nodes} == {"already current"}


def test_a_converter_killed_on_one_node_is_named_and_nothing_is_done(setup):
    tc, tmp_path, base, miles, over, expect, hostfile, _p = setup
    (miles / "tools" / "expect.json").write_text(json.dumps(expect | {"kill_on_node": 1}))
    with pytest.raises(PrepareError) as e:
        run(tc, tmp_path, hostfile, over, "convert,verify-convert")
    msg = str(e.value)
    assert f"the conversion failed on 1 of 3 node(s): {tc.hosts[1]}" in msg, msg
    assert "node 1 is killed (SIGKILL)" in msg
    states = {n.node: n.state for n in e.value.result.step("convert").nodes}
    assert states[tc.hosts[1]] == "failed"
    assert [s.state for s in e.value.result.steps] == ["failed", "not run"]
    assert not (base / "GLM-4.5-Air_torch_dist").exists()
    for i in range(1, len(tc.hosts) + 1):  # the other nodes' torchrun sessions were stopped
        assert not [p for p in tc.processes(i) if "convert_hf_to_torch_dist" in p["args"]]


def test_shared_fs_check_fails_on_a_per_host_private_directory(setup):
    tc, tmp_path, _base, _m, over, _e, hostfile, private = setup
    with pytest.raises(PrepareError) as e:
        run(tc, tmp_path, hostfile, over + [f"run.base_dir={private}/base"], "shared-fs")
    msg = str(e.value)
    assert f"run.base_dir = {private}/base is not one shared filesystem" in msg
    for h in tc.hosts[1:]:
        assert (
            f"{h}: run.base_dir = {private}/base is not shared: {h} does not see what {tc.hosts[0]} wrote"
            in msg
        )
    assert "this machine" in msg
    assert {n.node: n.state for n in e.value.result.step("shared-fs").nodes} == {
        tc.hosts[0]: "done", tc.hosts[1]: "failed", tc.hosts[2]: "failed",
    }  # fmt: skip


def test_node_local_copy_refused_on_a_full_disk_of_one_host(setup):
    """h2's model_local_dir is a 4 KiB tmpfs, mounted inside h2's own mount namespace (on a
    directory this test made in h2's private /tmp/ray) and unmounted at the end."""
    tc, tmp_path, _base, _m, over, _e, hostfile, private = setup
    local = f"{private}/local"
    tc.on_host(2, "mkdir", "-p", local)
    tc.on_host(2, "mount", "-t", "tmpfs", "-o", "size=4k", "glt-prepare", local)
    try:
        with pytest.raises(PrepareError) as e:
            run(tc, tmp_path, hostfile, over, "convert,local-copy")
        msg = str(e.value)
        assert f"node-local copies to {local} failed on {tc.hosts[1]}:" in msg, msg
        assert f"not enough space in {local}" in msg
        assert [s.state for s in e.value.result.steps] == ["done", "done", "failed"]
        for i in (1, 3):  # the other hosts have their copies
            r = tc.on_host(i, "cat", f"{local}/GLM-4.5-Air_torch_dist/{TRACKER}")
            assert r.stdout == "release"
        assert tc.on_host(2, "ls", "-A", local).stdout == ""  # nothing half-copied on the full one
    finally:
        tc.on_host(2, "umount", local, check=False)
