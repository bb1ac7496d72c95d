"""The launch plan: everything glmlaunch will do, decided by pure functions before anything runs.

:func:`build_plan` turns a :class:`~glmlaunch.recipe.Recipe` and an
:class:`~glmlaunch.hosts.Allocation` into a :class:`LaunchPlan`: each node's ``ray start``
argv and env, the port plan, the trainer's argv (a token list, never one string re-split) and
its runtime env (concrete values only, no ``${VAR}``), and the checks' findings. Executors carry
a plan out; ``glmlaunch render`` prints it (:mod:`glmlaunch.render`).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .errors import Finding, RecipeError
from .hosts import Allocation
from .models import BLACKWELL, HARDWARE_GPUS, get_model
from .recipe import Recipe

# Ranges the trainer uses at runtime (trainer contract §4 "Ports"): Ray's worker ports must
# stay out of them.
TRAINER_PORT_RANGES = {
    "miles router": (3000, 4000),
    "router Prometheus": (4000, 5000),
    "SGLang engines (15000 upward)": (15000, 15999),
    "Megatron rendezvous": (20000, 21000),
    "checkpoint conversion torchrun": (23456, 23456),
}

# miles run_glm45_355b_a32b_8node.py _cluster_env_vars: the rack's NCCL/IB settings. The
# OMPI_MCA_* keys of the seed are left out: nothing in the run uses MPI (contract §1.3).
NCCL_RACK = {
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
    "NCCL_NVLS_ENABLE": "0",
    "NCCL_MIN_CTAS": "4",
}

# task -> (prompt data, rm type, eval name, eval data), relative to base_dir. The eval path is
# where `zhuzilin/aime-2024` is downloaded ($BASE_DIR/rl_data/aime-2024, mission.md), fixing the
# seed's `rl_data/aime-2024.jsonl` vs `aime-2024/aime-2024.jsonl` mismatch (contract (c)12).
TASKS = {
    "dapo_aime": ("dapo-math-17k/dapo-math-17k.jsonl", "deepscaler", "aime", "rl_data/aime-2024/aime-2024.jsonl"),
    "gsm8k": ("gsm8k/train.parquet", "math", "gsm8k", "gsm8k/test.parquet"),
}


@dataclass(frozen=True)
class PortPlan:
    """Every port Ray listens on, pinned (NeMo-Run's lesson: random ports collide).

    Ray's own ports are ``base`` .. ``base+9`` (the two metrics ports without a ``ray start`` flag
    are pinned through ``AUTOSCALER_METRIC_PORT`` / ``DASHBOARD_METRIC_PORT``); the dashboard / job API is ``dashboard``; Ray
    workers use ``min_worker`` .. ``max_worker``, which avoids the trainer's ranges
    (:data:`TRAINER_PORT_RANGES`).
    """

    base: int = 6379
    dashboard: int = 8265
    min_worker: int = 10002
    max_worker: int = 14999

    @property
    def gcs(self) -> int:
        return self.base

    def named(self) -> dict[str, int]:
        b = self.base
        return {
            "gcs": b,
            "node_manager": b + 1,
            "object_manager": b + 2,
            "runtime_env_agent": b + 3,
            "dashboard_agent_grpc": b + 4,
            "dashboard_agent_listen": b + 5,
            "metrics_export": b + 6,
            "ray_client_server": b + 7,
            "autoscaler_metrics": b + 8,
            "dashboard_metrics": b + 9,
            "dashboard": self.dashboard,
        }

    def node_ports(self, head: bool) -> list[int]:
        """Ports that must be free on a node before ``ray start`` (head: also GCS, dashboard, client)."""
        n = self.named()
        head_only = ("gcs", "dashboard", "ray_client_server", "autoscaler_metrics", "dashboard_metrics")
        keys = list(n) if head else [k for k in n if k not in head_only]
        return [n[k] for k in keys]


@dataclass
class NodePlan:
    """One node: its role, address, GPUs, and the ``ray start`` command (argv + env)."""

    name: str
    address: str
    gpus: int
    role: str  # "head" | "worker"
    ray_start: list[str]
    env: dict[str, str]
    ssh_user: str | None = None
    ssh_port: int | None = None
    source: str = ""
    state_dir: str = ""


@dataclass
class LaunchPlan:
    """Everything a launch will do. Serialisable with :func:`glmlaunch.render.render_json`.

    ``argv``: trainer command tokens (from the interpreter on). ``env_vars``: the job's runtime
    env (flat, concrete strings; secrets only by name in ``secret_env``). ``nodes[0]`` is the head.
    ``state_dir``: per-run directory; each node uses its own ``<state_dir>/n<i>`` under it (Ray temp
    dir, logs, token, pid file), so nodes that share ``/tmp`` do not collide.
    """

    run_id: str
    run_name: str
    recipe: str
    recipe_source: str
    trainer_kind: str
    head_address: str
    dashboard_url: str
    ports: PortPlan
    state_dir: str
    ray_bin: str
    python: str
    nodes: list[NodePlan]
    argv: list[str]
    env_vars: dict[str, str]
    secret_env: list[str]
    submission_id: str
    world_size: int
    num_nodes: int
    gpus_per_node: int
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    placeholder: bool = False

    @property
    def head(self) -> NodePlan:
        return self.nodes[0]

    @property
    def workers(self) -> list[NodePlan]:
        return self.nodes[1:]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def entrypoint(self) -> str:
        """The Ray job entrypoint: the argv quoted for a shell (Ray Jobs take a shell string)."""
        return shlex.join(self.argv)

    def submit_argv(self) -> list[str]:
        """``ray job submit`` for people running the plan by hand (the runtime env is read from a
        file the bash script writes with mode 600, so secrets stay out of argv)."""
        return [
            self.ray_bin, "job", "submit", "--address", self.dashboard_url,
            "--submission-id", self.submission_id, "--runtime-env", f"{self.state_dir}/runtime_env.json",
            "--", *self.argv,
        ]


RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A run id names directories (``glr-<id>``, the run directory) and the Ray submission id."""


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe id (:data:`RUN_ID_RE`); else raise :class:`RecipeError`."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise RecipeError(
            f"--run-id {run_id!r}: a run id is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
            "(it names directories and the Ray submission)",
            "pass a plain id such as --run-id exp-42, or leave --run-id out for a new one",
        )
    return run_id


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A run id like ``20261129-233501-7f3a``: UTC time plus 4 random hex digits."""
    now = now or _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _bool(flag: str, on: bool) -> list[str]:
    return [flag] if on else []


def _opt(flag: str, value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return [flag, *(str(v) for v in value)] if value else []
    return [flag, str(value)]


def resolved_gpus_per_node(recipe: Recipe, alloc: Allocation) -> int:
    """GPUs per node: the hostfile's slots, else the recipe's ``cluster.gpus_per_node``, else
    the hardware's count (miles ``NUM_GPUS_OF_HARDWARE``)."""
    if alloc.gpus_per_node:
        return alloc.gpus_per_node
    if recipe.cluster.gpus_per_node:
        return recipe.cluster.gpus_per_node
    return HARDWARE_GPUS.get(recipe.cluster.hardware, 0)


