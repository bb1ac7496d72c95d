"""Deep SGLang check: resolve one rollout engine's ``ServerArgs`` with the installed SGLang, on CPU.

miles builds each engine's ``ServerArgs`` from the trainer argv (``--sglang-X`` -> ``X``, plus
the values it forces: ``tp_size = --rollout-num-gpus-per-engine``, ``nnodes = gpus_per_engine
// num_gpus_per_node``; ``miles/backends/sglang_utils/sglang_engine.py`` ``_compute_server_args``)
and SGLang validates it only when the engine starts, after the cluster is up and the
placement group is allocated. This module builds the same record here and has SGLang resolve
it (``ServerArgs.resolve_once()`` and ``check_server_args()``, deps.md §6).

SGLang is never imported into the calling process: its import takes seconds, needs two stub
modules on a CPU host and leaves global state behind. The resolution runs in a subprocess
(:mod:`glmlaunch.deep._sglang_worker`) with the interpreter ``python`` (default: env
``GLMLAUNCH_SGLANG_PYTHON``, else this interpreter), with ``HF_HUB_OFFLINE=1``, in a temporary
model directory that holds only a ``config.json``. ``tests/harness/sglang_venv.sh`` builds such
an interpreter (torch CPU + ``sglang --no-deps`` + a pinned light dependency list).

Rules SGLang's ``ServerArgs`` accepts although the engine fails or misbehaves later (deps.md §6;
trainer-contract §4 rows 12-16) are checked here too: EP not in {1, engine TP}, experts not
divisible by EP, EAGLE top-k above the draft tokens, an engine that is not a whole number of
nodes, attention heads not divisible by the attention TP, ``mem_fraction_static`` outside (0, 1),
and miles' own "dp_size > 1 needs dp-attention".
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

from glmlaunch.deep.megatron import parse_flags, parse_moe_layer_freq
from glmlaunch.errors import Finding

ENV_PYTHON = "GLMLAUNCH_SGLANG_PYTHON"
INSTALL_HINT = (
    "build an SGLang validation venv with `bash tests/harness/sglang_venv.sh` (torch CPU + sglang --no-deps) "
    f"and set {ENV_PYTHON}=<venv>/bin/python, or install sglang next to glmlaunch"
)
SRC_SELF = "glmlaunch.deep.sglang"
SRC_MILES_ENGINE = "miles sglang_engine.py _compute_server_args"
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
GPUS_PER_ENGINE = "--rollout-num-gpus-per-engine"
# ServerArgs fields miles derives from other flags, and the flag that sets them.
_DERIVED_FLAGS = {
    "tp_size": GPUS_PER_ENGINE,
    "nnodes": GPUS_PER_ENGINE,
    "node_rank": GPUS_PER_ENGINE,
    "base_gpu_id": GPUS_PER_ENGINE,
    "enable_memory_saver": "--colocate",
    "random_seed": "--seed",
    "enable_return_routed_experts": "--use-rollout-routing-replay",
    "dtype": "--fp16",
}
# Message phrases that name no field literally.
_PHRASE_FLAGS = (
    ("speculative", "--sglang-speculative-algorithm"),
    ("eagle", "--sglang-speculative-algorithm"),
    ("dp-lm-head", "--sglang-enable-dp-lm-head"),
    ("data-parallel", "--sglang-dp-size"),
    ("attention dp", "--sglang-dp-size"),
    ("number of nodes", GPUS_PER_ENGINE),
    ("expert", "--sglang-ep-size"),
    ("cuda graph", "--sglang-cuda-graph-bs"),
    ("kv cache", "--sglang-kv-cache-dtype"),
    ("attention backend", "--sglang-attention-backend"),
)
# Resolved values compared with the requested ones (a silent change is reported as a warning).
_WATCHED = (
    "ep_size",
    "moe_dense_tp_size",
    "mem_fraction_static",
    "speculative_algorithm",
    "speculative_num_steps",
    "speculative_eagle_topk",
    "speculative_num_draft_tokens",
    "kv_cache_dtype",
    "attention_backend",
    "enable_dp_lm_head",
)
_RESOLVED_KEYS = (
    "tp_size",
    "dp_size",
    "attn_dp_size",
    "ep_size",
    "pp_size",
    "nnodes",
    "moe_dense_tp_size",
    "mem_fraction_static",
    "enable_dp_lm_head",
    "enable_dp_attention",
    "speculative_algorithm",
    "speculative_num_steps",
    "speculative_eagle_topk",
    "speculative_num_draft_tokens",
    "attention_backend",
    "kv_cache_dtype",
    "chunked_prefill_size",
    "max_running_requests",
    "cuda_graph_bs_decode",
    "cuda_graph_max_bs_decode",
    "cuda_graph_bs",
    "cuda_graph_max_bs",
    "device",
)

# GLM-4.5 (355B-A32B) config.json values used where the argv has no model arg (trainer-contract §1.5).
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
    def tp(self) -> int:
        return int(self.kwargs.get("tp_size") or 1)

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

    No SGLang needed. ``tp_size`` is ``--rollout-num-gpus-per-engine`` (miles
    ``sglang_utils/arguments.py:184``), ``nnodes = max(1, tp // --num-gpus-per-node)``
    (``sglang_engine.py:711``; the argv's ``--num-gpus-per-node`` wins over
    ``num_gpus_per_node``, as in miles), ``node_rank = 0``, ``dist_init_addr`` a loopback
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
    if gpe < 1:
        findings.append(
            Finding(
                name(GPUS_PER_ENGINE),
                f"{GPUS_PER_ENGINE} is {gpe}; it must be at least 1",
                "positive size",
                SRC_SELF,
            )
        )
        gpe = 1
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
    freq_text = (flags.get("--moe-layer-freq") or [None])[0]
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


def resolve_sglang(
    argv: list[str], num_gpus_per_node: int, hf_config_path: str | None = None, python: str | None = None
) -> dict:
    """Resolve engine 0's ``ServerArgs`` with the SGLang of ``python``; return the worker's answer
    (``available``, ``sglang_version``, ``kwargs`` as passed, ``errors``, ``notes``,
    ``resolved``, ``timings``; see :mod:`glmlaunch.deep._sglang_worker`) plus ``engine``
    (the :class:`EngineArgs`) and ``config`` (the ``config.json`` used)."""
    eng = engine_kwargs(argv, num_gpus_per_node)
    tmp = tempfile.mkdtemp(prefix="glmlaunch-sglang-")
    try:
        model_dir = os.path.join(tmp, "model")
        os.makedirs(model_dir)
        cfg_file = os.path.join(model_dir, "config.json")
        config: dict[str, Any] | None = None
        if hf_config_path:
            src = hf_config_path
            if os.path.isdir(src):
                src = os.path.join(src, "config.json")
            try:
                shutil.copyfile(src, cfg_file)
                with open(cfg_file, encoding="utf-8") as fh:
                    config = json.load(fh)
            except (OSError, ValueError) as exc:
                return {
                    "available": None,
                    "fatal": f"cannot use {src}: {type(exc).__name__}: {exc}",
                    "engine": eng,
                }
        if not isinstance(config, dict):
            config = model_config(argv, eng.eagle)
            with open(cfg_file, "w", encoding="utf-8") as fh:
                json.dump(config, fh, indent=1)
        kwargs = dict(eng.kwargs, model_path=model_dir)
        req = {"kwargs": kwargs, "sglang_tokens": eng.sglang_tokens, "resolved_keys": list(_RESOLVED_KEYS)}
        ans = run_worker(req, python)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ans["engine"] = eng
    ans["config"] = config
    return ans


def _cfg_int(cfg: dict, *keys: str) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    sub = cfg.get("text_config")
    if isinstance(sub, dict):
        return _cfg_int(sub, *keys)
    return None


def _rules(eng: EngineArgs, cfg: dict, name: Any) -> list[Finding]:
    """Rules SGLang's ServerArgs accepts although the engine fails later (deps.md §6)."""
    out: list[Finding] = []
    kw = eng.kwargs
    tp, gpn = eng.tp, eng.num_gpus_per_node
    f_tp = name(GPUS_PER_ENGINE)
    accepted = "(SGLang's ServerArgs accepts this; deps.md §6)"

    # miles sglang_utils/arguments.py:193-194 (asserted on the head at parse time).
    dp = int(kw.get("dp_size") or 1)
    if dp > 1 and not kw.get("enable_dp_attention"):
        out.append(
            Finding(
                name("--sglang-dp-size"),
                f"{name('--sglang-dp-size')} = {dp} requires {name('--sglang-enable-dp-attention')}",
                "sglang_dp_size > 1 => sglang_enable_dp_attention",
                "miles sglang_utils/arguments.py:193-194 (validate_args)",
                extra={"fields": [name("--sglang-dp-size"), name("--sglang-enable-dp-attention")]},
            )
        )

    if gpn >= 1 and ((tp > gpn and tp % gpn) or (tp < gpn and gpn % tp)):
        what = (
            f"spans {tp / gpn:.2f} nodes"
            if tp > gpn
            else f"does not fit a node evenly ({gpn} % {tp} = {gpn % tp})"
        )
        out.append(
            Finding(
                f_tp,
                f"an engine of {f_tp} = {tp} GPUs {what} of {gpn} GPUs; miles gives it nnodes = "
                f"{max(1, tp // gpn)} and SGLang splits TP {tp} over that many nodes",
                "gpus_per_engine % num_gpus_per_node == 0 (multi-node) or num_gpus_per_node % gpus_per_engine == 0",
                f"{SRC_MILES_ENGINE} (sglang_engine.py:711), rollout_server.py:47-49 {accepted}",
                extra={"fields": [f_tp]},
            )
        )

    ep = int(kw.get("ep_size") or 1)
    f_ep = name("--sglang-ep-size")
    if ep not in (1, tp):
        out.append(
            Finding(
                f_ep,
                f"{f_ep} = {ep} must be 1 or the engine's TP ({f_tp} = {tp})",
                "sglang ep_size in {1, tp_size}",
                f"SGLang MoE expert parallelism, trainer-contract §4 row 16 {accepted}",
                extra={"fields": [f_ep, f_tp]},
            )
        )
    experts = _cfg_int(cfg, "n_routed_experts", "num_experts", "num_local_experts")
    if experts and ep > 1 and experts % ep:
        out.append(
            Finding(
                f_ep,
                f"the model's {experts} routed experts are not divisible by {f_ep} = {ep}",
                "num_experts % sglang ep_size == 0",
                f"SGLang MoE expert placement {accepted}",
                extra={"fields": [f_ep]},
            )
        )

    attn_dp = eng.attn_dp
    heads = _cfg_int(cfg, "num_attention_heads")
    kv_heads = _cfg_int(cfg, "num_key_value_heads") or heads
    if heads and attn_dp >= 1 and tp % attn_dp == 0:
        attn_tp = tp // attn_dp
        if heads % attn_tp or (kv_heads and kv_heads % attn_tp and attn_tp % kv_heads):
            out.append(
                Finding(
                    f_tp,
                    f"the engine's attention TP ({f_tp} {tp} / attention DP {attn_dp} = {attn_tp}) does not "
                    f"split the model's {heads} attention heads / {kv_heads} KV heads evenly",
                    "heads % attn_tp == 0 and (kv_heads % attn_tp == 0 or attn_tp % kv_heads == 0)",
                    f"SGLang model load (attention head split over attention TP) {accepted}",
                    extra={"fields": [f_tp, name("--sglang-dp-size")]},
                )
            )

    if eng.eagle:
        topk = kw.get("speculative_eagle_topk")
        draft = kw.get("speculative_num_draft_tokens")
        if isinstance(topk, int) and isinstance(draft, int) and topk > draft:
            f_k = name("--sglang-speculative-eagle-topk")
            f_d = name("--sglang-speculative-num-draft-tokens")
            out.append(
                Finding(
                    f_k,
                    f"EAGLE {f_k} = {topk} is larger than {f_d} = {draft}: the draft tree cannot hold the top-k branches",
                    "speculative_eagle_topk <= speculative_num_draft_tokens",
                    f"SGLang EAGLE draft tree {accepted}",
                    extra={"fields": [f_k, f_d]},
                )
            )

    mem = kw.get("mem_fraction_static")
    if isinstance(mem, (int, float)) and not 0 < mem < 1:
        f_m = name("--sglang-mem-fraction-static")
        out.append(
            Finding(
                f_m,
                f"{f_m} = {mem} must be between 0 and 1 (a fraction of GPU memory)",
                "0 < mem_fraction_static < 1",
                f"SGLang memory pool sizing {accepted}",
            )
        )
    return out


