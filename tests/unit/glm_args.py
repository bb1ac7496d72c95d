"""The GLM-4.5 model args as the trainer contract §1.5 writes them (miles scripts/models/
glm4.5-355B-A32B.py and glm4.5-106B-A12B.py), written out independently of glmlaunch.models,
and small argv helpers shared by the deep-check tests."""

from __future__ import annotations

M355 = (
    "--disable-bias-linear --qk-layernorm --group-query-attention --num-attention-heads 96 "
    "--num-query-groups 8 --kv-channels 128 --num-layers 92 --hidden-size 5120 --ffn-hidden-size 12288 "
    "--add-qkv-bias --normalization RMSNorm --position-embedding-type rope --rotary-percent 0.5 --swiglu "
    "--untie-embeddings-and-output-weights --vocab-size 151552 --rotary-base 1000000 "
    "--moe-ffn-hidden-size 1536 --moe-shared-expert-intermediate-size 1536 --moe-router-pre-softmax "
    "--moe-router-score-function sigmoid --moe-router-enable-expert-bias --moe-router-bias-update-rate 0 "
    "--moe-router-load-balancing-type seq_aux_loss --moe-token-dispatcher-type alltoall --moe-router-topk 8 "
    "--moe-router-topk-scaling-factor 2.5 --moe-layer-freq [0]*3+[1]*89 --num-experts 160 "
    "--moe-grouped-gemm --moe-router-dtype fp32 --moe-permute-fusion --moe-aux-loss-coeff 0"
).split()
# GLM-4.5-Air: the differences listed in §1.5
MAIR = (
    "--disable-bias-linear --group-query-attention --num-attention-heads 96 "
    "--num-query-groups 8 --kv-channels 128 --num-layers 46 --hidden-size 4096 --ffn-hidden-size 10944 "
    "--add-qkv-bias --normalization RMSNorm --position-embedding-type rope --rotary-percent 0.5 --swiglu "
    "--untie-embeddings-and-output-weights --vocab-size 151552 --rotary-base 1000000 "
    "--moe-ffn-hidden-size 1408 --moe-shared-expert-intermediate-size 1408 --moe-router-pre-softmax "
    "--moe-router-score-function sigmoid --moe-router-enable-expert-bias --moe-router-bias-update-rate 0 "
    "--moe-router-load-balancing-type seq_aux_loss --moe-token-dispatcher-type alltoall --moe-router-topk 8 "
    "--moe-layer-freq [0]*1+[1]*45 --num-experts 128 "
    "--moe-grouped-gemm --moe-router-dtype fp32 --moe-permute-fusion --moe-aux-loss-coeff 0"
).split()


def set_flag(argv: list[str], flag: str, *values: str) -> list[str]:
    """Drop every occurrence of ``flag`` (and its values), then append ``flag values``."""
    out, skip = [], False
    for tok in argv:
        if tok.startswith("--"):
            skip = tok == flag
        if not skip:
            out.append(tok)
    return out + [flag, *values]


def drop_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its values."""
    return set_flag(argv, flag)[:-1]
