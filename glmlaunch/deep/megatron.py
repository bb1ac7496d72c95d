"""Deep Megatron check: run megatron-core's own validation on the trainer's argv, on CPU.

Nothing here needs a GPU. megatron-core (and torch) are imported lazily inside the functions, so
importing this module is cheap and works without them.

What is checked, and where each rule comes from:

* The process-group layout, by calling the real
  ``megatron.core.parallel_state.initialize_model_parallel`` against torch's fake process group
  (``torch.testing._internal.distributed.fake_pg``) of ``world_size`` ranks. This is the call
  miles makes inside every train actor (``miles/backends/megatron_utils/initialize.py:45``), so
  its errors otherwise appear only once the cluster is up.
* The model config, by constructing ``megatron.core.transformer.TransformerConfig`` from the
  model args, the way Megatron-LM's ``core_transformer_config_from_args`` does.
* The rules Megatron-LM's ``validate_args`` and megatron-core's model build enforce but that
  megatron-core's config classes accept (layers divisible by PP, experts divisible by EP, top-k
  not above the number of experts, the MoE layer pattern length, ...).
* The optimizer config, by constructing ``megatron.core.optimizer.OptimizerConfig``, plus
  Megatron-LM's "``--optimizer-cpu-offload`` requires ``--use-precision-aware-optimizer``".

Megatron-LM line numbers refer to radixark/Megatron-LM ``2e64d788b`` (what miles runs from
``/root/Megatron-LM``); megatron-core line numbers to the megatron-core 0.16.1 wheel.
"""

from __future__ import annotations

import ast
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

from glmlaunch.errors import Finding

INSTALL_HINT = "pip install torch==2.13.0 && pip install 'glmlaunch[megatron]'"

SRC_PS = "megatron-core parallel_state.initialize_model_parallel"
SRC_TC = "megatron-core TransformerConfig.__post_init__"
SRC_OC = "megatron-core OptimizerConfig.__post_init__"
SRC_SELF = "glmlaunch.deep.megatron"

# Flags whose values are parallel sizes (all positive integers).
_SIZE_FLAGS = {
    "tp": "--tensor-model-parallel-size",
    "pp": "--pipeline-model-parallel-size",
    "cp": "--context-parallel-size",
    "ep": "--expert-model-parallel-size",
    "etp": "--expert-tensor-parallel-size",
}
_VPP_FLAGS = ("--num-virtual-stages-per-pipeline-rank", "--virtual-pipeline-model-parallel-size")
_WORLD_FLAGS = ("--actor-num-nodes", "--actor-num-gpus-per-node")

# TransformerConfig field -> the flag that sets it (used to name the field in core's messages).
# Parallel sizes come first: a message naming both a model size and a parallel size is about
# the layout, which is what a recipe changes.
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
# Phrases in core messages that name no field literally.
_PHRASE_FLAGS: list[tuple[str, str]] = [
    ("middle stage", "--decoder-last-pipeline-num-layers"),
    ("middle layers", "--decoder-last-pipeline-num-layers"),
    ("middle pp stages", "--decoder-last-pipeline-num-layers"),
    ("use expert-parallel", "--num-experts"),
    ("etp==1", "--expert-tensor-parallel-size"),
    ("sequence parallelism", "--sequence-parallel"),
    ("moe-router-pre-softmax", "--moe-router-pre-softmax"),
    ("expert bias", "--moe-router-score-function"),
    ("pipeline_dtype", "--pipeline-model-parallel-size"),
    ("fp16", "--fp16"),
    ("recompute_granuarlity", "--recompute-granularity"),
    ("dispatcher", "--moe-token-dispatcher-type"),
    ("deepep", "--moe-enable-deepep"),
]

# Megatron-LM arguments.py:710-713
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "uint8"}

_LOCK = threading.Lock()


class _DistBusy(Exception):
    """torch.distributed is already initialized in this process; the fake world cannot be built."""


def parse_flags(argv: list[str]) -> dict[str, list[str]]:
    """Split a trainer argv into ``{flag: [values...]}`` the way argparse reads it.

    ``argv`` is the full token list (``["python3", "/root/miles/train.py", "--num-layers", "92",
    "--sequence-parallel", "--rollout-stop-token-ids", "1", "2", ...]``). Tokens before the
    first ``--flag`` (the interpreter and script) are ignored; a flag owns every following token
    up to the next ``--flag``; a boolean flag maps to ``[]``; ``--flag=value`` is one value; a
    bare ``--`` ends the current flag. A repeated flag keeps its last occurrence (argparse's
    ``store`` semantics). Never raises.
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
    """Evaluate ``--moe-layer-freq`` like Megatron-LM's ``moe_freq_type`` (arguments.py:231), safely.

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