def engine_rule_findings(
    argv: list[str],
    num_gpus_per_node: int,
    config: dict | None = None,
    flag_fields: dict[str, str] | None = None,
) -> list[Finding]:
    """The rules SGLang's ``ServerArgs`` accepts although wrong, without running SGLang.

    ``config``: the model's ``config.json`` as a dict (default: :func:`model_config` of the
    argv). :func:`check_sglang` runs these too, after SGLang's own verdict.
    """
    names = dict(flag_fields or {})
    eng = engine_kwargs(argv, num_gpus_per_node)
    cfg = config if isinstance(config, dict) else model_config(argv, eng.eagle)
    return _rules(eng, cfg, lambda flag: names.get(flag, flag))


def _field_flag(f: str, flags: dict[str, str]) -> str | None:
    """The argv flag that set ServerArgs field ``f`` (attn_dp_size: the dp-size flag), or None."""
    if f in flags:
        return flags[f]
    if f == "attn_dp_size" and "dp_size" in flags:
        return flags["dp_size"]
    return None


def _flag_of(fields: list[str], text: str, flags: dict[str, str]) -> str:
    """The flag an SGLang message is about: the first field named that the argv sets directly,
    else a known phrase, else the flag a derived field (TP, nodes) comes from, else the engine size."""
    derived = []
    for f in fields:
        flag = _field_flag(f, flags)
        if flag is None:
            continue
        if flag == GPUS_PER_ENGINE or f in _DERIVED_FLAGS:
            derived.append(flag)
        else:
            return flag
    low = text.lower()
    for phrase, flag in _PHRASE_FLAGS:
        if phrase in low:
            return flag
    return derived[0] if derived else GPUS_PER_ENGINE


