"""Deep Megatron check: megatron-core's own validators on the trainer's argv, on CPU.

Nothing here needs a GPU; megatron-core and torch are imported lazily. :func:`check_megatron`
runs, and turns what each raises (or warns) into findings naming the recipe field:

1. ``parallel_state.initialize_model_parallel`` on torch's fake process group of ``world_size``
   ranks, the call miles makes in every train actor
   (miles/backends/megatron_utils/initialize.py:45 (miles@31f1ca961a94));
2. ``TransformerConfig(...)`` built from the model args the way Megatron-LM's
   ``core_transformer_config_from_args`` does
   (megatron/training/arguments.py:1394 (Megatron-LM@2e64d788b));
3. for MoE models, the decoder layer specs (``get_gpt_decoder_layer_specs``: the MoE layer
   pattern) and one token through the router (``topk_routing_with_score_function``: the top-k);
4. ``OptimizerConfig(...)``.

Each finding's source is the megatron-core line that raised, at the installed version. The
hand-written rules (layers % PP, experts % EP, ...) live in :mod:`glmlaunch.checks`.
"""

from __future__ import annotations

import ast
import os
import re
import threading
import traceback
import warnings
from typing import Any

from glmlaunch.errors import Finding

INSTALL_HINT = "pip install torch==2.13.0 && pip install 'glmlaunch[megatron]'"
SRC_SELF = "docs/rules.md#deep-checks"

_SIZE_FLAGS = {
    "tp": "--tensor-model-parallel-size",
    "pp": "--pipeline-model-parallel-size",
    "cp": "--context-parallel-size",
    "ep": "--expert-model-parallel-size",
    "etp": "--expert-tensor-parallel-size",
}
_VPP_FLAGS = ("--num-virtual-stages-per-pipeline-rank", "--virtual-pipeline-model-parallel-size")

# TransformerConfig field -> the flag that sets it (to name the field in core's messages). The
# parallel sizes come first: a message naming a parallel size is about the layout.
_CONFIG_FIELD_FLAGS: list[tuple[str, str]] = [
    ("tensor_model_parallel_size", "--tensor-model-parallel-size"),
    ("pipeline_model_parallel_size", "--pipeline-model-parallel-size"),
    ("context_parallel_size", "--context-parallel-size"),
    ("expert_tensor_parallel_size", "--expert-tensor-parallel-size"),
    ("expert_model_parallel_size", "--expert-model-parallel-size"),
    ("virtual_pipeline_model_parallel_size", "--num-virtual-stages-per-pipeline-rank"),
    ("num_layers_in_first_pipeline_stage", "--decoder-first-pipeline-num-layers"),
    ("num_layers_in_last_pipeline_stage", "--decoder-last-pipeline-num-layers"),
    ("num_attention_heads", "--num-attention-heads"),
    ("num_query_groups", "--num-query-groups"),
    ("num_moe_experts", "--num-experts"),
    ("moe_ffn_hidden_size", "--moe-ffn-hidden-size"),
    ("moe_shared_expert_intermediate_size", "--moe-shared-expert-intermediate-size"),
    ("moe_router_topk", "--moe-router-topk"),
    ("moe_router_score_function", "--moe-router-score-function"),
    ("moe_router_num_groups", "--moe-router-num-groups"),
    ("moe_router_group_topk", "--moe-router-group-topk"),
    ("recompute_granularity", "--recompute-granularity"),
    ("recompute_method", "--recompute-method"),
    ("recompute_num_layers", "--recompute-num-layers"),
    ("ffn_hidden_size", "--ffn-hidden-size"),
    ("kv_channels", "--kv-channels"),
    ("hidden_size", "--hidden-size"),
    ("num_layers", "--num-layers"),
]
_N_SIZES = 6  # the first six entries above are parallel sizes
# Phrases in core's messages that name no field literally.
_PHRASE_FLAGS: list[tuple[str, str]] = [
    ("expert_tensor_model_pipeline_parallel", "--expert-model-parallel-size"),
    ("interleaved schedule", "--num-virtual-stages-per-pipeline-rank"),
    ("world_size", "--tensor-model-parallel-size"),
    ("middle stage", "--decoder-last-pipeline-num-layers"),
    ("middle layers", "--decoder-last-pipeline-num-layers"),
    ("middle pp stages", "--decoder-last-pipeline-num-layers"),
    ("use expert-parallel", "--num-experts"),
    ("etp==1", "--expert-tensor-parallel-size"),
    ("sequence parallelism", "--sequence-parallel"),
    ("moe-router-pre-softmax", "--moe-router-pre-softmax"),
    ("expert bias", "--moe-router-score-function"),
    ("pipeline_dtype", "--pipeline-model-parallel-size"),
    ("recompute_granuarlity", "--recompute-granularity"),
    ("dispatcher", "--moe-token-dispatcher-type"),
    ("deepep", "--moe-enable-deepep"),
    ("moe_layer_pattern", "--moe-layer-freq"),
    ("moe_layer_freq", "--moe-layer-freq"),
    ("selected index k", "--moe-router-topk"),
]
# megatron/training/arguments.py:710-713 (Megatron-LM@2e64d788b)
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "uint8"}

