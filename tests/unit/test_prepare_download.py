"""Downloads from a local Hub-compatible server (tests/unit/fakehub.py): success and its
verification, an interrupted download that resumes without fetching the finished files again, a
size mismatch and a corrupted LFS file caught, a missing and a gated repo, and the dry run with
too little space."""

from __future__ import annotations

import os

import pytest
from fakehub import FakeHub, FakeRepo

from glmlaunch.errors import PrepareError
from glmlaunch.prep import download as dl
from glmlaunch.recipe import load_recipe

pytest.importorskip("huggingface_hub")

MODEL = "org/tiny-model"
BIG = bytes(range(256)) * 4096  # 1 MiB: the transfer that gets cut


@pytest.fixture
def hub(monkeypatch, tmp_path):
    repos = {
        ("model", MODEL): FakeRepo(
            files={"config.json": b'{"a": 1}', "model-00001.safetensors": BIG, "tokenizer.json": b"{}" * 50},
            lfs={"model-00001.safetensors"},
        ),
        ("dataset", "org/data"): FakeRepo(files={"train.jsonl": b'{"prompt": "1+1"}\n' * 10}),
        ("model", "org/gated"): FakeRepo(files={"config.json": b"{}"}, gated=True),
        ("model", "zai-org/GLM-4.5"): FakeRepo(
            files={"config.json": b"{}", "model-1.safetensors": BIG}, lfs={"model-1.safetensors"}
        ),
        ("dataset", "zhuzilin/dapo-math-17k"): FakeRepo(files={"dapo-math-17k.jsonl": b"{}\n"}),
        ("dataset", "zhuzilin/aime-2024"): FakeRepo(files={"aime-2024.jsonl": b"{}\n"}),
    }
    from huggingface_hub import constants

    with FakeHub(repos) as h:
        monkeypatch.setattr(constants, "ENDPOINT", h.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", h.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield h


def item(tmp_path, repo=MODEL, kind="model"):
    return dl.HubItem(repo, kind, str(tmp_path / "base" / repo.split("/")[1]), "checkpoint.hf_checkpoint")


def test_download_verifies_and_a_rerun_fetches_nothing(hub, tmp_path):
    plan = dl.plan_item(item(tmp_path))
    assert plan.commit == FakeRepo({}).sha
    assert {f.path: f.size for f in plan.files}["model-00001.safetensors"] == len(BIG)
    assert [f.path for f in plan.files if f.sha256] == ["model-00001.safetensors"]
    assert all(f.will_download for f in plan.files)
    dl.download_item(plan)
    assert dl.verify_item(plan) == {}
    assert dl.is_verified(plan)
    first = dict(hub.gets)
    assert first[(MODEL, "model-00001.safetensors")] == 1
    again = dl.plan_item(item(tmp_path))
    assert not any(f.will_download for f in again.files)  # huggingface_hub's own dry run agrees
    dl.download_item(again)
    assert dict(hub.gets) == first  # nothing fetched twice
    ds = dl.plan_item(item(tmp_path, "org/data", "dataset"))
    dl.download_item(ds)
    assert dl.verify_item(ds) == {}
    assert (tmp_path / "base" / "data" / "train.jsonl").read_bytes().startswith(b'{"prompt"')


def test_interrupted_download_resumes_without_fetching_finished_files(hub, tmp_path):
    plan = dl.plan_item(item(tmp_path))
    hub.cut.add("model-00001.safetensors")
    with pytest.raises(PrepareError) as e:
        dl.download_item(plan)
    assert MODEL in str(e.value) and "fix:" in str(e.value)
    done = {k: v for k, v in hub.gets.items() if k[1] != "model-00001.safetensors"}
    assert done == {(MODEL, "config.json"): 1, (MODEL, "tokenizer.json"): 1}
    assert dl.verify_item(plan)["model-00001.safetensors"] == "missing"
    hub.cut.clear()
    hub.ranges.clear()
    dl.download_item(dl.plan_item(item(tmp_path)))
    assert dl.verify_item(plan) == {}
    # the finished files were not fetched again; the cut one was (huggingface_hub 2.4 restarts a
    # file whose transfer failed: the resume is per file)
    assert hub.gets[(MODEL, "config.json")] == 1 and hub.gets[(MODEL, "tokenizer.json")] == 1
    assert hub.gets[(MODEL, "model-00001.safetensors")] >= 2


def test_size_mismatch_and_corrupt_lfs_file_are_caught(hub, tmp_path):
    plan = dl.plan_item(item(tmp_path))
    dl.download_item(plan)
    assert dl.verify_item(plan) == {}
    root = tmp_path / "base" / "tiny-model"
    with open(root / "tokenizer.json", "ab") as f:
        f.write(b" ")
    data = bytearray((root / "model-00001.safetensors").read_bytes())
    data[10] ^= 0xFF
    (root / "model-00001.safetensors").write_bytes(bytes(data))
    (root / "config.json").unlink()
    problems = dl.verify_item(plan)
    assert problems["tokenizer.json"] == f"size {100 + 1} bytes, the Hub says 100"
    assert problems["model-00001.safetensors"].startswith("sha256 ")
    assert problems["config.json"] == "missing"
    assert not dl.is_verified(plan)


def test_missing_repo_is_a_clear_error(hub, tmp_path):
    with pytest.raises(PrepareError) as e:
        dl.plan_item(item(tmp_path, "org/nope"))
    msg = str(e.value)
    assert "model org/nope (for checkpoint.hf_checkpoint) was not found on the Hub" in msg
    assert "fix:" in msg and "HF_TOKEN" in msg


def test_gated_repo_is_a_clear_error_and_the_token_is_never_shown(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    with pytest.raises(PrepareError) as e:
        dl.plan_item(item(tmp_path, "org/gated"))
    msg = str(e.value)
    assert "is gated" in msg and "https://huggingface.co/org/gated" in msg
    assert "hf_secret" not in msg


def test_dry_run_space_check(hub, tmp_path):
    plan = dl.plan_item(item(tmp_path))
    ds = dl.plan_item(item(tmp_path, "org/data", "dataset"))
    need = plan.fetch_bytes + ds.fetch_bytes
    assert dl.check_space([plan, ds], free=lambda p: need) == {}
    short = dl.check_space([plan, ds], free=lambda p: need - 1)
    assert set(short) == {plan.local_dir, ds.local_dir}  # one filesystem: added up
    assert "GiB free" in short[plan.local_dir]
    assert not os.path.exists(plan.local_dir)  # a dry run writes nothing


def test_hub_items_follow_the_seed_layout():
    r = load_recipe("glm45-355b-a32b-gspo", ["run.base_dir=/data"])
    items = dl.hub_items(r)
    assert [(i.repo_id, i.repo_type, i.local_dir) for i in items] == [
        ("zai-org/GLM-4.5", "model", "/data/GLM-4.5-355B-A32B"),
        ("zhuzilin/dapo-math-17k", "dataset", "/data/dapo-math-17k"),
        ("zhuzilin/aime-2024", "dataset", "/data/rl_data/aime-2024"),
    ]
    fp8 = dl.hub_items(load_recipe("glm45-355b-a32b-grpo", ["run.base_dir=/d", "sglang.fp8_rollout=true"]))
    assert ("zai-org/GLM-4.5-FP8", "/d/GLM-4.5-355B-A32B-FP8") in [(i.repo_id, i.local_dir) for i in fp8]
    gsm = dl.hub_items(load_recipe("glm45-355b-a32b-grpo", ["run.base_dir=/d", "rollout.task=gsm8k"]))
    assert [(i.repo_id, i.local_dir) for i in gsm if i.repo_type == "dataset"] == [
        ("zhuzilin/gsm8k", "/d/gsm8k")
    ]
    air = dl.hub_items(load_recipe("glm45-air-p2p", ["run.base_dir=/d"]))
    assert air[0].repo_id == "zai-org/GLM-4.5-Air" and air[0].local_dir == "/d/GLM-4.5-Air"


def test_cli_dry_run_lists_files_and_refuses_short_space(hub, tmp_path, cli, monkeypatch):
    base = tmp_path / "shared"
    args = ["prepare", "glm45-355b-a32b-gspo", "--local", "--dry-run", "--set", f"run.base_dir={base}"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "model zai-org/GLM-4.5 @ 0123456789ab" in r.output and "model-1.safetensors" in r.output
    assert "to fetch: 1.00 MiB of 1.00 MiB; free at the target:" in r.output
    assert not base.exists()
    monkeypatch.setattr(dl, "free_bytes", lambda p: 1000)
    r = cli(*args)
    assert r.exit_code == 1
    assert "not enough free space for the download" in r.output and "fix:" in r.output


def test_prepare_downloads_verifies_and_skips_on_rerun(hub, tmp_path, monkeypatch):
    from glmlaunch import prepare

    monkeypatch.setenv("GLMLAUNCH_STATE_DIR", str(tmp_path / "state"))
    base = tmp_path / "shared"
    kw = dict(
        local=True,
        overrides=[f"run.base_dir={base}"],
        steps="download,verify-download",
        runs_dir=str(tmp_path / "runs"),
    )
    res = prepare("glm45-355b-a32b-gspo", **kw)
    assert [s.state for s in res.steps] == ["done", "done"]
    assert [n.node for n in res.step("download").nodes] == [
        "zai-org/GLM-4.5",
        "zhuzilin/dapo-math-17k",
        "zhuzilin/aime-2024",
    ]
    assert (base / "rl_data" / "aime-2024" / "aime-2024.jsonl").is_file()
    gets = dict(hub.gets)
    again = prepare("glm45-355b-a32b-gspo", **kw)
    assert again.step("download").state == "skipped" and dict(hub.gets) == gets
    (base / "GLM-4.5-355B-A32B" / "model-1.safetensors").write_bytes(b"x")
    with pytest.raises(PrepareError) as e:
        prepare("glm45-355b-a32b-gspo", **kw | {"steps": "verify-download"})
    assert "model-1.safetensors: size 1 bytes, the Hub says 1048576" in str(e.value)
    assert e.value.result.step("verify-download").state == "failed"


def test_cli_bad_steps_is_exit_2(cli):
    r = cli("prepare", "glm45-355b-a32b-gspo", "--local", "--steps", "bake")
    assert r.exit_code == 2 and "unknown step" in r.output


def test_cli_prepare_prints_each_step_and_item(hub, tmp_path, cli):
    base = tmp_path / "shared"
    r = cli(
        "prepare", "glm45-355b-a32b-gspo", "--local", "--steps", "download,verify-download",
        "--set", f"run.base_dir={base}", "--runs-dir", str(tmp_path / "runs"),
        env={"GLMLAUNCH_STATE_DIR": str(tmp_path / "state")},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "▶ prepare: download" in r.output and "↓ zai-org/GLM-4.5" in r.output  # progress
    for line in ("download", "zai-org/GLM-4.5", "zhuzilin/aime-2024", "verify-download", "run directory:"):
        assert line in r.output


def test_a_relative_base_dir_is_refused_before_anything_is_fetched(monkeypatch):
    from glmlaunch.errors import CheckFailed
    from glmlaunch.prep import prepare

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing may be asked: a dead port
    with pytest.raises(CheckFailed, match="run.base_dir"):
        prepare("glm45-355b-a32b-gspo", local=True, overrides=["run.base_dir=relative"], dry_run=True)