@dataclass
class _Args:
    """The trainer argv, read the way Megatron-LM and miles read it (defaults included)."""

    flags: dict[str, list[str]]
    flag_fields: dict[str, str]
    findings: list[Finding] = field(default_factory=list)

    def name(self, flag: str) -> str:
        return self.flag_fields.get(flag, flag)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def raw(self, flag: str) -> str | None:
        vals = self.flags.get(flag)
        if not vals:
            return None
        return vals[0]

    def as_int(self, flag: str, default: int | None = None, positive: bool = False) -> int | None:
        text = self.raw(flag)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            self.findings.append(
                Finding(self.name(flag), f"{flag} {text!r} is not an integer", "integer value", SRC_SELF)
            )
            return None
        if positive and value < 1:
            self.findings.append(
                Finding(
                    self.name(flag), f"{flag} is {value}; it must be at least 1", "positive size", SRC_SELF
                )
            )
            return None
        return value

    def as_float(self, flag: str, default: float | None = None) -> float | None:
        text = self.raw(flag)
        if text is None:
            return default
        try:
            return float(text)
        except ValueError:
            self.findings.append(
                Finding(self.name(flag), f"{flag} {text!r} is not a number", "numeric value", SRC_SELF)
            )
            return None

    def as_str(self, flag: str, default: str | None = None) -> str | None:
        text = self.raw(flag)
        return default if text is None else text


def _layout(a: _Args) -> dict[str, int | None] | None:
    """Parallel sizes from the argv, with Megatron-LM's defaults; ``None`` if one is unusable."""
    n_before = len(a.findings)
    sizes: dict[str, int | None] = {k: a.as_int(f, 1, positive=True) for k, f in _SIZE_FLAGS.items()}
    if not a.has(_SIZE_FLAGS["etp"]):
        sizes["etp"] = sizes["tp"]  # Megatron-LM arguments.py:410-411
    vpp = None
    for flag in _VPP_FLAGS:
        if a.has(flag):
            vpp = a.as_int(flag, None, positive=True)
            break
    sizes["vpp"] = None if vpp == 1 else vpp  # Megatron-LM arguments.py:618-619
    if len(a.findings) != n_before:
        return None
    return sizes