_LOCK = threading.Lock()


class _DistBusy(Exception):
    """torch.distributed is already initialized in this process; the fake world cannot be built."""


class _BadValue(ValueError):
    def __init__(self, flag: str, text: str, what: str):
        super().__init__(f"{flag} {text!r} is not {what}")
        self.flag = flag


def parse_flags(argv: list[str]) -> dict[str, list[str]]:
    """Split a trainer argv into ``{flag: [values...]}`` the way argparse reads it.

    Tokens before the first ``--flag`` (the interpreter and script) are ignored; a flag owns
    every following token up to the next ``--flag``; a boolean flag maps to ``[]``;
    ``--flag=value`` is one value; a bare ``--`` ends the current flag. A repeated flag keeps its
    last occurrence (argparse's ``store``). Never raises.
    """
    out: dict[str, list[str]] = {}
    cur: str | None = None
    for tok in argv:
        if tok == "--":
            cur = None
        elif tok.startswith("--") and len(tok) > 2:
            if "=" in tok:
                name, val = tok.split("=", 1)
                out[name] = [val]
                cur = None
            else:
                cur = tok
                out[cur] = []
        elif cur is not None:
            out[cur].append(tok)
    return out


def parse_moe_layer_freq(text: str) -> int | list[int]:
    """Evaluate ``--moe-layer-freq`` like Megatron-LM's ``moe_freq_type``
    (megatron/training/arguments.py:231 (Megatron-LM@2e64d788b)), safely.

    ``"2"`` -> ``2``; ``"[0]*3+[1]*89"`` -> a list of 92 ints. Only integer literals, list
    literals, ``+``, ``*`` and parentheses are accepted (Megatron-LM calls ``eval``).
    Raises ``ValueError`` for anything else.
    """
    text = text.strip()
    if "[" not in text:
        return int(text)

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Mult):
                count = right if isinstance(left, list) else left if isinstance(right, list) else None
                if isinstance(count, int) and count > 100_000:
                    raise ValueError("repeat count too large")
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")

    try:
        value = ev(ast.parse(text, mode="eval"))
    except (SyntaxError, TypeError) as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ValueError("must evaluate to an int or a list of ints")
    return value


class _Args:
    """The trainer argv, read the way Megatron-LM and miles read it (defaults included).
    A value that does not parse raises :class:`_BadValue`."""

    def __init__(self, argv: list[str]):
        self.flags = parse_flags(argv)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def text(self, flag: str, default: Any = None) -> Any:
        vals = self.flags.get(flag)
        return vals[0] if vals else default

    def integer(self, flag: str, default: Any = None) -> Any:
        text = self.text(flag)
        try:
            return default if text is None else int(text)
        except ValueError:
            raise _BadValue(flag, text, "an integer") from None

    def number(self, flag: str, default: Any = None) -> Any:
        text = self.text(flag)
        try:
            return default if text is None else float(text)
        except ValueError:
            raise _BadValue(flag, text, "a number") from None


