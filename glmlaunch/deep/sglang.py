"""Deep SGLang check: one rollout engine's ``ServerArgs`` resolved by the installed SGLang, on CPU.

miles builds each engine's ``ServerArgs`` from the trainer argv (``--sglang-X`` -> ``X``, plus what
it forces: ``tp_size = --rollout-num-gpus-per-engine``, ``nnodes = gpus_per_engine //
num_gpus_per_node``; miles/backends/sglang_utils/sglang_engine.py:696-817 (miles@31f1ca961a94))
and SGLang validates it only when the engine starts, after the cluster is up. This module builds
the same record here (:func:`engine_kwargs`) and has SGLang resolve and check it.

SGLang is never imported into the calling process: its import takes seconds, needs two stub
modules on a CPU host and leaves global state behind. The resolution runs in a subprocess
(:mod:`glmlaunch.deep._sglang_worker`, which also writes the findings) with the interpreter
``python`` (default: env ``GLMLAUNCH_SGLANG_PYTHON``, else this interpreter), with
``HF_HUB_OFFLINE=1``, in a temporary model directory that holds only a ``config.json``.
``tests/harness/sglang_venv.sh`` builds such an interpreter. The rules SGLang accepts although
the engine fails later (experts % EP, heads over the attention TP, ...) are in
:mod:`glmlaunch.checks`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

from glmlaunch.deep._sglang_worker import DERIVED_FLAGS as _DERIVED_FLAGS
from glmlaunch.deep._sglang_worker import GPUS_PER_ENGINE
from glmlaunch.deep.megatron import parse_flags, parse_moe_layer_freq
from glmlaunch.errors import Finding

ENV_PYTHON = "GLMLAUNCH_SGLANG_PYTHON"
INSTALL_HINT = (
    "build an SGLang validation venv with `bash tests/harness/sglang_venv.sh` (torch CPU + sglang --no-deps) "
    f"and set {ENV_PYTHON}=<venv>/bin/python, or install sglang next to glmlaunch"
)
SRC_SELF = "docs/rules.md#deep-checks"
DIST_INIT_ADDR = "127.0.0.1:5000"
TIMEOUT_S = 300

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sglang_worker.py")
# Loads the worker by path: the interpreter needs SGLang only (not glmlaunch's dependencies),
# and the worker's own folder (which holds this sglang.py) never lands on sys.path.
_LOADER = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"

# ServerArgs field -> (flags that set it, in miles' --sglang-* spelling, value type).
# miles' parser is SGLang's add_cli_args with every flag prefixed, so SGLang's aliases work too.
KNOWN_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "dp_size": (("--sglang-dp-size", "--sglang-data-parallel-size"), "int"),
    "attn_dp_size": (("--sglang-attn-dp-size", "--sglang-attention-data-parallel-size"), "int"),
    "enable_dp_attention": (("--sglang-enable-dp-attention",), "bool"),
    "ep_size": (("--sglang-ep-size", "--sglang-expert-parallel-size", "--sglang-ep"), "int"),
    "pp_size": (("--sglang-pp-size", "--sglang-pipeline-parallel-size"), "int"),
    "moe_dense_tp_size": (("--sglang-moe-dense-tp-size",), "int"),
    "mem_fraction_static": (("--sglang-mem-fraction-static",), "float"),
    "enable_dp_lm_head": (("--sglang-enable-dp-lm-head",), "bool"),
    "speculative_algorithm": (("--sglang-speculative-algorithm",), "str"),
    "speculative_num_steps": (("--sglang-speculative-num-steps",), "int"),
    "speculative_eagle_topk": (("--sglang-speculative-eagle-topk",), "int"),
    "speculative_num_draft_tokens": (("--sglang-speculative-num-draft-tokens",), "int"),
    "cuda_graph_bs": (("--sglang-cuda-graph-bs",), "ints"),
    "cuda_graph_max_bs": (("--sglang-cuda-graph-max-bs",), "int"),
    "kv_cache_dtype": (("--sglang-kv-cache-dtype",), "str"),
    "attention_backend": (("--sglang-attention-backend",), "str"),
}
# --sglang-* flags that are miles' own (router, concurrency, deployment YAML), not ServerArgs.
MILES_OWN_FLAGS = (
    "--sglang-router-ip",
    "--sglang-router-port",
    "--sglang-router-policy",
    "--sglang-router-request-timeout-secs",
    "--sglang-server-concurrency",
    "--sglang-config",
)
# GLM-4.5 (355B-A32B) config.json values used where the argv has no model arg
# (scripts/models/glm4.5-355B-A32B.py:1-41 (miles@31f1ca961a94)).
_GLM45 = {
    "num_hidden_layers": 92,
    "hidden_size": 5120,
    "num_attention_heads": 96,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 12288,
    "moe_intermediate_size": 1536,
    "n_routed_experts": 160,
    "num_experts_per_tok": 8,
    "vocab_size": 151552,
    "first_k_dense_replace": 3,
}


@dataclass
class EngineArgs:
    """One rollout engine's ``ServerArgs`` as miles builds it from the trainer argv.

    ``kwargs``: ServerArgs keyword arguments (``model_path`` is a placeholder the check
    replaces). ``sglang_tokens``: every ``--sglang-*`` token of the argv that is a ServerArgs
    flag (the worker parses them with SGLang's own parser, the way miles does). ``flags``: the
    flag that set each kwarg. ``findings``: values that could not be read.
    """

    kwargs: dict[str, Any]
    sglang_tokens: list[str]
    flags: dict[str, str]
    num_gpus_per_node: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def attn_dp(self) -> int:
        if self.kwargs.get("enable_dp_attention"):
            return int(self.kwargs.get("dp_size") or 1)
        return int(self.kwargs.get("attn_dp_size") or 1)

    @property
    def eagle(self) -> bool:
        alg = str(self.kwargs.get("speculative_algorithm") or "").upper()
        return alg in ("EAGLE", "EAGLE3", "NEXTN", "MTP")


def _conv(flags: dict[str, list[str]], flag: str, kind: str, name: str, findings: list[Finding]) -> Any:
    vals = flags[flag]
    if kind == "bool":
        return True
    if not vals:
        findings.append(Finding(name, f"{flag} has no value", "a value after the flag", SRC_SELF))
        return None
    try:
        if kind == "int":
            return int(vals[0])
        if kind == "float":
            return float(vals[0])
        if kind == "ints":
            return [int(v) for v in vals]
    except ValueError:
        what = "integers" if kind == "ints" else "an integer" if kind == "int" else "a number"
        findings.append(
            Finding(name, f"{flag} {' '.join(vals)!r} is not {what}", f"{flag} takes {what}", SRC_SELF)
        )
        return None
    return vals[0]


def engine_kwargs(
    argv: list[str], num_gpus_per_node: int, flag_fields: dict[str, str] | None = None
) -> EngineArgs:
    """Build rollout engine 0's ``ServerArgs`` kwargs from the trainer argv, as miles does.

    No SGLang needed. ``tp_size`` is ``--rollout-num-gpus-per-engine``
    (miles/backends/sglang_utils/arguments.py:184 (miles@31f1ca961a94)), ``nnodes = max(1, tp //
    --num-gpus-per-node)`` (miles/backends/sglang_utils/sglang_engine.py:711 (miles@31f1ca961a94);
    the argv's ``--num-gpus-per-node`` wins over ``num_gpus_per_node``, as in miles),
    ``node_rank = 0``, ``dist_init_addr`` a loopback
    address, ``device = "cuda"`` (SGLang would otherwise look for an accelerator on this host).
    Every other value is what miles passes: the ``--sglang-*`` flags (typed here for the
    common ones, the rest parsed by SGLang's parser in the worker), ``trust_remote_code``,
    ``random_seed``, ``enable_memory_saver`` (= offload rollout, on with ``--colocate``),
    ``skip_server_warmup`` and ``enable_draft_weights_cpu_backup`` (always on).
    """
    names = dict(flag_fields or {})
    flags = parse_flags(argv)
    findings: list[Finding] = []

    def name(flag: str) -> str:
        return names.get(flag, flag)

    gpn = num_gpus_per_node
    if "--num-gpus-per-node" in flags:
        v = _conv(flags, "--num-gpus-per-node", "int", name("--num-gpus-per-node"), findings)
        if isinstance(v, int):
            gpn = v
    gpe = 1
    if GPUS_PER_ENGINE in flags:
        v = _conv(flags, GPUS_PER_ENGINE, "int", name(GPUS_PER_ENGINE), findings)
        gpe = v if isinstance(v, int) else 1
    seed = 1234
    if "--seed" in flags:
        v = _conv(flags, "--seed", "int", name("--seed"), findings)
        seed = v if isinstance(v, int) else seed
    kw: dict[str, Any] = {
        "model_path": "<model>",
        "trust_remote_code": True,
        "random_seed": seed,
        "enable_memory_saver": any(f in flags for f in ("--colocate", "--offload-rollout", "--offload")),
        "nnodes": max(1, gpe // gpn) if gpn >= 1 else 1,
        "node_rank": 0,
        "dist_init_addr": DIST_INIT_ADDR,
        "gpu_id_step": 1,
        "base_gpu_id": 0,
        "tp_size": gpe,
        "dp_size": 1,
        "pp_size": 1,
        "ep_size": 1,
        "skip_server_warmup": True,
        "enable_draft_weights_cpu_backup": True,
        "device": "cuda",
    }
    if "--use-rollout-routing-replay" in flags:
        kw["enable_return_routed_experts"] = True
    if "--fp16" in flags:
        kw["dtype"] = "float16"
    set_by: dict[str, str] = {k: f for k, f in _DERIVED_FLAGS.items() if k in kw}
    for key, (aliases, kind) in KNOWN_FLAGS.items():
        present = [f for f in aliases if f in flags]
        if not present:
            continue
        flag = present[-1]
        value = _conv(flags, flag, kind, name(aliases[0]), findings)
        if value is not None:
            kw[key] = value
            set_by[key] = aliases[0]

    known = {f for aliases, _ in KNOWN_FLAGS.values() for f in aliases}
    tokens: list[str] = []
    cur_keep = False
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            flag = tok.split("=", 1)[0]
            cur_keep = flag.startswith("--sglang-") and flag not in MILES_OWN_FLAGS
            if cur_keep:
                tokens.append(tok)
                if flag not in known:
                    set_by.setdefault(flag[len("--sglang-") :].replace("-", "_"), flag)
        elif tok == "--":
            cur_keep = False
        elif cur_keep:
            tokens.append(tok)
    return EngineArgs(kw, tokens, set_by, gpn, findings)


def _num(flags: dict[str, list[str]], flag: str) -> float | None:
    vals = flags.get(flag)
    if not vals:
        return None
    try:
        return float(vals[0])
    except ValueError:
        return None


def model_config(argv: list[str], eagle: bool) -> dict[str, Any]:
    """A GLM-4.5-like ``config.json`` (``Glm4MoeForCausalLM``) from the argv's Megatron model args.

    Values the argv does not set are GLM-4.5 355B's. ``num_nextn_predict_layers`` is 1 when
    EAGLE (MTP) speculative decoding is on, else 0.
    """
    flags = parse_flags(argv)

    def geti(flag: str, default: int) -> int:
        v = _num(flags, flag)
        return int(v) if v is not None else default

    heads = geti("--num-attention-heads", _GLM45["num_attention_heads"])
    hidden = geti("--hidden-size", _GLM45["hidden_size"])
    if "--group-query-attention" in flags:
        kv_heads = geti("--num-query-groups", 1)
    elif "--num-attention-heads" in flags:
        kv_heads = heads
    else:
        kv_heads = _GLM45["num_key_value_heads"]
    n_layers = geti("--num-layers", _GLM45["num_hidden_layers"])
    first_dense = _GLM45["first_k_dense_replace"] if "--num-layers" not in flags else 0
    freq_text = next(iter(flags.get("--moe-layer-freq") or []), None)
    if freq_text is not None:
        try:
            freq = parse_moe_layer_freq(freq_text)
            if isinstance(freq, list):
                first_dense = next((i for i, v in enumerate(freq) if v), len(freq))
        except ValueError:
            pass
    ffn = geti("--ffn-hidden-size", _GLM45["intermediate_size"])
    scale = _num(flags, "--moe-router-topk-scaling-factor")
    return {
        "architectures": ["Glm4MoeForCausalLM"],
        "model_type": "glm4_moe",
        "num_hidden_layers": n_layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": geti("--kv-channels", hidden // heads if heads else _GLM45["head_dim"]),
        "intermediate_size": ffn,
        "moe_intermediate_size": geti("--moe-ffn-hidden-size", _GLM45["moe_intermediate_size"]),
        "n_routed_experts": geti("--num-experts", _GLM45["n_routed_experts"]),
        "num_experts_per_tok": geti("--moe-router-topk", _GLM45["num_experts_per_tok"]),
        "n_shared_experts": 1,
        "first_k_dense_replace": first_dense,
        "num_nextn_predict_layers": 1 if eagle else 0,
        "vocab_size": geti("--vocab-size", _GLM45["vocab_size"]),
        "max_position_embeddings": 131072,
        "partial_rotary_factor": _num(flags, "--rotary-percent") or 0.5,
        "rope_theta": _num(flags, "--rotary-base") or 1000000.0,
        "rms_norm_eps": _num(flags, "--norm-epsilon") or 1e-5,
        "routed_scaling_factor": scale if scale is not None else 1.0,
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": True,
        "use_qk_norm": "--qk-layernorm" in flags,
        "attention_bias": "--add-qkv-bias" in flags,
        "tie_word_embeddings": "--untie-embeddings-and-output-weights" not in flags,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }


def _python(python: str | None) -> str:
    return python or os.environ.get(ENV_PYTHON) or sys.executable


def run_worker(request: dict, python: str | None = None, timeout: float = TIMEOUT_S) -> dict:
    """Run :mod:`glmlaunch.deep._sglang_worker` with ``python`` on ``request``; return its answer.

    Never raises: a worker that cannot be started, times out or answers nonsense gives
    ``{"available": None, "fatal": "..."}``.
    """
    exe = _python(python)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    cwd = os.path.dirname(request["kwargs"]["model_path"]) if request.get("kwargs") else None
    try:
        proc = subprocess.run(
            [exe, "-c", _LOADER, WORKER],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": None, "fatal": f"{exe}: {type(exc).__name__}: {exc}"}
    try:
        ans = json.loads(proc.stdout)
        if not isinstance(ans, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        tail = (proc.stderr or proc.stdout or "").strip()[-600:]
        return {"available": None, "fatal": f"{exe} exited {proc.returncode} without an answer: {tail}"}
    ans.setdefault("stderr_tail", (proc.stderr or "")[-2000:])
    return ans


def check_sglang(
    argv: list[str],
    num_gpus_per_node: int,
    hf_config_path: str | None = None,
    python: str | None = None,
    flag_fields: dict[str, str] | None = None,
) -> list[Finding]:
    """SGLang's own verdict on rollout engine 0's ``ServerArgs`` as miles will build it, before launch.

    ``argv``: the trainer's token list (see :func:`glmlaunch.deep.megatron.parse_flags`).
    ``num_gpus_per_node``: physical GPUs per node (the argv's ``--num-gpus-per-node`` wins, as
    in miles). ``hf_config_path``: the checkpoint's ``config.json`` (or its folder); without it
    a GLM-4.5-like config is built from the argv's model args (:func:`model_config`).
    ``python``: the interpreter that has SGLang (default: env ``GLMLAUNCH_SGLANG_PYTHON``, else
    this one). ``flag_fields``: ``{flag: recipe field}``; findings name the recipe field.

    Returns the worker's findings (see :mod:`glmlaunch.deep._sglang_worker`) plus values that
    could not be read; empty when SGLang accepts the engine. When SGLang cannot be imported by
    ``python`` or the worker fails, exactly one ``"warning"`` says the check was skipped and how
    to enable it. Never raises. Takes ~4-8 s (the SGLang import in the subprocess).
    """
    names = dict(flag_fields or {})
    eng = engine_kwargs(argv, num_gpus_per_node)

    def skipped(why: str) -> list[Finding]:
        return [
            Finding(
                "sglang",
                f"deep SGLang check skipped: {why}; {INSTALL_HINT}",
                "SGLang's validators run",
                SRC_SELF,
                "warning",
                extra={"python": _python(python)},
            )
        ]

    tmp = tempfile.mkdtemp(prefix="glmlaunch-sglang-")
    try:
        model_dir = os.path.join(tmp, "model")
        os.makedirs(model_dir)
        cfg_file = os.path.join(model_dir, "config.json")
        if hf_config_path:
            src = (
                os.path.join(hf_config_path, "config.json")
                if os.path.isdir(hf_config_path)
                else hf_config_path
            )
            shutil.copyfile(src, cfg_file)
        else:
            with open(cfg_file, "w", encoding="utf-8") as fh:
                json.dump(model_config(argv, eng.eagle), fh, indent=1)
        req = {
            "kwargs": dict(eng.kwargs, model_path=model_dir),
            "sglang_tokens": eng.sglang_tokens,
            "flags": eng.flags,
            "flag_fields": names,
        }
        ans = run_worker(req, python)
    except OSError as exc:  # the temporary model folder or the checkpoint's config could not be copied
        return skipped(f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if ans.get("available") is False:
        return skipped(ans.get("import_error") or "sglang is not importable")
    if ans.get("available") is None:
        return skipped(f"the SGLang worker failed ({ans.get('fatal', '?')})")
    out = [replace(f, field=names.get(f.field, f.field)) for f in eng.findings]
    return out + [Finding(**f) for f in ans.get("findings") or []]
