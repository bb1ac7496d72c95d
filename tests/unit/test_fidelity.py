"""Fidelity: each GLM template renders what miles' own launcher passes, at the pinned commit.

The expected values are miles' own, written out from reading radixark/miles at
31f1ca961a94cb860cec3b2dea34ec332bfa8f76 (``MILES_COMMIT``): one literal list per case of the
``train.py`` argv that the launcher builds (after the model args, in its own group order, each group
citing the ``file:line`` it comes from) and the runtime env it submits. Nothing here is computed
by glmlaunch, so a change on either side shows.

- ``scripts/run_glm45_355b_a32b.py`` -> ``glm45-355b-a32b-grpo``: 4 and 8 nodes, GB200 / GB300 / H200,
  ``--enable-mis`` with both ``--tis-use-rs``, ``--task gsm8k``, ``--rollout-fp8``,
  ``--mode debug_minimal``, ``--dynamic-sampling --enable-mtp --rollout-attn-fp8``, ``--no-enable-eval``.
- ``examples/infra_features/p2p_weight_transfer/run.py run GLM-4.5-Air --mode p2p`` (what
  ``GLM-4.5-Air.sh`` runs) -> ``glm45-air-p2p``.
- ``scripts/run_glm45_355b_a32b_8node.py`` -> ``glm45-355b-a32b-gspo``.

Both argvs are read as argparse reads them: flag -> its values, the last occurrence winning on
miles' side (miles passes ``--sglang-chunked-prefill-size`` twice with FP8, and the 8-node script
``--moe-token-dispatcher-type`` twice); glmlaunch must pass each flag once. The deliberate
differences (docs/fidelity.md) are applied to miles' values by name, each in one helper below.
"""

from __future__ import annotations

import base64
import shlex
from pathlib import Path

import pytest
from glm_args import M355, MAIR

from glmlaunch.hosts import Allocation, Host
from glmlaunch.plan import PROBE_DEFAULT, apply_probes, build_plan
from glmlaunch.recipe import PACKAGE_TEMPLATES, load_recipe
from glmlaunch.resolve import resolve

MILES_COMMIT = "31f1ca961a94cb860cec3b2dea34ec332bfa8f76"
BASE = "/root/shared_data"  # the templates' run.base_dir
HEAD = "10.0.0.1"

# enable_mis: the config text miles encodes inline, scripts/run_glm45_355b_a32b.py:319-331, as a
# `base64:` pseudo-file, miles/utils/external_utils/command_utils.py:363-364 and
# miles/utils/file_arg_utils.py:4
MIS_YAML = """use_tis: true
use_rs: {use_rs}
tis_level: "token"
rs_level: "token"
tis_mode: "truncate"
tis_lower_bound: 0.5
tis_upper_bound: 2.0
rs_lower_bound: null
rs_upper_bound: null
rs_veto_threshold: 1.0e-4
tis_batch_normalize: true"""


def _tokens(text: str) -> list[str]:
    """Split a literal argv; ``<mis:use_rs=X>`` is the MIS config's pseudo-file for ``use_rs: X``."""
    out = []
    for tok in shlex.split(text):
        if tok.startswith("<mis:use_rs="):
            tok = "base64:" + base64.b64encode(MIS_YAML.format(use_rs=tok[12:-1]).encode()).decode()
        out.append(tok)
    return out


# ---------------------------------------------------------------- scripts/run_glm45_355b_a32b.py
# ScriptArgs defaults, :16-39: hardware GB200, enable_eval, tis_use_rs, task dapo_aime; run_id is
# RUNID, output_dir /root/shared_data (command_utils.py:134). The model args come first,
# scripts/models/glm4.5-355B-A32B.py:5-41 (tests/unit/glm_args.py M355).

# --num-nodes 8 --num-gpus-per-node 8 (hardware GB200): TP4 PP8 CP2 EP8 (:183-192), engines min(32, 64)
GRPO_8X8 = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 8192 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 8 "
    "--context-parallel-size 2 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-interval 20 --eval-top-p 1 --eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl "
    "--n-samples-per-eval-prompt 8 --eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-tp-size 32 "
    "--sglang-chunked-prefill-size 65536 --sglang-attention-backend trtllm_mha "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 "
)

# --num-nodes 4 --num-gpus-per-node 8: the <= 4-node layout TP4 PP1 CP1 EP4 (:173-182)
GRPO_4X8 = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 8192 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 1 "
    "--context-parallel-size 1 --expert-model-parallel-size 4 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-interval 20 --eval-top-p 1 --eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl "
    "--n-samples-per-eval-prompt 8 --eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-tp-size 32 "
    "--sglang-chunked-prefill-size 65536 --sglang-attention-backend trtllm_mha "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 4 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 "
)

# --num-nodes 4 --num-gpus-per-node 4 --hardware GB200: one engine of min(32, 16) GPUs (:229)
GRPO_4X4_GB200 = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 8192 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 1 "
    "--context-parallel-size 1 --expert-model-parallel-size 4 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-interval 20 --eval-top-p 1 --eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl "
    "--n-samples-per-eval-prompt 8 --eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 16 --sglang-mem-fraction-static 0.7 --sglang-tp-size 16 "
    "--sglang-chunked-prefill-size 32768 --sglang-attention-backend trtllm_mha "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 4 --actor-num-gpus-per-node 4 --num-gpus-per-node 4 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 "
)

# --num-nodes 4 --num-gpus-per-node 4 --hardware GB300: mem fraction 0.8 (:233)
GRPO_4X4_GB300 = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 8192 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 1 "
    "--context-parallel-size 1 --expert-model-parallel-size 4 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-interval 20 --eval-top-p 1 --eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl "
    "--n-samples-per-eval-prompt 8 --eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 16 --sglang-mem-fraction-static 0.8 --sglang-tp-size 16 "
    "--sglang-chunked-prefill-size 32768 --sglang-attention-backend trtllm_mha "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 4 --actor-num-gpus-per-node 4 --num-gpus-per-node 4 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 "
)

# 8 x 8, --enable-mis (tis_use_rs default true): :318-335
GRPO_MIS_RS = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 8192 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 8 "
    "--context-parallel-size 2 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-interval 20 --eval-top-p 1 --eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl "
    "--n-samples-per-eval-prompt 8 --eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-tp-size 32 "
    "--sglang-chunked-prefill-size 65536 --sglang-attention-backend trtllm_mha "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 --custom-config-path "
    "<mis:use_rs=true> "
    "--custom-tis-function-path "
    "examples.infra_features.train_infer_mismatch_helper.mis.compute_mis_weights_with_cp "
)

# 8 x 8, --enable-mis --no-tis-use-rs: :318-335
GRPO_MIS_NO_RS = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 8192 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 8 "
    "--context-parallel-size 2 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-interval 20 --eval-top-p 1 --eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl "
    "--n-samples-per-eval-prompt 8 --eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-tp-size 32 "
    "--sglang-chunked-prefill-size 65536 --sglang-attention-backend trtllm_mha "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 --custom-config-path "
    "<mis:use_rs=false> "
    "--custom-tis-function-path "
    "examples.infra_features.train_infer_mismatch_helper.mis.compute_mis_weights_with_cp "
)

# 8 x 8, --task gsm8k: :160-171
GRPO_GSM8K = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/gsm8k/train.parquet --input-key messages --rollout-max-response-len 256 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 8 "
    "--context-parallel-size 2 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-interval 20 --eval-top-p 1 --eval-prompt-data gsm8k /root/datasets/gsm8k/test.parquet "
    "--n-samples-per-eval-prompt 1 --eval-max-response-len 256 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-tp-size 32 "
    "--sglang-chunked-prefill-size 65536 --sglang-attention-backend trtllm_mha "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 "
)

# 8 x 8, --rollout-fp8: the FP8 checkpoint (:104-108) and :244-263 (the second
# --sglang-chunked-prefill-size is the one argparse keeps)
GRPO_FP8 = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5-FP8 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 8192 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 8 "
    "--context-parallel-size 2 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-interval 20 --eval-top-p 1 --eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl "
    "--n-samples-per-eval-prompt 8 --eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-tp-size 32 "
    "--sglang-chunked-prefill-size 65536 --sglang-attention-backend trtllm_mha --sglang-ep-size 32 "
    "--sglang-enable-dp-attention --sglang-dp-size 4 --sglang-moe-dense-tp-size 1 "
    "--sglang-enable-dp-lm-head --sglang-moe-runner-backend deep_gemm --sglang-moe-a2a-backend deepep "
    "--sglang-deepep-mode low_latency --sglang-max-running-requests 1024 --sglang-chunked-prefill-size "
    "8192 --sglang-cuda-graph-max-bs 256 "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 "
)