def _sizes(a: _Args) -> dict[str, Any]:
    """Parallel sizes with Megatron-LM's defaults (megatron/training/arguments.py:410-411 and
    :618-619 (Megatron-LM@2e64d788b): ETP defaults to TP, a virtual size of 1 means none)."""
    s = {k: a.integer(f, 1) for k, f in _SIZE_FLAGS.items()}
    if not a.has(_SIZE_FLAGS["etp"]):
        s["etp"] = s["tp"]
    vpp = next((a.integer(f) for f in _VPP_FLAGS if a.has(f)), None)
    s["vpp"] = None if vpp == 1 else vpp
    return s


def _import_megatron() -> dict[str, Any]:
    """Import torch and megatron-core (slow: ~3-5 s). Raises ImportError when either is missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        import torch.distributed as dist
        from megatron.core import parallel_state
        from megatron.core import utils as mcore_utils
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_layer_specs
        from megatron.core.optimizer import OptimizerConfig
        from megatron.core.transformer import TransformerConfig
        from megatron.core.transformer.moe.moe_utils import topk_routing_with_score_function
        from torch.testing._internal.distributed.fake_pg import FakeStore
    return {
        "torch": torch,
        "dist": dist,
        "ps": parallel_state,
        "utils": mcore_utils,
        "FakeStore": FakeStore,
        "OptimizerConfig": OptimizerConfig,
        "TransformerConfig": TransformerConfig,
        "layer_specs": get_gpt_decoder_layer_specs,
        "route": topk_routing_with_score_function,
    }


def _core_version() -> str:
    try:
        from importlib.metadata import version

        return version("megatron-core")
    except Exception:
        return "unknown"


def _where(filename: str, lineno: int | None) -> str:
    """``megatron/core/...py:LINE (megatron-core@VERSION)`` for a file of the installed package."""
    path = filename.replace(os.sep, "/")
    i = path.rfind("megatron/core/")
    return f"{path[i:] if i >= 0 else os.path.basename(path)}:{lineno} (megatron-core@{_core_version()})"


def _raised_at(exc: BaseException) -> str:
    """Where megatron-core raised ``exc``: its innermost megatron-core frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    core = [f for f in frames if "megatron/core/" in f.filename.replace(os.sep, "/")]
    found = core or frames
    if not found:
        return f"megatron-core@{_core_version()}"
    return _where(found[-1].filename, found[-1].lineno)


def _flag_for_message(msg: str) -> str:
    """The flag a megatron-core message is about: a parallel size named in it, else the config
    field named last before "must" (the rule's subject), else the first named, else a known
    phrase, else TP."""
    low = msg.lower()
    hits = sorted(
        (m.start(), i, flag)
        for i, (name, flag) in enumerate(_CONFIG_FIELD_FLAGS)
        for m in re.finditer(rf"\b{name}\b", low)
    )
    for _pos, i, flag in hits:
        if i < _N_SIZES:
            return flag
    must = low.find(" must ")
    before = [h for h in hits if must >= 0 and h[0] < must]
    if before:
        return before[-1][2]
    if hits:
        return hits[0][2]
    return next((flag for phrase, flag in _PHRASE_FLAGS if phrase in low), _SIZE_FLAGS["tp"])


def _run_parallel_state(m: dict[str, Any], world_size: int, s: dict[str, Any]) -> None:
    """Build the real process groups on a fake world of ``world_size`` ranks (rank 0) and tear
    everything down again (~5 ms). Raises what ``initialize_model_parallel`` raises, or
    ``_DistBusy`` when this process already has a default process group."""
    dist, ps = m["dist"], m["ps"]
    with _LOCK:
        if dist.is_initialized():
            raise _DistBusy("torch.distributed is already initialized in this process")
        dist.init_process_group("fake", rank=0, world_size=world_size, store=m["FakeStore"]())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ps.initialize_model_parallel(
                    tensor_model_parallel_size=s["tp"],
                    pipeline_model_parallel_size=s["pp"],
                    virtual_pipeline_model_parallel_size=s["vpp"],
                    context_parallel_size=s["cp"],
                    expert_model_parallel_size=s["ep"],
                    expert_tensor_parallel_size=s["etp"],
                    create_gloo_process_groups=False,
                )
        finally:
            ps.destroy_model_parallel()
            dist.destroy_process_group()


