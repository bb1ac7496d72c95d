"""The launch plan: everything glmlaunch will do, decided by pure functions before anything runs.

:func:`build_plan` turns a :class:`~glmlaunch.recipe.Recipe` and an
:class:`~glmlaunch.hosts.Allocation` into a :class:`LaunchPlan`: each node's ``ray start``
argv and env, the port plan, the trainer's argv (a token list, never one string re-split) and
its runtime env (concrete values only, no ``${VAR}``). Executors carry
a plan out; ``glmlaunch render`` prints it (:mod:`glmlaunch.render`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import os
import re
import secrets
import shlex
import sys
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, computed_field

from .errors import RecipeError
from .hosts import Allocation, AllocationKind
from .models import BLACKWELL, get_model
from .options import Defaults
from .recipe import Recipe
from .resolve import Resolved, resolve

# Ranges the trainer picks ports from at runtime (miles@31f1ca961a94: the router and its Prometheus
# port miles/ray/rollout/router_manager.py:29-48, the engines miles/ray/rollout/addr_allocator.py:24,
# the Megatron rendezvous miles/ray/train_actor.py:64, checkpoint conversion
# miles/utils/external_utils/command_utils.py:58): Ray's worker ports must stay out of them
# (docs/rules.md#ports-clear).
TRAINER_PORT_RANGES = {
    "miles router": (3000, 4000),
    "router Prometheus": (4000, 5000),
    "SGLang engines (15000 upward)": (15000, 15999),
    "Megatron rendezvous": (20000, 21000),
    "checkpoint conversion torchrun": (23456, 23456),
}

# The rack's NCCL/IB settings (``env.nccl_preset = "rack"``, opt-in):
# scripts/run_glm45_355b_a32b_8node.py:64-86 (miles@31f1ca961a94), NCCL_NVLS_ENABLE=0 included ("off
# regardless of what execute_train's nvlink probe finds"). The OMPI_MCA_* keys there are left out:
# nothing in the run uses MPI.
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

NVLINK_PROBE = "nvlink"
PROBES = {
    NVLINK_PROBE: "1 when every node's `nvidia-smi topo -m` shows an NVLink connection (NV<n>), else 0",
}
"""What the nodes decide at launch (``LaunchPlan.probed_env`` maps a variable to one of these).
``nvlink``: miles' ``execute_train`` sets ``NCCL_NVLS_ENABLE`` from its NVLink probe
(miles/utils/external_utils/command_utils.py:205, :248-250 (miles@31f1ca961a94)); glmlaunch asks
every node in the preflight round (:func:`glmlaunch.nodeops.nvlink_probe`), docs/fidelity.md#probed-env."""
PROBE_DEFAULT = "0"
"""A probed variable's value in a plan whose nodes have not answered (``render``): NVLS off, the
value miles' probe gives a node without NVLink."""


