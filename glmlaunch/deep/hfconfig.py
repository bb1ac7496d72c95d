"""Compare the HF checkpoint's ``config.json`` and tokenizer with the trainer argv, before launch.

miles compares a few ``config.json`` fields with the Megatron model args in ``hf_validate_args``
(miles/utils/arguments.py:3656-3707 (miles@31f1ca961a94), called at :2681 when ``--hf-checkpoint``
is set). It does so on the head, after ``ray job submit``; this module does
the same comparison (plus the MoE / attention fields miles leaves out) on the launching machine.
Files are read as plain JSON; neither ``transformers`` nor torch is imported.
"""

from __future__ import annotations

import json
import os
from typing import Any

from glmlaunch.deep.megatron import parse_flags, parse_moe_layer_freq
from glmlaunch.errors import Finding

SRC_MILES = "miles/utils/arguments.py:3656-3707 (miles@31f1ca961a94)"
SRC_EXTRA = "docs/rules.md#hf-config-extra"
SRC_TOK = "docs/rules.md#stop-tokens"

_MISSING = object()


def _num(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


class _Megatron:
    """Effective Megatron-LM values of the model args (defaults: megatron/training/arguments.py
    (Megatron-LM@2e64d788b), lines below)."""

    def __init__(self, argv: list[str]):
        self.flags = parse_flags(argv)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def get(self, flag: str, default: Any = None) -> Any:
        vals = self.flags.get(flag)
        return _num(vals[0]) if vals else default

    def ffn_hidden_size(self) -> Any:
        h = self.get("--hidden-size")
        ffn = self.get("--ffn-hidden-size")
        if ffn is None and isinstance(h, int):  # :866-875
            ffn = int((4 * h * 2 / 3) / 64) * 64 if self.has("--swiglu") else 4 * h
        return ffn

    def num_query_groups(self) -> Any:
        # :1436-1439: without --group-query-attention, one group per head.
        if self.has("--group-query-attention"):
            return self.get("--num-query-groups", 1)
        return self.get("--num-attention-heads")

    def kv_channels(self) -> Any:
        kv = self.get("--kv-channels")
        h, heads = self.get("--hidden-size"), self.get("--num-attention-heads")
        if kv is None and isinstance(h, int) and isinstance(heads, int) and heads:
            kv = h // heads  # :877-879
        return kv


def _load_json(path: str) -> tuple[Any, str | None]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def check_hf_config(
    argv: list[str], config_path: str, flag_fields: dict[str, str] | None = None
) -> list[Finding]:
    """Compare a HF ``config.json`` (GLM-4.5 style, ``Glm4MoeForCausalLM``) with the trainer's model args.

    ``argv``: the trainer token list (``["python3", ".../train.py", "--num-layers", "92", ...]``).
    ``config_path``: the ``config.json`` file, or the checkpoint directory holding it.
    ``flag_fields``: ``{flag: recipe field}``; findings name the recipe field, or the flag.

    Rules (severity ``"error"`` unless noted), each HF key compared only when present:

    * as miles' ``hf_validate_args`` (:data:`SRC_MILES`), which would
      refuse the job on the head: ``hidden_size``, ``num_attention_heads``,
      ``num_hidden_layers`` <-> ``--num-layers``, ``intermediate_size`` <-> ``--ffn-hidden-size``,
      ``moe_intermediate_size`` <-> ``--moe-ffn-hidden-size``, ``tie_word_embeddings`` <->
      not ``--untie-embeddings-and-output-weights``, ``rms_norm_eps`` <-> ``--norm-epsilon``
      (default 1e-5), ``rope_theta`` <-> ``--rotary-base`` (default 10000). ``text_config`` and
      ``rope_parameters.rope_theta`` are unwrapped as miles does;
    * not compared by miles, but a mismatch means the model does not match the checkpoint
      (:data:`SRC_EXTRA`):
      ``n_routed_experts`` <-> ``--num-experts``, ``num_experts_per_tok`` <-> ``--moe-router-topk``,
      ``num_key_value_heads`` <-> query groups, ``head_dim`` <-> ``--kv-channels``,
      ``first_k_dense_replace`` <-> leading dense layers of ``--moe-layer-freq``,
      ``n_shared_experts * moe_intermediate_size`` <-> ``--moe-shared-expert-intermediate-size``,
      ``use_qk_norm`` <-> ``--qk-layernorm``, ``attention_bias`` <-> ``--add-qkv-bias``,
      ``routed_scaling_factor`` <-> ``--moe-router-topk-scaling-factor`` (unset = 1.0),
      ``partial_rotary_factor`` <-> ``--rotary-percent`` (default 1.0); ``vocab_size`` <->
      ``--vocab-size`` is a warning (Megatron pads the vocabulary).

    A missing or unreadable file gives one error finding naming the path. Never raises.
    """
    fields = flag_fields or {}

    def name(flag: str) -> str:
        return fields.get(flag, flag)

    path = os.path.join(config_path, "config.json") if os.path.isdir(config_path) else config_path
    cfg, err = _load_json(path)
    hf_field = fields.get("--hf-checkpoint", "--hf-checkpoint")
    if err == "missing":
        return [Finding(hf_field, f"HF config not found: {path}", "config.json readable", SRC_MILES)]
    if err is not None or not isinstance(cfg, dict):
        why = err or "top level is not a JSON object"
        return [
            Finding(hf_field, f"HF config {path} cannot be read: {why}", "config.json readable", SRC_MILES)
        ]
    if isinstance(cfg.get("text_config"), dict):  # multimodal configs, as miles does
        cfg = cfg["text_config"]
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        cfg = dict(cfg, rope_theta=rope["rope_theta"])

    mg = _Megatron(argv)
    out: list[Finding] = []

    def compare(
        key: str,
        flag: str,
        megatron_value: Any,
        source: str,
        *,
        expected: Any = _MISSING,
        severity: str = "error",
        shown: str | None = None,
    ) -> None:
        if key not in cfg:
            return
        hf_value = cfg[key] if expected is _MISSING else expected
        if hf_value == megatron_value:
            return
        arg = shown or flag
        if megatron_value is None:
            msg = f"config.json {key} = {cfg[key]!r} but the trainer argv has no {arg}"
        else:
            msg = f"config.json {key} = {cfg[key]!r} does not match {arg} = {megatron_value!r}"
        if expected is not _MISSING:
            msg += f" (expected {expected!r})"
        out.append(
            Finding(
                name(flag),
                f"{msg} ({path})",
                f"{key} == {arg}",
                source,
                severity,
                extra={"hf_key": key, "hf_value": cfg[key], "megatron_value": megatron_value, "path": path},
            )
        )

    # --- miles hf_validate_args ---
    compare("hidden_size", "--hidden-size", mg.get("--hidden-size"), SRC_MILES)
    compare("num_attention_heads", "--num-attention-heads", mg.get("--num-attention-heads"), SRC_MILES)
    compare("num_hidden_layers", "--num-layers", mg.get("--num-layers"), SRC_MILES)
    compare("intermediate_size", "--ffn-hidden-size", mg.ffn_hidden_size(), SRC_MILES)
    moe_ffn = mg.get("--moe-ffn-hidden-size")
    if moe_ffn is None and mg.get("--num-experts"):
        moe_ffn = mg.ffn_hidden_size()  # megatron/training/arguments.py:1080-1081 (Megatron-LM@2e64d788b)
    compare("moe_intermediate_size", "--moe-ffn-hidden-size", moe_ffn, SRC_MILES)
    if "tie_word_embeddings" in cfg:
        untie = mg.has("--untie-embeddings-and-output-weights")
        if bool(cfg["tie_word_embeddings"]) == untie:
            out.append(
                Finding(
                    name("--untie-embeddings-and-output-weights"),
                    f"config.json tie_word_embeddings = {cfg['tie_word_embeddings']!r} but "
                    f"--untie-embeddings-and-output-weights is {'set' if untie else 'not set'} ({path})",
                    "tie_word_embeddings == not untie_embeddings_and_output_weights",
                    SRC_MILES,
                    extra={"hf_key": "tie_word_embeddings", "path": path},
                )
            )
    compare("rms_norm_eps", "--norm-epsilon", mg.get("--norm-epsilon", 1e-5), SRC_MILES)
    compare("rope_theta", "--rotary-base", mg.get("--rotary-base", 10000), SRC_MILES)

    # --- MoE / attention structure (not compared by miles) ---
    compare("n_routed_experts", "--num-experts", mg.get("--num-experts"), SRC_EXTRA)
    compare("num_experts_per_tok", "--moe-router-topk", mg.get("--moe-router-topk", 2), SRC_EXTRA)
    compare(
        "num_key_value_heads",
        "--num-query-groups",
        mg.num_query_groups(),
        SRC_EXTRA,
        shown="--num-query-groups (with --group-query-attention; else one group per head)",
    )
    compare("head_dim", "--kv-channels", mg.kv_channels(), SRC_EXTRA)
    if "first_k_dense_replace" in cfg and mg.has("--moe-layer-freq"):
        try:
            freq = parse_moe_layer_freq(
                mg.flags["--moe-layer-freq"][0] if mg.flags["--moe-layer-freq"] else ""
            )
        except ValueError:
            freq = None  # check_megatron reports an unreadable pattern
        if isinstance(freq, list):
            dense = next((i for i, v in enumerate(freq) if v != 0), len(freq))
            compare(
                "first_k_dense_replace",
                "--moe-layer-freq",
                dense,
                SRC_EXTRA,
                shown="the number of leading dense layers in --moe-layer-freq",
            )
    if "n_shared_experts" in cfg and "moe_intermediate_size" in cfg:
        n, size = cfg["n_shared_experts"], cfg["moe_intermediate_size"]
        if isinstance(n, int) and isinstance(size, int):
            shared = mg.get("--moe-shared-expert-intermediate-size")
            expected = n * size if n else None
            if shared != expected:
                out.append(
                    Finding(
                        name("--moe-shared-expert-intermediate-size"),
                        f"config.json n_shared_experts × moe_intermediate_size = {n} × {size} = {n * size} "
                        f"does not match --moe-shared-expert-intermediate-size = {shared!r} ({path})",
                        "n_shared_experts * moe_intermediate_size == moe_shared_expert_intermediate_size",
                        SRC_EXTRA,
                        extra={"hf_key": "n_shared_experts", "path": path},
                    )
                )
    for key, flag in (("use_qk_norm", "--qk-layernorm"), ("attention_bias", "--add-qkv-bias")):
        if key in cfg and bool(cfg[key]) != mg.has(flag):
            out.append(
                Finding(
                    name(flag),
                    f"config.json {key} = {cfg[key]!r} but {flag} is {'set' if mg.has(flag) else 'not set'} ({path})",
                    f"{key} == {flag}",
                    SRC_EXTRA,
                    extra={"hf_key": key, "path": path},
                )
            )
    compare(
        "routed_scaling_factor",
        "--moe-router-topk-scaling-factor",
        mg.get("--moe-router-topk-scaling-factor", 1.0),
        SRC_EXTRA,
    )
    compare("partial_rotary_factor", "--rotary-percent", mg.get("--rotary-percent", 1.0), SRC_EXTRA)
    if mg.has("--vocab-size"):
        compare("vocab_size", "--vocab-size", mg.get("--vocab-size"), SRC_EXTRA, severity="warning")
    return out


def check_stop_tokens(
    token_ids: list[int], tokenizer_dir: str, field: str = "--rollout-stop-token-ids"
) -> list[Finding]:
    """Check ``--rollout-stop-token-ids`` against the checkpoint's tokenizer files.

    ``token_ids``: the stop token ids (ints). ``tokenizer_dir``: the HF checkpoint directory.
    ``field``: the recipe field the findings name.

    Reads ``tokenizer.json`` (``added_tokens`` and ``model.vocab``) and
    ``tokenizer_config.json`` (``added_tokens_decoder``) as JSON. When neither exists the check
    does not apply and ``[]`` is returned. Findings: an id below 0 or beyond the vocabulary
    (largest known id + 1) is an error; an id that is an ordinary vocabulary token rather than
    an added/special token is a warning (generation would stop at every occurrence of that
    text); an unreadable file is a warning. The GLM-4.5 recipe's ids 151329 151336 151338 are
    the special tokens ``<|endoftext|>``, ``<|user|>``, ``<|observation|>``. Never raises.
    """
    tj = os.path.join(tokenizer_dir, "tokenizer.json")
    tc = os.path.join(tokenizer_dir, "tokenizer_config.json")
    added: dict[int, tuple[str, bool]] = {}  # id -> (content, special)
    vocab: dict[int, str] = {}
    found = False
    out: list[Finding] = []
    for path in (tj, tc):
        data, err = _load_json(path)
        if err == "missing":
            continue
        found = True
        if err is not None or not isinstance(data, dict):
            out.append(
                Finding(
                    field,
                    f"{path} cannot be read: {err or 'not a JSON object'}",
                    "tokenizer readable",
                    SRC_TOK,
                    "warning",
                )
            )
            continue
        if path == tj:
            for tok in data.get("added_tokens") or []:
                if isinstance(tok, dict) and isinstance(tok.get("id"), int):
                    added[tok["id"]] = (str(tok.get("content", "")), bool(tok.get("special", False)))
            model_vocab = (data.get("model") or {}).get("vocab")
            if isinstance(model_vocab, dict):
                vocab.update({i: t for t, i in model_vocab.items() if isinstance(i, int)})
            elif isinstance(model_vocab, list):  # Unigram: [[piece, score], ...]
                vocab.update({i: str(p[0]) for i, p in enumerate(model_vocab) if isinstance(p, list) and p})
        else:
            for key, tok in (data.get("added_tokens_decoder") or {}).items():
                if isinstance(tok, dict) and str(key).lstrip("-").isdigit():
                    prev = added.get(int(key))
                    special = bool(tok.get("special", False)) or (prev[1] if prev else False)
                    added[int(key)] = (str(tok.get("content", "")), special)
    if not found:
        return []
    known = set(vocab) | set(added)
    size = max(known) + 1 if known else None
    for tid in token_ids:
        if tid in added:
            continue
        if tid < 0 or (size is not None and tid >= size):
            out.append(
                Finding(
                    field,
                    f"stop token id {tid} is outside the tokenizer's vocabulary (size {size}) "
                    f"in {tokenizer_dir}",
                    "0 <= id < vocab size",
                    SRC_TOK,
                    extra={"token_id": tid},
                )
            )
        elif tid in vocab:
            out.append(
                Finding(
                    field,
                    f"stop token id {tid} is the ordinary token {vocab[tid]!r}, not an added/special "
                    f"token, in {tokenizer_dir}",
                    "stop ids are special/added tokens",
                    SRC_TOK,
                    "warning",
                    extra={"token_id": tid},
                )
            )
        else:
            out.append(
                Finding(
                    field,
                    f"stop token id {tid} is not a known token of {tokenizer_dir} (only "
                    f"{'added tokens' if not vocab else 'vocabulary and added tokens'} could be read)",
                    "stop ids are special/added tokens",
                    SRC_TOK,
                    "warning",
                    extra={"token_id": tid},
                )
            )
    return out