def check_sglang(
    argv: list[str],
    num_gpus_per_node: int,
    hf_config_path: str | None = None,
    python: str | None = None,
    flag_fields: dict[str, str] | None = None,
) -> list[Finding]:
    """Check one rollout engine's SGLang ``ServerArgs`` as miles will build it, before launch.

    ``argv``: the trainer's token list (see :func:`glmlaunch.deep.megatron.parse_flags`).
    ``num_gpus_per_node``: physical GPUs per node (the argv's ``--num-gpus-per-node`` wins, as
    in miles). ``hf_config_path``: the checkpoint's ``config.json`` (or its folder); without it
    a GLM-4.5-like config is built from the argv's model args. ``python``: the interpreter
    that has SGLang (default: env ``GLMLAUNCH_SGLANG_PYTHON``, else this one).
    ``flag_fields``: ``{flag: recipe field}``; findings name the recipe field.

    Returns findings (empty when everything passes; not sorted, ``deep_check`` sorts them):

    * SGLang's own verdict: exceptions of ``ServerArgs(...)``, ``resolve_once()`` and
      ``check_server_args()`` (bare ``AssertionError``s are shown with their ``assert``
      statement), and ``--sglang-*`` flags SGLang's parser (which miles reuses) rejects;
    * the rules SGLang accepts although wrong (see the module docstring);
    * warnings: which dp-attention spelling the trainer passes when the installed SGLang
      renamed it to ``attn_dp_size``, and values SGLang silently changes while resolving.

    When SGLang cannot be imported by ``python``, returns exactly one ``"warning"`` finding
    saying the check was skipped and how to enable it. Never raises. Takes ~4-8 s (the SGLang
    import in the subprocess).
    """
    names = dict(flag_fields or {})

    def name(flag: str) -> str:
        return names.get(flag, flag)

    try:
        ans = resolve_sglang(argv, num_gpus_per_node, hf_config_path, python)
    except OSError as exc:  # the temporary model folder could not be written
        return [
            Finding(
                "sglang",
                f"deep SGLang check skipped: {type(exc).__name__}: {exc}",
                "SGLang worker runs",
                SRC_SELF,
                severity="warning",
            )
        ]
    eng: EngineArgs = ans["engine"]
    exe = _python(python)
    if ans.get("available") is False:
        return [
            Finding(
                "sglang",
                f"deep SGLang check skipped: {ans.get('import_error') or 'sglang is not importable'}; {INSTALL_HINT}",
                "sglang importable",
                SRC_SELF,
                severity="warning",
            )
        ]
    if ans.get("available") is None:
        return [
            Finding(
                "sglang",
                f"deep SGLang check skipped: the SGLang worker failed ({ans.get('fatal', '?')}); {INSTALL_HINT}",
                "SGLang worker runs",
                SRC_SELF,
                severity="warning",
                extra={"python": exe},
            )
        ]

    ver = ans.get("sglang_version") or "unknown"
    tag = f"(sglang {ver})"
    out: list[Finding] = [replace(f, field=name(f.field)) for f in eng.findings]
    flags = eng.flags
    rejected_flags: set[str] = set()

    for note in ans.get("notes") or []:
        kind = note.get("kind")
        if kind == "dp_attention_rename":
            dp = note.get("dp_size")
            f_attn = name("--sglang-enable-dp-attention")
            if note.get("old_field_exists", True):
                out.append(
                    Finding(
                        f_attn,
                        f"SGLang {ver} renames dp-attention: the trainer passes `--sglang-dp-size {dp} "
                        f"--sglang-enable-dp-attention` (deprecated there, due for removal), which SGLang rewrites "
                        f"to attn_dp_size={dp}, dp_size=1; the new spelling is `--sglang-attn-dp-size {dp}`",
                        "enable_dp_attention + dp_size -> attn_dp_size",
                        f"sglang ServerArgs (arg_groups/parallel_hook.py handle_deprecated_dp_attention) {tag}",
                        severity="warning",
                        extra={
                            "fields": [f_attn, name("--sglang-dp-size")],
                            "sglang_version": ver,
                            "spelling": "--sglang-dp-size N --sglang-enable-dp-attention",
                        },
                    )
                )
            else:
                out.append(
                    Finding(
                        f_attn,
                        f"SGLang {ver} no longer has enable_dp_attention: `--sglang-enable-dp-attention` is "
                        f"not a flag there; pass `--sglang-attn-dp-size {dp}` instead of `--sglang-dp-size {dp}`",
                        "attn_dp_size replaces enable_dp_attention + dp_size",
                        f"sglang ServerArgs {tag}",
                        extra={"fields": [f_attn, name("--sglang-dp-size")], "sglang_version": ver},
                    )
                )
        elif kind in ("flag_rejected", "flag_unknown"):
            flag = note.get("flag", "")
            rejected_flags.add(flag)
            hint = ""
            if note.get("similar"):
                hint = "; did you mean " + " / ".join(
                    "--sglang-" + s.replace("_", "-") for s in note["similar"]
                )
            if "cuda-graph-bs" in flag and "decode" not in flag:
                hint = "; this SGLang spells it --sglang-cuda-graph-bs-decode"
            verb = "rejects" if kind == "flag_rejected" else "has no such flag:"
            out.append(
                Finding(
                    name(flag),
                    f"SGLang {ver}'s argument parser (which miles reuses for --sglang-*) {verb} {flag}: "
                    f"{note.get('message')}{hint}",
                    "every --sglang-* flag is a ServerArgs flag of the installed SGLang",
                    f"sglang ServerArgs.add_cli_args {tag}; miles sglang_utils/arguments.py (add_sglang_arguments)",
                )
            )
        elif kind == "flag_skipped_by_miles":
            flag = note.get("flag", "")
            out.append(
                Finding(
                    name(flag),
                    f"miles sets this ServerArgs value itself and does not accept {flag} "
                    f"(e.g. tp_size = {GPUS_PER_ENGINE}); remove it",
                    "miles-owned ServerArgs fields are not --sglang-* flags",
                    "miles sglang_utils/arguments.py (skipped_args)",
                    severity="warning",
                )
            )
        elif kind == "renamed":
            flag = flags.get(note.get("old", ""), "")
            if flag and flag not in rejected_flags:
                new = note.get("new") or "?"
                out.append(
                    Finding(
                        name(flag),
                        f"SGLang {ver} has no {note.get('old')} (now {new}); miles' parser rejects {flag}",
                        "every --sglang-* flag is a ServerArgs flag of the installed SGLang",
                        f"sglang ServerArgs {tag}",
                    )
                )
        elif kind == "field_unknown":
            fld = note.get("field", "")
            flag = flags.get(fld, "")
            if flag in rejected_flags:
                continue
            out.append(
                Finding(
                    name(flag) if flag else "sglang",
                    f"SGLang {ver}'s ServerArgs has no field {fld}; miles drops it with a log line",
                    "ServerArgs field exists",
                    f"sglang ServerArgs {tag}; {SRC_MILES_ENGINE} (unused_keys)",
                    severity="warning",
                )
            )
        elif kind == "parser_unavailable":
            out.append(
                Finding(
                    "sglang",
                    f"the --sglang-* flags were not parsed: {note.get('message')}",
                    "SGLang's parser builds",
                    f"sglang ServerArgs.add_cli_args {tag}",
                    severity="warning",
                )
            )

    stage_src = {
        "construct": "sglang ServerArgs(...)",
        "resolve": "sglang ServerArgs.resolve_once",
        "check": "sglang ServerArgs.check_server_args",
    }
    for err in ans.get("errors") or []:
        fields = list(err.get("fields") or [])
        text = f"{err.get('message', '')} {err.get('assert_source', '')}"
        flag = _flag_of(fields, text, flags)
        involved = [name(fl) for fl in (_field_flag(f, flags) for f in fields) if fl]
        msg = err.get("message") or ""
        if err.get("type") == "AssertionError" and err.get("assert_source"):
            msg = f"{msg} [{err['assert_source']}]" if msg else err["assert_source"]
        values = ", ".join(
            f"{f}={json.dumps(ans.get('kwargs', {}).get(f))}" for f in fields if f in ans.get("kwargs", {})
        )
        out.append(
            Finding(
                name(flag),
                f"SGLang {ver} rejects the rollout engine config: {err.get('type')}: {msg}"
                + (f" (engine values: {values})" if values else ""),
                f"{stage_src.get(err.get('stage'), 'sglang ServerArgs')} succeeds",
                f"{stage_src.get(err.get('stage'), 'sglang ServerArgs')} {tag}",
                extra={
                    "fields": list(dict.fromkeys([name(flag), *involved])),
                    "exception": err.get("type"),
                    "stage": err.get("stage"),
                },
            )
        )

    resolved = ans.get("resolved") or {}
    sent = ans.get("kwargs") or {}
    if not ans.get("errors"):
        for key in _WATCHED:
            if key in sent and key in resolved and sent[key] != resolved[key] and key in flags:
                f = name(flags[key])
                out.append(
                    Finding(
                        f,
                        f"SGLang {ver} changes {key} from {sent[key]!r} to {resolved[key]!r} while resolving",
                        f"{key} is kept as given",
                        f"sglang ServerArgs.resolve_once {tag}",
                        severity="warning",
                    )
                )

    cfg = ans.get("config") or {}
    out.extend(_rules(eng, cfg, name))
    return out