def effective_layout(recipe: Recipe, num_nodes: int) -> dict:
    """The parallel sizes in force: a ``parallelism.small_layouts`` entry whose ``max_nodes`` covers
    ``num_nodes`` wins over the main sizes (the Python launcher's ≤ 4-node debug layout)."""
    p = recipe.parallelism
    lay = {
        "tp": p.tp, "pp": p.pp, "cp": p.cp, "ep": p.ep, "etp": p.etp,
        "decoder_first_pipeline_num_layers": p.decoder_first_pipeline_num_layers,
        "decoder_last_pipeline_num_layers": p.decoder_last_pipeline_num_layers,
        "source": "parallelism",
    }
    for i, small in enumerate(sorted(p.small_layouts, key=lambda s: s.max_nodes)):
        if num_nodes <= small.max_nodes:
            lay.update(
                tp=small.tp, pp=small.pp, cp=small.cp, ep=small.ep, etp=small.etp,
                decoder_first_pipeline_num_layers=None,
                decoder_last_pipeline_num_layers=small.decoder_last_pipeline_num_layers,
                source=f"parallelism.small_layouts[{i}]",
            )
            break
    return lay


def actor_nodes(recipe: Recipe, num_nodes: int) -> int:
    """Nodes that run Megatron actors: all of them when colocated, else ``cluster.actor_nodes``."""
    if recipe.cluster.actor_nodes:
        return recipe.cluster.actor_nodes
    return num_nodes


def rollout_gpus(recipe: Recipe, num_nodes: int, gpus: int) -> int:
    """GPUs for SGLang engines: all GPUs when colocated (miles forces it, arguments.py:3296),
    else ``cluster.rollout_gpus``."""
    if recipe.cluster.colocate:
        return actor_nodes(recipe, num_nodes) * gpus
    return recipe.cluster.rollout_gpus


def task_paths(recipe: Recipe) -> dict[str, str]:
    """Prompt data, rm type and eval data of the recipe (explicit fields win over the task's)."""
    prompt, rm, eval_name, eval_data = TASKS[recipe.rollout.task]
    base = recipe.run.base_dir.rstrip("/")
    return {
        "prompt_data": recipe.expand(recipe.rollout.prompt_data) if recipe.rollout.prompt_data else f"{base}/{prompt}",
        "rm_type": recipe.rollout.rm_type or rm,
        "eval_name": recipe.eval.name or eval_name,
        "eval_data": recipe.expand(recipe.eval.prompt_data) if recipe.eval.prompt_data else f"{base}/{eval_data}",
    }


def checkpoint_paths(recipe: Recipe) -> dict[str, str]:
    """``hf_checkpoint``, ``ref_load``, ``save``, ``load`` with placeholders expanded. ``load``
    defaults to ``save``; with FP8 rollout the FP8 checkpoint is the HF checkpoint."""
    c = recipe.checkpoint
    hf = c.hf_checkpoint_fp8 if recipe.sglang.fp8_rollout else c.hf_checkpoint
    save = recipe.expand(c.save) if c.save else ""
    return {
        "hf_checkpoint": recipe.expand(hf).rstrip("/"),
        "ref_load": recipe.expand(c.ref_load).rstrip("/"),
        "save": save.rstrip("/"),
        "load": (recipe.expand(c.load) if c.load else save).rstrip("/"),
    }


def debug_minimal(recipe: Recipe) -> Recipe:
    """``run.mode = "debug_minimal"``: the Python launcher's smoke mode, a few tiny rollouts."""
    if recipe.run.mode != "debug_minimal":
        return recipe
    r = recipe.model_copy(deep=True)
    r.rollout.num_rollout = min(r.rollout.num_rollout or 2, 2)
    r.rollout.rollout_batch_size = 8
    r.rollout.n_samples_per_prompt = 4
    r.rollout.over_sampling_batch_size = 8 if r.rollout.dynamic_sampling else r.rollout.over_sampling_batch_size
    r.rollout.num_steps_per_rollout = 1
    r.rollout.global_batch_size = None
    r.rollout.rollout_max_response_len = 1024
    r.eval.enabled = False
    r.checkpoint.save_interval = 2
    return r


