"""glmlaunch.deep.sglang: the rollout engine's ServerArgs as miles builds it, resolved by SGLang.

Two kinds of tests:

* pure (no SGLang): the argv -> ServerArgs kwargs mapping, the built-in config.json, the rules
  SGLang accepts although wrong (in :mod:`glmlaunch.checks`, asserted through
  ``checks.shallow``), and the "skipped" / "worker failed" paths;
* SGLang-running: ``check_sglang`` with ``GLMLAUNCH_SGLANG_PYTHON`` set to the validation venv
  that ``tests/harness/sglang_venv.sh`` builds (default ``<repo>/.venv-sglang``, or
  ``$GLT_SGLANG_VENV``). Skipped when that venv is missing, except under CI (``CI=true``),
  where a missing venv fails them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from glmlaunch import checks
from glmlaunch.deep.sglang import DIST_INIT_ADDR, ENV_PYTHON, check_sglang, engine_kwargs, model_config
from glmlaunch.deepcheck import FLAG_FIELDS
from glmlaunch.hosts import placeholder_allocation
from glmlaunch.recipe import load_recipe
from glmlaunch.resolve import resolve

REPO = Path(__file__).resolve().parents[2]

# The recipe-field map glmlaunch.deepcheck passes.
FIELDS = FLAG_FIELDS

# the GLM-4.5 355B model args (miles scripts/models/glm4.5-355B-A32B.py) and the seed's cluster + SGLang groups
MODEL = (
    "--disable-bias-linear --qk-layernorm --group-query-attention --num-attention-heads 96 "
    "--num-query-groups 8 --kv-channels 128 --num-layers 92 --hidden-size 5120 --ffn-hidden-size 12288 "
    "--add-qkv-bias --normalization RMSNorm --rotary-percent 0.5 --swiglu --untie-embeddings-and-output-weights "
    "--vocab-size 151552 --rotary-base 1000000 --moe-ffn-hidden-size 1536 --moe-shared-expert-intermediate-size 1536 "
    "--moe-router-topk 8 --moe-router-topk-scaling-factor 2.5 --moe-layer-freq [0]*3+[1]*89 --num-experts 160"
).split()
CLUSTER = "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate".split()
SGLANG = (
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-enable-dp-attention "
    "--sglang-dp-size 4 --sglang-ep-size 32 --sglang-enable-dp-lm-head --sglang-moe-dense-tp-size 1 "
    "--sglang-speculative-algorithm EAGLE --sglang-speculative-num-steps 1 --sglang-speculative-eagle-topk 1 "
    "--sglang-speculative-num-draft-tokens 2 --sglang-enable-draft-weights-cpu-backup"
).split()
ROUTER = "--sglang-router-ip 10.0.0.1 --sglang-router-port 3000 --sglang-server-concurrency 512".split()


def argv355(**changes: str) -> list[str]:
    """The 355B recipe's trainer argv; ``changes``: {flag without --, underscores: new value}."""
    sg = list(SGLANG)
    for key, val in changes.items():
        flag = "--" + key.replace("_", "-")
        sg[sg.index(flag) + 1] = val
    return ["python3", "/root/miles/train.py", *CLUSTER, *MODEL, *sg, *ROUTER]


def errors(findings):
    return [f for f in findings if f.severity == "error"]


# ---------------------------------------------------------------------------------------------
# pure: argv -> kwargs


def test_engine_kwargs_355b():
    eng = engine_kwargs(argv355(), 8)
    kw = eng.kwargs
    assert kw["tp_size"] == 32  # forced to --rollout-num-gpus-per-engine
    assert kw["nnodes"] == 4 and kw["node_rank"] == 0 and kw["dist_init_addr"] == DIST_INIT_ADDR
    assert kw["device"] == "cuda"
    assert kw["dp_size"] == 4 and kw["enable_dp_attention"] is True and eng.attn_dp == 4
    assert kw["ep_size"] == 32 and kw["moe_dense_tp_size"] == 1 and kw["pp_size"] == 1
    assert kw["mem_fraction_static"] == 0.7 and isinstance(kw["mem_fraction_static"], float)
    assert kw["enable_dp_lm_head"] is True
    assert (kw["speculative_algorithm"], kw["speculative_num_steps"]) == ("EAGLE", 1)
    assert (kw["speculative_eagle_topk"], kw["speculative_num_draft_tokens"]) == (1, 2)
    # what miles always adds (sglang_engine.py _compute_server_args)
    assert kw["enable_draft_weights_cpu_backup"] is True and kw["skip_server_warmup"] is True
    assert kw["trust_remote_code"] is True and kw["enable_memory_saver"] is True  # --colocate
    assert eng.eagle and not eng.findings
    # every --sglang-* ServerArgs token goes to SGLang's parser; miles' own router flags do not
    assert eng.sglang_tokens == SGLANG[2:]
    assert (
        eng.flags["dp_size"] == "--sglang-dp-size" and eng.flags["tp_size"] == "--rollout-num-gpus-per-engine"
    )