def _import_megatron() -> dict[str, Any]:
    """Import torch and megatron-core (slow: ~3-5 s). Raises ImportError when either is missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        import torch.distributed as dist
        from megatron.core import parallel_state
        from megatron.core import utils as mcore_utils
        from megatron.core.optimizer import OptimizerConfig
        from megatron.core.transformer import TransformerConfig
        from torch.testing._internal.distributed.fake_pg import FakeStore
    return {
        "torch": torch,
        "dist": dist,
        "ps": parallel_state,
        "utils": mcore_utils,
        "OptimizerConfig": OptimizerConfig,
        "TransformerConfig": TransformerConfig,
        "FakeStore": FakeStore,
    }


def _run_parallel_state(m: dict[str, Any], world_size: int, sizes: dict[str, int | None]) -> dict[str, int]:
    """Build the real process groups on a fake world of ``world_size`` ranks (rank 0), read the
    derived sizes, and tear everything down again (safe to call repeatedly; ~5 ms).

    Raises whatever ``initialize_model_parallel`` raises (RuntimeError / AssertionError), or
    ``_DistBusy`` when this process already has a default process group.
    """
    dist, ps = m["dist"], m["ps"]
    with _LOCK:
        if dist.is_initialized():
            raise _DistBusy("torch.distributed is already initialized in this process")
        dist.init_process_group("fake", rank=0, world_size=world_size, store=m["FakeStore"]())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ps.initialize_model_parallel(
                    tensor_model_parallel_size=sizes["tp"],
                    pipeline_model_parallel_size=sizes["pp"],
                    virtual_pipeline_model_parallel_size=sizes["vpp"],
                    context_parallel_size=sizes["cp"],
                    expert_model_parallel_size=sizes["ep"],
                    expert_tensor_parallel_size=sizes["etp"],
                    create_gloo_process_groups=False,
                )
            return {
                "world": world_size,
                "tp": ps.get_tensor_model_parallel_world_size(),
                "pp": ps.get_pipeline_model_parallel_world_size(),
                "cp": ps.get_context_parallel_world_size(),
                "ep": ps.get_expert_model_parallel_world_size(),
                "etp": ps.get_expert_tensor_parallel_world_size(),
                "vpp": sizes["vpp"],
                "dp": ps.get_data_parallel_world_size(),
                "dp_with_cp": ps.get_data_parallel_world_size(with_context_parallel=True),
                "expert_dp": ps.get_expert_data_parallel_world_size(),
            }
        finally:
            ps.destroy_model_parallel()
            dist.destroy_process_group()


def _explain_layout_error(
    a: _Args, sizes: dict[str, int | None], world: int, exc: BaseException
) -> list[Finding]:
    """Turn an initialize_model_parallel error into findings naming the recipe fields."""
    msg = str(exc)
    tp, pp, cp, ep, etp = (sizes[k] for k in ("tp", "pp", "cp", "ep", "etp"))
    nodes = "= " + " × ".join(a.name(f) for f in _WORLD_FLAGS)
    f_tp, f_pp, f_cp, f_ep, f_etp = (a.name(_SIZE_FLAGS[k]) for k in ("tp", "pp", "cp", "ep", "etp"))
    out: list[Finding] = []

    def expert(after_model_error: bool) -> Finding:
        prod = etp * ep * pp
        text = (
            f"world size {world} ({nodes}) is not divisible by ETP×EP×PP = {etp}×{ep}×{pp} = {prod} "
            f"({f_etp} × {f_ep} × {f_pp}); Megatron raises this only at actor init, after the "
            "cluster is up"
        )
        if after_model_error:
            src = f"{SRC_PS} (parallel_state.py:786-795; not reached by megatron-core after the first error)"
        else:
            src = f"{SRC_PS} (parallel_state.py:786-795)"
            text += f" (megatron-core: {msg})"
        return Finding(
            f_ep,
            text,
            "world_size % (expert_tensor_parallel_size * expert_model_parallel_size * pipeline_model_parallel_size) == 0",
            src,
            extra={"fields": [f_etp, f_ep, f_pp], "world_size": world, "product": prod},
        )

    if "expert_tensor_model_pipeline_parallel" in msg:
        out.append(expert(False))
    elif msg.startswith("world_size (") and "is not divisible by" in msg:
        prod = tp * pp * cp
        out.append(
            Finding(
                f_tp,
                f"world size {world} ({nodes}) is not divisible by TP×PP×CP = {tp}×{pp}×{cp} = {prod} "
                f"({f_tp} × {f_pp} × {f_cp}) (megatron-core: {msg})",
                "world_size % (tensor_model_parallel_size * pipeline_model_parallel_size * context_parallel_size) == 0",
                f"{SRC_PS} (parallel_state.py:738-741); Megatron-LM arguments.py:314-319",
                extra={"fields": [f_tp, f_pp, f_cp], "world_size": world, "product": prod},
            )
        )
        if world % (etp * ep * pp) != 0:
            out.append(expert(True))
    elif "interleaved schedule" in msg:
        vflag = next((f for f in _VPP_FLAGS if a.has(f)), _VPP_FLAGS[0])
        out.append(
            Finding(
                a.name(vflag),
                f"a virtual pipeline size ({vflag} {sizes['vpp']}) needs {f_pp} > 1, got {pp} "
                f"(megatron-core: {msg})",
                "virtual pipeline parallelism requires pipeline_model_parallel_size > 1",
                f"{SRC_PS} (parallel_state.py:745-749)",
                extra={"fields": [a.name(vflag), f_pp]},
            )
        )
    else:
        out.append(
            Finding(
                f_tp,
                f"megatron-core refused the layout TP{tp} PP{pp} CP{cp} EP{ep} ETP{etp} on world size "
                f"{world}: {type(exc).__name__}: {msg}",
                "initialize_model_parallel succeeds",
                SRC_PS,
                extra={"fields": [f_tp, f_pp, f_cp, f_ep, f_etp]},
            )
        )
    return out


def megatron_layout(argv: list[str], world_size: int) -> dict:
    """Derived Megatron layout, computed by megatron-core's ``initialize_model_parallel``.

    ``argv``: the trainer token list (see :func:`parse_flags`); ``world_size``: number of
    Megatron ranks (GPUs) = ``actor_num_nodes * actor_num_gpus_per_node``.

    Returns ``{"world", "tp", "pp", "cp", "ep", "etp", "vpp", "dp", "dp_with_cp", "expert_dp"}``
    (ints; ``vpp`` is ``None`` without interleaving). ``dp`` excludes CP (it is the divisor of the
    global batch in miles), ``dp_with_cp`` includes it, ``expert_dp`` =
    ``world / (etp*ep*pp)``.

    Raises ``ValueError`` (message names the flags and numbers) when a size is not a positive
    integer or megatron-core refuses the layout, ``ImportError`` (with the install command) when
    torch / megatron-core are missing, ``RuntimeError`` when torch.distributed is already
    initialized in this process.
    """
    a = _Args(parse_flags(argv), {})
    sizes = _layout(a)
    if sizes is None:
        raise ValueError("; ".join(f.message for f in a.findings))
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    try:
        m = _import_megatron()
    except ImportError as exc:
        raise ImportError(f"{exc}; install with: {INSTALL_HINT}") from exc
    try:
        return _run_parallel_state(m, world_size, sizes)
    except _DistBusy as exc:
        raise RuntimeError(str(exc)) from exc
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ValueError(
            "; ".join(f.message for f in _explain_layout_error(a, sizes, world_size, exc))
        ) from exc


@dataclass
class _Model:
    num_layers: int | None
    hidden_size: int | None
    num_attention_heads: int | None
    num_query_groups: int | None
    kv_channels: int | None
    num_experts: int | None
    topk: int
    moe_layer_freq: int | list[int] | None
    first: int | None
    last: int | None


def _model(a: _Args) -> _Model:
    n_layers = a.as_int("--num-layers", positive=True)
    heads = a.as_int("--num-attention-heads", positive=True)
    groups = a.as_int("--num-query-groups", 1, positive=True) if a.has("--group-query-attention") else None
    freq: int | list[int] | None = 1
    text = a.raw("--moe-layer-freq")
    if text is not None:
        try:
            freq = parse_moe_layer_freq(text)
        except ValueError as exc:
            freq = None
            a.findings.append(
                Finding(
                    a.name("--moe-layer-freq"),
                    f"--moe-layer-freq {text!r} cannot be read: {exc}",
                    "an int or a list expression such as [0]*3+[1]*89",
                    "Megatron-LM arguments.py:231-254 (moe_freq_type)",
                )
            )
    return _Model(
        num_layers=n_layers,
        hidden_size=a.as_int("--hidden-size", positive=True),
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=a.as_int("--kv-channels", positive=True),
        num_experts=a.as_int("--num-experts") or None,  # Megatron-LM arguments.py:1078: 0 means dense
        topk=_or(a.as_int("--moe-router-topk", 2), 2),
        moe_layer_freq=freq,
        first=a.as_int("--decoder-first-pipeline-num-layers"),
        last=a.as_int("--decoder-last-pipeline-num-layers"),
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _rule_findings(a: _Args, s: dict[str, int | None], mdl: _Model, world: int) -> list[Finding]:
    """Rules Megatron-LM's validate_args / megatron-core's model build enforce, not its configs."""
    out: list[Finding] = []
    f_pp, f_ep, f_tp = a.name(_SIZE_FLAGS["pp"]), a.name(_SIZE_FLAGS["ep"]), a.name(_SIZE_FLAGS["tp"])
    f_layers = a.name("--num-layers")
    pp, ep, tp = s["pp"], s["ep"], s["tp"]
    L = mdl.num_layers

    for req in ("--num-layers", "--hidden-size", "--num-attention-heads"):
        if not a.has(req):
            out.append(
                Finding(
                    a.name(req),
                    f"{req} is missing from the trainer argv",
                    f"{req} is required",
                    "Megatron-LM arguments.py:860-863 (_check_arg_is_not_none)",
                )
            )

    if L is not None and pp is not None:
        if mdl.first is None and mdl.last is None:
            if L % pp:
                out.append(
                    Finding(
                        f_pp,
                        f"{f_layers} = {L} is not divisible by {f_pp} = {pp} ({L} % {pp} = {L % pp}); set "
                        f"{a.name('--decoder-last-pipeline-num-layers')} for an uneven split",
                        "num_layers % pipeline_model_parallel_size == 0 (without uneven-PP args)",
                        "Megatron-LM arguments.py:623-636",
                        extra={"fields": [f_layers, f_pp]},
                    )
                )
        else:
            rest, stages, given = L, pp, []
            for flag, n in (
                ("--decoder-first-pipeline-num-layers", mdl.first),
                ("--decoder-last-pipeline-num-layers", mdl.last),
            ):
                if n is not None:
                    rest -= n
                    stages -= 1
                    given.append(f"{a.name(flag)} = {n}")
            bad = None
            if any(n is not None and n <= 0 for n in (mdl.first, mdl.last)):
                bad = "the first/last stage must hold at least one layer"
            elif stages <= 0 and rest != 0:
                bad = f"{rest} layers are left over but no middle stage remains"
            elif stages > 0 and (rest <= 0 or rest % stages):
                bad = f"the remaining {rest} layers do not split evenly over {stages} middle stages"
            if bad:
                flag = (
                    "--decoder-last-pipeline-num-layers"
                    if mdl.last is not None
                    else "--decoder-first-pipeline-num-layers"
                )
                out.append(
                    Finding(
                        a.name(flag),
                        f"uneven pipeline split of {f_layers} = {L} over {f_pp} = {pp} with {', '.join(given)}: {bad}",
                        "(num_layers - first - last) % (pp - #given) == 0 and > 0",
                        f"{SRC_TC} (uneven PP, transformer_config.py:1359-1430); Megatron-LM passes "
                        "--decoder-first/last-pipeline-num-layers at arguments.py:1417-1418",
                        extra={"fields": [f_layers, f_pp, a.name(flag)]},
                    )
                )

    E = mdl.num_experts
    f_exp, f_topk = a.name("--num-experts"), a.name("--moe-router-topk")
    if E is not None and ep is not None and ep > 1 and E % ep:
        out.append(
            Finding(
                f_ep,
                f"{f_exp} = {E} is not divisible by {f_ep} = {ep} ({E} % {ep} = {E % ep})",
                "num_experts % expert_model_parallel_size == 0",
                "Megatron-LM arguments.py:1089-1092; megatron-core MoELayer.__init__ (moe_layer.py:101)",
                extra={"fields": [f_exp, f_ep]},
            )
        )
    if E is not None and not 1 <= mdl.topk <= E:
        out.append(
            Finding(
                f_topk,
                f"{f_topk} = {mdl.topk} must be between 1 and {f_exp} = {E}",
                "1 <= moe_router_topk <= num_experts",
                "megatron-core moe_utils.topk_routing_with_score_function (torch.topk over the experts, "
                "first forward pass)",
                extra={"fields": [f_topk, f_exp]},
            )
        )

    H, heads = mdl.hidden_size, mdl.num_attention_heads
    if H is not None and heads is not None and mdl.kv_channels is None and H % heads:
        out.append(
            Finding(
                a.name("--hidden-size"),
                f"{a.name('--hidden-size')} = {H} is not divisible by {a.name('--num-attention-heads')} = {heads} "
                f"and {a.name('--kv-channels')} is not set",
                "hidden_size % num_attention_heads == 0 when --kv-channels is unset",
                "Megatron-LM arguments.py:877-879",
            )
        )
    if heads is not None and mdl.num_query_groups is not None and heads % mdl.num_query_groups:
        out.append(
            Finding(
                a.name("--num-query-groups"),
                f"{a.name('--num-attention-heads')} = {heads} is not divisible by "
                f"{a.name('--num-query-groups')} = {mdl.num_query_groups}",
                "num_attention_heads % num_query_groups == 0",
                "megatron-core transformer/attention.py:286-300 (heads per query group)",
            )
        )

    freq = mdl.moe_layer_freq
    f_freq = a.name("--moe-layer-freq")
    if E is not None and L is not None and freq is not None:
        if isinstance(freq, list):
            if len(freq) != L:
                out.append(
                    Finding(
                        f_freq,
                        f"{f_freq} lists {len(freq)} layers but {f_layers} = {L}",
                        "len(moe_layer_freq) == num_layers",
                        "megatron-core models/gpt/gpt_layer_specs.py:587-593 (model build)",
                        extra={"fields": [f_freq, f_layers]},
                    )
                )
            if any(v not in (0, 1) for v in freq):
                out.append(
                    Finding(
                        f_freq,
                        f"{f_freq} may only contain 0 (dense) and 1 (MoE)",
                        "moe_layer_freq in {0,1}",
                        "megatron-core models/gpt/gpt_layer_specs.py:579-582",
                    )
                )
        elif freq < 1:
            out.append(
                Finding(
                    f_freq,
                    f"{f_freq} = {freq} must be at least 1",
                    "moe_layer_freq >= 1",
                    "megatron-core models/gpt/gpt_layer_specs.py:583-586",
                )
            )

    if tp == 1 and a.has("--sequence-parallel"):
        out.append(
            Finding(
                a.name("--sequence-parallel"),
                f"--sequence-parallel has no effect with {f_tp} = 1; Megatron-LM disables it",
                "sequence parallelism needs tensor_model_parallel_size > 1",
                "Megatron-LM arguments.py:971-977",
                severity="warning",
            )
        )

    if a.has("--optimizer-cpu-offload") and not a.has("--use-precision-aware-optimizer"):
        out.append(
            Finding(
                a.name("--optimizer-cpu-offload"),
                "--optimizer-cpu-offload requires --use-precision-aware-optimizer",
                "optimizer_cpu_offload => use_precision_aware_optimizer",
                "Megatron-LM arguments.py:1254-1258",
                extra={
                    "fields": [a.name("--optimizer-cpu-offload"), a.name("--use-precision-aware-optimizer")]
                },
            )
        )
    if a.has("--overlap-cpu-optimizer-d2h-h2d") and not a.has("--optimizer-cpu-offload"):
        out.append(
            Finding(
                a.name("--overlap-cpu-optimizer-d2h-h2d"),
                "--overlap-cpu-optimizer-d2h-h2d has no effect without --optimizer-cpu-offload",
                "overlap_cpu_optimizer_d2h_h2d only acts with optimizer_cpu_offload",
                f"{SRC_OC} (not checked there)",
                severity="warning",
            )
        )
    return out


def _flag_for_message(msg: str) -> str:
    """The flag a megatron-core config message is about.

    A parallel size named in the message wins (the layout is what a recipe changes); otherwise
    the config field named last before "must" (the subject of the rule), else the first one
    named, else a known phrase, else TP.
    """
    low = msg.lower()
    hits = sorted(
        (m.start(), i, flag)
        for i, (name, flag) in enumerate(_CONFIG_FIELD_FLAGS)
        for m in re.finditer(rf"\b{name}\b", low)
    )
    for _pos, i, flag in hits:
        if i < 6:
            return flag
    must = low.find(" must ")
    before = [h for h in hits if must >= 0 and h[0] < must]
    if before:
        return before[-1][2]
    if hits:
        return hits[0][2]
    for phrase, flag in _PHRASE_FLAGS:
        if phrase in low:
            return flag
    return _SIZE_FLAGS["tp"]


def _transformer_kwargs(a: _Args, s: dict[str, int | None], mdl: _Model, torch: Any) -> dict[str, Any]:
    """TransformerConfig kwargs as Megatron-LM's core_transformer_config_from_args builds them."""
    tp, pp = s["tp"], s["pp"]
    H = mdl.hidden_size
    swiglu = a.has("--swiglu")
    ffn = a.as_int("--ffn-hidden-size", positive=True)
    if ffn is None and H is not None:  # Megatron-LM arguments.py:866-875
        ffn = int((4 * H * 2 / 3) / 64) * 64 if swiglu else 4 * H
    bf16 = not a.has("--fp16")  # miles/backends/megatron_utils/arguments.py:22
    dtype = torch.bfloat16 if bf16 else torch.float16
    kw: dict[str, Any] = {
        "num_layers": mdl.num_layers,
        "hidden_size": H,
        "num_attention_heads": mdl.num_attention_heads,
        "num_query_groups": mdl.num_query_groups,  # None -> heads (arguments.py:1436-1439)
        "kv_channels": mdl.kv_channels,
        "ffn_hidden_size": ffn,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "virtual_pipeline_model_parallel_size": s["vpp"],
        "context_parallel_size": s["cp"],
        "expert_model_parallel_size": s["ep"],
        "expert_tensor_parallel_size": s["etp"],
        # Megatron-LM arguments.py:971-977 turns SP off when TP == 1.
        "sequence_parallel": a.has("--sequence-parallel") and tp > 1,
        "pipeline_dtype": dtype if pp > 1 else None,  # Megatron-LM arguments.py:1413 (params_dtype)
        "params_dtype": dtype,
        "bf16": bf16,
        "fp16": not bf16,
        "num_layers_in_first_pipeline_stage": mdl.first,
        "num_layers_in_last_pipeline_stage": mdl.last,
        "recompute_granularity": a.as_str("--recompute-granularity"),
        "recompute_method": a.as_str("--recompute-method"),
        "recompute_num_layers": a.as_int("--recompute-num-layers"),
        "add_bias_linear": not a.has("--disable-bias-linear"),
        "add_qkv_bias": a.has("--add-qkv-bias"),
        "qk_layernorm": a.has("--qk-layernorm"),
        "gated_linear_unit": swiglu,
        "normalization": a.as_str("--normalization", "LayerNorm"),
        "layernorm_epsilon": a.as_float("--norm-epsilon", 1e-5),
        "attention_dropout": a.as_float("--attention-dropout", 0.1),
        "hidden_dropout": a.as_float("--hidden-dropout", 0.1),
    }
    if mdl.num_experts is not None:
        kw.update(
            num_moe_experts=mdl.num_experts,
            moe_router_topk=mdl.topk,
            moe_ffn_hidden_size=a.as_int("--moe-ffn-hidden-size", ffn, positive=True),  # arguments.py:1080
            moe_shared_expert_intermediate_size=a.as_int("--moe-shared-expert-intermediate-size"),
            moe_router_pre_softmax=a.has("--moe-router-pre-softmax"),
            moe_router_score_function=a.as_str("--moe-router-score-function", "softmax"),
            moe_router_enable_expert_bias=a.has("--moe-router-enable-expert-bias"),
            moe_router_topk_scaling_factor=a.as_float("--moe-router-topk-scaling-factor"),
            moe_router_load_balancing_type=a.as_str("--moe-router-load-balancing-type", "aux_loss"),
            moe_router_num_groups=a.as_int("--moe-router-num-groups"),
            moe_router_group_topk=a.as_int("--moe-router-group-topk"),
            moe_token_dispatcher_type=a.as_str("--moe-token-dispatcher-type", "allgather"),
            moe_enable_deepep=a.has("--moe-enable-deepep"),
            moe_grouped_gemm=a.has("--moe-grouped-gemm"),
        )
        if isinstance(mdl.moe_layer_freq, (int, list)):
            kw["moe_layer_freq"] = mdl.moe_layer_freq
    # Not passed: --moe-permute-fusion (its check imports TE kernels, absent on CPU).
    return kw