def _transformer_kwargs(a: _Args, s: dict[str, Any], torch: Any) -> dict[str, Any]:
    """TransformerConfig kwargs as Megatron-LM's core_transformer_config_from_args builds them
    (line numbers: megatron/training/arguments.py (Megatron-LM@2e64d788b))."""
    tp, pp = s["tp"], s["pp"]
    hidden = a.integer("--hidden-size")
    heads = a.integer("--num-attention-heads")
    swiglu = a.has("--swiglu")
    ffn = a.integer("--ffn-hidden-size")
    if ffn is None and hidden is not None:  # :866-875
        ffn = int((4 * hidden * 2 / 3) / 64) * 64 if swiglu else 4 * hidden
    bf16 = not a.has("--fp16")  # miles/backends/megatron_utils/arguments.py:22 (miles@31f1ca961a94)
    dtype = torch.bfloat16 if bf16 else torch.float16
    kw: dict[str, Any] = {
        "num_layers": a.integer("--num-layers"),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_query_groups": a.integer("--num-query-groups", 1)
        if a.has("--group-query-attention")
        else None,  # :1436-1439
        "kv_channels": a.integer("--kv-channels"),
        "ffn_hidden_size": ffn,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "virtual_pipeline_model_parallel_size": s["vpp"],
        "context_parallel_size": s["cp"],
        "expert_model_parallel_size": s["ep"],
        "expert_tensor_parallel_size": s["etp"],
        "sequence_parallel": a.has("--sequence-parallel") and tp > 1,  # :971-977 turns SP off at TP 1
        "pipeline_dtype": dtype if pp > 1 else None,  # :1413
        "params_dtype": dtype,
        "bf16": bf16,
        "fp16": not bf16,
        "num_layers_in_first_pipeline_stage": a.integer("--decoder-first-pipeline-num-layers"),
        "num_layers_in_last_pipeline_stage": a.integer("--decoder-last-pipeline-num-layers"),
        "recompute_granularity": a.text("--recompute-granularity"),
        "recompute_method": a.text("--recompute-method"),
        "recompute_num_layers": a.integer("--recompute-num-layers"),
        "add_bias_linear": not a.has("--disable-bias-linear"),
        "add_qkv_bias": a.has("--add-qkv-bias"),
        "qk_layernorm": a.has("--qk-layernorm"),
        "gated_linear_unit": swiglu,
        "normalization": a.text("--normalization", "LayerNorm"),
        "layernorm_epsilon": a.number("--norm-epsilon", 1e-5),
        "attention_dropout": a.number("--attention-dropout", 0.1),
        "hidden_dropout": a.number("--hidden-dropout", 0.1),
    }
    experts = a.integer("--num-experts") or None  # :1078-1079: 0 means dense
    if experts is not None:
        text = a.text("--moe-layer-freq")
        try:
            freq = 1 if text is None else parse_moe_layer_freq(text)
        except ValueError:
            raise _BadValue(
                "--moe-layer-freq", text, "an int or a list expression such as [0]*3+[1]*89"
            ) from None
        kw.update(
            num_moe_experts=experts,
            moe_router_topk=a.integer("--moe-router-topk", 2),
            moe_ffn_hidden_size=a.integer("--moe-ffn-hidden-size", ffn),  # :1080-1081
            moe_shared_expert_intermediate_size=a.integer("--moe-shared-expert-intermediate-size"),
            moe_router_pre_softmax=a.has("--moe-router-pre-softmax"),
            moe_router_score_function=a.text("--moe-router-score-function", "softmax"),
            moe_router_enable_expert_bias=a.has("--moe-router-enable-expert-bias"),
            moe_router_topk_scaling_factor=a.number("--moe-router-topk-scaling-factor"),
            moe_router_load_balancing_type=a.text("--moe-router-load-balancing-type", "aux_loss"),
            moe_router_num_groups=a.integer("--moe-router-num-groups"),
            moe_router_group_topk=a.integer("--moe-router-group-topk"),
            moe_token_dispatcher_type=a.text("--moe-token-dispatcher-type", "allgather"),
            moe_enable_deepep=a.has("--moe-enable-deepep"),
            moe_grouped_gemm=a.has("--moe-grouped-gemm"),
            moe_layer_freq=freq,
        )
    # Not passed: --moe-permute-fusion (its check imports TE kernels, absent on CPU).
    return kw