@pytest.mark.parametrize(
    ("gpe", "gpn", "nnodes"), [(32, 8, 4), (16, 8, 2), (8, 8, 1), (4, 8, 1), (1, 8, 1), (8, 4, 2)]
)
def test_engine_kwargs_nnodes(gpe, gpn, nnodes):
    eng = engine_kwargs(["--rollout-num-gpus-per-engine", str(gpe)], gpn)
    assert (eng.kwargs["tp_size"], eng.kwargs["nnodes"]) == (gpe, nnodes)


def test_engine_kwargs_argv_gpus_per_node_wins():
    # miles computes nnodes from its own --num-gpus-per-node
    eng = engine_kwargs(["--num-gpus-per-node", "4", "--rollout-num-gpus-per-engine", "16"], 8)
    assert eng.kwargs["nnodes"] == 4 and eng.num_gpus_per_node == 4


def test_engine_kwargs_defaults_and_extras():
    eng = engine_kwargs(["train.py"], 8)
    kw = eng.kwargs
    assert (kw["tp_size"], kw["dp_size"], kw["ep_size"], kw["nnodes"]) == (1, 1, 1, 1)
    assert kw["enable_memory_saver"] is False and "speculative_algorithm" not in kw and not eng.eagle
    eng = engine_kwargs(
        [
            "--sglang-data-parallel-size",
            "2",
            "--sglang-cuda-graph-bs",
            "1",
            "2",
            "4",
            "--sglang-kv-cache-dtype",
            "fp8_e4m3",
            "--sglang-attention-backend=fa3",
            "--fp16",
            "--sglang-max-running-requests",
            "64",
            "--sglang-ep-size",
            "2",
            "--sglang-ep-size",
            "8",
        ],
        8,
    )
    kw = eng.kwargs
    assert kw["dp_size"] == 2 and kw["ep_size"] == 8  # alias; last occurrence wins
    assert kw["cuda_graph_bs"] == [1, 2, 4] and kw["kv_cache_dtype"] == "fp8_e4m3"
    assert kw["attention_backend"] == "fa3" and kw["dtype"] == "float16"
    assert "max_running_requests" not in kw  # typed by SGLang's own parser in the worker
    assert "--sglang-max-running-requests" in eng.sglang_tokens
    assert eng.flags["max_running_requests"] == "--sglang-max-running-requests"


def test_engine_kwargs_bad_values():
    eng = engine_kwargs(["--sglang-dp-size", "four", "--rollout-num-gpus-per-engine", "x"], 8)
    assert {f.field for f in eng.findings} == {"--sglang-dp-size", "--rollout-num-gpus-per-engine"}
    assert eng.kwargs["tp_size"] == 1 and eng.kwargs["dp_size"] == 1


def test_model_config_from_argv():
    cfg = model_config(argv355(), eagle=True)
    assert cfg["architectures"] == ["Glm4MoeForCausalLM"] and cfg["model_type"] == "glm4_moe"
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]) == (92, 5120, 96)
    assert (cfg["num_key_value_heads"], cfg["head_dim"]) == (8, 128)  # kv heads = --num-query-groups
    assert (cfg["n_routed_experts"], cfg["num_experts_per_tok"], cfg["first_k_dense_replace"]) == (160, 8, 3)
    assert cfg["num_nextn_predict_layers"] == 1
    assert model_config(argv355(), eagle=False)["num_nextn_predict_layers"] == 0
    air = model_config(
        ["--num-layers", "46", "--num-experts", "128", "--moe-layer-freq", "[0]*1+[1]*45"], False
    )
    assert (air["num_hidden_layers"], air["n_routed_experts"], air["first_k_dense_replace"]) == (46, 128, 1)


# ---------------------------------------------------------------------------------------------
# pure: the rules SGLang accepts although the engine fails later (glmlaunch.checks)