def _transformer_findings(
    m: dict[str, Any], a: _Args, s: dict[str, int | None], mdl: _Model, reported_uneven: bool
) -> list[Finding]:
    if mdl.num_layers is None or mdl.hidden_size is None or mdl.num_attention_heads is None:
        return []
    kw = _transformer_kwargs(a, s, mdl, m["torch"])
    out: list[Finding] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            m["TransformerConfig"](**kw)
        except (ValueError, AssertionError) as exc:
            msg = str(exc) or type(exc).__name__
            low = msg.lower()
            uneven = "middle" in low or "pipeline_stage must be larger than 0" in low
            if not (uneven and reported_uneven):
                flag = _flag_for_message(msg)
                out.append(
                    Finding(
                        a.name(flag),
                        f"megatron-core rejects the model config: {msg}",
                        "TransformerConfig(...) constructs",
                        SRC_TC,
                        extra={"exception": type(exc).__name__},
                    )
                )
        except Exception as exc:  # e.g. a TE-only code path on this CPU host
            out.append(
                Finding(
                    "megatron",
                    f"TransformerConfig could not be checked on this host: {type(exc).__name__}: {exc}",
                    "TransformerConfig(...) constructs",
                    SRC_TC,
                    severity="warning",
                )
            )
    for w in caught:
        text = str(w.message)
        if "sequence parallelism must be used" in text:
            out.append(
                Finding(
                    a.name("--sequence-parallel"),
                    f"{text} (EP {s['ep']} and TP {s['tp']} without --sequence-parallel)",
                    "expert_model_parallel_size > 1 and tensor_model_parallel_size > 1 => sequence_parallel",
                    f"{SRC_TC} (model_parallel_config.py:440-445, a warning there)",
                    severity="warning",
                )
            )
    return out