def _optimizer_kwargs(a: _Args, torch: Any) -> dict[str, Any]:
    """OptimizerConfig kwargs as Megatron-LM / miles build them."""
    optimizer = a.text("--optimizer", "adam")
    bf16 = not a.has("--fp16")
    offload = a.has("--optimizer-cpu-offload")
    kw: dict[str, Any] = {
        "optimizer": optimizer,
        "bf16": bf16,
        "fp16": not bf16,
        "params_dtype": torch.bfloat16 if bf16 else torch.float16,
        # distributed optimizer iff adam: miles/backends/megatron_utils/arguments.py:15-17 (miles@31f1ca961a94)
        "use_distributed_optimizer": optimizer.lower() == "adam",
        "use_precision_aware_optimizer": a.has("--use-precision-aware-optimizer"),
        "optimizer_cpu_offload": offload,
        "overlap_cpu_optimizer_d2h_h2d": a.has("--overlap-cpu-optimizer-d2h-h2d"),
        # megatron/training/arguments.py:2156 (Megatron-LM@2e64d788b): default 1.0
        "optimizer_offload_fraction": a.number("--optimizer-offload-fraction", 1.0) if offload else 0.0,
    }
    for key in ("main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype"):
        text = a.text("--" + key.replace("_", "-"))
        if text is not None:
            if (
                text not in _DTYPES
            ):  # the choices of megatron/training/arguments.py:2956-2968 (Megatron-LM@2e64d788b)
                raise _BadValue("--" + key.replace("_", "-"), text, f"one of {sorted(_DTYPES)}")
            kw[key] = getattr(torch, _DTYPES[text])
    return kw


def check_megatron(
    argv: list[str], world_size: int, flag_fields: dict[str, str] | None = None
) -> list[Finding]:
    """Run megatron-core's own validators (see the module docstring) on the trainer argv.

    ``argv``: the trainer's token list (``["python3", ".../train.py", "--num-layers", "92", ...]``).
    ``world_size``: Megatron ranks = ``actor_num_nodes * actor_num_gpus_per_node``.
    ``flag_fields``: ``{flag: recipe field}``; findings name the recipe field, else the flag.

    Returns findings (empty when megatron-core accepts everything): one error per validator
    that raised, quoting megatron-core, with ``source`` the megatron-core line that raised, plus
    core's "EP and TP need SP" warning. A value that does not parse is one error. When torch or
    megatron-core cannot be imported, or this process already has a process group, one warning
    says what was skipped. Never raises; ~3-5 s the first time (the import), then milliseconds.
    """
    names = flag_fields or {}

    def name(flag: str) -> str:
        return names.get(flag, flag)

    def skipped(msg: str) -> Finding:
        return Finding("megatron", msg, "megatron-core's validators run", SRC_SELF, "warning")

    try:
        m = _import_megatron()
    except ImportError as exc:
        return [
            skipped(
                f"deep Megatron check skipped: torch / megatron-core not importable ({exc}); "
                f"install with: {INSTALL_HINT}"
            )
        ]
    torch = m["torch"]
    a = _Args(argv)
    try:
        sizes = _sizes(a)
        tkw = _transformer_kwargs(a, sizes, torch)
        okw = _optimizer_kwargs(a, torch)
    except _BadValue as exc:
        return [Finding(name(exc.flag), str(exc), "the trainer flag parses", SRC_SELF)]
    out: list[Finding] = []

    def rejected(what: str, call: str, exc: BaseException, flag: str | None = None) -> None:
        msg = str(exc) or type(exc).__name__
        out.append(
            Finding(
                name(flag or _flag_for_message(msg)),
                f"megatron-core rejects the {what}: {type(exc).__name__}: {msg}",
                f"{call} accepts it",
                _raised_at(exc),
                extra={"exception": type(exc).__name__},
            )
        )

    try:
        _run_parallel_state(m, world_size, sizes)
    except _DistBusy as exc:
        out.append(skipped(f"process-group check skipped: {exc}"))
    except Exception as exc:
        rejected(
            f"layout TP{sizes['tp']} PP{sizes['pp']} CP{sizes['cp']} EP{sizes['ep']} ETP{sizes['etp']} "
            f"on world size {world_size}",
            "parallel_state.initialize_model_parallel",
            exc,
        )

    config = None
    if None not in (tkw["num_layers"], tkw["hidden_size"], tkw["num_attention_heads"]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                config = m["TransformerConfig"](**tkw)
            except (ValueError, AssertionError, TypeError) as exc:
                rejected("model config", "TransformerConfig", exc)
            except Exception as exc:  # e.g. a TE-only code path on this CPU host
                out.append(
                    skipped(
                        f"TransformerConfig could not be checked on this host: {type(exc).__name__}: {exc}"
                    )
                )
        for w in caught:
            if "sequence parallelism must be used" in str(w.message):
                out.append(
                    Finding(
                        name("--sequence-parallel"),
                        f"{w.message} (EP {sizes['ep']} and TP {sizes['tp']} without --sequence-parallel)",
                        "EP > 1 and TP > 1 => sequence_parallel",
                        _where(w.filename, w.lineno),
                        "warning",
                    )
                )
    if config is not None and config.num_moe_experts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m["layer_specs"](config, use_transformer_engine=False)
        except (AssertionError, ValueError) as exc:
            rejected("MoE layer pattern", "get_gpt_decoder_layer_specs", exc, "--moe-layer-freq")
        e = config.num_moe_experts
        try:
            m["route"](
                torch.zeros(1, e),
                config.moe_router_topk,
                use_pre_softmax=config.moe_router_pre_softmax,
                num_groups=config.moe_router_num_groups,
                group_topk=config.moe_router_group_topk,
                scaling_factor=config.moe_router_topk_scaling_factor,
                score_function=config.moe_router_score_function,
                expert_bias=torch.zeros(e) if config.moe_router_enable_expert_bias else None,
            )
        except (RuntimeError, AssertionError, ValueError) as exc:
            rejected("router top-k", "topk_routing_with_score_function", exc, "--moe-router-topk")

    mu = m["utils"]
    saved, patched = mu._te_version, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mu.get_te_version() is None:
                # Without Transformer Engine, is_te_min_version() compares None with a Version
                # and raises TypeError (megatron-core 0.16.1): pretend a recent TE for this check only.
                from packaging.version import Version

                mu._te_version, patched = Version("2.8.0"), True
            m["OptimizerConfig"](**okw)
    except AssertionError as exc:
        flag = "--use-precision-aware-optimizer" if "precision-aware" in str(exc) else "--optimizer"
        rejected("optimizer config", "OptimizerConfig", exc, flag)
    except RuntimeError as exc:
        # "--use-precision-aware-optimizer requires FusedAdam from TransformerEngine": true of
        # this CPU host only; the trainer image has TE.
        if "TransformerEngine" not in str(exc):
            rejected("optimizer config", "OptimizerConfig", exc, "--optimizer")
    finally:
        if patched:
            mu._te_version = saved
    return out
