"""glmlaunch.deep.hfconfig: config.json vs the model args, and stop tokens vs the tokenizer."""

from __future__ import annotations

import json

import pytest
from glm_args import M355, MAIR, drop_flag

from glmlaunch.deep.hfconfig import SRC_EXTRA, SRC_MILES, check_hf_config, check_stop_tokens

# zai-org/GLM-4.5 config.json (the fields that matter here)
GLM45 = {
    "architectures": ["Glm4MoeForCausalLM"],
    "model_type": "glm4_moe",
    "attention_bias": True,
    "head_dim": 128,
    "hidden_size": 5120,
    "partial_rotary_factor": 0.5,
    "intermediate_size": 12288,
    "moe_intermediate_size": 1536,
    "num_attention_heads": 96,
    "n_routed_experts": 160,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.5,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 3,
    "num_hidden_layers": 92,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000,
    "tie_word_embeddings": False,
    "use_qk_norm": True,
    "vocab_size": 151552,
}
GLM45_AIR = dict(
    GLM45,
    hidden_size=4096,
    intermediate_size=10944,
    moe_intermediate_size=1408,
    n_routed_experts=128,
    num_hidden_layers=46,
    first_k_dense_replace=1,
    routed_scaling_factor=1.0,
    use_qk_norm=False,
)
ARGV355 = ["python3", "/root/miles/train.py", "--hf-checkpoint", "/models/GLM-4.5", *M355]
ARGVAIR = ["python3", "/root/miles/train.py", "--hf-checkpoint", "/models/GLM-4.5-Air", *MAIR]
FIELDS = {
    "--num-layers": "model.num_layers",
    "--hidden-size": "model.hidden_size",
    "--hf-checkpoint": "checkpoint.hf",
}


def _write(tmp_path, cfg) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


_drop = drop_flag


def test_matching_configs_pass(tmp_path):
    assert check_hf_config(ARGV355, _write(tmp_path, GLM45)) == []
    assert check_hf_config(ARGVAIR, _write(tmp_path, GLM45_AIR)) == []
    # a directory holding config.json works too
    _write(tmp_path, GLM45)
    assert check_hf_config(ARGV355, str(tmp_path)) == []


# (hf key, wrong hf value, flag named, source)
MISMATCHES = [
    ("hidden_size", 4096, "model.hidden_size", SRC_MILES),
    ("num_attention_heads", 64, "--num-attention-heads", SRC_MILES),
    ("num_hidden_layers", 93, "model.num_layers", SRC_MILES),
    ("intermediate_size", 10944, "--ffn-hidden-size", SRC_MILES),
    ("moe_intermediate_size", 1408, "--moe-ffn-hidden-size", SRC_MILES),
    ("tie_word_embeddings", True, "--untie-embeddings-and-output-weights", SRC_MILES),
    ("rms_norm_eps", 1e-6, "--norm-epsilon", SRC_MILES),
    ("rope_theta", 10000, "--rotary-base", SRC_MILES),
    ("n_routed_experts", 128, "--num-experts", SRC_EXTRA),
    ("num_experts_per_tok", 4, "--moe-router-topk", SRC_EXTRA),
    ("num_key_value_heads", 4, "--num-query-groups", SRC_EXTRA),
    ("head_dim", 64, "--kv-channels", SRC_EXTRA),
    ("first_k_dense_replace", 1, "--moe-layer-freq", SRC_EXTRA),
    ("n_shared_experts", 2, "--moe-shared-expert-intermediate-size", SRC_EXTRA),
    ("use_qk_norm", False, "--qk-layernorm", SRC_EXTRA),
    ("attention_bias", False, "--add-qkv-bias", SRC_EXTRA),
    ("routed_scaling_factor", 1.0, "--moe-router-topk-scaling-factor", SRC_EXTRA),
    ("partial_rotary_factor", 1.0, "--rotary-percent", SRC_EXTRA),
]