def _optimizer_findings(m: dict[str, Any], a: _Args) -> list[Finding]:
    """Construct OptimizerConfig like Megatron-LM / miles do and report its assertions."""
    torch, mu = m["torch"], m["utils"]
    optimizer = a.as_str("--optimizer", "adam")
    bf16 = not a.has("--fp16")
    offload = a.has("--optimizer-cpu-offload")
    kw: dict[str, Any] = {
        "optimizer": optimizer,
        "bf16": bf16,
        "fp16": not bf16,
        "params_dtype": torch.bfloat16 if bf16 else torch.float16,
        # miles/backends/megatron_utils/arguments.py:15-17: distributed optimizer iff adam
        "use_distributed_optimizer": (optimizer or "adam").lower() == "adam",
        "use_precision_aware_optimizer": a.has("--use-precision-aware-optimizer"),
        "optimizer_cpu_offload": offload,
        "overlap_cpu_optimizer_d2h_h2d": a.has("--overlap-cpu-optimizer-d2h-h2d"),
        # Megatron-LM arguments.py:2156 (default 1.0)
        "optimizer_offload_fraction": a.as_float("--optimizer-offload-fraction", 1.0) if offload else 0.0,
    }
    for flag, key in (
        ("--main-grads-dtype", "main_grads_dtype"),
        ("--main-params-dtype", "main_params_dtype"),
        ("--exp-avg-dtype", "exp_avg_dtype"),
        ("--exp-avg-sq-dtype", "exp_avg_sq_dtype"),
    ):
        text = a.as_str(flag)
        if text is not None:
            if text not in _DTYPES:
                return [
                    Finding(
                        a.name(flag),
                        f"{flag} {text!r} is not one of {sorted(_DTYPES)}",
                        "dtype choice",
                        "Megatron-LM arguments.py:2956-2968",
                    )
                ]
            kw[key] = getattr(torch, _DTYPES[text])
    out: list[Finding] = []
    saved = mu._te_version
    patched = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mu.get_te_version() is None:
                # deps.md §5: without Transformer Engine, is_te_min_version() compares None with a
                # Version and raises TypeError. Pretend a recent TE for this check only.
                from packaging.version import Version

                mu._te_version = Version("2.8.0")
                patched = True
            m["OptimizerConfig"](**kw)
    except AssertionError as exc:
        msg = str(exc) or "AssertionError"
        flag = "--use-precision-aware-optimizer" if "precision-aware" in msg else "--optimizer"
        out.append(
            Finding(
                a.name(flag),
                f"megatron-core rejects the optimizer config: {msg}",
                "OptimizerConfig(...) constructs",
                SRC_OC,
            )
        )
    except RuntimeError as exc:
        # "--use-precision-aware-optimizer requires FusedAdam from TransformerEngine, but not
        # found": true of this CPU host only; the trainer image has TE.
        if "TransformerEngine" not in str(exc):
            out.append(
                Finding(
                    a.name("--optimizer"),
                    f"megatron-core rejects the optimizer config: {exc}",
                    "OptimizerConfig(...) constructs",
                    SRC_OC,
                )
            )
    finally:
        if patched:
            mu._te_version = saved
    return out


