"""Deep checks of a launch plan: megatron-core's and SGLang's own validators run on the trainer's
argv, and the checkpoint's ``config.json`` compared with the model args. The hand-written rules
are in :mod:`glmlaunch.checks`, once; nothing here repeats them.

These import heavy packages lazily (megatron-core ~3 s, SGLang in a subprocess), so they run only
for ``glmlaunch check --deep`` and ``launch`` (unless ``--no-deep-check``). The per-node preflight
(versions, GPUs, ports, files) is in :mod:`glmlaunch.preflight`.
"""

from __future__ import annotations

import os

from .errors import Finding
from .plan import LaunchPlan
from .recipe import Recipe
from .resolve import paths

# trainer flag -> the recipe field that sets it (used to name fields in deep-check findings)
FLAG_FIELDS = {
    "--tensor-model-parallel-size": "parallelism.tp",
    "--pipeline-model-parallel-size": "parallelism.pp",
    "--context-parallel-size": "parallelism.cp",
    "--expert-model-parallel-size": "parallelism.ep",
    "--expert-tensor-parallel-size": "parallelism.etp",
    "--sequence-parallel": "parallelism.sequence_parallel",
    "--decoder-first-pipeline-num-layers": "parallelism.decoder_first_pipeline_num_layers",
    "--decoder-last-pipeline-num-layers": "parallelism.decoder_last_pipeline_num_layers",
    "--max-tokens-per-gpu": "parallelism.max_tokens_per_gpu",
    "--recompute-granularity": "parallelism.recompute_granularity",
    "--recompute-method": "parallelism.recompute_method",
    "--recompute-num-layers": "parallelism.recompute_num_layers",
    "--actor-num-nodes": "cluster.actor_nodes",
    "--actor-num-gpus-per-node": "cluster.gpus_per_node",
    "--num-layers": "model.type's num_layers",
    "--hidden-size": "model.type's hidden_size",
    "--num-attention-heads": "model.type's num_attention_heads",
    "--num-query-groups": "model.type's num_query_groups",
    "--num-experts": "model.type's num_experts",
    "--moe-router-topk": "model.type's moe_router_topk",
    "--ffn-hidden-size": "model.type's ffn_hidden_size",
    "--moe-ffn-hidden-size": "model.type's moe_ffn_hidden_size",
    "--moe-token-dispatcher-type": "model.moe_token_dispatcher",
    "--optimizer": "optimizer.optimizer",
    "--optimizer-cpu-offload": "optimizer.cpu_offload",
    "--overlap-cpu-optimizer-d2h-h2d": "optimizer.overlap_cpu_optimizer_d2h_h2d",
    "--use-precision-aware-optimizer": "optimizer.precision_aware",
    "--rollout-num-gpus-per-engine": "sglang.gpus_per_engine",
    "--sglang-dp-size": "sglang.dp_size",
    "--sglang-ep-size": "sglang.ep_size",
    "--sglang-enable-dp-attention": "sglang.enable_dp_attention",
    "--sglang-moe-dense-tp-size": "sglang.moe_dense_tp_size",
    "--sglang-mem-fraction-static": "sglang.mem_fraction_static",
    "--sglang-speculative-algorithm": "sglang.mtp",
    "--sglang-speculative-num-steps": "sglang.speculative_num_steps",
    "--sglang-speculative-eagle-topk": "sglang.speculative_eagle_topk",
    "--sglang-speculative-num-draft-tokens": "sglang.speculative_num_draft_tokens",
    "--rollout-stop-token-ids": "rollout.stop_token_ids",
    "--sglang-cuda-graph-bs": "sglang.cuda_graph_bs",
    "--sglang-attention-backend": "sglang.attention_backend",
    "--sglang-kv-cache-dtype": "sglang.fp8_kv_cache",
    "--hf-checkpoint": "checkpoint.hf_checkpoint",
}


def deep_check(recipe: Recipe, plan: LaunchPlan, *, sglang: bool = True) -> list[Finding]:
    """Run the deep checks of ``plan`` (miles trainer only). Returns findings (never raises).

    - Megatron: :func:`glmlaunch.deep.megatron.check_megatron` on the plan's argv and world size.
    - HF config: where ``--hf-checkpoint`` is readable from this machine, its ``config.json`` vs
      the model args and the stop-token ids vs its tokenizer (miles ``hf_validate_args``).
    - SGLang: the engine's ``ServerArgs`` resolved by the installed SGLang (in a subprocess).
    """
    if plan.trainer_kind != "miles":
        return []
    from .deep.hfconfig import check_hf_config, check_stop_tokens
    from .deep.megatron import check_megatron

    out = list(check_megatron(plan.argv, plan.world_size, FLAG_FIELDS))
    hf = paths(recipe)["hf_checkpoint"]
    cfg = os.path.join(hf, "config.json")
    if os.path.isfile(cfg):
        out += check_hf_config(plan.argv, cfg, FLAG_FIELDS)
        out += check_stop_tokens(recipe.rollout.stop_token_ids, hf, field="rollout.stop_token_ids")
    else:
        out.append(
            Finding(
                "checkpoint.hf_checkpoint",
                f"{cfg} is not readable from this machine; the config.json comparison was skipped "
                "(the per-node preflight checks the file on every node)",
                "HF config vs model args",
                "miles/utils/arguments.py:3656-3707 (miles@31f1ca961a94)",
                "warning",
            )
        )
    if sglang:
        try:
            from .deep.sglang import check_sglang
        except ImportError:
            pass
        else:
            out += check_sglang(
                plan.argv, plan.gpus_per_node, cfg if os.path.isfile(cfg) else None, flag_fields=FLAG_FIELDS
            )
    return sorted(out, key=lambda f: f.severity != "error")