@pytest.mark.parametrize("key,value,field,source", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_each_mismatch_names_its_field(tmp_path, key, value, field, source):
    path = _write(tmp_path, dict(GLM45, **{key: value}))
    findings = check_hf_config(ARGV355, path, FIELDS)
    # the shared-expert size is derived from moe_intermediate_size, so it mismatches too
    also = {"--moe-shared-expert-intermediate-size"} if key == "moe_intermediate_size" else set()
    assert {g.field for g in findings} == {field} | also, [str(g) for g in findings]
    f = next(g for g in findings if g.field == field)
    assert (f.field, f.source, f.severity) == (field, source, "error")
    assert key in f.message and path in f.message


def test_vocab_size_mismatch_is_a_warning(tmp_path):
    findings = check_hf_config(ARGV355, _write(tmp_path, dict(GLM45, vocab_size=151936)))
    assert [(f.field, f.severity) for f in findings] == [("--vocab-size", "warning")]


def test_megatron_defaults_are_used(tmp_path):
    path = _write(tmp_path, GLM45)
    # --rotary-base unset: Megatron-LM's default 10000 != 1000000
    findings = check_hf_config(_drop(ARGV355, "--rotary-base"), path)
    assert [f.field for f in findings] == ["--rotary-base"] and "10000" in findings[0].message
    # no --group-query-attention: one query group per head (96) != 8 kv heads
    findings = check_hf_config(_drop(ARGV355, "--group-query-attention"), path)
    assert [f.field for f in findings] == ["--num-query-groups"]
    # a missing required arg is reported with the config value
    findings = check_hf_config(_drop(ARGV355, "--hidden-size"), path, FIELDS)
    assert "model.hidden_size" in {f.field for f in findings}
    assert any("has no --hidden-size" in f.message for f in findings)
    # --untie-embeddings-and-output-weights dropped while the HF model is untied
    findings = check_hf_config(_drop(ARGV355, "--untie-embeddings-and-output-weights"), path)
    assert [f.field for f in findings] == ["--untie-embeddings-and-output-weights"]


def test_text_config_and_rope_parameters_unwrapped(tmp_path):
    cfg = dict(GLM45)
    del cfg["rope_theta"]
    cfg["rope_parameters"] = {"rope_theta": 1000000, "rope_type": "default"}
    assert check_hf_config(ARGV355, _write(tmp_path, {"text_config": cfg})) == []


def test_missing_and_broken_files(tmp_path):
    missing = str(tmp_path / "nope" / "config.json")
    findings = check_hf_config(ARGV355, missing, FIELDS)
    assert len(findings) == 1 and findings[0].field == "checkpoint.hf"
    assert missing in findings[0].message and findings[0].severity == "error"
    (tmp_path / "config.json").write_text("{not json")
    findings = check_hf_config(ARGV355, str(tmp_path), FIELDS)
    assert len(findings) == 1 and "cannot be read" in findings[0].message


def _tokenizer(tmp_path, with_config=True):
    vocab = {f"tok{i}": i for i in range(151329)}
    added = [
        {"id": 151329, "content": "<|endoftext|>", "special": True},
        {"id": 151336, "content": "<|user|>", "special": True},
        {"id": 151338, "content": "<|observation|>", "special": True},
        {"id": 151340, "content": "<think>", "special": False},
    ]
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"added_tokens": added, "model": {"type": "BPE", "vocab": vocab}})
    )
    if with_config:
        decoder = {str(t["id"]): {"content": t["content"], "special": t["special"]} for t in added}
        decoder["151351"] = {"content": "<|end|>", "special": True}
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    return str(tmp_path)


def test_stop_tokens(tmp_path):
    tok = _tokenizer(tmp_path)
    assert check_stop_tokens([151329, 151336, 151338], tok) == []
    assert check_stop_tokens([151340, 151351], tok) == []  # added tokens (one only in tokenizer_config)
    findings = check_stop_tokens([151329, 200000, -1, 42], tok, field="rollout.stop_token_ids")
    assert [(f.extra["token_id"], f.severity) for f in findings] == [
        (200000, "error"),
        (-1, "error"),
        (42, "warning"),
    ]
    assert all(f.field == "rollout.stop_token_ids" for f in findings)
    assert "tok42" in findings[2].message and "outside" in findings[0].message


def test_stop_tokens_without_tokenizer_files(tmp_path):
    assert check_stop_tokens([151329], str(tmp_path)) == []
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"added_tokens_decoder": {"151329": {"content": "<|endoftext|>", "special": True}}})
    )
    assert check_stop_tokens([151329], str(tmp_path)) == []
    assert check_stop_tokens([999999], str(tmp_path))[0].severity == "error"
    (tmp_path / "tokenizer.json").write_text("garbage")
    assert [f.severity for f in check_stop_tokens([151329], str(tmp_path))] == ["warning"]