def check_megatron(
    argv: list[str], world_size: int, flag_fields: dict[str, str] | None = None
) -> list[Finding]:
    """Check the trainer argv against megatron-core's own validation, on CPU, before any GPU is used.

    ``argv``: the trainer's full token list as glmlaunch renders it (``["python3",
    ".../train.py", "--tensor-model-parallel-size", "8", "--sequence-parallel", ...]``; see
    :func:`parse_flags`). ``world_size``: Megatron ranks = ``actor_num_nodes *
    actor_num_gpus_per_node`` (GPUs). ``flag_fields``: ``{flag: recipe field}``; findings name
    the recipe field, or the flag when it is not in the map.

    Returns a list of :class:`~glmlaunch.errors.Finding` (empty when everything passes):

    * process groups: the real ``parallel_state.initialize_model_parallel`` on a fake world
      (``world % (TP*PP*CP)``, ``world % (ETP*EP*PP)``, vpp needs PP > 1);
    * ``TransformerConfig`` errors (heads / query groups vs TP, uneven PP split, MoE router
      options, recompute options, ...), plus core's "EP and TP need SP" warning;
    * Megatron-LM / model-build rules core's configs accept: layers % PP, experts % EP,
      1 <= top-k <= experts, MoE layer pattern length, hidden % heads, heads % query groups,
      SP ignored at TP 1 (warning), ``--optimizer-cpu-offload`` needs
      ``--use-precision-aware-optimizer``;
    * ``OptimizerConfig`` assertions (run with a temporary fake Transformer Engine version,
      restored afterwards; deps.md §5).

    ``Finding.source`` cites the check; ``Finding.extra["fields"]`` lists every field involved.
    When torch or megatron-core cannot be imported, returns one ``"warning"`` finding saying
    the check was skipped and how to install them. Never raises for bad input; takes ~3-5 s
    the first time (the megatron-core import), then milliseconds.
    """
    fields = dict(flag_fields or {})
    try:
        m = _import_megatron()
    except ImportError as exc:
        return [
            Finding(
                "megatron",
                f"deep Megatron check skipped: torch / megatron-core not importable ({exc}); "
                f"install with: {INSTALL_HINT}",
                "torch and megatron-core importable",
                SRC_SELF,
                severity="warning",
            )
        ]
    a = _Args(parse_flags(argv), fields)
    sizes = _layout(a)
    mdl = _model(a)
    if sizes is None:
        return list(a.findings)
    out: list[Finding] = []
    if world_size < 1:
        out.append(
            Finding(
                fields.get(_WORLD_FLAGS[0], _WORLD_FLAGS[0]),
                f"world size must be at least 1, got {world_size}",
                "world_size >= 1",
                SRC_SELF,
            )
        )
    else:
        try:
            _run_parallel_state(m, world_size, sizes)
        except _DistBusy as exc:
            out.append(
                Finding(
                    "megatron",
                    f"process-group check skipped: {exc}",
                    "fake world can be built",
                    SRC_PS,
                    severity="warning",
                )
            )
        except (RuntimeError, AssertionError, ValueError) as exc:
            out.extend(_explain_layout_error(a, sizes, world_size, exc))
    rules = _rule_findings(a, sizes, mdl, world_size)
    out.extend(rules)
    reported_uneven = any("uneven pipeline split" in f.message for f in rules)
    out.extend(_transformer_findings(m, a, sizes, mdl, reported_uneven))
    out.extend(_optimizer_findings(m, a))
    # Value-parsing findings (a.findings) may have been added by the steps above.
    return list(a.findings) + out