def trainer_argv(recipe: Recipe, alloc: Allocation, notes: list[str] | None = None) -> list[str]:
    """The miles ``train.py`` argv as tokens, in the seed's group order (contract §1.4 and the
    8-node golden file): cluster, model, checkpoint, rollout, eval, perf, algorithm, optimizer,
    W&B, SGLang, misc. Each flag appears once; overrides of the model args are recorded in
    ``notes``.
    """
    notes = notes if notes is not None else []
    r = debug_minimal(recipe)
    gpus = resolved_gpus_per_node(r, alloc)
    n = alloc.num_nodes
    spec = get_model(r.model.type)
    lay = effective_layout(r, n)
    a_nodes = actor_nodes(r, n)
    tp = task_paths(r)
    cp = checkpoint_paths(r)
    tr = r.trainer
    argv = [tr.python, str(PurePosixPath(tr.miles_dir) / tr.train_script)]

    # cluster (miles rule: always pass --num-gpus-per-node; drop --rollout-num-gpus when colocated)
    argv += ["--actor-num-nodes", str(a_nodes), "--actor-num-gpus-per-node", str(gpus), "--num-gpus-per-node", str(gpus)]
    if r.cluster.colocate:
        argv.append("--colocate")
    else:
        argv += ["--rollout-num-gpus", str(r.cluster.rollout_gpus)]

    # model args, with the recipe's dispatcher replacing the model's (emitted once, in misc)
    margs = list(spec.args)
    if r.model.moe_token_dispatcher:
        i = margs.index("--moe-token-dispatcher-type")
        old = margs[i + 1]
        del margs[i : i + 2]
        if old != r.model.moe_token_dispatcher:
            notes.append(
                f"--moe-token-dispatcher-type: model args say '{old}', model.moe_token_dispatcher "
                f"'{r.model.moe_token_dispatcher}' wins (emitted once)"
            )
    argv += margs

    # checkpoint: --load is the run's own directory, so a restart resumes (contract §4 row 17)
    argv += ["--hf-checkpoint", cp["hf_checkpoint"], "--ref-load", cp["ref_load"]]
    if cp["load"]:
        argv += ["--load", cp["load"]]
    if cp["save"]:
        argv += ["--save", cp["save"], *_opt("--save-interval", r.checkpoint.save_interval)]

    ro = r.rollout
    argv += ["--prompt-data", tp["prompt_data"], "--input-key", ro.input_key, "--label-key", ro.label_key]
    argv += _bool("--apply-chat-template", ro.apply_chat_template) + _bool("--rollout-shuffle", ro.rollout_shuffle)
    argv += ["--rm-type", tp["rm_type"]]
    argv += _opt("--num-rollout", ro.num_rollout)
    argv += ["--rollout-batch-size", str(ro.rollout_batch_size), "--n-samples-per-prompt", str(ro.n_samples_per_prompt)]
    argv += ["--rollout-max-response-len", str(ro.rollout_max_response_len), "--rollout-temperature", ro.rollout_temperature]
    if ro.dynamic_sampling:
        argv += _opt("--over-sampling-batch-size", ro.over_sampling_batch_size)
        argv += ["--dynamic-sampling-filter-path", ro.dynamic_sampling_filter_path]
    argv += ["--num-steps-per-rollout", str(ro.num_steps_per_rollout)]
    argv += _opt("--global-batch-size", ro.global_batch_size)
    argv += _bool("--balance-data", ro.balance_data)
    argv += _opt("--rollout-stop-token-ids", ro.stop_token_ids)

    ev = r.eval
    if ev.enabled:
        argv += _opt("--eval-interval", ev.interval)
        argv += ["--eval-prompt-data", tp["eval_name"], tp["eval_data"]]
        argv += ["--n-samples-per-eval-prompt", str(ev.n_samples_per_eval_prompt)]
        argv += ["--eval-max-response-len", str(ev.max_response_len), "--eval-top-p", ev.top_p]

    p = r.parallelism
    argv += ["--tensor-model-parallel-size", str(lay["tp"])]
    argv += _bool("--sequence-parallel", p.sequence_parallel)
    argv += ["--pipeline-model-parallel-size", str(lay["pp"])]
    argv += _opt("--decoder-first-pipeline-num-layers", lay["decoder_first_pipeline_num_layers"])
    argv += _opt("--decoder-last-pipeline-num-layers", lay["decoder_last_pipeline_num_layers"])
    argv += ["--context-parallel-size", str(lay["cp"]), "--expert-model-parallel-size", str(lay["ep"])]
    argv += ["--expert-tensor-parallel-size", str(lay["etp"])]
    if p.recompute_granularity:
        argv += ["--recompute-granularity", p.recompute_granularity]
        argv += _opt("--recompute-method", p.recompute_method)
        argv += _opt("--recompute-num-layers", p.recompute_num_layers)
    argv += _bool("--use-dynamic-batch-size", p.use_dynamic_batch_size)
    argv += _opt("--max-tokens-per-gpu", p.max_tokens_per_gpu)

    al = r.algorithm
    argv += ["--advantage-estimator", al.advantage_estimator]
    argv += _bool("--use-kl-loss", al.use_kl_loss)
    argv += _opt("--kl-loss-coef", al.kl_loss_coef) + ["--kl-loss-type", al.kl_loss_type]
    argv += _opt("--kl-coef", al.kl_coef) + _opt("--entropy-coef", al.entropy_coef)
    argv += ["--eps-clip", al.eps_clip] + _opt("--eps-clip-high", al.eps_clip_high)
    argv += _bool("--use-tis", al.use_tis) + _bool("--use-rollout-logprobs", al.use_rollout_logprobs)
    if al.enable_mis:
        mis = f"{tr.miles_dir.rstrip('/')}/examples/infra_features/train_infer_mismatch_helper"
        argv += [
            "--custom-tis-function-path",
            "examples.infra_features.train_infer_mismatch_helper.mis.compute_mis_weights_with_cp",
            "--custom-config-path", f"{mis}/mis{'_rs' if al.tis_use_rs else ''}.yaml",
        ]
    argv += _bool("--use-rollout-routing-replay", al.use_rollout_routing_replay)

    o = r.optimizer
    argv += ["--optimizer", o.optimizer, "--lr", o.lr, "--lr-decay-style", o.lr_decay_style]
    argv += ["--weight-decay", o.weight_decay, "--adam-beta1", o.adam_beta1, "--adam-beta2", o.adam_beta2]
    argv += _bool("--optimizer-cpu-offload", o.cpu_offload)
    argv += _bool("--overlap-cpu-optimizer-d2h-h2d", o.overlap_cpu_optimizer_d2h_h2d)
    argv += _bool("--use-precision-aware-optimizer", o.precision_aware)

    w = r.wandb
    if w.enabled:
        argv += ["--use-wandb", "--wandb-project", w.project, *_opt("--wandb-group", w.group or r.run.name)]

    s = r.sglang
    argv += ["--rollout-num-gpus-per-engine", str(s.gpus_per_engine)]
    argv += ["--sglang-mem-fraction-static", s.mem_fraction_static]
    argv += _bool("--sglang-enable-dp-attention", s.enable_dp_attention)
    argv += _opt("--sglang-dp-size", s.dp_size)
    argv += _opt("--sglang-ep-size", s.ep_size)
    argv += _bool("--sglang-enable-dp-lm-head", s.enable_dp_lm_head)
    argv += _opt("--sglang-moe-dense-tp-size", s.moe_dense_tp_size)
    argv += _opt("--sglang-cuda-graph-bs", s.cuda_graph_bs)
    if s.mtp:
        argv += ["--sglang-speculative-algorithm", "EAGLE", "--sglang-speculative-num-steps", str(s.speculative_num_steps)]
        argv += ["--sglang-speculative-eagle-topk", str(s.speculative_eagle_topk)]
        argv += ["--sglang-speculative-num-draft-tokens", str(s.speculative_num_draft_tokens)]
        argv += _bool("--sglang-enable-draft-weights-cpu-backup", s.draft_weights_cpu_backup)
    attn = s.attention_backend or ("trtllm_mha" if r.cluster.hardware in BLACKWELL else "")
    argv += _opt("--sglang-attention-backend", attn)
    if s.fp8_kv_cache:
        argv += ["--sglang-kv-cache-dtype", "fp8_e4m3"]

    wt = r.weight_transfer
    if wt.mode in ("p2p", "broadcast", "disk-delta"):
        argv += _opt("--update-weight-buffer-size", wt.buffer_size)
        argv += _bool("--check-weight-update-equal", wt.check_weight_update_equal)
        argv += ["--update-weight-transfer-mode", wt.mode]
        if wt.mode == "p2p":
            argv.append("--sglang-remote-instance-weight-loader-start-seed-via-transfer-engine")

    argv += ["--attention-dropout", "0.0", "--hidden-dropout", "0.0", "--accumulate-allreduce-grads-in-fp32"]
    argv += ["--attention-softmax-in-fp32", "--attention-backend", tr.attention_backend]
    argv += _opt("--moe-token-dispatcher-type", r.model.moe_token_dispatcher)
    argv += _bool("--moe-enable-deepep", r.model.moe_enable_deepep)
    argv += _opt("--distributed-timeout-minutes", tr.distributed_timeout_minutes)
    argv += list(tr.extra_args)
    return argv