class PortPlan(BaseModel):
    """Every port Ray listens on, pinned (NeMo-Run's lesson: random ports collide).

    Ray's own ports are ``base`` .. ``base+9`` (the two metrics ports without a ``ray start`` flag
    are pinned through ``AUTOSCALER_METRIC_PORT`` / ``DASHBOARD_METRIC_PORT``); the dashboard /
    job API is ``dashboard``; Ray workers use ``min_worker`` .. ``max_worker``, which avoids the
    trainer's ranges (:data:`TRAINER_PORT_RANGES`). Defaults: :class:`glmlaunch.options.Defaults`.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    base: int = Defaults.port_base
    dashboard: int = Defaults.dashboard_port
    min_worker: int = 10002
    max_worker: int = 14999
    convert: int = 23456
    """The checkpoint conversion's ``torchrun --master-port`` on the head (``glmlaunch prepare``;
    miles' fixed port, command_utils.py:58 (miles@31f1ca961a94)); not a Ray port, so not in
    :attr:`named` (nothing listens on it while Ray runs)."""

    @property
    def gcs(self) -> int:
        return self.base

    @computed_field  # type: ignore[prop-decorator]
    @property
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
        n = self.named
        head_only = ("gcs", "dashboard", "ray_client_server", "autoscaler_metrics", "dashboard_metrics")
        keys = list(n) if head else [k for k in n if k not in head_only]
        return [n[k] for k in keys]


class NodePlan(BaseModel):
    """One node: its role (``head`` or ``worker``), address, GPUs, the ``ray start`` command
    (argv + env), its own state directory (cwd, token, pid file, ``ray start``'s log) and its Ray
    directory (``ray_dir``: Ray's temp dir is ``<ray_dir>/ray``, short for Ray's socket paths)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    address: str
    gpus: int
    role: str
    ray_start: list[str]
    env: dict[str, str]
    ssh_user: str | None = None
    ssh_port: int | None = None
    source: str = ""
    state_dir: str = ""
    ray_dir: str = ""


class LaunchPlan(BaseModel):
    """Everything a launch will do; round-trips through JSON (``plan.json``:
    ``LaunchPlan.model_validate_json``).

    ``argv``: trainer command tokens (from the interpreter on). ``env_vars``: the job's runtime
    env (flat, concrete strings; secrets only by name in ``secret_env``). ``nodes[0]`` is the head.
    ``state_dir``: per-run directory, ``/tmp/glr-<run-id>-<16 random hex digits>`` (unpredictable:
    ``/tmp`` is shared, and a name others can guess is a name they can take first); each node uses
    its own ``<state_dir>/n<i>`` under it (cwd, token, pid file, ``ray start``'s log) and Ray's
    temp dir in ``/tmp/glr-<random>-n<i>/ray`` (``NodePlan.ray_dir``: short, for Ray's socket
    paths), so nodes that share ``/tmp`` do not collide. The nodes create them fresh with mode
    700 and refuse one that exists (:func:`glmlaunch.nodeops.write_secret`). ``world_size`` and ``gpus_per_node`` are in GPUs.

    ``probed_env``: the variables of ``env_vars`` that the nodes decide at launch, each with its
    probe (:data:`PROBES`; ``NCCL_NVLS_ENABLE``: ``nvlink``). Until the nodes answer
    (``probed`` false: ``render``, ``launch --dry-run``) ``env_vars`` holds :data:`PROBE_DEFAULT`
    for them; the preflight round puts the nodes' answer there (:func:`apply_probes`) before the
    job is submitted, and ``commands.sh`` probes the nodes itself.
    """

    model_config = ConfigDict(extra="ignore")

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
    notes: list[str] = Field(default_factory=list)
    setup: list[str] = Field(default_factory=list)
    placeholder: bool = False
    local: bool = False
    """The nodes are this machine (``--local``): the rendered script runs their commands with
    ``bash -c`` instead of ``ssh``."""
    probed_env: dict[str, str] = Field(default_factory=dict)
    probed: bool = False

    @property
    def head(self) -> NodePlan:
        return self.nodes[0]

    @property
    def workers(self) -> list[NodePlan]:
        return self.nodes[1:]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def entrypoint(self) -> str:
        """The Ray job entrypoint: the argv quoted for a shell (Ray Jobs take a shell string)."""
        return shlex.join(self.argv)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def submit(self) -> list[str]:
        """``ray job submit`` for people running the plan by hand (the runtime env is read from a
        file the bash script writes with mode 600, so secrets stay out of argv)."""
        return [
            self.ray_bin,
            "job",
            "submit",
            "--address",
            self.dashboard_url,
            "--submission-id",
            self.submission_id,
            "--runtime-env",
            f"{self.state_dir}/runtime_env.json",
            "--",
            *self.argv,
        ]


RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A run id names directories (``glr-<id>``, the run directory) and the Ray submission id.
Matched with ``fullmatch``: ``re.match`` with ``$`` would let a trailing newline through."""


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe id (:data:`RUN_ID_RE`); else raise :class:`RecipeError`."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise RecipeError(
            f"--run-id {repr(run_id)[:80]}: a run id is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
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


# enable_mis: the TIS + rejection-sampling config miles builds inline and passes as a `base64:`
# pseudo-file, scripts/run_glm45_355b_a32b.py:318-335 (miles@31f1ca961a94) (decoded by
# miles/utils/file_arg_utils.py:7-11, applied by miles/utils/arguments.py:3475-3480). `use_rs` is
# algorithm.tis_use_rs; the other keys are fixed.
MIS_TIS_FUNCTION = "examples.infra_features.train_infer_mismatch_helper.mis.compute_mis_weights_with_cp"


def mis_config(use_rs: bool) -> str:
    """The MIS YAML text (``use_rs`` from ``algorithm.tis_use_rs``)."""
    items = [
        ("use_tis", "true"),
        ("use_rs", "true" if use_rs else "false"),
        ("tis_level", '"token"'),
        ("rs_level", '"token"'),
        ("tis_mode", '"truncate"'),
        ("tis_lower_bound", "0.5"),
        ("tis_upper_bound", "2.0"),
        ("rs_lower_bound", "null"),
        ("rs_upper_bound", "null"),
        ("rs_veto_threshold", "1.0e-4"),
        ("tis_batch_normalize", "true"),
    ]
    return "\n".join(f"{k}: {v}" for k, v in items)


def pseudo_file(text: str) -> str:
    """A file argument miles reads inline: ``base64:`` and the text, base64-encoded."""
    return "base64:" + base64.b64encode(text.encode()).decode()


# sglang.fp8_rollout: the decode batch size miles' FP8 rollout is tuned for,
# scripts/run_glm45_355b_a32b.py:245 (miles@31f1ca961a94).
FP8_DECODE_MAX_BS = 256


def engine_gpus(res: Resolved) -> int:
    """GPUs per rollout engine: ``sglang.gpus_per_engine``, or every rollout GPU when there are
    fewer and ``sglang.cap_gpus_per_engine`` is set."""
    s = res.recipe.sglang
    if s.cap_gpus_per_engine and res.rollout_gpus:
        return min(s.gpus_per_engine, res.rollout_gpus)
    return s.gpus_per_engine


def mem_fraction_static(recipe: Recipe) -> str:
    """``--sglang-mem-fraction-static``: the hardware's entry in
    ``sglang.mem_fraction_static_by_hardware``, else ``sglang.mem_fraction_static``."""
    s = recipe.sglang
    return s.mem_fraction_static_by_hardware.get(recipe.cluster.hardware, s.mem_fraction_static)


def _sglang_argv(res: Resolved, notes: list[str]) -> list[str]:
    """The rollout engines' flags. ``fp8_rollout`` replaces the DP-attention / EP / chunked-prefill
    fields with miles' FP8 values (scripts/run_glm45_355b_a32b.py:229-263 (miles@31f1ca961a94))."""
    r = res.recipe
    s = r.sglang
    g = engine_gpus(res)
    dp_attention, dp, ep = s.enable_dp_attention, s.dp_size, s.ep_size
    lm_head, dense = s.enable_dp_lm_head, s.moe_dense_tp_size
    chunked = s.chunked_prefill_size_per_gpu * g if s.chunked_prefill_size_per_gpu else None
    fp8: list[str] = []
    if s.fp8_rollout:
        attn_tp = min(8, g)
        want = {
            "enable_dp_attention": (dp_attention, True),
            "dp_size": (dp, g // attn_tp),
            "ep_size": (ep, g),
            "enable_dp_lm_head": (lm_head, True),
            "moe_dense_tp_size": (dense, 1),
            "chunked_prefill_size_per_gpu": (s.chunked_prefill_size_per_gpu, FP8_DECODE_MAX_BS),
        }
        for name, (old, new) in want.items():
            if old not in (None, False, new):
                notes.append(f"sglang.fp8_rollout: sglang.{name} = {old} is replaced by {new}")
        dp_attention, dp, ep, lm_head, dense = True, g // attn_tp, g, True, 1
        chunked = g * FP8_DECODE_MAX_BS
        fp8 = [
            "--sglang-moe-runner-backend",
            "deep_gemm",
            "--sglang-moe-a2a-backend",
            "deepep",
            "--sglang-deepep-mode",
            "low_latency",
            "--sglang-max-running-requests",
            str(g * FP8_DECODE_MAX_BS // attn_tp),
            "--sglang-cuda-graph-max-bs",
            str(FP8_DECODE_MAX_BS),
        ]
    argv = ["--rollout-num-gpus-per-engine", str(g)]
    argv += ["--sglang-mem-fraction-static", mem_fraction_static(r)]
    argv += _opt("--sglang-chunked-prefill-size", chunked)
    argv += _bool("--sglang-enable-dp-attention", dp_attention)
    argv += _opt("--sglang-dp-size", dp)
    argv += _opt("--sglang-ep-size", ep)
    argv += _bool("--sglang-enable-dp-lm-head", lm_head)
    argv += _opt("--sglang-moe-dense-tp-size", dense)
    argv += fp8
    argv += _opt("--sglang-cuda-graph-bs", s.cuda_graph_bs)
    if s.mtp:
        argv += [
            "--sglang-speculative-algorithm",
            "EAGLE",
            "--sglang-speculative-num-steps",
            str(s.speculative_num_steps),
        ]
        argv += ["--sglang-speculative-eagle-topk", str(s.speculative_eagle_topk)]
        argv += ["--sglang-speculative-num-draft-tokens", str(s.speculative_num_draft_tokens)]
        argv += _bool("--sglang-enable-draft-weights-cpu-backup", s.draft_weights_cpu_backup)
    attn = s.attention_backend or ("trtllm_mha" if r.cluster.hardware in BLACKWELL else "")
    argv += _opt("--sglang-attention-backend", attn)
    if s.fp8_kv_cache:
        argv += ["--sglang-kv-cache-dtype", "fp8_e4m3"]
    return argv


def trainer_argv(res: Resolved, notes: list[str] | None = None) -> list[str]:
    """The miles ``train.py`` argv as tokens, in the seed's group order (the 8-node golden
    file, tests/golden/glm45-355b-a32b-gspo.json): cluster, model, checkpoint, rollout, eval, perf, algorithm, optimizer,
    W&B, SGLang, misc. Each flag appears once; overrides of the model args are recorded in
    ``notes``.
    """
    notes = notes if notes is not None else []
    r = res.recipe
    gpus = res.gpus_per_node
    spec = get_model(r.model.type)
    lay = res.layout
    a_nodes = res.actor_nodes
    tp = cp = res.paths
    tr = r.trainer
    argv = [tr.python, str(PurePosixPath(tr.miles_dir) / tr.train_script)]

    # cluster (miles rule: always pass --num-gpus-per-node; drop --rollout-num-gpus when colocated)
    argv += [
        "--actor-num-nodes",
        str(a_nodes),
        "--actor-num-gpus-per-node",
        str(gpus),
        "--num-gpus-per-node",
        str(gpus),
    ]
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

    # checkpoint: --load is the run's own directory, so a restart resumes
    # (miles/utils/arguments.py:3046-3057 (miles@31f1ca961a94))
    argv += ["--hf-checkpoint", cp["hf_checkpoint"], "--ref-load", cp["ref_load"]]
    if cp["load"]:
        argv += ["--load", cp["load"]]
    if cp["save"]:
        argv += ["--save", cp["save"], *_opt("--save-interval", r.checkpoint.save_interval)]
        argv += _opt("--save-retain-interval", r.checkpoint.save_retain_interval)

    ro = r.rollout
    argv += ["--prompt-data", tp["prompt_data"], "--input-key", ro.input_key, "--label-key", ro.label_key]
    argv += _bool("--apply-chat-template", ro.apply_chat_template) + _bool(
        "--rollout-shuffle", ro.rollout_shuffle
    )
    argv += ["--rm-type", tp["rm_type"]]
    argv += _opt("--num-rollout", ro.num_rollout)
    argv += [
        "--rollout-batch-size",
        str(ro.rollout_batch_size),
        "--n-samples-per-prompt",
        str(ro.n_samples_per_prompt),
    ]
    argv += _opt("--rollout-max-response-len", ro.rollout_max_response_len)
    argv += ["--rollout-temperature", ro.rollout_temperature]
    if ro.dynamic_sampling:
        argv += _opt("--over-sampling-batch-size", ro.over_sampling_batch_size)
        argv += ["--dynamic-sampling-filter-path", ro.dynamic_sampling_filter_path]
    argv += _opt("--num-steps-per-rollout", ro.num_steps_per_rollout)
    argv += _opt("--global-batch-size", ro.global_batch_size)
    argv += _bool("--balance-data", ro.balance_data)
    argv += _opt("--rollout-stop-token-ids", ro.stop_token_ids)

    ev = r.eval
    if ev.enabled:
        argv += _opt("--eval-interval", ev.interval)
        argv += ["--eval-prompt-data", tp["eval_name"], tp["eval_data"]]
        argv += _opt("--n-samples-per-eval-prompt", ev.n_samples_per_eval_prompt)
        argv += _opt("--eval-max-response-len", ev.max_response_len) + ["--eval-top-p", ev.top_p]

    p = r.parallelism
    argv += ["--tensor-model-parallel-size", str(lay.tp)]
    argv += _bool("--sequence-parallel", p.sequence_parallel)
    argv += ["--pipeline-model-parallel-size", str(lay.pp)]
    argv += _opt("--decoder-first-pipeline-num-layers", lay.first)
    argv += _opt("--decoder-last-pipeline-num-layers", lay.last)
    argv += ["--context-parallel-size", str(lay.cp), "--expert-model-parallel-size", str(lay.ep)]
    argv += ["--expert-tensor-parallel-size", str(lay.etp)]
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
        argv += ["--custom-tis-function-path", MIS_TIS_FUNCTION]
        argv += ["--custom-config-path", pseudo_file(mis_config(al.tis_use_rs))]
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

    argv += _sglang_argv(res, notes)

    wt = r.weight_transfer
    argv += _opt("--update-weight-buffer-size", wt.buffer_size)
    if wt.mode in ("p2p", "broadcast", "disk-delta"):
        argv += _bool("--check-weight-update-equal", wt.check_weight_update_equal)
        argv += ["--update-weight-transfer-mode", wt.mode]
        if wt.mode == "p2p":
            argv.append("--sglang-remote-instance-weight-loader-start-seed-via-transfer-engine")

    argv += ["--attention-dropout", "0.0", "--hidden-dropout", "0.0", "--accumulate-allreduce-grads-in-fp32"]
    argv += ["--attention-softmax-in-fp32", "--attention-backend", tr.attention_backend]
    argv += _opt("--moe-token-dispatcher-type", r.model.moe_token_dispatcher)
    argv += _bool("--moe-enable-deepep", r.model.moe_enable_deepep)
    argv += _opt("--distributed-timeout-minutes", tr.distributed_timeout_minutes)
    argv += _opt("--dump-details", r.expand(tr.dump_details).rstrip("/") if tr.dump_details else "")
    argv += list(tr.extra_args)
    return argv


def probe_argv(res: Resolved, python: str) -> list[str]:
    """The cluster probe's argv (``python -m glmlaunch.probe``) for ``trainer.kind = "probe"``."""
    recipe = res.recipe
    argv = [
        python,
        "-m",
        "glmlaunch.probe",
        "--nodes",
        str(res.num_nodes),
        "--gpus-per-node",
        str(res.gpus_per_node),
    ]
    argv += ["--timeout", str(recipe.trainer.probe_timeout_s)]
    for p in recipe.trainer.probe_paths:
        argv += ["--path", recipe.expand(p)]
    return argv


def no_proxy(recipe: Recipe, alloc: Allocation) -> str:
    """``no_proxy``: ``env.no_proxy`` (default ``127.0.0.1``), then the head, then every other
    node, each once. With the default this is miles' ``execute_train`` value, ``127.0.0.1,<head>``
    (miles/utils/external_utils/command_utils.py:211 (miles@31f1ca961a94)), followed by the other
    nodes (docs/fidelity.md#computed-env)."""
    return ",".join(dict.fromkeys([*recipe.env.no_proxy, *(h.address for h in alloc.hosts)]))


def runtime_env(
    recipe: Recipe, alloc: Allocation, python: str
) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """The job's runtime env (flat, concrete strings), the names of secret variables and the
    variables the nodes decide at launch (name -> probe, :data:`PROBES`).

    Precedence: defaults (probed ones included) < NCCL preset < interface < ``env.vars``
    (docs/rules.md#computed-env): ``NCCL_NVLS_ENABLE`` is probed (:data:`PROBE_DEFAULT` until the
    nodes answer) unless the rack preset or ``env.vars`` sets it. ``no_proxy`` (:func:`no_proxy`)
    lists every node; ``MASTER_ADDR`` is the head's address. Secrets (W&B key,
    ``env.secret_vars``) are named only: their values are read at submit time.
    """
    head = alloc.head.address
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    probed: dict[str, str] = {}
    if recipe.trainer.kind == "miles":
        tr = recipe.trainer
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = (
            "1"  # Megatron validate_args needs it when TP/CP > 1 (addendum #36)
        )
        env["NCCL_NVLS_ENABLE"] = PROBE_DEFAULT
        probed["NCCL_NVLS_ENABLE"] = NVLINK_PROBE
        env["PYTHONPATH"] = f"{tr.miles_dir.rstrip('/')}:{tr.megatron_dir.rstrip('/')}"
        if recipe.env.nccl_preset == "rack":
            env.update(NCCL_RACK)
        if recipe.sglang.mtp and recipe.sglang.spec_v2:
            env["SGLANG_ENABLE_SPEC_V2"] = "1"
        if recipe.sglang.fp8_rollout:
            # scripts/run_glm45_355b_a32b.py:261-263 (miles@31f1ca961a94)
            env["SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK"] = str(FP8_DECODE_MAX_BS)
    else:
        # the probe's NCCL collective gets NVLink multicast as the trainer would (it checks what
        # training will use)
        env["NCCL_NVLS_ENABLE"] = PROBE_DEFAULT
        probed["NCCL_NVLS_ENABLE"] = NVLINK_PROBE
        pkg_root = str(PurePosixPath(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        env["PYTHONPATH"] = pkg_root
    env["MASTER_ADDR"] = head
    env["no_proxy"] = env["NO_PROXY"] = no_proxy(recipe, alloc)
    if recipe.env.interface:
        for k in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            env[k] = recipe.env.interface
    env.update({k: str(v) for k, v in recipe.env.vars.items()})
    fixed = set(recipe.env.vars) | (set(NCCL_RACK) if recipe.env.nccl_preset == "rack" else set())
    probed = {k: v for k, v in probed.items() if k not in fixed}  # the preset or env.vars decided
    secret = list(
        dict.fromkeys(([recipe.wandb.key_env] if recipe.wandb.enabled else []) + recipe.env.secret_vars)
    )
    for k in secret:
        env.pop(k, None)
        probed.pop(k, None)
    return env, secret, probed


def probe_answers(probed_env: dict[str, str], answers: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """The probed variables' values from the nodes' ``inspect`` answers (host -> answer, as
    :func:`glmlaunch.nodeops.op_inspect` returns it), and one line per variable saying why.

    ``nvlink``: ``"1"`` when every node shows an NVLink connection, else ``"0"`` (a node without
    ``nvidia-smi``, or whose probe failed or timed out, has none: miles' probe counts it 0). miles
    probes the one machine it runs on (command_utils.py:248-250 (miles@31f1ca961a94)); the job's
    runtime env is one for every node, so here every node must have NVLink for NVLS to be on.
    Pure logic: nothing is run."""
    values: dict[str, str] = {}
    why: list[str] = []
    for var, probe in probed_env.items():
        if probe != NVLINK_PROBE:
            raise ValueError(f"unknown probe {probe!r} for {var}")
        counts = {h: int(a.get("nvlink") or 0) for h, a in answers.items()}
        without = [h for h, n in counts.items() if n <= 0]
        values[var] = "1" if counts and not without else "0"
        if not without:
            what = f"every node shows NVLink ({', '.join(f'{h}: {n}' for h, n in counts.items())})"
        else:
            whys = "; ".join(f"{h}: {answers[h].get('nvlink_why') or 'no NVLink'}" for h in without)
            what = f"{len(without)} of {len(counts)} node(s) without NVLink ({whys})"
        why.append(f"{var}={values[var]} from the nodes' NVLink probe: {what}")
    return values, why


def apply_probes(plan: LaunchPlan, answers: dict[str, dict]) -> dict[str, str]:
    """Put the nodes' answers (:func:`probe_answers`) into ``plan.env_vars`` (in place: the
    plan the job is submitted with), note why in ``plan.notes`` and set ``plan.probed``. Returns
    the values set."""
    values, why = probe_answers(plan.probed_env, answers)
    plan.env_vars.update(values)
    plan.notes = [n for n in plan.notes if not n.startswith(PROBE_NOTE)] + why
    plan.probed = True
    return values


PROBE_NOTE = "decided at launch: "


def probe_note(probed_env: dict[str, str]) -> str:
    """The plan's note for variables not probed yet."""
    return PROBE_NOTE + "; ".join(
        f"{k} is {PROBES[p]} (this plan shows {PROBE_DEFAULT}, the value until the nodes answer)"
        for k, p in probed_env.items()
    )


def ray_start_commands(
    alloc: Allocation,
    gpus: int,
    ports: PortPlan,
    state_dir: str,
    ray_bin: str,
    head_ip: str,
    ray_root: str | None = None,
) -> list[tuple[list[str], dict[str, str], str, str]]:
    """``ray start`` argv, env, the node's own state directory and its Ray directory, for each
    node (head first).

    Ray's temp dir is ``<ray_root>-n<i>/ray`` (default ``ray_root``: ``state_dir``): Ray puts its
    AF_UNIX sockets at ``<temp dir>/session_<date>_<time>_<pid>/sockets/plasma_store``, and a
    socket path has at most 107 bytes (ray/_private/utils.py:1750 (ray@2.60.0)), so the temp dir
    must stay short (43 characters): ``/tmp/glr-<random>-n<i>/ray`` does, a name with the run id
    and the random part does not. ``ray`` itself is made mode 777 by Ray
    (``try_make_directory_shared``); its parent, made by the run with mode 700, keeps others out.

    Head: ``--head --node-ip-address`` on the cluster network, every port pinned, the dashboard
    bound to the head's address (not every interface), ``--block`` so that the launcher owns the process
    group. Workers: ``--address head:gcs`` with their own ``--node-ip-address``. Token auth
    (``RAY_AUTH_MODE=token``, Ray >= 2.52) reads the token from a file written per run, so the
    token is never in argv or logs.
    """
    n = ports.named
    common_ports = [
        "--node-manager-port",
        str(n["node_manager"]),
        "--object-manager-port",
        str(n["object_manager"]),
        "--runtime-env-agent-port",
        str(n["runtime_env_agent"]),
        "--dashboard-agent-grpc-port",
        str(n["dashboard_agent_grpc"]),
        "--dashboard-agent-listen-port",
        str(n["dashboard_agent_listen"]),
        "--metrics-export-port",
        str(n["metrics_export"]),
        "--min-worker-port",
        str(ports.min_worker),
        "--max-worker-port",
        str(ports.max_worker),
    ]
    out = []
    for i, h in enumerate(alloc.hosts):
        node_dir = f"{state_dir}/n{i}"
        ray_dir = f"{ray_root or state_dir}-n{i}"
        env = {
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_memory_monitor_refresh_ms": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": f"{node_dir}/auth_token",
            "RAY_JOB_STOP_WAIT_TIME_S": str(Defaults.job_stop_grace_s),
            # SIGTERM to `ray start --block` drains for up to this long before stopping (default 30 s)
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5",
            "AUTOSCALER_METRIC_PORT": str(n["autoscaler_metrics"]),
            "DASHBOARD_METRIC_PORT": str(n["dashboard_metrics"]),
        }
        if h.is_loopback and alloc.num_nodes == 1:
            # keep 127.0.0.1 instead of Ray's rewrite to the machine's IP
            # (ray/_private/services.py:811-819 (ray@2.60.0)); this setting forbids workers, so
            # only for a one-node cluster
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        argv = [ray_bin, "start"]
        if i == 0:
            argv += ["--head", "--node-ip-address", head_ip, "--port", str(ports.gcs)]
            argv += ["--ray-client-server-port", str(n["ray_client_server"])]
            argv += ["--dashboard-host", head_ip, "--dashboard-port", str(ports.dashboard)]
        else:
            argv += ["--address", f"{head_ip}:{ports.gcs}", "--node-ip-address", h.address]
        argv += common_ports
        argv += ["--num-gpus", str(gpus), "--temp-dir", f"{ray_dir}/ray", "--disable-usage-stats", "--block"]
        out.append((argv, env, node_dir, ray_dir))
    return out


def build_plan(
    recipe: Recipe,
    alloc: Allocation,
    *,
    resolved: Resolved | None = None,
    run_id: str | None = None,
    ports: PortPlan | None = None,
    python: str | None = None,
    state_root: str = "/tmp",
    state_nonce: str | None = None,
) -> LaunchPlan:
    """Build the :class:`LaunchPlan` of ``recipe`` on ``alloc``. Pure: touches no node and runs
    no check (:func:`glmlaunch.checks.run` does).

    ``resolved``: :func:`glmlaunch.resolve.resolve` of the two, when the caller has it already.
    ``python`` is the interpreter on the nodes (default: the launcher's own, ``sys.executable``:
    right on a shared filesystem or one image everywhere); ``ray`` is taken from its ``bin/``.
    ``state_nonce``: the random part of the state directory's name (default: 16 new random hex
    digits; give one only to reproduce a plan, e.g. golden files).
    Raises :class:`~glmlaunch.errors.RecipeError` for a bad ``run_id``.
    """
    res = resolved or resolve(recipe, alloc)
    run_id = check_run_id(run_id) if run_id else new_run_id()
    ports = ports or PortPlan()
    python = python or sys.executable
    ray_bin = str(PurePosixPath(python).parent / "ray")
    gpus = res.gpus_per_node
    nonce = secrets.token_hex(8) if state_nonce is None else state_nonce
    if not re.fullmatch(r"[0-9a-f]{16}", nonce):
        raise RecipeError(f"state_nonce {nonce!r}: 16 hex digits expected", "leave it out for a random one")
    root = state_root.rstrip("/")
    state_dir = f"{root}/glr-{run_id}-{nonce}"
    head_ip = alloc.head.address
    notes: list[str] = []
    argv = trainer_argv(res, notes) if recipe.trainer.kind == "miles" else probe_argv(res, python)
    env_vars, secret, probed_env = runtime_env(recipe, alloc, python)
    if probed_env:
        notes.append(probe_note(probed_env))
    nodes = [
        NodePlan(
            name=h.name,
            address=h.address,
            gpus=gpus,
            role="head" if i == 0 else "worker",
            ray_start=cmd,
            env=env,
            ssh_user=h.ssh_user,
            ssh_port=h.ssh_port,
            source=h.source,
            state_dir=node_dir,
            ray_dir=ray_dir,
        )
        for i, (h, (cmd, env, node_dir, ray_dir)) in enumerate(
            zip(
                alloc.hosts,
                ray_start_commands(alloc, gpus, ports, state_dir, ray_bin, head_ip, f"{root}/glr-{nonce}"),
                strict=True,
            )
        )
    ]
    return LaunchPlan(
        run_id=run_id,
        run_name=recipe.run.name,
        recipe=recipe.run.name,
        recipe_source=recipe.source,
        trainer_kind=recipe.trainer.kind,
        head_address=head_ip,
        dashboard_url=f"http://{_url_host(head_ip)}:{ports.dashboard}",
        ports=ports,
        state_dir=state_dir,
        ray_bin=ray_bin,
        python=python,
        nodes=nodes,
        argv=argv,
        env_vars=env_vars,
        secret_env=secret,
        submission_id=f"glmlaunch-{recipe.run.name}-{run_id}",
        world_size=res.world_size,
        num_nodes=alloc.num_nodes,
        gpus_per_node=gpus,
        notes=notes,
        setup=[recipe.expand(x) for x in recipe.cluster.setup],
        placeholder=alloc.placeholder,
        local=alloc.kind == AllocationKind.LOCAL,
        probed_env=probed_env,
    )


def _url_host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr
