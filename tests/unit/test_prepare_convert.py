"""The conversion step with real torchrun on this machine (gloo, 2 processes on 127.0.0.1):
a stand-in tools/convert_hf_to_torch_dist.py under a fake miles_dir (tests/unit/fake_converter.py)
checks its world size, ranks and model args and writes a real tiny torch_dist checkpoint; the
output is verified and renamed, a rerun skips, a converter that dies is named with its last
lines and leaves nothing marked done, and an output one layer short is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from glmlaunch.errors import PrepareError, UsageError
from glmlaunch.models import MODELS
from glmlaunch.prep import prepare
from glmlaunch.prep.convert import converter_argv
from glmlaunch.prep.verify import STAMP, TRACKER
from glmlaunch.run import plan_launch

pytest.importorskip("torch")
HERE = Path(__file__).resolve().parent
ARGS = list(MODELS["glm4.5-355B-A32B"].args)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("GLMLAUNCH_STATE_DIR", str(tmp_path / "state"))
    miles = tmp_path / "miles"
    (miles / "tools").mkdir(parents=True)
    shutil.copy(HERE / "fake_converter.py", miles / "tools" / "convert_hf_to_torch_dist.py")
    base = tmp_path / "base"
    (base / "GLM-4.5-355B-A32B").mkdir(parents=True)
    (base / "GLM-4.5-355B-A32B" / "config.json").write_text("{}")
    expect = {
        "world_size": 2,
        "nnodes": 1,
        "model_args": ARGS,
        "hf_checkpoint": str(base / "GLM-4.5-355B-A32B"),
    }
    (miles / "tools" / "expect.json").write_text(json.dumps(expect))
    over = [f"run.base_dir={base}", f"trainer.miles_dir={miles}"]
    return tmp_path, base, miles, over, expect


def run(over, tmp_path, steps="shared-fs,convert,verify-convert", **kw):
    return prepare(
        "glm45-355b-a32b-gspo", local=True, gpus_per_node=2, overrides=over, steps=steps,
        runs_dir=str(tmp_path / "runs"), convert_port=29511, convert_timeout_s=300, **kw,
    )  # fmt: skip


def test_converter_argv_is_mileses():
    p = plan_launch("glm45-355b-a32b-gspo", nodes=8, overrides=["run.base_dir=/d"])
    argv = converter_argv(p.resolved, p.plan, 3, "/d/GLM-4.5-355B-A32B", "/d/x.partial")
    i = argv.index("/root/miles/tools/convert_hf_to_torch_dist.py")
    assert argv[1:i] == [
        "-m", "torch.distributed.run", "--nnodes", "8", "--node-rank", "3",
        "--master-addr", p.plan.head_address, "--master-port", "23456", "--nproc-per-node", "8",
    ]  # fmt: skip
    assert argv[i + 1 : i + 1 + len(ARGS)] == ARGS  # the model's own args (miles' shell_safe_model_args)
    assert argv[i + 1 + len(ARGS) :] == ["--hf-checkpoint", "/d/GLM-4.5-355B-A32B", "--save", "/d/x.partial"]


def test_unknown_step_is_usage_error(setup):
    tmp_path, _b, _m, over, _e = setup
    with pytest.raises(UsageError, match="unknown step"):
        run(over, tmp_path, steps="convert,bake")


def test_local_copy_needs_a_verified_conversion(setup):
    tmp_path, base, _m, over, _e = setup
    over = over + [f"checkpoint.model_local_dir={tmp_path / 'local'}"]
    with pytest.raises(PrepareError, match="is not a verified torch_dist checkpoint"):
        run(over, tmp_path, steps="local-copy")
    assert not (tmp_path / "local").exists()


def test_convert_verify_rename_copy_then_skip(setup):
    tmp_path, base, _m, over, _e = setup
    over = over + [f"checkpoint.model_local_dir={tmp_path / 'local'}"]
    steps = "shared-fs,convert,verify-convert,local-copy"
    res = run(over, tmp_path, steps)
    assert res.ok and [s.state for s in res.steps] == ["done", "done", "done", "done"]
    local = tmp_path / "local" / "GLM-4.5-355B-A32B_torch_dist"
    assert (local / TRACKER).read_text() == "release" and (local / "release" / ".metadata").is_file()
    out = base / "GLM-4.5-355B-A32B_torch_dist"
    assert (out / TRACKER).read_text() == "release" and (out / STAMP).is_file()
    assert not (base / "GLM-4.5-355B-A32B_torch_dist.partial").exists()
    log = next(Path(res.run_dir).glob("hosts/*/convert.log")).read_text()
    assert "converter rank 0/2 on node 0" in log
    plan = json.loads((Path(res.run_dir) / "plan.json").read_text())
    assert not Path(plan["state_dir"]).exists()  # the node's conversion directory (and its parent) went
    again = run(over, tmp_path, steps)
    assert [s.state for s in again.steps] == ["done", "skipped", "skipped", "skipped"]
    assert again.step("local-copy").nodes[0].detail == "already current"


def test_a_dying_converter_is_named_and_nothing_is_marked_done(setup):
    tmp_path, base, miles, over, expect = setup
    (miles / "tools" / "expect.json").write_text(json.dumps(expect | {"die_on_node": 0}))
    with pytest.raises(PrepareError) as e:
        run(over, tmp_path)
    msg = str(e.value)
    assert "the conversion failed on 1 of 1 node(s)" in msg and "torchrun exited with status 1" in msg
    assert "node 0 dies on purpose" in msg  # the node's last lines
    assert [s.state for s in e.value.result.steps] == ["done", "failed", "not run"]
    assert not (base / "GLM-4.5-355B-A32B_torch_dist").exists()


def test_one_layer_short_is_refused_and_never_renamed(setup):
    tmp_path, base, miles, over, expect = setup
    (miles / "tools" / "expect.json").write_text(json.dumps(expect | {"drop_layer": 91}))
    with pytest.raises(PrepareError, match=r"layer 91 is missing") as e:
        run(over, tmp_path)
    assert [s.state for s in e.value.result.steps] == ["done", "done", "failed"]
    assert not (base / "GLM-4.5-355B-A32B_torch_dist").exists()
    assert (base / "GLM-4.5-355B-A32B_torch_dist.partial" / TRACKER).exists()
    (miles / "tools" / "expect.json").write_text(json.dumps(expect))
    assert run(over, tmp_path).ok  # the stale partial output goes, a new conversion verifies


def test_launch_prepare_runs_prepare_first(monkeypatch):
    import glmlaunch.prep as prep_mod
    from glmlaunch import run as run_mod

    seen = {}

    def fake_prepare(recipe, hostfile=None, *, overrides=None, local=False, runs_dir=None, reporter=None):
        seen.update(recipe=recipe, overrides=overrides, local=local)
        raise PrepareError("prepare failed on purpose")  # so up() never runs

    monkeypatch.setattr(prep_mod, "prepare", fake_prepare)
    with pytest.raises(PrepareError, match="on purpose"):
        run_mod.launch("glm45-355b-a32b-gspo", local=True, prepare=True, overrides=["run.base_dir=/d"])
    assert seen["recipe"] == "glm45-355b-a32b-gspo" and seen["local"] is True
    assert seen["overrides"] == ["run.base_dir=/d"]
