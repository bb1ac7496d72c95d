"""Model architectures: the Megatron model args of each model glmlaunch knows.

The token lists equal scripts/models/glm4.5-355B-A32B.py:1-41 and
scripts/models/glm4.5-106B-A12B.py:1-39 (miles@31f1ca961a94), with one difference: they are
token lists, so ``--moe-layer-freq [0]*3+[1]*89`` is one token and never globbed by a shell.
The numeric fields (layers, heads, experts ...) are kept beside the tokens so that checks do not
have to parse argv.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import RecipeError


@dataclass(frozen=True)
class ModelSpec:
    """One model's architecture: the Megatron args (tokens) and the numbers checks need.

    ``n_dense_layers`` + ``n_moe_layers`` = ``num_layers``; ``hf_repo`` is the Hugging Face id
    of the weights (``hf_repo_fp8``: their FP8 copy, what FP8 rollout loads); ``dir_name`` is the
    directory name under ``base_dir`` (the seed's naming).
    """

    type: str
    hf_repo: str
    dir_name: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    num_experts: int
    moe_ffn_hidden_size: int
    moe_router_topk: int
    vocab_size: int
    rotary_base: int
    n_dense_layers: int
    args: tuple[str, ...] = field(repr=False, default=())

    @property
    def hf_repo_fp8(self) -> str:
        """The FP8 copy of the weights on the Hub (``zai-org/GLM-4.5-FP8``: the ``{model}-FP8``
        naming miles' scripts/run_glm45_355b_a32b.py:58 (miles@31f1ca961a94) gives its own FP8 output)."""
        return f"{self.hf_repo}-FP8"

    @property
    def n_moe_layers(self) -> int:
        return self.num_layers - self.n_dense_layers


def _glm45(
    type_: str,
    hf_repo: str,
    dir_name: str,
    *,
    qk_layernorm: bool,
    num_layers: int,
    n_dense: int,
    hidden: int,
    ffn: int,
    moe_ffn: int,
    experts: int,
    topk_scaling: str | None,
) -> ModelSpec:
    args = ["--disable-bias-linear"]
    if qk_layernorm:
        args.append("--qk-layernorm")
    args += [
        "--group-query-attention",
        "--num-attention-heads",
        "96",
        "--num-query-groups",
        "8",
        "--kv-channels",
        "128",
        "--num-layers",
        str(num_layers),
        "--hidden-size",
        str(hidden),
        "--ffn-hidden-size",
        str(ffn),
        "--add-qkv-bias",
        "--normalization",
        "RMSNorm",
        "--position-embedding-type",
        "rope",
        "--rotary-percent",
        "0.5",
        "--swiglu",
        "--untie-embeddings-and-output-weights",
        "--vocab-size",
        "151552",
        "--rotary-base",
        "1000000",
        "--moe-ffn-hidden-size",
        str(moe_ffn),
        "--moe-shared-expert-intermediate-size",
        str(moe_ffn),
        "--moe-router-pre-softmax",
        "--moe-router-score-function",
        "sigmoid",
        "--moe-router-enable-expert-bias",
        "--moe-router-bias-update-rate",
        "0",
        "--moe-router-load-balancing-type",
        "seq_aux_loss",
        "--moe-token-dispatcher-type",
        "alltoall",
        "--moe-router-topk",
        "8",
    ]
    if topk_scaling:
        args += ["--moe-router-topk-scaling-factor", topk_scaling]
    args += [
        "--moe-layer-freq",
        f"[0]*{n_dense}+[1]*{num_layers - n_dense}",
        "--num-experts",
        str(experts),
        "--moe-grouped-gemm",
        "--moe-router-dtype",
        "fp32",
        "--moe-permute-fusion",
        "--moe-aux-loss-coeff",
        "0",
    ]
    return ModelSpec(
        type=type_,
        hf_repo=hf_repo,
        dir_name=dir_name,
        num_layers=num_layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=96,
        num_query_groups=8,
        kv_channels=128,
        num_experts=experts,
        moe_ffn_hidden_size=moe_ffn,
        moe_router_topk=8,
        vocab_size=151552,
        rotary_base=1000000,
        n_dense_layers=n_dense,
        args=tuple(args),
    )


MODELS: dict[str, ModelSpec] = {
    # scripts/models/glm4.5-355B-A32B.py:1-41 (miles@31f1ca961a94)
    "glm4.5-355B-A32B": _glm45(
        "glm4.5-355B-A32B",
        "zai-org/GLM-4.5",
        "GLM-4.5-355B-A32B",
        qk_layernorm=True,
        num_layers=92,
        n_dense=3,
        hidden=5120,
        ffn=12288,
        moe_ffn=1536,
        experts=160,
        topk_scaling="2.5",
    ),
    # scripts/models/glm4.5-106B-A12B.py:1-39 (miles@31f1ca961a94) (GLM-4.5-Air)
    "glm4.5-106B-A12B": _glm45(
        "glm4.5-106B-A12B",
        "zai-org/GLM-4.5-Air",
        "GLM-4.5-Air",
        qk_layernorm=False,
        num_layers=46,
        n_dense=1,
        hidden=4096,
        ffn=10944,
        moe_ffn=1408,
        experts=128,
        topk_scaling=None,
    ),
}


def get_model(type_: str) -> ModelSpec:
    """Return the :class:`ModelSpec` of ``type_`` (a miles ``megatron_model_type``).

    Raises :class:`RecipeError` naming ``model.type`` and the known types.
    """
    try:
        return MODELS[type_]
    except KeyError:
        raise RecipeError(
            f"model.type: unknown model '{type_}'",
            f"use one of: {', '.join(sorted(MODELS))}",
        ) from None


# GPUs per node of each accelerator and which are Blackwell: NUM_GPUS_OF_HARDWARE and
# GENERATION_HARDWARE, miles/utils/external_utils/command_utils.py:367-382 (miles@31f1ca961a94)
# (B200/B300 added as Blackwell, H200 as Hopper).
HARDWARE_GPUS = {"H100": 8, "H200": 8, "B200": 8, "B300": 8, "GB200": 4, "GB300": 4}
BLACKWELL = {"B200", "B300", "GB200", "GB300"}