def _sglang_findings(*sets):
    """checks.shallow's sglang.* findings for the 355B GSPO recipe on 8 x 8 GPUs with ``sets``."""
    res = resolve(load_recipe("glm45-355b-a32b-gspo", list(sets)), placeholder_allocation(8))
    return [f for f in checks.shallow(res) if f.field.startswith("sglang.")]


def test_rules_355b_clean():
    assert _sglang_findings() == []


def test_rules_ep():
    found = _sglang_findings(
        "sglang.ep_size=3"
    )  # 160 % 3 (SGLang's MoE layer asserts it), 32 % 3 (a warning)
    assert {(f.field, f.severity) for f in found} == {
        ("sglang.ep_size", "error"),
        ("sglang.ep_size", "warning"),
    }
    (err,) = [f for f in found if f.severity == "error"]
    assert err.source == "sglang/srt/layers/moe/fused_moe_triton/layer.py:414 (sglang@0.5.23)"
    # ep = 1 is fine; ep = 16 divides the experts and the engine's TP (SGLang's MoE TP is 32 // 16 = 2)
    assert _sglang_findings("sglang.ep_size=1") == []
    assert _sglang_findings("sglang.ep_size=16") == []


def test_rules_eagle_nodes_heads_mem_dp():
    (f,) = _sglang_findings("sglang.speculative_eagle_topk=4")
    assert (f.field, f.severity, f.source) == (
        "sglang.speculative_eagle_topk",
        "warning",
        "docs/rules.md#eagle-topk",
    )
    # 12 GPUs per engine on 8-GPU nodes: not a whole number of nodes (ep follows tp here)
    found = _sglang_findings("sglang.gpus_per_engine=12", "sglang.ep_size=12", "sglang.dp_size=2")
    assert any(
        "not a whole number of nodes" in f.message and "sglang_engine.py:711" in f.source for f in found
    )
    found = _sglang_findings("sglang.gpus_per_engine=3", "sglang.ep_size=1", "sglang.dp_size=1")
    assert any("do not tile a node" in f.message and f.severity == "error" for f in found)
    # TP 64 without attention DP: 96 heads do not split over 64 ranks (SGLang's GLM-4.5 attention asserts it)
    found = _sglang_findings(
        "sglang.gpus_per_engine=64",
        "sglang.ep_size=32",
        "sglang.enable_dp_attention=false",
        "sglang.dp_size=1",
    )
    assert [f.source for f in found if "heads" in f.message] == [
        "sglang/srt/models/glm4_moe.py:236-247 (sglang@0.5.23)"
    ]
    (f,) = _sglang_findings("sglang.mem_fraction_static=1.5")
    assert f.field == "sglang.mem_fraction_static" and f.severity == "error"
    (f,) = _sglang_findings("sglang.enable_dp_attention=false")
    assert f.field == "sglang.dp_size" and "(miles@" in f.source


# ---------------------------------------------------------------------------------------------
# pure: SGLang not there


@pytest.fixture
def python_without_sglang(tmp_path):
    """An interpreter that certainly cannot import sglang: this one with -S (no site-packages)."""
    exe = tmp_path / "python-nosite"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    exe.chmod(0o755)
    return str(exe)


def test_skipped_without_sglang(python_without_sglang, monkeypatch):
    monkeypatch.setenv(ENV_PYTHON, python_without_sglang)  # the default interpreter comes from the env
    found = check_sglang(argv355(sglang_ep_size="3"), 8, flag_fields=FIELDS)
    assert len(found) == 1
    f = found[0]
    assert f.severity == "warning" and f.field == "sglang" and "skipped" in f.message
    assert ENV_PYTHON in f.message and "sglang_venv.sh" in f.message


def test_worker_cannot_start(tmp_path):
    found = check_sglang(argv355(), 8, python=str(tmp_path / "no-such-python"), flag_fields=FIELDS)
    assert len(found) == 1 and found[0].severity == "warning" and "skipped" in found[0].message


# ---------------------------------------------------------------------------------------------
# SGLang-running (the validation venv)


def _sglang_python() -> str:
    env = os.environ.get(ENV_PYTHON)
    if env:
        return env
    venv = os.environ.get("GLT_SGLANG_VENV") or str(REPO / ".venv-sglang")
    return os.path.join(venv, "bin", "python")


@pytest.fixture
def sgl(monkeypatch):
    """Point GLMLAUNCH_SGLANG_PYTHON at the validation venv (skip without it; fail under CI)."""
    exe = _sglang_python()
    if not os.access(exe, os.X_OK):
        msg = f"SGLang validation venv missing ({exe}); build it with: bash tests/harness/sglang_venv.sh"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    monkeypatch.setenv(ENV_PYTHON, exe)
    return exe


def _sglang_errors(found):
    return [f for f in errors(found) if f.source.startswith("sglang/")]


def test_sglang_355b_engine_passes(sgl):
    found = check_sglang(argv355(), 8, flag_fields=FIELDS)
    assert errors(found) == []
    # SGLang >= the attn_dp_size rename: one warning saying which spelling the trainer passes
    assert [f.field for f in found] == ["sglang.enable_dp_attention"]
    w = found[0]
    assert w.severity == "warning"
    assert "--sglang-enable-dp-attention" in w.message and "--sglang-attn-dp-size 4" in w.message
    assert w.source.startswith("sglang/srt/arg_groups/parallel_hook.py:") and "(sglang@0.5." in w.source


def test_sglang_dp3_fails_naming_dp_size(sgl):
    found = _sglang_errors(check_sglang(argv355(sglang_dp_size="3"), 8, flag_fields=FIELDS))
    assert len(found) == 1
    f = found[0]
    assert f.field == "sglang.dp_size"
    assert "resolve_once" in f.rule and "attn_dp_size" in f.message  # a bare assert, shown as its statement
    assert f.source.startswith("sglang/srt/arg_groups/") and f.source.endswith("(sglang@0.5.23)")
    assert set(f.extra["fields"]) == {"sglang.dp_size", "sglang.gpus_per_engine"}


def test_sglang_unknown_speculative_algorithm(sgl):
    found = _sglang_errors(check_sglang(argv355(sglang_speculative_algorithm="FOO"), 8, flag_fields=FIELDS))
    assert [f.field for f in found] == ["sglang.mtp"]
    assert "Unknown speculative algorithm" in found[0].message


def test_sglang_moe_dense_tp_size_4(sgl):
    found = _sglang_errors(check_sglang(argv355(sglang_moe_dense_tp_size="4"), 8, flag_fields=FIELDS))
    assert [f.field for f in found] == ["sglang.moe_dense_tp_size"]
    assert "check_server_args" in found[0].rule
    assert found[0].source.startswith("sglang/srt/arg_groups/validation_hook.py:")


def test_sglang_accepts_ep3(sgl):
    # SGLang's ServerArgs accepts ep 3 with tp 32; the model load would not (checks.py: test_rules_ep)
    assert errors(check_sglang(argv355(sglang_ep_size="3"), 8, flag_fields=FIELDS)) == []


def test_sglang_with_checkpoint_config_and_flag_spelling(sgl, tmp_path):
    # a GLM-4.5-Air-like checkpoint config; one engine per 8-GPU node
    cfg = model_config(
        [
            "--num-layers",
            "46",
            "--hidden-size",
            "4096",
            "--num-experts",
            "128",
            "--moe-layer-freq",
            "[0]*1+[1]*45",
        ],
        eagle=False,
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    argv = [
        "--rollout-num-gpus-per-engine",
        "8",
        "--sglang-ep-size",
        "8",
        "--sglang-mem-fraction-static",
        "0.7",
    ]
    assert check_sglang(argv, 8, str(tmp_path / "config.json"), flag_fields=FIELDS) == []
    # the checkpoint folder works too; a flag this SGLang's parser (reused by miles) rejects
    found = check_sglang(
        [*argv, "--sglang-cuda-graph-bs", "1", "2", "4"], 8, str(tmp_path), flag_fields=FIELDS
    )
    assert [f.field for f in errors(found)] == [
        "sglang.cuda_graph_bs"
    ]  # the recipe field, through deepcheck.FLAG_FIELDS
    assert (
        "sglang/srt/server_args.py:" in found[0].source
        and "miles/backends/sglang_utils/arguments.py" in found[0].source
    )


def test_sglang_reports_silent_change(sgl):
    # EAGLE with top-k 1: SGLang resets the draft tokens to steps + 1 without an error
    found = check_sglang(argv355(sglang_speculative_num_steps="3"), 8, flag_fields=FIELDS)
    assert errors(found) == []
    changed = [f for f in found if f.field == "sglang.speculative_num_draft_tokens"]
    assert len(changed) == 1 and changed[0].severity == "warning" and "from 2 to 4" in changed[0].message