def probe_argv(recipe: Recipe, alloc: Allocation, python: str) -> list[str]:
    """The cluster probe's argv (``python -m glmlaunch.probe``) for ``trainer.kind = "probe"``."""
    gpus = resolved_gpus_per_node(recipe, alloc)
    argv = [python, "-m", "glmlaunch.probe", "--nodes", str(alloc.num_nodes), "--gpus-per-node", str(gpus)]
    argv += ["--timeout", str(recipe.trainer.probe_timeout_s)]
    for p in recipe.trainer.probe_paths:
        argv += ["--path", recipe.expand(p)]
    return argv


def runtime_env(recipe: Recipe, alloc: Allocation, python: str) -> tuple[dict[str, str], list[str]]:
    """The job's runtime env (flat, concrete strings) and the names of secret variables.

    Precedence: defaults < NCCL preset < interface < ``env.vars`` (contract "Implications" (a)2).
    ``no_proxy`` lists every node; ``MASTER_ADDR`` is the head's address. Secrets (W&B key,
    ``env.secret_vars``) are named only: their values are read at submit time.
    """
    head = alloc.head.address
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    if recipe.trainer.kind == "miles":
        tr = recipe.trainer
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"  # Megatron validate_args needs it when TP/CP > 1 (addendum #36)
        env["NCCL_NVLS_ENABLE"] = "0"
        env["PYTHONPATH"] = f"{tr.miles_dir.rstrip('/')}:{tr.megatron_dir.rstrip('/')}"
        if recipe.env.nccl_preset == "rack":
            env.update(NCCL_RACK)
        if recipe.sglang.mtp and recipe.sglang.spec_v2:
            env["SGLANG_ENABLE_SPEC_V2"] = "1"
    else:
        pkg_root = str(PurePosixPath(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        env["PYTHONPATH"] = pkg_root
    env["MASTER_ADDR"] = head
    proxies = ["localhost", "127.0.0.1"] + [h.address for h in alloc.hosts if h.address not in ("127.0.0.1",)]
    env["no_proxy"] = env["NO_PROXY"] = ",".join(dict.fromkeys(proxies))
    if recipe.env.interface:
        for k in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            env[k] = recipe.env.interface
    env.update({k: str(v) for k, v in recipe.env.vars.items()})
    secret = list(dict.fromkeys(([recipe.wandb.key_env] if recipe.wandb.enabled else []) + recipe.env.secret_vars))
    for k in secret:
        env.pop(k, None)
    return env, secret


def ray_start_commands(
    alloc: Allocation, gpus: int, ports: PortPlan, state_dir: str, ray_bin: str, head_ip: str
) -> list[tuple[list[str], dict[str, str]]]:
    """``ray start`` argv, env and the node's own state directory, for each node (head first).

    Head: ``--head --node-ip-address`` on the cluster network, every port pinned, the dashboard
    bound to the head's address (not every interface), ``--block`` so that the launcher owns the process
    group. Workers: ``--address head:gcs`` with their own ``--node-ip-address``. Token auth
    (``RAY_AUTH_MODE=token``, Ray >= 2.52) reads the token from a file written per run, so the
    token is never in argv or logs.
    """
    n = ports.named()
    common_ports = [
        "--node-manager-port", str(n["node_manager"]), "--object-manager-port", str(n["object_manager"]),
        "--runtime-env-agent-port", str(n["runtime_env_agent"]),
        "--dashboard-agent-grpc-port", str(n["dashboard_agent_grpc"]),
        "--dashboard-agent-listen-port", str(n["dashboard_agent_listen"]),
        "--metrics-export-port", str(n["metrics_export"]),
        "--min-worker-port", str(ports.min_worker), "--max-worker-port", str(ports.max_worker),
    ]
    out = []
    for i, h in enumerate(alloc.hosts):
        node_dir = f"{state_dir}/n{i}"
        env = {
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_memory_monitor_refresh_ms": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": f"{node_dir}/auth_token",
            "RAY_JOB_STOP_WAIT_TIME_S": "120",
            # SIGTERM to `ray start --block` drains for up to this long before stopping (default 30 s)
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5",
            "AUTOSCALER_METRIC_PORT": str(n["autoscaler_metrics"]),
            "DASHBOARD_METRIC_PORT": str(n["dashboard_metrics"]),
        }
        if h.is_loopback and alloc.num_nodes == 1:
            # keep 127.0.0.1 instead of Ray's rewrite to the machine's IP (deps.md §3); this
            # setting forbids workers, so only for a one-node cluster
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        argv = [ray_bin, "start"]
        if i == 0:
            argv += ["--head", "--node-ip-address", head_ip, "--port", str(ports.gcs)]
            argv += ["--ray-client-server-port", str(n["ray_client_server"])]
            argv += ["--dashboard-host", head_ip, "--dashboard-port", str(ports.dashboard)]
        else:
            argv += ["--address", f"{head_ip}:{ports.gcs}", "--node-ip-address", h.address]
        argv += common_ports
        argv += ["--num-gpus", str(gpus), "--temp-dir", f"{node_dir}/ray", "--disable-usage-stats", "--block"]
        out.append((argv, env, node_dir))
    return out


def build_plan(
    recipe: Recipe,
    alloc: Allocation,
    *,
    run_id: str | None = None,
    ports: PortPlan | None = None,
    python: str | None = None,
    state_root: str = "/tmp",
    check: bool = True,
) -> LaunchPlan:
    """Build the :class:`LaunchPlan` of ``recipe`` on ``alloc``. Pure: touches no node.

    ``python`` is the interpreter on the nodes (default: the launcher's own, ``sys.executable``:
    right on a shared filesystem or one image everywhere); ``ray`` is taken from its ``bin/``.
    With ``check`` the recipe × allocation checks run and their findings are stored in the plan
    (the plan is still built; callers refuse to launch when ``plan.errors`` is not empty).
    """
    from . import checks as _checks

    run_id = check_run_id(run_id) if run_id else new_run_id()
    ports = ports or PortPlan()
    python = python or sys.executable
    ray_bin = str(PurePosixPath(python).parent / "ray")
    gpus = resolved_gpus_per_node(recipe, alloc)
    alloc = alloc.with_gpus_per_node(gpus) if gpus else alloc
    state_dir = f"{state_root.rstrip('/')}/glr-{run_id}"
    head_ip = alloc.head.address
    notes: list[str] = []
    if recipe.trainer.kind == "miles":
        argv = trainer_argv(recipe, alloc, notes)
        a_nodes = actor_nodes(recipe, alloc.num_nodes)
        world = a_nodes * gpus
    else:
        argv = probe_argv(recipe, alloc, python)
        world = alloc.num_nodes * gpus
    env_vars, secret = runtime_env(recipe, alloc, python)
    nodes = []
    for h, (cmd, env, node_dir) in zip(alloc.hosts, ray_start_commands(alloc, gpus, ports, state_dir, ray_bin, head_ip), strict=True):
        nodes.append(
            NodePlan(
                name=h.name, address=h.address, gpus=gpus, role="head" if h is alloc.head else "worker",
                ray_start=cmd, env=env, ssh_user=h.ssh_user, ssh_port=h.ssh_port, source=h.source, state_dir=node_dir,
            )
        )
    plan = LaunchPlan(
        run_id=run_id, run_name=recipe.run.name, recipe=recipe.run.name, recipe_source=recipe.source,
        trainer_kind=recipe.trainer.kind, head_address=head_ip,
        dashboard_url=f"http://{_url_host(head_ip)}:{ports.dashboard}", ports=ports, state_dir=state_dir,
        ray_bin=ray_bin, python=python, nodes=nodes, argv=argv, env_vars=env_vars, secret_env=secret,
        submission_id=f"glmlaunch-{recipe.run.name}-{run_id}", world_size=world, num_nodes=alloc.num_nodes,
        gpus_per_node=gpus, notes=notes, setup=[recipe.expand(x) for x in recipe.cluster.setup],
        placeholder=bool(alloc.extra.get("placeholder")),
    )
    if check:
        plan.findings = _checks.check_all(recipe, alloc, plan)
    return plan


def _url_host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr
