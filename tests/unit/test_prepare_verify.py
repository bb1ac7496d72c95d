"""The torch_dist verifier on real checkpoints written with torch.distributed.checkpoint (one
process): a complete GLM-4.5 and GLM-4.5-Air checkpoint verifies and is stamped; one layer short,
a wrong expert count, a missing shard, a tracker that is not ``release`` are refused, naming what
is wrong."""

from __future__ import annotations

import json

import pytest

from glmlaunch.errors import PrepareError
from glmlaunch.models import MODELS
from glmlaunch.prep import verify as v

pytest.importorskip("torch")
from fake_converter import write_tiny  # noqa: E402

GLM = list(MODELS["glm4.5-355B-A32B"].args)
AIR = list(MODELS["glm4.5-106B-A12B"].args)


def test_expected_from_the_model_args():
    e = v.expected_from_args(GLM)
    assert (e.num_layers, sorted(e.dense), e.num_experts, e.mtp_layers) == (92, [0, 1, 2], 160, 0)
    assert e.shared_experts and e.untied and len(e.moe) == 89
    a = v.expected_from_args(AIR + ["--mtp-num-layers", "1"])
    assert (a.num_layers, sorted(a.dense), a.num_experts, a.mtp_layers) == (46, [0], 128, 1)
    assert v.moe_layer_pattern("2", 4) == [1, 0, 1, 0]
    assert v.moe_layer_pattern("[0,1]*2", 4) == [0, 1, 0, 1]
    with pytest.raises(ValueError):
        v.moe_layer_pattern("__import__('os')", 4)


@pytest.mark.parametrize("args", [GLM, AIR + ["--mtp-num-layers", "1"]], ids=["glm45", "air-mtp"])
def test_a_complete_checkpoint_verifies_and_is_stamped(tmp_path, args):
    write_tiny(str(tmp_path), args)
    exp = v.expected_from_args(args)
    assert v.problems_of(tmp_path, exp) == []
    assert not v.is_verified(tmp_path, exp)
    v.verify_torch_dist(tmp_path, exp)
    assert v.is_verified(tmp_path, exp)
    assert json.loads((tmp_path / v.STAMP).read_text())["expected"]["num_layers"] == exp.num_layers
    (tmp_path / "release" / "extra").write_text("x")  # the files changed: not current any more
    assert not v.is_verified(tmp_path, exp)


def test_one_layer_short_is_refused_naming_the_layer(tmp_path):
    write_tiny(str(tmp_path), GLM, drop_layer=91)
    with pytest.raises(PrepareError) as e:
        v.verify_torch_dist(tmp_path, v.expected_from_args(GLM))
    assert "layer 91 is missing (no decoder.layers.91.* tensor; 92 layers expected)" in str(e.value)
    assert "fix:" in str(e.value)
    assert not (tmp_path / v.STAMP).exists()


def test_wrong_expert_count_mtp_and_missing_shard(tmp_path):
    write_tiny(str(tmp_path), GLM)
    more = GLM[:]
    more[more.index("--num-experts") + 1] = "128"
    problems = v.problems_of(tmp_path, v.expected_from_args(more + ["--mtp-num-layers", "1"]))
    assert "layer 3: the router has 160 experts, the model args say 128" in problems
    assert "MTP layer 0 is missing (no mtp.layers.0.* tensor)" in problems
    shard = next((tmp_path / "release").glob("*.distcp"))
    shard.unlink()
    problems = v.problems_of(tmp_path, v.expected_from_args(GLM))
    assert problems == [f"shard {shard} is missing (the metadata names it)"]


def test_tracker_must_read_release(tmp_path):
    exp = v.expected_from_args(AIR)
    assert v.problems_of(tmp_path, exp) == [
        f"{tmp_path}/latest_checkpointed_iteration.txt is missing: the conversion did not finish"
    ]
    write_tiny(str(tmp_path), AIR)
    (tmp_path / v.TRACKER).write_text("12")
    assert v.problems_of(tmp_path, exp) == [f"{tmp_path}/{v.TRACKER} reads '12', not 'release'"]