# 8 x 8, --mode debug_minimal: save/retain 2 (:116-117), 100-token responses (:153), no
# --eval-interval / --eval-top-p (:145-146)
GRPO_DEBUG_MINIMAL = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 2 "
    "--save-retain-interval 2 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 100 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 8 "
    "--context-parallel-size 2 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl --n-samples-per-eval-prompt 8 "
    "--eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-tp-size 32 "
    "--sglang-chunked-prefill-size 65536 --sglang-attention-backend trtllm_mha "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 "
)

# 8 x 8, --dynamic-sampling --enable-mtp --rollout-attn-fp8: :137-141, :264-274, :315-316
GRPO_OPTIONS = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --over-sampling-batch-size 256 "
    "--dynamic-sampling-filter-path "
    "miles.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 8192 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 8 "
    "--context-parallel-size 2 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-interval 20 --eval-top-p 1 --eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl "
    "--n-samples-per-eval-prompt 8 --eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-tp-size 32 "
    "--sglang-chunked-prefill-size 65536 --sglang-attention-backend trtllm_mha "
    "--sglang-speculative-algorithm EAGLE --sglang-speculative-num-steps 1 "
    "--sglang-speculative-eagle-topk 1 --sglang-speculative-num-draft-tokens 2 "
    "--sglang-enable-draft-weights-cpu-backup --sglang-kv-cache-dtype fp8_e4m3 "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 "
)

# 8 x 8, --no-enable-eval: no --eval-interval / --eval-top-p (:145-146); the task's eval data stay
GRPO_NO_EVAL = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b.py:104-118
    "--hf-checkpoint /root/local_data/GLM-4.5 --ref-load /root/local_data/GLM-4.5_torch_dist --load "
    "/root/shared_data/RUNID/checkpoints --save /root/shared_data/RUNID/checkpoints --save-interval 10 "
    "--save-retain-interval 10 "
    # rollout_args, scripts/run_glm45_355b_a32b.py:120-141, then the task's, :148-171
    "--label-key label --apply-chat-template --rollout-shuffle --rm-type math --num-rollout 3000 "
    "--rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-temperature 1 --num-steps-per-rollout 1 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 --prompt-data "
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --rollout-max-response-len 8192 "
    # optimizer_args, scripts/run_glm45_355b_a32b.py:216-227
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 "
    # grpo_args, scripts/run_glm45_355b_a32b.py:202-214 (no W&B args without WANDB_API_KEY, command_utils.py:254-256)
    "--advantage-estimator grpo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b.py:173-200
    "--tensor-model-parallel-size 4 --sequence-parallel --pipeline-model-parallel-size 8 "
    "--context-parallel-size 2 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b.py:143-146, then the task's, :148-171
    "--eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl --n-samples-per-eval-prompt 8 "
    "--eval-max-response-len 8192 "
    # sglang_args, scripts/run_glm45_355b_a32b.py:229-274, 315-316
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-tp-size 32 "
    "--sglang-chunked-prefill-size 65536 --sglang-attention-backend trtllm_mha "
    # misc_args, scripts/run_glm45_355b_a32b.py:276-301, 318-335
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --update-weight-buffer-size 2147483648 "
    "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
    "--use-fault-tolerance --dump-details /root/shared_data/RUNID/dump_details "
    "--router-health-success-threshold 1 --router-health-check-interval-secs 15 "
)


# ---------------------------------------------------------------- p2p_weight_transfer/run.py
# `run GLM-4.5-Air --mode p2p`: RunConfig GLM-4.5-Air, :394-418, over the defaults, :50-135; SKIP_VALIDATION,
# BUCKET_SIZE_GB, BUFFER_SIZE and CKPT_SAVE_DIR unset. The model args come first (the MODEL_ARGS line,
# :1063-1070): scripts/models/glm4.5-106B-A12B.py:5-39 (tests/unit/glm_args.py MAIR).
AIR_P2P = _tokens(
    # checkpoint, examples/infra_features/p2p_weight_transfer/run.py:810-813
    "--hf-checkpoint /root/models/GLM-4.5-Air --ref-load /root/GLM-4.5-Air_torch_dist "
    # rollout, examples/infra_features/p2p_weight_transfer/run.py:815-843
    "--prompt-data /root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --label-key label "
    "--apply-chat-template --rollout-shuffle --rm-type deepscaler --num-rollout 13 --rollout-batch-size 4 "
    "--n-samples-per-prompt 4 --rollout-max-response-len 100 --rollout-temperature 0.8 "
    "--global-batch-size 16 --balance-data "
    # eval (has_eval), examples/infra_features/p2p_weight_transfer/run.py:845-860
    "--eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl --n-samples-per-eval-prompt 16 "
    "--eval-max-response-len 16384 --eval-top-p 0.7 "
    # training parallelism, examples/infra_features/p2p_weight_transfer/run.py:862-888
    "--tensor-model-parallel-size 1 --sequence-parallel --pipeline-model-parallel-size 4 "
    "--context-parallel-size 1 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 "
    "--decoder-last-pipeline-num-layers 10 --recompute-granularity full --recompute-method uniform "
    "--recompute-num-layers 1 --use-dynamic-batch-size --max-tokens-per-gpu 2048 "
    # GRPO / GSPO, examples/infra_features/p2p_weight_transfer/run.py:890-901
    "--advantage-estimator gspo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --entropy-coef 0.00 "
    "--eps-clip 4e-4 "
    # optimizer (optimizer_cpu_offload), examples/infra_features/p2p_weight_transfer/run.py:903-927
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 --optimizer-cpu-offload --overlap-cpu-optimizer-d2h-h2d "
    "--use-precision-aware-optimizer "
    # SGLang, examples/infra_features/p2p_weight_transfer/run.py:929-950; p2p, :978-980; loader (8 nodes, validation on), :982-993
    "--rollout-num-gpus-per-engine 8 --rollout-num-gpus 32 --sglang-mem-fraction-static 0.8 "
    "--sglang-ep-size 8 --sglang-cuda-graph-bs 1 2 4 8 16 --sglang-enable-dp-attention "
    "--sglang-enable-dp-lm-head --sglang-remote-instance-weight-loader-start-seed-via-transfer-engine "
    '--sglang-model-loader-extra-config \'{"enable_multithread_load":true,"num_threads":8}\' '
    # misc, examples/infra_features/p2p_weight_transfer/run.py:995-1014; buffer, :1016-1024; validation, :1026-1027; mode, :1029
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --actor-num-nodes 4 --actor-num-gpus-per-node "
    "8 --update-weight-buffer-size 1073741824 --check-weight-update-equal --update-weight-transfer-mode "
    "p2p "
)


# ---------------------------------------------------------------- scripts/run_glm45_355b_a32b_8node.py
# ScriptArgs defaults, :46-60 (save off), output_dir /root/shared_data; model args first (M355).
GSPO_8NODE = _tokens(
    # ckpt_args, scripts/run_glm45_355b_a32b_8node.py:104-109 (save off)
    "--hf-checkpoint /root/models/GLM-4.5-355B-A32B --ref-load /root/models/GLM-4.5-355B-A32B_torch_dist "
    # rollout_args, scripts/run_glm45_355b_a32b_8node.py:111-128
    "--prompt-data /root/datasets/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --label-key label "
    "--apply-chat-template --rollout-shuffle --rm-type deepscaler --num-rollout 3000 --rollout-batch-size "
    "128 --n-samples-per-prompt 8 --rollout-max-response-len 32768 --rollout-temperature 1 "
    "--over-sampling-batch-size 256 --dynamic-sampling-filter-path "
    "miles.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std --num-steps-per-rollout 4 "
    "--balance-data --rollout-stop-token-ids 151329 151336 151338 "
    # optimizer_args, scripts/run_glm45_355b_a32b_8node.py:165-175
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 --optimizer-cpu-offload --overlap-cpu-optimizer-d2h-h2d "
    "--use-precision-aware-optimizer "
    # gspo_args, scripts/run_glm45_355b_a32b_8node.py:152-163
    "--advantage-estimator gspo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 "
    "--entropy-coef 0.00 --eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis "
    # perf_args, scripts/run_glm45_355b_a32b_8node.py:138-150
    "--tensor-model-parallel-size 8 --sequence-parallel --pipeline-model-parallel-size 4 "
    "--context-parallel-size 2 --expert-model-parallel-size 16 --expert-tensor-parallel-size 1 "
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 "
    # eval_args, scripts/run_glm45_355b_a32b_8node.py:130-136
    "--eval-interval 20 --eval-prompt-data aime /root/datasets/aime-2024/aime-2024.jsonl "
    "--n-samples-per-eval-prompt 8 --eval-max-response-len 32768 --eval-top-p 1 "
    # sglang_args, scripts/run_glm45_355b_a32b_8node.py:177-191
    "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-enable-dp-attention "
    "--sglang-dp-size 4 --sglang-ep-size 32 --sglang-enable-dp-lm-head --sglang-moe-dense-tp-size 1 "
    "--sglang-speculative-algorithm EAGLE --sglang-speculative-num-steps 1 "
    "--sglang-speculative-eagle-topk 1 --sglang-speculative-num-draft-tokens 2 "
    "--sglang-enable-draft-weights-cpu-backup "
    # misc_args, scripts/run_glm45_355b_a32b_8node.py:193-209
    "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
    "--attention-softmax-in-fp32 --attention-backend flash --moe-token-dispatcher-type flex "
    "--moe-enable-deepep --actor-num-nodes 8 --actor-num-gpus-per-node 8 --num-gpus-per-node 8 --colocate "
)


# ---------------------------------------------------------------- the runtime env
# execute_train, miles/utils/external_utils/command_utils.py:193-226: NCCL_NVLS_ENABLE from the
# NVLink probe (:205, :248-250; 1 on NVLink nodes), no_proxy of loopback and the head, MASTER_ADDR,
# PYTHONPATH of miles' checkout (/root/miles) and Megatron; run_glm45_355b_a32b.py:356-381 adds
# sglang_extra_env_vars (FP8 :261-263, MTP :272-274).
GRPO_ENV = {
    "PYTHONUNBUFFERED": "1",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "NCCL_NVLS_ENABLE": "1",
    "no_proxy": f"127.0.0.1,{HEAD}",
    "MASTER_ADDR": HEAD,
    "PYTHONPATH": "/root/miles:/root/Megatron-LM",
}
GRPO_ENV_FP8 = {"SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK": "256"}
GRPO_ENV_MTP = {"SGLANG_ENABLE_SPEC_V2": "1"}
# run.py:793-807: MILES_LOG_DIR is os.environ's or "" (unset here); MC_TRANSFER_TIMEOUT on
# multi-node profiles; MODEL_ARGS_ROTARY_BASE from the profile's rotary_base, :1073-1077
AIR_ENV = {
    "PYTHONUNBUFFERED": "1",
    "RAY_DEBUG": "1",
    "PYTHONPATH": "/root/Megatron-LM/",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "NCCL_NVLS_ENABLE": "0",
    "MILES_LOG_DIR": "",
    "MC_TRANSFER_TIMEOUT": "300",
    "MODEL_ARGS_ROTARY_BASE": "1000000",
}
# the 8-node script: execute_train's env (NCCL_NVLS_ENABLE overridden) and _cluster_env_vars,
# scripts/run_glm45_355b_a32b_8node.py:64-97 (MLP_SOCKET_IFNAME unset)
GSPO_ENV = {
    "PYTHONUNBUFFERED": "1",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "NCCL_NVLS_ENABLE": "0",
    "no_proxy": f"localhost,127.0.0.1,0.0.0.0,{HEAD}",
    "MASTER_ADDR": HEAD,
    "NCCL_CUMEM_ENABLE": "0",
    "NVTE_BWD_LAYERNORM_SM_MARGIN": "20",
    "NCCL_IB_TC": "160",
    "NCCL_PXN_DISABLE": "0",
    "NCCL_IB_GID_INDEX": "3",
    "NCCL_NET_GDR_LEVEL": "4",
    "NCCL_IB_RETRY_CNT": "7",
    "NCCL_IB_TIMEOUT": "32",
    "NCCL_IB_QPS_PER_CONNECTION": "8",
    "NCCL_P2P_LEVEL": "NVL",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    "NCCL_MIN_CTAS": "4",
    "OMPI_MCA_pml": "ob1",
    "OMPI_MCA_btl": "^openib",
    "OMPI_MCA_routed": "direct",
    "OMPI_MCA_routed_radix": "1024",
    "OMPI_MCA_plm_rsh_no_tree_spawn": "1",
    "PYTHONPATH": "/root/miles:/root/Megatron-LM",
}


# ---------------------------------------------------------------- comparison


def _flags(tokens: list[str], *, once: bool = False) -> dict[str, tuple[str, ...]]:
    """flag -> values, as argparse reads the argv: the last occurrence wins (``once``: a flag
    passed twice is an error, docs/rules.md#flag-once)."""
    out: dict[str, tuple[str, ...]] = {}
    flag = ""
    for tok in tokens:
        if tok.startswith("--"):
            assert not (once and tok in out), f"{tok} is passed twice"
            flag, out[tok] = tok, ()
        else:
            assert flag, f"value {tok!r} before any flag"
            out[flag] += (tok,)
    return out


def _render(template: str, sets: list[str], nodes: int, gpus: int, nvlink: int = 18):
    """The template's argv (flag -> values), its runtime env as submitted after the nodes'
    NVLink probe (each node answering ``nvlink`` NV connections: miles' probe on the same
    machines; docs/fidelity.md#probed-env) and the node addresses."""
    hosts = tuple(Host(f"10.0.0.{i}", f"10.0.0.{i}", gpus) for i in range(1, nodes + 1))
    alloc = Allocation(hosts=hosts, gpus_per_node=gpus, origin="test")
    recipe = load_recipe(template, sets)
    plan = build_plan(recipe, alloc, resolved=resolve(recipe, alloc), run_id="t", python="/py/bin/python3")
    assert plan.argv[:2] == ["python3", "/root/miles/train.py"]
    for var in plan.probed_env:  # the render, before the nodes answer, shows the default
        assert plan.env_vars[var] == PROBE_DEFAULT
    apply_probes(plan, {h.name: {"nvlink": nvlink} for h in hosts})
    return _flags(plan.argv[2:], once=True), plan.env_vars, [h.address for h in hosts]


# ---- the deliberate differences, docs/fidelity.md; each is applied to miles' values by name


def _paths(flags: dict, mapping: dict[str, str]) -> dict:
    """docs/fidelity.md#paths: every path is under run.base_dir, in glmlaunch's data layout."""
    return {f: tuple(mapping.get(v, v) for v in vals) for f, vals in flags.items()}


def _run_owned(flags: dict, run: str, interval: str | None = None) -> dict:
    """docs/fidelity.md#run-owned: --load/--save (and --dump-details) are the run's own directory."""
    out = dict(flags)
    for f in ("--load", "--save"):
        if f in out or interval:
            out[f] = (f"{BASE}/runs/{run}/checkpoints",)
    if interval:
        out["--save-interval"] = (interval,)
    if "--dump-details" in out:
        out["--dump-details"] = (f"{BASE}/runs/{run}/dump_details",)
    return out


def _no_inert_eval(flags: dict) -> dict:
    """docs/fidelity.md#inert-eval: without --eval-interval no eval data flags are passed."""
    if "--eval-interval" in flags:
        return flags
    drop = ("--eval-prompt-data", "--n-samples-per-eval-prompt", "--eval-max-response-len")
    return {f: v for f, v in flags.items() if f not in drop}


def _computed_env(env: dict, hosts: list[str]) -> dict:
    """docs/fidelity.md#computed-env: no_proxy is miles' own list (execute_train's
    ``127.0.0.1,<head>`` where the launcher sets none), then every other node; NO_PROXY the same."""
    out = dict(env)
    miles = env.get("no_proxy", f"127.0.0.1,{hosts[0]}").split(",")
    out["no_proxy"] = out["NO_PROXY"] = ",".join(dict.fromkeys([*miles, *hosts]))
    return out


GRPO_PATHS = {
    "/root/local_data/GLM-4.5": f"{BASE}/GLM-4.5-355B-A32B",
    "/root/local_data/GLM-4.5-FP8": f"{BASE}/GLM-4.5-355B-A32B-FP8",
    "/root/local_data/GLM-4.5_torch_dist": f"{BASE}/GLM-4.5-355B-A32B_torch_dist",
    "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl": f"{BASE}/dapo-math-17k/dapo-math-17k.jsonl",
    "/root/datasets/aime-2024/aime-2024.jsonl": f"{BASE}/rl_data/aime-2024/aime-2024.jsonl",
    "/root/datasets/gsm8k/train.parquet": f"{BASE}/gsm8k/train.parquet",
    "/root/datasets/gsm8k/test.parquet": f"{BASE}/gsm8k/test.parquet",
}


def _grpo_expected(miles: list[str], nodes: int, hopper: bool) -> dict:
    f = _run_owned(_paths(_flags(M355 + miles), GRPO_PATHS), "glm45-355b-a32b-grpo")
    del f["--sglang-tp-size"]  # docs/fidelity.md#sglang-tp-size
    if nodes > 4:  # docs/fidelity.md#uneven-pp: 92 layers over PP=8
        f["--decoder-last-pipeline-num-layers"] = ("8",)
    if hopper:  # docs/fidelity.md#hopper: no trtllm_mha off Blackwell
        del f["--sglang-attention-backend"]
    return _no_inert_eval(f)


GB200 = "cluster.hardware=GB200"
GRPO_CASES = {
    # name: (miles argv, nodes, GPUs per node, glmlaunch --set, extra env)
    "8x8-gb200": (GRPO_8X8, 8, 8, [GB200], {}),
    "8x8-h200": (GRPO_8X8, 8, 8, [], {}),
    "4x8-gb200": (GRPO_4X8, 4, 8, ["cluster.nodes=4", GB200], {}),
    "4x4-gb200": (GRPO_4X4_GB200, 4, 4, ["cluster.nodes=4", GB200], {}),
    "4x4-gb300": (GRPO_4X4_GB300, 4, 4, ["cluster.nodes=4", "cluster.hardware=GB300"], {}),
    "mis-rs": (GRPO_MIS_RS, 8, 8, [GB200, "algorithm.enable_mis=true"], {}),
    "mis-no-rs": (
        GRPO_MIS_NO_RS,
        8,
        8,
        [GB200, "algorithm.enable_mis=true", "algorithm.tis_use_rs=false"],
        {},
    ),
    "gsm8k": (GRPO_GSM8K, 8, 8, [GB200, "rollout.task=gsm8k"], {}),
    "fp8": (GRPO_FP8, 8, 8, [GB200, "sglang.fp8_rollout=true"], GRPO_ENV_FP8),
    "debug-minimal": (GRPO_DEBUG_MINIMAL, 8, 8, [GB200, "run.mode=debug_minimal"], {}),
    "options": (
        GRPO_OPTIONS,
        8,
        8,
        [GB200, "rollout.dynamic_sampling=true", "sglang.mtp=true", "sglang.fp8_kv_cache=true"],
        GRPO_ENV_MTP,
    ),
    "no-eval": (GRPO_NO_EVAL, 8, 8, [GB200, "eval.enabled=false"], {}),
}


@pytest.mark.parametrize("case", GRPO_CASES)
def test_grpo_equals_run_glm45_355b_a32b(case):
    miles, nodes, gpus, sets, extra_env = GRPO_CASES[case]
    got, env, hosts = _render("glm45-355b-a32b-grpo", sets, nodes, gpus)
    blackwell = any(s.startswith("cluster.hardware=GB") for s in sets)
    assert got == _grpo_expected(miles, nodes, hopper=not blackwell)
    assert env == _computed_env({**GRPO_ENV, **extra_env}, hosts)


@pytest.mark.parametrize("template", ["glm45-355b-a32b-grpo", "glm45-355b-a32b-gspo", "glm45-air-p2p"])
def test_nvls_without_nvlink(template):
    """execute_train's probe on machines without NVLink gives NCCL_NVLS_ENABLE=0 (GRPO); the
    8-node script and run.py set 0 whatever the probe says (docs/fidelity.md#probed-env)."""
    _, env, _ = _render(template, [], 8, 8, nvlink=0)
    assert env["NCCL_NVLS_ENABLE"] == "0"
    _, env, _ = _render(template, [], 8, 8, nvlink=4)
    assert env["NCCL_NVLS_ENABLE"] == ("1" if template == "glm45-355b-a32b-grpo" else "0")


def test_air_p2p_equals_run_py():
    got, env, hosts = _render("glm45-air-p2p", [], 8, 8)
    want = _paths(
        _flags(MAIR + AIR_P2P),
        {
            "/root/models/GLM-4.5-Air": f"{BASE}/GLM-4.5-Air",
            "/root/GLM-4.5-Air_torch_dist": f"{BASE}/GLM-4.5-Air_torch_dist",
            "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl": f"{BASE}/dapo-math-17k/dapo-math-17k.jsonl",
            "/root/datasets/aime-2024/aime-2024.jsonl": f"{BASE}/rl_data/aime-2024/aime-2024.jsonl",
        },
    )
    want = _run_owned(want, "glm45-air-p2p", interval="20")
    want["--num-gpus-per-node"] = ("8",)  # docs/fidelity.md#num-gpus-per-node
    assert got == want
    want_env = {k: v for k, v in AIR_ENV.items() if v != ""}  # docs/fidelity.md#no-empty-env
    want_env["PYTHONPATH"] = "/root/miles:/root/Megatron-LM"  # docs/fidelity.md#pythonpath
    want_env["MASTER_ADDR"] = HEAD  # docs/fidelity.md#computed-env
    assert env == _computed_env(want_env, hosts)


def test_gspo_equals_run_glm45_355b_a32b_8node():
    got, env, hosts = _render("glm45-355b-a32b-gspo", [], 8, 8)
    want = _paths(
        _flags(M355 + GSPO_8NODE),
        {
            "/root/models/GLM-4.5-355B-A32B": f"{BASE}/GLM-4.5-355B-A32B",
            "/root/models/GLM-4.5-355B-A32B_torch_dist": f"{BASE}/GLM-4.5-355B-A32B_torch_dist",
            "/root/datasets/dapo-math-17k/dapo-math-17k.jsonl": f"{BASE}/dapo-math-17k/dapo-math-17k.jsonl",
            "/root/datasets/aime-2024/aime-2024.jsonl": f"{BASE}/rl_data/aime-2024/aime-2024.jsonl",
        },
    )
    # the dispatcher: miles passes alltoall (model args) then flex; argparse keeps flex, glmlaunch
    # passes it once (docs/fidelity.md#dispatcher-once, asserted by _render)
    assert want["--moe-token-dispatcher-type"] == ("flex",)
    assert got == _run_owned(want, "glm45-355b-a32b-gspo", interval="20")
    want_env = {k: v for k, v in GSPO_ENV.items() if not k.startswith("OMPI_MCA_")}  # docs/fidelity.md#no-mpi
    assert env == _computed_env(want_env, hosts)  # the script's no_proxy, then the other nodes


@pytest.mark.parametrize(
    "template", ["glm45-355b-a32b-grpo", "glm45-355b-a32b-gspo", "glm45-air-p2p", "local-probe"]
)
def test_template_header_pins_the_miles_commit(template):
    header = Path(PACKAGE_TEMPLATES / f"{template}.toml").read_text().split("\n[", 1)[0]
    assert MILES_COMMIT in header


def test_every_cited_fidelity_anchor_exists():
    """Each anchor of docs/fidelity.md that the code, the templates, the tests or the README
    link to exists there."""
    import re

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "fidelity.md").read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', doc))
    files = [root / "README.md", root / "docs" / "rules.md", *root.glob("glmlaunch/**/*.py")]
    files += [*root.glob("glmlaunch/templates/*.toml"), *root.glob("tests/unit/*.py")]
    cited = {(f.name, a) for f in files for a in re.findall(r"fidelity\.md#([a-z0-9-]+)", f.read_text())}
    assert cited and not {c for c in cited if c[1] not in anchors}
