"""The checks: every rule glmlaunch checks before any node is touched, and the one pipeline
(:func:`run`) that every entry point uses to decide whether a launch may go ahead.

Every hand-written rule lives here, once (``docs/rules.md`` lists them all). Each names the recipe
field, the numbers, and its source: an upstream ``path:line (project@version)`` (:func:`cite`) or,
for glmlaunch's own rules, ``docs/rules.md#<anchor>`` (:func:`own`). An *error* is a rule the cited
line enforces (the trainer refuses, fails or hangs); a *warning* is something the trainer accepts
but that is unwise. :func:`run` returns every finding: these rules, then (when they pass) the deep
checks, which only run megatron-core's and SGLang's own validators (:mod:`glmlaunch.deepcheck`),
and the read-only preflight on every node.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from .errors import Finding, Findings
from .hosts import Allocation, AllocationKind
from .models import HARDWARE_GPUS, MODELS
from .plan import TRAINER_PORT_RANGES, LaunchPlan, engine_gpus, mem_fraction_static
from .resolve import Resolved

# The upstream versions every citation is pinned to (read at these versions; docs/rules.md).
MILES = "miles@31f1ca961a94"  # radixark/miles 31f1ca961a94cb860cec3b2dea34ec332bfa8f76
MLM = "Megatron-LM@2e64d788b"  # radixark/Megatron-LM 2e64d788b67fe8155774200c87606e1e449c494b
CORE = "megatron-core@0.16.1"
SGL = "sglang@0.5.23"
TORCH = "torch@2.13.0"


def cite(project: str, *refs: str) -> str:
    """``path:lines (project@version)`` for each ref, joined by ``; ``."""
    return "; ".join(f"{r} ({project})" for r in refs)


def own(anchor: str) -> str:
    """A glmlaunch rule: its row in docs/rules.md."""
    return f"docs/rules.md#{anchor}"


MARGS = "miles/utils/arguments.py"
MLM_ARGS = "megatron/training/arguments.py"


def _err(
    out: list[Finding], field: str, message: str, rule: str, source: str, severity: str = "error"
) -> None:
    out.append(Finding(field=field, message=message, rule=rule, source=source, severity=severity))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _nodes_mismatch(want: int, alloc: Allocation) -> str:
    n, kind, where = alloc.num_nodes, alloc.kind, alloc.origin or "the allocation"
    wants = f"the recipe wants {_plural(want, 'node')}"
    if kind is AllocationKind.PLACEHOLDER and where.startswith("--nodes"):
        return f"{wants} but --nodes {n} was given; pass --nodes {want}, or set cluster.nodes={n}"
    if kind is AllocationKind.PLACEHOLDER:
        return f"{wants} but {where} has {n}; set cluster.nodes={n} or ask for {want}"
    if kind is AllocationKind.LOCAL:
        return (
            f"{wants} but a local run uses this machine alone (1 node); pass --hostfile with {_plural(want, 'node')}, "
            "or set cluster.nodes=1"
        )
    if kind is AllocationKind.SLURM:
        return (
            f"{wants} but the Slurm allocation {where} has {_plural(n, 'node')}; allocate {_plural(want, 'node')}, "
            f"or set cluster.nodes={n}"
        )
    return f"{wants} but {where} has {_plural(n, 'node')}; set cluster.nodes={n} or use a hostfile with {_plural(want, 'node')}"


def _gpus_unknown(alloc: Allocation) -> str:
    kind, where = alloc.kind, alloc.origin or "the allocation"
    todo = "pass --gpus-per-node or set cluster.gpus_per_node"
    if kind is AllocationKind.LOCAL:
        why = "this machine has no GPUs (nvidia-smi) and the recipe sets none"
    elif kind is AllocationKind.PLACEHOLDER:
        why = f"{where} gives no GPU count and the recipe sets none (cluster.gpus_per_node, or a cluster.hardware with GPUs)"
    elif kind is AllocationKind.SLURM:
        why = f"the Slurm allocation {where} reports no GPUs (no --gpus-per-node or --gres=gpu:N) and the recipe sets none"
    else:
        why = f"the hostfile {where} has no slots and the recipe sets none"
        todo = "write slots=N on every line of the hostfile, " + todo
    return f"GPUs per node unknown: {why}; {todo}"


def check_cluster(res: Resolved, out: list[Finding]) -> None:
    """Nodes and GPUs of the allocation against the recipe."""
    recipe, alloc, gpus = res.recipe, res.alloc, res.gpus_per_node
    c = recipe.cluster
    n = alloc.num_nodes
    where = f"{alloc.origin}" if alloc.origin else "the allocation"
    if c.nodes is not None and n != c.nodes:
        _err(
            out,
            "cluster.nodes",
            _nodes_mismatch(c.nodes, alloc),
            "nodes in allocation == cluster.nodes",
            own("nodes"),
        )
    if alloc.spares:
        _err(
            out,
            "cluster.nodes",
            f"{_plural(len(alloc.spares), 'spare host')} kept out of the cluster, to replace a node that fails "
            f"during a supervised run (--max-restarts): "
            + ", ".join(f"{h.name} ({h.source})" for h in alloc.spares),
            "hosts beyond cluster.nodes (and --spares) are spares",
            "docs/rules.md#nodes",
            "note",
        )
    if alloc.gpus_per_node and c.gpus_per_node and alloc.gpus_per_node != c.gpus_per_node:
        if alloc.kind is AllocationKind.PLACEHOLDER and where.startswith("--nodes"):
            said = f"--gpus-per-node {alloc.gpus_per_node} was given"
        elif alloc.kind is AllocationKind.LOCAL:
            said = f"this machine has {_plural(alloc.gpus_per_node, 'GPU')} (nvidia-smi or --gpus-per-node)"
        else:
            said = f"{where} says slots={alloc.gpus_per_node}"
        _err(
            out,
            "cluster.gpus_per_node",
            f"{said} but the recipe says {c.gpus_per_node}; make them agree",
            "hostfile slots == cluster.gpus_per_node",
            own("gpus-per-node"),
        )
    if not gpus and recipe.trainer.kind == "miles":
        _err(out, "cluster.gpus_per_node", _gpus_unknown(alloc), "GPUs per node known", own("gpus-known"))
    hw = HARDWARE_GPUS.get(c.hardware)
    if hw and gpus and gpus != hw and recipe.trainer.kind == "miles":
        _err(
            out,
            "cluster.hardware",
            f"{c.hardware} nodes have {hw} GPUs, but the launch uses {gpus} per node; fix cluster.hardware or the slots",
            "GPUs per node == hardware's",
            cite(MILES, "miles/utils/external_utils/command_utils.py:367-376"),
            "warning",
        )
    if n > 1:
        for h in alloc.hosts:
            if h.is_loopback:
                _err(
                    out,
                    "hosts",
                    f"{h.source or h.name}: {h.address} is a loopback address in a {n}-node cluster; "
                    "other nodes cannot reach it — use the node's cluster IP",
                    "multi-node addresses are routable",
                    own("no-loopback"),
                )


def check_layout(res: Resolved, out: list[Finding]) -> None:
    """Megatron parallel sizes against the world and the model."""
    recipe, gpus = res.recipe, res.gpus_per_node
    spec = MODELS.get(recipe.model.type)
    if spec is None:
        _err(
            out,
            "model.type",
            f"unknown model '{recipe.model.type}'; use one of {', '.join(sorted(MODELS))}",
            "known model",
            own("model-type"),
        )
        return
    n = res.num_nodes
    lay = res.layout
    tp, pp, cp, ep, etp = lay.tp, lay.pp, lay.cp, lay.ep, lay.etp
    a_nodes, world = res.actor_nodes, res.world_size
    if not gpus:
        return
    c = recipe.cluster
    total = n * gpus
    if c.colocate:
        if a_nodes != n:
            _err(
                out,
                "cluster.actor_nodes",
                f"colocated training uses the actor's GPUs only: actor_nodes={a_nodes} but the cluster has {n} nodes, "
                f"so {n - a_nodes} stay idle",
                "colocate: actor GPUs == cluster GPUs",
                cite(MILES, f"{MARGS}:3312-3317", "miles/ray/placement_group.py:103-104"),
                "warning",
            )
    else:
        used = world + c.rollout_gpus
        if used > total:
            _err(
                out,
                "cluster.rollout_gpus",
                f"actor {world} GPUs + rollout {c.rollout_gpus} GPUs = {used} > the cluster's {total}; the placement group would wait forever",
                "actor + rollout GPUs <= cluster GPUs",
                cite(MILES, "miles/ray/placement_group.py:56-60"),
            )
        elif used < total:
            _err(
                out,
                "cluster.rollout_gpus",
                f"actor {world} + rollout {c.rollout_gpus} GPUs = {used}, but the cluster has {total}: {total - used} GPUs stay idle",
                "actor + rollout GPUs == cluster GPUs",
                cite(MILES, "miles/ray/placement_group.py:105"),
                "warning",
            )
        if c.rollout_gpus == 0:
            _err(
                out,
                "cluster.rollout_gpus",
                "not colocated but no rollout GPUs: set cluster.rollout_gpus",
                "non-colocate needs rollout GPUs",
                cite(
                    MILES,
                    "miles/ray/rollout/rollout_server.py:163",
                    "miles/backends/sglang_utils/sglang_config.py:36",
                ),
            )
    f = {k: lay.field(k) for k in ("tp", "pp", "cp", "ep", "etp")}
    mp = tp * pp * cp
    if world % mp:
        _err(
            out,
            f"{f['tp']}/{f['pp']}/{f['cp']}",
            f"world size {world} (actor {a_nodes} nodes × {gpus} GPUs) is not divisible by TP·PP·CP = {tp}·{pp}·{cp} = {mp}",
            "world % (TP*PP*CP) == 0",
            cite(MLM, f"{MLM_ARGS}:314-319"),
        )
    emp = etp * ep * pp
    if world % emp:
        _err(
            out,
            f"{f['etp']}/{f['ep']}/{f['pp']}",
            f"world size {world} is not divisible by ETP·EP·PP = {etp}·{ep}·{pp} = {emp}",
            "world % (ETP*EP*PP) == 0",
            cite(CORE, "megatron/core/parallel_state.py:788-795"),
        )
    first, last = lay.first, lay.last
    layers = spec.num_layers
    if first or last:
        inner = pp - (1 if first else 0) - (1 if last else 0)
        rest = layers - (first or 0) - (last or 0)
        if inner < 0 or rest < 0 or bool(inner) != bool(rest) or (inner and rest % inner):
            _err(
                out,
                "parallelism.decoder_last_pipeline_num_layers",
                f"{layers} layers with first={first or '-'} last={last or '-'} do not split evenly over the other {inner} of PP={pp} stages",
                "uneven PP split consistent",
                cite(CORE, "megatron/core/transformer/transformer_config.py:1359-1417"),
            )
    elif layers % pp:
        _err(
            out,
            f["pp"],
            f"{layers} layers ({recipe.model.type}) are not divisible by PP={pp}; pick a PP dividing {layers} "
            "or set parallelism.decoder_last_pipeline_num_layers",
            "num_layers % PP == 0",
            cite(MLM, f"{MLM_ARGS}:623-636"),
        )
    if spec.num_experts % ep:
        _err(
            out,
            f["ep"],
            f"{spec.num_experts} experts are not divisible by EP={ep}",
            "num_experts % EP == 0",
            cite(MLM, f"{MLM_ARGS}:1088-1092"),
        )
    tc = "megatron/core/transformer/transformer_config.py"
    if spec.num_attention_heads % tp:
        _err(
            out,
            f["tp"],
            f"{spec.num_attention_heads} attention heads are not divisible by TP={tp}",
            "heads % TP == 0",
            cite(CORE, f"{tc}:924-928"),
        )
    g = spec.num_query_groups
    if g % tp and tp % g:
        _err(
            out,
            f["tp"],
            f"{g} query groups are neither a multiple nor a divisor of TP={tp}",
            "query groups % TP == 0 or TP % query groups == 0",
            cite(CORE, f"{tc}:939-946"),
        )
    elif g % tp:
        _err(
            out,
            f["tp"],
            f"TP={tp} exceeds the {g} query groups: each KV head is replicated on {tp // g} TP ranks",
            "query groups >= TP",
            cite(CORE, f"{tc}:939-946"),
            "warning",
        )
    if recipe.parallelism.sequence_parallel and tp == 1:
        _err(
            out,
            "parallelism.sequence_parallel",
            "sequence parallelism is silently turned off by Megatron when TP=1",
            "SP needs TP > 1",
            cite(MLM, f"{MLM_ARGS}:971-977"),
            "warning",
        )


def check_sglang(res: Resolved, out: list[Finding]) -> None:
    """Rollout engine sizes."""
    recipe, gpus = res.recipe, res.gpus_per_node
    s = recipe.sglang
    mem_text = mem_fraction_static(recipe)
    mem_field = (
        f"sglang.mem_fraction_static_by_hardware.{recipe.cluster.hardware}"
        if recipe.cluster.hardware in s.mem_fraction_static_by_hardware
        else "sglang.mem_fraction_static"
    )
    if not 0 < float(mem_text) < 1:
        _err(
            out,
            mem_field,
            f"mem_fraction_static={mem_text} is not a fraction of GPU memory; use a value between 0 and 1 "
            "(exclusive), e.g. 0.7",
            "0 < mem_fraction_static < 1",
            cite(SGL, "sglang/srt/mem_cache/kv_cache_configurator.py:3007-3057"),
        )
    spec = MODELS.get(recipe.model.type)
    rg = res.rollout_gpus
    g = engine_gpus(res)
    if not gpus or not rg:
        return
    unit = min(g, gpus)
    rs = "miles/ray/rollout/rollout_server.py:47-49"
    if rg % unit:
        _err(
            out,
            "sglang.gpus_per_engine",
            f"{rg} rollout GPUs are not divisible by min(gpus_per_engine={g}, GPUs per node={gpus}) = {unit}; "
            f"{rg % unit} GPUs stay idle",
            "rollout GPUs % min(engine GPUs, GPUs/node) == 0",
            cite(MILES, rs),
            "warning",
        )
    if g > gpus and g % gpus:
        _err(
            out,
            "sglang.gpus_per_engine",
            f"an engine of {g} GPUs spans nodes of {gpus} GPUs but is not a whole number of nodes",
            "engine GPUs % GPUs/node == 0 when > 1 node",
            cite(MILES, "miles/backends/sglang_utils/sglang_engine.py:711"),
        )
    if g < gpus and gpus % g:
        _err(
            out,
            "sglang.gpus_per_engine",
            f"engines of {g} GPUs do not tile a node of {gpus} GPUs: an engine would start at GPU {gpus - gpus % g} "
            "and run past the node's last GPU",
            "GPUs/node % engine GPUs == 0 when < 1 node",
            cite(MILES, "miles/backends/sglang_utils/sglang_engine.py:30-37"),
        )
    if g > rg:
        _err(
            out,
            "sglang.gpus_per_engine",
            f"an engine needs {g} GPUs but rollout has only {rg}",
            "engine GPUs <= rollout GPUs",
            cite(MILES, rs),
        )
    dp = s.dp_size or 1
    if dp > 1 and not s.enable_dp_attention:
        _err(
            out,
            "sglang.dp_size",
            f"dp_size={dp} needs sglang.enable_dp_attention = true",
            "dp_size > 1 requires dp-attention",
            cite(MILES, "miles/backends/sglang_utils/arguments.py:193-194"),
        )
    if g % dp:
        _err(
            out,
            "sglang.dp_size",
            f"engine TP {g} (= gpus_per_engine) is not divisible by dp_size={dp}",
            "engine TP % dp == 0",
            cite(SGL, "sglang/srt/arg_groups/parallel_hook.py:326"),
        )
    ep = s.ep_size or 1
    if g % ep:
        _err(
            out,
            "sglang.ep_size",
            f"engine TP {g} is not divisible by ep_size={ep}: SGLang's MoE TP is {g} // {ep}",
            "engine TP % sglang ep == 0",
            cite(SGL, "sglang/srt/runtime_context.py:154"),
            "warning",
        )
    if spec and spec.num_experts % ep:
        _err(
            out,
            "sglang.ep_size",
            f"{spec.num_experts} experts are not divisible by ep_size={ep}",
            "experts % sglang ep == 0",
            cite(SGL, "sglang/srt/layers/moe/fused_moe_triton/layer.py:414"),
        )
    if s.moe_dense_tp_size not in (None, 1, g):
        _err(
            out,
            "sglang.moe_dense_tp_size",
            f"moe_dense_tp_size={s.moe_dense_tp_size} must be 1 or the engine's TP ({g})",
            "moe-dense-tp ∈ {1, tp}",
            cite(SGL, "sglang/srt/arg_groups/validation_hook.py:207-211"),
        )
    attn_tp = g // dp if s.enable_dp_attention and g % dp == 0 else g
    if spec and attn_tp:
        heads, kv = spec.num_attention_heads, spec.num_query_groups
        if heads % attn_tp or (kv % attn_tp if kv >= attn_tp else attn_tp % kv):
            _err(
                out,
                "sglang.gpus_per_engine",
                f"the engine's attention TP ({g} GPUs / attention DP {dp if s.enable_dp_attention else 1} = {attn_tp}) "
                f"does not split the model's {heads} attention heads / {kv} KV heads evenly",
                "heads and KV heads split over attention TP",
                cite(SGL, "sglang/srt/models/glm4_moe.py:236-247"),
            )
    if s.mtp and s.speculative_eagle_topk > s.speculative_num_draft_tokens:
        _err(
            out,
            "sglang.speculative_eagle_topk",
            f"EAGLE speculative_eagle_topk={s.speculative_eagle_topk} > speculative_num_draft_tokens="
            f"{s.speculative_num_draft_tokens}: top-k branches beyond the draft-token budget are drafted, never verified",
            "eagle top-k <= draft tokens",
            own("eagle-topk"),
            "warning",
        )


def check_batches(res: Resolved, out: list[Finding]) -> None:
    """Batch arithmetic."""
    r, dp, cp = res.recipe, res.dp, res.layout.cp
    ro = r.rollout
    total = ro.rollout_batch_size * ro.n_samples_per_prompt
    steps = ro.num_steps_per_rollout
    if steps and total % steps:
        _err(
            out,
            "rollout.num_steps_per_rollout",
            f"rollout_batch_size·n_samples_per_prompt = {ro.rollout_batch_size}·{ro.n_samples_per_prompt} = {total} "
            f"is not divisible by num_steps_per_rollout={ro.num_steps_per_rollout}; the global batch is rounded down "
            "and the rest of each rollout is not trained on",
            "(rbs*n) % steps == 0",
            cite(MILES, f"{MARGS}:3431", "miles/backends/training_utils/data.py:465-466"),
            "warning",
        )
    gbs = total // steps if steps else ro.global_batch_size or total
    if steps and ro.global_batch_size is not None and ro.global_batch_size != gbs:
        _err(
            out,
            "rollout.global_batch_size",
            f"global_batch_size={ro.global_batch_size} but rollout_batch_size·n_samples/steps = {gbs}; the trainer refuses a mismatch",
            "gbs == rbs*n/steps",
            cite(MILES, f"{MARGS}:3431-3438"),
        )
    gbs = ro.global_batch_size or gbs
    src = cite(MILES, "miles/backends/training_utils/data.py:465-466")
    if dp and gbs < dp:
        _err(
            out,
            "rollout.global_batch_size",
            f"global batch {gbs} is not divisible by data-parallel size {dp}: each rank gets {gbs} // {dp} = 0 samples "
            "per step and the trainer divides by zero",
            "gbs >= DP",
            src,
        )
    elif dp and gbs % dp:
        _err(
            out,
            "rollout.global_batch_size",
            f"global batch {gbs} is not divisible by data-parallel size {dp}; {gbs % dp} samples per step would be dropped silently",
            "gbs % DP == 0",
            src,
            "warning",
        )
    if (
        ro.dynamic_sampling
        and ro.over_sampling_batch_size is not None
        and ro.over_sampling_batch_size < ro.rollout_batch_size
    ):
        _err(
            out,
            "rollout.over_sampling_batch_size",
            f"over_sampling_batch_size={ro.over_sampling_batch_size} < rollout_batch_size={ro.rollout_batch_size}",
            "over_sampling >= rollout batch",
            cite(MILES, f"{MARGS}:3450-3453"),
        )
    if ro.num_rollout is None:
        _err(
            out,
            "rollout.num_rollout",
            "num_rollout is not set; the trainer needs num_rollout (or num_epoch)",
            "num_rollout required",
            cite(MILES, f"{MARGS}:3463-3467"),
        )
    p = r.parallelism
    if p.use_dynamic_batch_size and not p.max_tokens_per_gpu:
        _err(
            out,
            "parallelism.max_tokens_per_gpu",
            "use_dynamic_batch_size needs max_tokens_per_gpu",
            "dynamic batch needs max tokens",
            cite(MILES, f"{MARGS}:3155-3156"),
        )
    if p.max_tokens_per_gpu:
        need = (ro.rollout_max_response_len or 0) + (ro.prompt_len or 0)
        budget = p.max_tokens_per_gpu * cp
        if need > budget:
            _err(
                out,
                "parallelism.max_tokens_per_gpu",
                f"a sample of up to {need} tokens exceeds max_tokens_per_gpu·CP = {p.max_tokens_per_gpu}·{cp} = {budget}; "
                "it gets its own micro-batch (risk of OOM)",
                "sample len <= max_tokens*CP",
                cite(MILES, "miles/utils/data.py:277-288"),
                "warning",
            )


def check_flags(res: Resolved, out: list[Finding]) -> None:
    """Flag logic the trainer enforces in parse_args."""
    recipe = res.recipe
    al = recipe.algorithm
    if float(al.kl_coef or 0) != 0 and float(al.kl_loss_coef or 0) != 0:
        _err(
            out,
            "algorithm.kl_coef",
            f"kl_coef={al.kl_coef} and kl_loss_coef={al.kl_loss_coef} are both non-zero; set one to 0",
            "not both kl_coef and kl_loss_coef",
            cite(MILES, f"{MARGS}:3134"),
        )
    if al.use_tis and al.use_rollout_logprobs:
        _err(
            out,
            "algorithm.use_tis",
            "use_tis and use_rollout_logprobs exclude each other",
            "use_tis xor use_rollout_logprobs",
            cite(MILES, f"{MARGS}:3142-3143"),
        )
    for name in ("eps_clip", "eps_clip_high"):
        v = getattr(al, name)
        if v is not None and float(v) <= 0:
            _err(
                out,
                f"algorithm.{name}",
                f"{name}={v} must be greater than 0: the policy ratio is clipped to [1 - eps_clip, 1 + eps_clip_high]",
                f"{name} > 0",
                cite(MILES, "miles/backends/training_utils/loss_hub/math_utils.py:263"),
                "warning",
            )
    o = recipe.optimizer
    adam = cite(TORCH, "torch/optim/adam.py:58-67")
    if float(o.lr) < 0:
        _err(
            out,
            "optimizer.lr",
            f"lr={o.lr} must be greater than 0 (torch refuses < 0: 'Invalid learning rate')",
            "lr >= 0",
            adam,
        )
    elif float(o.lr) == 0:
        _err(
            out,
            "optimizer.lr",
            f"lr={o.lr} must be greater than 0: 0 never updates the weights",
            "lr > 0",
            own("lr-zero"),
            "warning",
        )
    if float(o.weight_decay) < 0:
        _err(
            out,
            "optimizer.weight_decay",
            f"weight_decay={o.weight_decay} must be 0 or more ('Invalid weight_decay value')",
            "weight_decay >= 0",
            adam,
        )
    if o.optimizer == "adam":
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(o, name)
            if not 0 <= float(v) < 1:
                _err(
                    out,
                    f"optimizer.{name}",
                    f"{name}={v} must be in [0, 1), e.g. 0.9 or 0.98 ('Invalid beta parameter')",
                    "0 <= beta < 1",
                    adam,
                )
    if o.cpu_offload and not o.precision_aware:
        _err(
            out,
            "optimizer.precision_aware",
            "optimizer.cpu_offload needs precision_aware = true",
            "--optimizer-cpu-offload requires --use-precision-aware-optimizer",
            cite(MLM, f"{MLM_ARGS}:1253-1257"),
        )
    if o.overlap_cpu_optimizer_d2h_h2d and not o.cpu_offload:
        _err(
            out,
            "optimizer.overlap_cpu_optimizer_d2h_h2d",
            "overlapping CPU optimizer copies does nothing without cpu_offload",
            "overlap needs offload",
            own("overlap-needs-offload"),
            "warning",
        )
    if o.precision_aware and o.optimizer != "adam":
        _err(
            out,
            "optimizer.optimizer",
            "the precision-aware optimizer only supports adam",
            "precision-aware needs adam",
            cite(CORE, "megatron/core/optimizer/optimizer_config.py:375-378"),
        )
    ev = recipe.eval
    if ev.enabled and ev.interval and not (ev.prompt_data or recipe.rollout.task):
        _err(
            out,
            "eval.prompt_data",
            "eval.interval is set but there is no eval data",
            "eval_interval needs eval data",
            cite(MILES, f"{MARGS}:3060-3061"),
        )
    paths = res.paths
    if recipe.checkpoint.save_interval and not paths["save"]:
        _err(
            out,
            "checkpoint.save",
            "save_interval is set but checkpoint.save is empty",
            "save_interval requires --save",
            cite(MILES, f"{MARGS}:3075-3076"),
        )
    if paths["save"] and not recipe.checkpoint.save_interval:
        _err(
            out,
            "checkpoint.save_interval",
            "checkpoint.save is set without save_interval; Megatron refuses",
            "--save requires --save-interval",
            cite(MLM, f"{MLM_ARGS}:901-903"),
        )
    if not paths["load"]:
        _err(
            out,
            "checkpoint.load",
            "no --load: a restarted run would start from --ref-load again instead of its own checkpoints",
            "--load set",
            cite(MILES, f"{MARGS}:3046-3057"),
            "warning",
        )
    wt = recipe.weight_transfer.mode
    if recipe.cluster.colocate and wt in ("p2p", "disk-delta"):
        _err(
            out,
            "weight_transfer.mode",
            f"'{wt}' weight transfer does not work with cluster.colocate = true",
            "p2p/disk-delta need non-colocate",
            cite(MILES, f"{MARGS}:3263-3277"),
        )
    if not recipe.cluster.colocate and wt == "colocate":
        _err(
            out,
            "weight_transfer.mode",
            "cluster.colocate = false with weight_transfer.mode colocate: miles uses its "
            "default (broadcast); say weight_transfer.mode = broadcast or p2p",
            "non-colocate names a transfer mode",
            cite(MILES, f"{MARGS}:836-839"),
            "warning",
        )
    if al.advantage_estimator == "grpo" and float(al.eps_clip) < 1e-3:
        _err(
            out,
            "algorithm.eps_clip",
            f"eps_clip={al.eps_clip} is a sequence-ratio band (GSPO); under token-level GRPO it clips almost every token",
            "GSPO-sized clip under GRPO",
            own("gspo-clip-under-grpo"),
            "warning",
        )


# runtime env values glmlaunch computes per launch (plan.runtime_env); env.vars wins over them
COMPUTED_ENV = {
    "MASTER_ADDR": "the head node's address",
    "no_proxy": "env.no_proxy and every node's address",
    "NO_PROXY": "env.no_proxy and every node's address",
    "PYTHONPATH": "trainer.miles_dir:trainer.megatron_dir (for the probe: glmlaunch's own directory)",
}


# Ray's own connection and auth variables: the job's driver gets them from Ray (RAY_ADDRESS) and
# the run (its token file); one in the job's runtime env would point it elsewhere
RAY_AUTH_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def check_env(res: Resolved, out: list[Finding]) -> None:
    """``env.vars`` that replace a value glmlaunch computed for this launch (warnings), or Ray's
    auth variables, which the run owns (errors: docs/rules.md#ray-env)."""
    recipe = res.recipe
    for k in recipe.env.vars:
        if k in RAY_AUTH_ENV:
            _err(
                out,
                f"env.vars.{k}",
                f"{k} is the run's own (Ray token auth: a new token per run, in a mode-600 file); "
                "one in the job's env would replace it",
                f"remove env.vars.{k}",
                own("ray-env"),
            )
        elif k == "RAY_ADDRESS":
            _err(
                out,
                f"env.vars.{k}",
                "RAY_ADDRESS is set by Ray for the job's driver (this run's head); the recipe's value "
                "would point the trainer at another cluster",
                "remove env.vars.RAY_ADDRESS unless you mean it",
                own("ray-env"),
                "warning",
            )
    for k, what in COMPUTED_ENV.items():
        if k in recipe.env.vars:
            _err(
                out,
                f"env.vars.{k}",
                f"'{recipe.env.vars[k]}' overrides the value glmlaunch computed ({what}); "
                f"remove env.vars.{k} unless you mean it",
                "env.vars does not replace computed values",
                own("computed-env"),
                "warning",
            )


def check_paths(res: Resolved, out: list[Finding]) -> None:
    """Paths are absolute, under a real base_dir, and carry no unexpanded variables."""
    recipe = res.recipe
    base = recipe.run.base_dir
    if not base.startswith("/") or base.rstrip("/") == "":
        _err(
            out,
            "run.base_dir",
            f"base_dir '{base}' must be an absolute directory on a filesystem every node mounts",
            "base_dir absolute, not /",
            own("base-dir"),
        )
    if recipe.trainer.kind != "miles":
        return
    items = {f"checkpoint.{k}": res.paths[k] for k in ("hf_checkpoint", "ref_load", "save", "load")}
    items["rollout.prompt_data"] = res.paths["prompt_data"]
    items["eval.prompt_data"] = res.paths["eval_data"]
    items["trainer.miles_dir"] = recipe.trainer.miles_dir
    items["trainer.megatron_dir"] = recipe.trainer.megatron_dir
    items["trainer.dump_details"] = (
        recipe.expand(recipe.trainer.dump_details) if recipe.trainer.dump_details else ""
    )
    for field, v in items.items():
        if not v:
            continue
        if "$" in v or "{" in v:
            _err(
                out,
                field,
                f"'{v}' still holds a variable; give a concrete path",
                "no unexpanded variables",
                own("no-variables"),
            )
        elif not v.startswith("/"):
            _err(out, field, f"'{v}' is not an absolute path", "absolute paths", own("absolute-paths"))


def check_argv(plan: LaunchPlan, out: list[Finding]) -> None:
    """The rendered trainer argv and env are well formed (docs/rules.md#argv): no empty values,
    no ``${``, no ``--flag value`` glued into one token, each flag once, no secrets."""
    seen: dict[str, int] = {}
    for i, tok in enumerate(plan.argv):
        if tok == "":
            _err(out, "argv", f"token {i} is empty", "no empty tokens", own("argv"))
        if "${" in tok:
            _err(
                out,
                "argv",
                f"token {i} '{tok}' holds an unexpanded variable",
                "no ${VAR}",
                own("no-variables"),
            )
        if tok.startswith("--") and any(c.isspace() for c in tok):
            _err(
                out,
                "argv",
                f"token '{tok}' holds a flag and its value in one token",
                "one token per word",
                own("argv"),
            )
        if tok.startswith("--"):
            if tok in seen:
                _err(
                    out,
                    "argv",
                    f"{tok} appears twice (tokens {seen[tok]} and {i})",
                    "each flag once",
                    own("flag-once"),
                )
            seen[tok] = i
    for k, v in plan.env_vars.items():
        if "${" in v:
            _err(
                out,
                f"env.vars.{k}",
                f"'{v}' holds an unexpanded variable",
                "no ${VAR} in the runtime env",
                own("no-variables-env"),
            )
        if v == "":
            _err(out, f"env.vars.{k}", "empty value", "no empty values", own("argv"))
    for k in plan.secret_env:
        if any(k in tok for tok in plan.argv):
            _err(out, "argv", f"the secret {k} appears in argv", "no secrets in argv", own("no-secrets"))


def check_ports(plan: LaunchPlan, out: list[Finding]) -> None:
    """The port plan: distinct ports, worker range clear of the trainer's ranges."""
    p = plan.ports
    bad = len(out)
    if not 1024 <= p.base <= 65535 - 9:
        _err(
            out,
            "ports.base",
            f"port base {p.base} is out of range: Ray uses ports base .. base+9, which must lie in 1024-65535; "
            "use --port-base with a value from 1024 to 65526 (default 6379)",
            "1024 <= base <= 65526",
            own("port-range"),
        )
    if not 1024 <= p.dashboard <= 65535:
        _err(
            out,
            "ports.dashboard",
            f"dashboard port {p.dashboard} is out of range; use --dashboard-port with a value from 1024 to 65535 "
            "(default 8265)",
            "1024 <= dashboard <= 65535",
            own("port-range"),
        )
    for name, v in (("min_worker", p.min_worker), ("max_worker", p.max_worker)):
        if not 1024 <= v <= 65535:
            _err(
                out,
                f"ports.{name}",
                f"Ray worker port {v} is out of range 1024-65535",
                "1024 <= worker ports <= 65535",
                own("port-range"),
            )
    if len(out) > bad:
        return  # the overlap checks below mean little with ports that cannot be bound
    named = p.named
    by_port: dict[int, list[str]] = {}
    for k, v in named.items():
        by_port.setdefault(v, []).append(k)
    for v, names in by_port.items():
        if len(names) > 1:
            flag = "--dashboard-port or --port-base" if "dashboard" in names else "--port-base"
            _err(
                out,
                "ports.dashboard" if "dashboard" in names else "ports.base",
                f"two Ray ports coincide: {' and '.join(names)} are both port {v} (Ray uses --port-base .. +9 = "
                f"{p.base}-{p.base + 9}); change {flag}",
                "distinct ports",
                own("ports-distinct"),
            )
    vals = list(named.values())
    lo, hi = p.min_worker, p.max_worker
    if lo > hi:
        _err(
            out, "ports.min_worker", f"worker port range {lo}-{hi} is empty", "min <= max", own("port-range")
        )
    ranges = TRAINER_PORT_RANGES if plan.trainer_kind == "miles" else {}
    for name, (a, b) in ranges.items():
        if lo <= b and a <= hi:
            _err(
                out,
                "ports.min_worker",
                f"Ray worker ports {lo}-{hi} overlap the {name} range {a}-{b}",
                "worker ports clear of trainer ranges",
                own("ports-clear"),
            )
        for k, v in named.items():
            if a <= v <= b:
                _err(
                    out,
                    f"ports.{k}",
                    f"port {v} is in the {name} range {a}-{b}",
                    "ports clear of trainer ranges",
                    own("ports-clear"),
                )
    for v in vals:
        if lo <= v <= hi:
            _err(
                out,
                "ports",
                f"port {v} is inside the worker range {lo}-{hi}",
                "ports outside worker range",
                own("ports-distinct"),
            )
    try:
        wildcard = ipaddress.ip_address(plan.head_address).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        _err(
            out,
            "hosts",
            "the head's address is the unspecified (wildcard) address; the job API would listen on "
            "every interface",
            "no wildcard bind",
            own("no-wildcard"),
        )
    try:
        ipaddress.ip_address(plan.head_address)
    except ValueError:
        if plan.num_nodes > 1 and plan.trainer_kind == "miles" and not plan.placeholder:
            _err(
                out,
                "hosts",
                f"head address '{plan.head_address}' is not an IP literal; the miles router needs one",
                "IP literal addresses",
                own("ip-literal-head"),
                "warning",
            )


def shallow(res: Resolved, plan: LaunchPlan | None = None) -> Findings:
    """The recipe × allocation rules of this module (and, with ``plan``, its argv and ports)."""
    out: list[Finding] = []
    check_cluster(res, out)
    check_paths(res, out)
    check_env(res, out)
    if res.recipe.trainer.kind == "miles":
        check_layout(res, out)
        check_sglang(res, out)
        check_batches(res, out)
        check_flags(res, out)
    if plan is not None:
        check_argv(plan, out)
        check_ports(plan, out)
    return Findings(out)


def run(
    res: Resolved,
    plan: LaunchPlan | None = None,
    *,
    deep: bool = False,
    nodes: Callable[[], list[Finding]] | None = None,
) -> Findings:
    """Every check of a launch, in one order for every entry point: the recipe × allocation rules
    (:func:`shallow`); then, only when they found no error, the deep checks (``deep``:
    megatron-core, SGLang and the HF ``config.json``, :func:`glmlaunch.deepcheck.deep_check`) and
    the read-only per-node preflight (``nodes``: a callable that runs it and returns its findings;
    skipped for placeholder nodes). Returns every finding, errors first; never raises for a
    finding (call :meth:`~glmlaunch.errors.Findings.raise_for_errors`)."""
    found = shallow(res, plan)
    if found.errors:
        return found
    if deep and plan is not None:
        from .deepcheck import deep_check

        found = Findings([*found, *deep_check(res.recipe, plan)])
    if nodes is not None and not found.errors and not res.alloc.placeholder:
        found = Findings([*found, *nodes()])
    return found
