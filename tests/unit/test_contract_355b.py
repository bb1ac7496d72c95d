"""The 355B GSPO plan against the trainer contract, flag by flag.

The seed's argv is written out below as literal text: the argument groups of the legacy
``scripts/run-glm4.5-355B-A32B.sh`` (trainer contract §1.4, @6a6843f1d) and the model args of
``scripts/models/glm4.5-355B-A32B.py`` (§1.5). Both it and glmlaunch's rendered argv are parsed
into flag → list-of-values multisets, which must be equal except for the documented fixes, each
of which is listed and asserted on its own (DOCUMENTED_FIXES).
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from planning import checked_plan

from glmlaunch.hosts import read_hostfile
from glmlaunch.plan import NCCL_RACK
from glmlaunch.recipe import load_recipe
from glmlaunch.render import render_bash, render_json

BASE_DIR = "/root/shared_data"
RUN = "glm45-355b-a32b-gspo"

# ---- trainer contract §1.4 (legacy .sh argument groups, exact values @6a6843f1d)
SEED_GROUPS = {
    "cluster": "--actor-num-nodes 8 --actor-num-gpus-per-node 8 --colocate",
    "CKPT": "--hf-checkpoint $BASE_DIR/GLM-4.5-355B-A32B --ref-load $BASE_DIR/GLM-4.5-355B-A32B_torch_dist/",
    "ROLLOUT": (
        "--prompt-data $BASE_DIR/dapo-math-17k/dapo-math-17k.jsonl --input-key prompt --label-key label "
        "--apply-chat-template --rollout-shuffle --rm-type deepscaler --num-rollout 3000 --rollout-batch-size 128 "
        "--n-samples-per-prompt 8 --rollout-max-response-len 32768 --rollout-temperature 1 "
        "--over-sampling-batch-size 256 "
        "--dynamic-sampling-filter-path miles.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std "
        "--num-steps-per-rollout 4 --balance-data --rollout-stop-token-ids 151329 151336 151338"
    ),
    "EVAL": (
        "--eval-interval 20 --eval-prompt-data aime $BASE_DIR/rl_data/aime-2024.jsonl --n-samples-per-eval-prompt 8 "
        "--eval-max-response-len 32768 --eval-top-p 1"
    ),
    "PERF": (
        "--tensor-model-parallel-size 8 --sequence-parallel --pipeline-model-parallel-size 4 --context-parallel-size 2 "
        "--expert-model-parallel-size 16 --expert-tensor-parallel-size 1 --recompute-granularity full "
        "--recompute-method uniform --recompute-num-layers 1 --use-dynamic-batch-size --max-tokens-per-gpu 16384"
    ),
    "GRPO": (
        "--advantage-estimator gspo --kl-loss-coef 0.00 --kl-loss-type low_var_kl --kl-coef 0.00 --entropy-coef 0.00 "
        "--eps-clip 1e-4 --eps-clip-high 2e-4 --use-tis"
    ),
    "OPTIMIZER": (
        "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.98 "
        "--optimizer-cpu-offload --overlap-cpu-optimizer-d2h-h2d --use-precision-aware-optimizer"
    ),
    "WANDB": "",
    "SGLANG": (
        "--rollout-num-gpus-per-engine 32 --sglang-mem-fraction-static 0.7 --sglang-enable-dp-attention "
        "--sglang-dp-size 4 --sglang-ep-size 32 --sglang-enable-dp-lm-head --sglang-moe-dense-tp-size 1 "
        "--sglang-speculative-algorithm EAGLE --sglang-speculative-num-steps 1 --sglang-speculative-eagle-topk 1 "
        "--sglang-speculative-num-draft-tokens 2 --sglang-enable-draft-weights-cpu-backup"
    ),
    "MISC": (
        "--attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 "
        "--attention-softmax-in-fp32 --attention-backend flash --moe-token-dispatcher-type flex --moe-enable-deepep"
    ),
}

# ---- trainer contract §1.5 (scripts/models/glm4.5-355B-A32B.py)
SEED_MODEL_ARGS = """
--disable-bias-linear --qk-layernorm --group-query-attention --num-attention-heads 96
--num-query-groups 8 --kv-channels 128 --num-layers 92 --hidden-size 5120 --ffn-hidden-size 12288
--add-qkv-bias --normalization RMSNorm --position-embedding-type rope --rotary-percent 0.5 --swiglu
--untie-embeddings-and-output-weights --vocab-size 151552 --rotary-base 1000000
--moe-ffn-hidden-size 1536 --moe-shared-expert-intermediate-size 1536 --moe-router-pre-softmax
--moe-router-score-function sigmoid --moe-router-enable-expert-bias --moe-router-bias-update-rate 0
--moe-router-load-balancing-type seq_aux_loss --moe-token-dispatcher-type alltoall --moe-router-topk 8
--moe-router-topk-scaling-factor 2.5 --moe-layer-freq [0]*3+[1]*89 --num-experts 160
--moe-grouped-gemm --moe-router-dtype fp32 --moe-permute-fusion --moe-aux-loss-coeff 0
"""

# ---- trainer contract §1.3: the seed's runtime env constants (the ${...} and OMPI_* keys are not
# carried over: Ray expands ${...} per node, and nothing in the run uses MPI)
SEED_ENV_CONSTANTS = {
    "PYTHONPATH": "/root/Megatron-LM/",
    "NCCL_CUMEM_ENABLE": "0",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
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
    "NCCL_NVLS_ENABLE": "0",
    "NCCL_MIN_CTAS": "4",
}

SAVE = f"{BASE_DIR}/runs/{RUN}/checkpoints"

# Every difference between the seed and glmlaunch, each documented (template header and the
# contract's "Implications"): flag -> (seed's values, glmlaunch's values); () = flag absent.
DOCUMENTED_FIXES: dict[str, tuple[list[tuple[str, ...]], list[tuple[str, ...]]]] = {
    # a restart resumes from the run's own checkpoints; Megatron needs --save-interval with --save
    "--load": ([], [(SAVE,)]),
    "--save": ([], [(SAVE,)]),
    "--save-interval": ([], [("20",)]),
    # miles rule: always pass --num-gpus-per-node (slime PR #2012)
    "--num-gpus-per-node": ([], [("8",)]),
    # the model args' alltoall is removed; MISC's flex is emitted once (no argparse last-wins)
    "--moe-token-dispatcher-type": ([("alltoall",), ("flex",)], [("flex",)]),
    # $BASE_DIR resolved (it was unset in the seed) and no trailing slash on --ref-load
    "--ref-load": (
        [(f"{BASE_DIR}/GLM-4.5-355B-A32B_torch_dist/",)],
        [(f"{BASE_DIR}/GLM-4.5-355B-A32B_torch_dist",)],
    ),
    # the eval set lives where `zhuzilin/aime-2024` is downloaded (contract (c)12)
    "--eval-prompt-data": (
        [("aime", f"{BASE_DIR}/rl_data/aime-2024.jsonl")],
        [("aime", f"{BASE_DIR}/rl_data/aime-2024/aime-2024.jsonl")],
    ),
}


def flag_multiset(tokens: list[str]) -> dict[str, list[tuple[str, ...]]]:
    """flag -> the sorted list of value tuples, one per occurrence (``--x a b --x c`` -> [(a, b), (c,)])."""
    out: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    flag, vals = None, []
    for tok in tokens + ["--"]:
        if tok.startswith("--"):
            if flag is not None:
                out[flag].append(tuple(vals))
            flag, vals = tok, []
        else:
            assert flag is not None, f"value {tok!r} before any flag"
            vals.append(tok)
    return {k: sorted(v) for k, v in out.items()}


def seed_argv() -> list[str]:
    text = " ".join(
        [SEED_GROUPS["cluster"], SEED_MODEL_ARGS] + [SEED_GROUPS[g] for g in SEED_GROUPS if g != "cluster"]
    )
    return text.replace("$BASE_DIR", BASE_DIR).split()


@pytest.fixture
def plan(hostfile8):
    return checked_plan(
        load_recipe(RUN), read_hostfile(hostfile8), run_id="contract", python="/opt/glm/bin/python3"
    )


def test_plan_has_no_errors(plan):
    assert not plan.errors, [str(f) for f in plan.errors]


def test_interpreter_and_absolute_train_script(plan):
    assert plan.argv[:2] == ["python3", "/root/miles/train.py"]


def test_argv_equals_seed_except_documented_fixes(plan):
    seed = flag_multiset(seed_argv())
    ours = flag_multiset(plan.argv[2:])
    for flag, (before, after) in DOCUMENTED_FIXES.items():
        # each fix is real: the seed has `before`, glmlaunch has `after`
        assert seed.get(flag, []) == sorted(before), flag
        assert ours.get(flag, []) == sorted(after), flag
    expected = {k: v for k, v in seed.items() if k not in DOCUMENTED_FIXES}
    expected.update({k: sorted(after) for k, (_, after) in DOCUMENTED_FIXES.items() if after})
    missing = {k: v for k, v in expected.items() if ours.get(k) != v}
    extra = {k: v for k, v in ours.items() if k not in expected}
    assert not missing and not extra, f"differs from the seed: expected {missing}; not in the seed: {extra}"
    assert ours == expected


def test_seed_text_is_complete():
    """The literal tables parse to the counts the contract gives (guards against a typo here)."""
    seed = flag_multiset(seed_argv())
    assert seed["--rollout-stop-token-ids"] == [("151329", "151336", "151338")]
    assert seed["--moe-layer-freq"] == [("[0]*3+[1]*89",)]
    assert seed["--colocate"] == [()]
    assert sum(len(v) for v in seed.values()) == len(SEED_MODEL_ARGS.split("--")) - 1 + sum(
        len(g.split("--")) - 1 for g in SEED_GROUPS.values()
    )


def test_each_flag_once_and_no_glued_tokens(plan):
    flags = [t for t in plan.argv if t.startswith("--")]
    assert len(flags) == len(set(flags))
    for tok in plan.argv:
        assert tok and not any(c.isspace() for c in tok), repr(tok)
        assert "${" not in tok and "$BASE_DIR" not in tok
    assert plan.argv[plan.argv.index("--moe-layer-freq") + 1] == "[0]*3+[1]*89"  # one token, never globbed


def test_notes_record_the_dispatcher_override(plan):
    assert any("--moe-token-dispatcher-type" in n and "alltoall" in n and "flex" in n for n in plan.notes)


def test_runtime_env(plan):
    env = plan.env_vars
    hosts = [f"10.0.0.{i}" for i in range(1, 9)]
    assert all("${" not in v and v != "" for v in env.values()), env
    assert env["MASTER_ADDR"] == "10.0.0.1" == plan.head_address
    for key in ("no_proxy", "NO_PROXY"):
        listed = env[key].split(",")
        assert set(hosts) <= set(listed) and {"localhost", "127.0.0.1"} <= set(listed)
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"  # Megatron needs it with TP/CP > 1 (addendum #36)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert not [k for k in env if k.startswith("OMPI_")]
    # the seed's NCCL/IB constants, same values; PYTHONPATH now has miles and Megatron
    for k, v in SEED_ENV_CONSTANTS.items():
        if k == "PYTHONPATH":
            assert env[k].split(":") == ["/root/miles", "/root/Megatron-LM"]
        else:
            assert env[k] == v, k
    assert {k: env[k] for k in NCCL_RACK} == NCCL_RACK
    # no interface known: the *_SOCKET_IFNAME keys are left out, not set to ""
    assert not [k for k in env if k.endswith("_IFNAME")]


def test_interface_sets_ifname_keys(hostfile8):
    r = load_recipe(RUN, ["env.interface=ib0"])
    env = checked_plan(r, read_hostfile(hostfile8), run_id="c", python="/opt/glm/bin/python3").env_vars
    assert {env[k] for k in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")} == {"ib0"}


def test_ray_commands(plan):
    head, *workers = plan.nodes
    assert head.role == "head" and head.ray_start[head.ray_start.index("--node-ip-address") + 1] == "10.0.0.1"
    assert head.ray_start[head.ray_start.index("--num-gpus") + 1] == "8"
    for i, w in enumerate(workers, 2):
        a = w.ray_start
        assert a[a.index("--address") + 1] == "10.0.0.1:6379"
        assert a[a.index("--node-ip-address") + 1] == f"10.0.0.{i}"
    for n in plan.nodes:
        assert "--block" in n.ray_start and "" not in n.ray_start


def test_derived_sizes(plan):
    assert plan.world_size == 64 and plan.num_nodes == 8 and plan.gpus_per_node == 8


@pytest.mark.parametrize("secret_env", ["WANDB_API_KEY", "MY_WANDB_KEY"])
def test_wandb_key_never_rendered(hostfile8, monkeypatch, secret_env):
    secret = "wk-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a"
    monkeypatch.setenv(secret_env, secret)
    r = load_recipe(RUN, ["wandb.enabled=true", f"wandb.key_env={secret_env}"])
    plan = checked_plan(r, read_hostfile(hostfile8), run_id="w", python="/opt/glm/bin/python3")
    assert not plan.errors
    assert "--use-wandb" in plan.argv
    assert plan.secret_env == [secret_env] and secret_env not in plan.env_vars
    rendered_json, rendered_bash = render_json(plan), render_bash(plan)
    for text in (rendered_json, rendered_bash, plan.entrypoint, " ".join(plan.submit)):
        assert secret not in text
    assert all(secret not in tok for tok in plan.argv)
    # the bash script reads the key from its own environment, by name
    assert "os.environ[k]" in rendered_bash and json.dumps([secret_env]) in rendered_bash
    assert json.loads(rendered_json)["secret_env"] == [secret_env]


def test_secret_vars_dropped_from_env(hostfile8, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret")
    r = load_recipe(RUN, ["env.secret_vars=['HF_TOKEN']", "env.vars.HF_TOKEN=hf_literal_in_recipe"])
    plan = checked_plan(r, read_hostfile(hostfile8), run_id="s", python="/opt/glm/bin/python3")
    assert "HF_TOKEN" not in plan.env_vars and plan.secret_env == ["HF_TOKEN"]
    for text in (render_json(plan), render_bash(plan)):
        assert "hf_supersecret" not in text and "hf_literal_in_recipe" not in text
