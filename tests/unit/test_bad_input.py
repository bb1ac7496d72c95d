"""Bad hostfiles, recipes, overrides and recipe × cluster combinations: each gets its own message
(naming the file:line or the field), a clean exit code, and no traceback.

One table. Rows marked ``cli`` run through ``glmlaunch`` (typer's CliRunner on
``glmlaunch.cli.app``); rows marked ``lib`` run the same steps through the library
(discover → load_recipe → build_plan, a plan with error findings raising CheckFailed).
``{hf}`` in a message is the row's hostfile path, ``{recipe}`` its recipe file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import pytest
from planning import checked_plan

from glmlaunch.errors import CheckFailed, GlmlaunchError, HostfileError, RecipeError
from glmlaunch.hosts import discover
from glmlaunch.plan import PortPlan
from glmlaunch.recipe import load_recipe

EIGHT = "".join(f"10.0.0.{i} slots=8\n" for i in range(1, 9))
THREE = "".join(f"10.0.0.{i} slots=8\n" for i in range(1, 4))
EIGHT_SLOTS4 = "".join(f"10.0.0.{i} slots=4\n" for i in range(1, 9))
LOOPBACK_HEAD = "127.0.0.1 slots=8\n" + "".join(f"10.0.0.{i} slots=8\n" for i in range(2, 9))
MISSING = object()  # the hostfile does not exist

GSPO = "glm45-355b-a32b-gspo"

# CLI exit codes (glmlaunch.cli): 2 bad input, 1 failed checks
EXIT = {HostfileError: 2, RecipeError: 2, CheckFailed: 1}


@dataclass
class Case:
    id: str
    via: str  # "cli" | "lib"
    error: type[GlmlaunchError]  # lib: the exception; cli: exit code EXIT[error]
    message: str  # a specific substring of the message
    hostfile: str | object | None = EIGHT
    recipe: str = GSPO  # template name, or the text of a recipe file (suffix in recipe_suffix)
    sets: tuple[str, ...] = ()
    cmd: str = "check"  # cli command: check | hosts
    head: str | None = None
    gpus_per_node: int | None = None
    slurm_env: dict | None = None
    recipe_suffix: str = ".toml"
    nodes: int | None = None  # --nodes N (placeholders; hostfile None)
    run_id: str = "bad"  # lib only
    ports: dict = field(default_factory=dict)  # lib only: PortPlan fields
    extra: dict = field(default_factory=dict)


CASES = [
    # ---------------------------------------------------------------- hostfiles
    Case(
        "empty-file",
        "cli",
        HostfileError,
        "{hf}: no hosts (the file is empty or only has comments)",
        "",
        cmd="hosts",
    ),
    Case("only-comments", "lib", HostfileError, "{hf}: no hosts", "# rack A\n\n   # nothing\n"),
    Case(
        "duplicate-ip",
        "cli",
        HostfileError,
        "{hf}:3: host '10.0.0.1' is listed twice; first at {hf}:1",
        "10.0.0.1 slots=8\n10.0.0.2 slots=8\n10.0.0.1 slots=8\n",
        cmd="hosts",
    ),
    Case(
        "localhost-and-127",
        "lib",
        HostfileError,
        "{hf}:2: host '127.0.0.1' is listed twice ('localhost' and '127.0.0.1' are the same address 127.0.0.1)",
        "localhost slots=8\n127.0.0.1 slots=8\n",
    ),
    Case(
        "name-and-ip",
        "cli",
        HostfileError,
        "{hf}:2: host '10.0.0.1' is listed twice ('node1' and '10.0.0.1' are the same address 10.0.0.1)",
        "node1 slots=8\n10.0.0.1 slots=8\n",
        cmd="hosts",
    ),
    Case(
        "ipv6-duplicate", "lib", HostfileError, "{hf}:2: host '::1' is listed twice", "[::1]:8\n::1 slots=8\n"
    ),
    Case(
        "unparsable-token",
        "lib",
        HostfileError,
        "{hf}:1: cannot read 'garbage' after the host name",
        "10.0.0.1 slots=8 garbage\n",
    ),
    Case("unknown-key", "cli", HostfileError, "{hf}:1: unknown key 'gpus'", "10.0.0.1 gpus=8\n", cmd="hosts"),
    Case(
        "slots-not-a-number",
        "lib",
        HostfileError,
        "{hf}:1: slots=eight is not a positive whole number",
        "10.0.0.1 slots=eight\n",
    ),
    Case(
        "slots-zero",
        "cli",
        HostfileError,
        "{hf}:2: slots=0 is not a positive whole number",
        "10.0.0.1 slots=8\n10.0.0.2 slots=0\n",
        cmd="hosts",
    ),
    Case(
        "mpich-count",
        "lib",
        HostfileError,
        "{hf}:1: cannot read 'node1:abc': the count after ':' must be a whole number",
        "node1:abc\n",
    ),
    Case(
        "count-twice",
        "cli",
        HostfileError,
        "{hf}:1: the GPU count is given twice (8 and 4)",
        "node1:8 slots=4\n",
        cmd="hosts",
    ),
    Case(
        "bad-hostname",
        "lib",
        HostfileError,
        "{hf}:2: 'bad!host' is not a hostname or IP address",
        "10.0.0.1\nbad!host\n",
    ),
    Case(
        "unresolvable",
        "cli",
        HostfileError,
        "{hf}:2: cannot resolve host 'ghost-node'",
        "10.0.0.1\nghost-node\n",
        cmd="hosts",
    ),
    Case(
        "mixed-slots",
        "lib",
        HostfileError,
        "{hf}:3: '10.0.0.3' has slots=4 but {hf}:1 has slots=8",
        "10.0.0.1 slots=8\n10.0.0.2 slots=8\n10.0.0.3 slots=4\n",
    ),
    Case(
        "partial-slots",
        "cli",
        HostfileError,
        "{hf}:2: '10.0.0.2' has no slot count while other lines do",
        "10.0.0.1 slots=8\n10.0.0.2\n",
        cmd="hosts",
    ),
    Case("empty-user", "lib", HostfileError, "{hf}:1: cannot read host '@node1'", "@node1 slots=8\n"),
    Case(
        "ssh-port",
        "cli",
        HostfileError,
        "{hf}:1: ssh_port=ssh is not a positive whole number",
        "10.0.0.1 ssh_port=ssh\n",
        cmd="hosts",
    ),
    Case(
        "head-not-in-file",
        "cli",
        HostfileError,
        "--head 10.0.0.9: not a host of {hf}",
        cmd="hosts",
        head="10.0.0.9",
    ),
    Case("missing-hostfile", "cli", HostfileError, "{hf}: hostfile not found", MISSING, cmd="hosts"),
    Case(
        "gpus-vs-slots",
        "lib",
        HostfileError,
        "{hf} says 8 GPUs per node but --gpus-per-node 4",
        gpus_per_node=4,
    ),
    Case(
        "slurm-count",
        "lib",
        HostfileError,
        "SLURM_JOB_NODELIST=node[01-03] expands to 3 nodes but SLURM_JOB_NUM_NODES=2",
        None,
        slurm_env={"SLURM_JOB_NODELIST": "node[01-03]", "SLURM_JOB_NUM_NODES": "2"},
    ),
    Case(
        "slurm-outside",
        "lib",
        HostfileError,
        "not inside a Slurm allocation (SLURM_JOB_NODELIST is not set)",
        None,
        slurm_env={},
    ),
    # ---------------------------------------------------------------- recipes and overrides
    Case("unknown-recipe", "cli", RecipeError, "recipe 'no-such-recipe' not found", recipe="no-such-recipe"),
    Case(
        "unknown-key-override",
        "cli",
        RecipeError,
        "parallelism.tpp: unknown key",
        sets=("parallelism.tpp=4",),
    ),
    Case(
        "wrong-type-override",
        "lib",
        RecipeError,
        "parallelism.tp: Input should be a valid integer",
        sets=("parallelism.tp=four",),
    ),
    Case(
        "override-without-equals",
        "cli",
        RecipeError,
        "--set parallelism.tp: expected KEY=VALUE",
        sets=("parallelism.tp",),
    ),
    Case(
        "override-into-value",
        "lib",
        RecipeError,
        "--set run.name.x=1: 'name' is a value, not a section",
        sets=("run.name.x=1",),
    ),
    Case(
        "number-not-a-number",
        "cli",
        RecipeError,
        "algorithm.eps_clip: Value error, 'abc' is not a number",
        sets=("algorithm.eps_clip=abc",),
    ),
    Case(
        "number-is-bool",
        "lib",
        RecipeError,
        "algorithm.eps_clip: Value error, expected a number, got true/false",
        sets=("algorithm.eps_clip=true",),
    ),
    Case(
        "bad-literal",
        "cli",
        RecipeError,
        "cluster.hardware: Input should be 'H100', 'H200'",
        sets=("cluster.hardware=A100",),
    ),
    Case(
        "below-minimum",
        "lib",
        RecipeError,
        "parallelism.tp: Input should be greater than or equal to 1 (got 0)",
        sets=("parallelism.tp=0",),
    ),
    Case(
        "bad-run-name",
        "cli",
        RecipeError,
        "run.name: String should match pattern",
        sets=("run.name=bad name!",),
    ),
    Case(
        "toml-syntax",
        "cli",
        RecipeError,
        "{recipe}: not valid TOML: Expected '=' after a key in a key/value pair (at line 3",
        recipe='[run]\nname = "x"\nbase_dir "/x"\n[cluster]\n',
    ),
    Case(
        "unknown-section",
        "lib",
        RecipeError,
        "bogus: unknown key",
        recipe='[run]\nname = "x"\nbase_dir = "/x"\n[cluster]\n[bogus]\na = 1\n',
    ),
    Case("missing-run", "cli", RecipeError, "run: required but not set", recipe="[cluster]\nnodes = 8\n"),
    Case(
        "wrong-type-in-file",
        "lib",
        RecipeError,
        "{recipe}: invalid recipe: - cluster.colocate: Input should be a valid boolean",
        recipe='[run]\nname = "x"\nbase_dir = "/x"\n[cluster]\ncolocate = "sometimes"\n',
    ),
    Case(
        "yaml-syntax",
        "lib",
        RecipeError,
        "{recipe}: not valid YAML at line 3",
        recipe="run:\n  name: x\n base_dir: [\n",
        recipe_suffix=".yaml",
    ),
    Case("unknown-model", "cli", RecipeError, "model.type: unknown model 'glm5'", sets=("model.type=glm5",)),
    Case(
        "unknown-placeholder",
        "lib",
        RecipeError,
        "cannot expand '{base_dir}/{nope}': unknown placeholder 'nope'",
        sets=("checkpoint.save={base_dir}/{nope}",),
    ),
    # ---------------------------------------------------------------- recipe x cluster checks
    Case(
        "tp-pp-cp-world",
        "cli",
        CheckFailed,
        "parallelism.tp/parallelism.pp/parallelism.cp: world size 64 (actor 8 nodes × 8 GPUs) is not divisible by TP·PP·CP = 8·4·4 = 128",
        sets=("parallelism.cp=4",),
    ),
    Case(
        "layers-pp",
        "lib",
        CheckFailed,
        "parallelism.pp: 92 layers (glm4.5-355B-A32B) are not divisible by PP=8",
        sets=("parallelism.pp=8", "parallelism.cp=1", "parallelism.ep=8"),
    ),
    Case(
        "uneven-pp-split",
        "lib",
        CheckFailed,
        "92 layers with first=- last=6 do not split evenly over the other 3 of PP=4 stages",
        sets=("parallelism.decoder_last_pipeline_num_layers=6",),
    ),
    Case(
        "experts-ep",
        "cli",
        CheckFailed,
        "parallelism.ep: 160 experts are not divisible by EP=12",
        sets=("parallelism.ep=12",),
    ),
    Case(
        "heads-tp",
        "lib",
        CheckFailed,
        "parallelism.tp: 96 attention heads are not divisible by TP=5",
        sets=("parallelism.tp=5",),
    ),
    Case(
        "dp-without-dp-attention",
        "cli",
        CheckFailed,
        "sglang.dp_size: dp_size=4 needs sglang.enable_dp_attention = true",
        sets=("sglang.enable_dp_attention=false",),
    ),
    Case(
        "engine-not-whole-nodes",
        "lib",
        CheckFailed,
        "sglang.gpus_per_engine: an engine of 12 GPUs spans nodes of 8 GPUs but is not a whole number of nodes",
        sets=("sglang.gpus_per_engine=12", "sglang.ep_size=1"),
    ),
    Case(
        "engine-bigger-than-rollout",
        "cli",
        CheckFailed,
        "sglang.gpus_per_engine: an engine needs 128 GPUs but rollout has only 64",
        sets=("sglang.gpus_per_engine=128", "sglang.ep_size=1"),
    ),
    Case(
        "sglang-ep",
        "cli",
        CheckFailed,
        "sglang.ep_size: 160 experts are not divisible by ep_size=3",
        sets=("sglang.ep_size=3",),
    ),
    Case(
        "gbs-dp",
        "lib",
        CheckFailed,
        "rollout.global_batch_size: global batch 3 is not divisible by data-parallel size 4",
        sets=(
            "parallelism.tp=4",
            "parallelism.pp=2",
            "rollout.rollout_batch_size=6",
            "rollout.n_samples_per_prompt=2",
        ),
    ),
    Case(
        "save-interval-without-save",
        "lib",
        CheckFailed,
        "checkpoint.save: save_interval is set but checkpoint.save is empty",
        sets=("checkpoint.save=",),
    ),
    Case(
        "gbs-mismatch",
        "lib",
        CheckFailed,
        "global_batch_size=100 but rollout_batch_size·n_samples/steps = 256",
        sets=("rollout.global_batch_size=100",),
    ),
    Case(
        "over-sampling",
        "cli",
        CheckFailed,
        "rollout.over_sampling_batch_size: over_sampling_batch_size=64 < rollout_batch_size=128",
        sets=("rollout.over_sampling_batch_size=64",),
    ),
    Case(
        "num-rollout-unset",
        "lib",
        CheckFailed,
        "rollout.num_rollout: num_rollout is not set",
        sets=("rollout.num_rollout=",),
    ),
    Case(
        "kl-both",
        "lib",
        CheckFailed,
        "algorithm.kl_coef: kl_coef=0.1 and kl_loss_coef=0.01 are both non-zero",
        sets=("algorithm.kl_coef=0.1", "algorithm.kl_loss_coef=0.01"),
    ),
    Case(
        "tis-and-rollout-logprobs",
        "cli",
        CheckFailed,
        "algorithm.use_tis: use_tis and use_rollout_logprobs exclude each other",
        sets=("algorithm.use_rollout_logprobs=true",),
    ),
    Case(
        "offload-without-precision-aware",
        "lib",
        CheckFailed,
        "optimizer.precision_aware: optimizer.cpu_offload needs precision_aware = true",
        sets=("optimizer.precision_aware=false",),
    ),
    Case(
        "p2p-with-colocate",
        "cli",
        CheckFailed,
        "weight_transfer.mode: 'p2p' weight transfer does not work with cluster.colocate = true",
        sets=("weight_transfer.mode=p2p",),
    ),
    Case(
        "save-without-interval",
        "cli",
        CheckFailed,
        "checkpoint.save_interval: checkpoint.save is set without save_interval; Megatron refuses",
        sets=("checkpoint.save_interval=",),
    ),
    Case(
        "non-colocate-no-rollout-gpus",
        "cli",
        CheckFailed,
        "cluster.rollout_gpus: not colocated but no rollout GPUs",
        sets=("cluster.colocate=false", "weight_transfer.mode=broadcast"),
    ),
    Case(
        "non-colocate-too-many-gpus",
        "lib",
        CheckFailed,
        "actor 64 GPUs + rollout 32 GPUs = 96 > the cluster's 64",
        sets=("cluster.colocate=false", "weight_transfer.mode=broadcast", "cluster.rollout_gpus=32"),
    ),
    Case(
        "nodes-vs-hostfile",
        "lib",
        CheckFailed,
        "cluster.nodes: the recipe wants 8 nodes but {hf} has 3",
        THREE,
    ),
    Case(
        "slots-vs-gpus-per-node",
        "cli",
        CheckFailed,
        "cluster.gpus_per_node: {hf} says slots=4 but the recipe says 8",
        EIGHT_SLOTS4,
    ),
    Case(
        "loopback-multinode",
        "lib",
        CheckFailed,
        "hosts: {hf}:1: 127.0.0.1 is a loopback address in a 8-node cluster",
        LOOPBACK_HEAD,
    ),
    Case(
        "engine-straddles-node",
        "cli",
        CheckFailed,
        "sglang.gpus_per_engine: engines of 3 GPUs do not tile a node of 8 GPUs",
        sets=("sglang.gpus_per_engine=3", "sglang.ep_size=1", "sglang.dp_size=1"),
    ),
    Case(
        "relative-base-dir",
        "cli",
        CheckFailed,
        "run.base_dir: base_dir 'data/x' must be an absolute directory",
        sets=("run.base_dir=data/x",),
    ),
    Case(
        "unexpanded-env",
        "lib",
        CheckFailed,
        "env.vars.FOO: '${BAR}' holds an unexpanded variable",
        sets=("env.vars.FOO=${BAR}",),
    ),
    Case(
        "glued-flag",
        "cli",
        CheckFailed,
        "token '--sglang-load-format dummy' holds a flag and its value in one token",
        sets=('trainer.extra_args=["--sglang-load-format dummy"]',),
    ),
    Case(
        "duplicate-flag",
        "lib",
        CheckFailed,
        "argv: --colocate appears twice",
        sets=('trainer.extra_args=["--colocate"]',),
    ),
    # ---------------------------------------------------------------- strict values, GPU counts, ids, ports
    Case(
        "gpus-per-node-negative",
        "cli",
        HostfileError,
        "--gpus-per-node -1: the GPUs per node must be a whole number, 0 or more",
        cmd="hosts",
        gpus_per_node=-1,
    ),
    Case(
        "gpus-per-node-negative-nodes",
        "lib",
        HostfileError,
        "--gpus-per-node -2: the GPUs per node must be a whole number",
        None,
        nodes=8,
        gpus_per_node=-2,
    ),
    Case(
        "ssh-port-abc",
        "lib",
        HostfileError,
        "{hf}:1: ssh_port=abc is not a positive whole number fix: write ssh_port=22",
        "10.0.0.1 slots=8 ssh_port=abc\n",
    ),
    Case(
        "ssh-port-too-big",
        "cli",
        HostfileError,
        "{hf}:1: ssh_port=70000 is not a TCP port (1-65535)",
        "10.0.0.1 ssh_port=70000\n",
        cmd="hosts",
    ),
    Case(
        "max-slots-below-slots",
        "lib",
        HostfileError,
        "{hf}:2: max_slots=4 is less than slots=8",
        "10.0.0.1 slots=8\n10.0.0.2 slots=8 max_slots=4\n",
    ),
    Case(
        "max-slots-below-slots-cli",
        "cli",
        HostfileError,
        "{hf}:1: max_slots=4 is less than slots=8",
        "10.0.0.1 slot=8 max_slots=4\n",
        cmd="hosts",
    ),
    Case(
        "bool-for-int",
        "cli",
        RecipeError,
        "parallelism.tp: Input should be a valid integer (got True); write a whole number",
        sets=("parallelism.tp=true",),
    ),
    Case(
        "float-for-int",
        "lib",
        RecipeError,
        "parallelism.tp: Input should be a valid integer (got '8.0')",
        sets=("parallelism.tp=8.0",),
    ),
    Case(
        "yes-for-bool",
        "cli",
        RecipeError,
        "cluster.colocate: Input should be a valid boolean (got 'yes'); write true or false",
        sets=("cluster.colocate=yes",),
    ),
    Case(
        "one-for-bool",
        "lib",
        RecipeError,
        "cluster.colocate: Input should be a valid boolean (got 1)",
        sets=("cluster.colocate=1",),
    ),
    Case(
        "float-for-int-yaml",
        "lib",
        RecipeError,
        "{recipe}: invalid recipe: - parallelism.tp: Input should be a valid integer (got 8.0)",
        recipe="run: {name: x, base_dir: /x}\ncluster: {nodes: 8}\nparallelism: {tp: 8.0}\n",
        recipe_suffix=".yaml",
    ),
    Case(
        "recipe-file-type",
        "cli",
        RecipeError,
        "{recipe}: unsupported recipe file type ('.txt'), use .toml/.yaml/.yml",
        recipe='[run]\nname = "x"\n',
        recipe_suffix=".txt",
    ),
    Case(
        "run-id-path",
        "lib",
        RecipeError,
        "--run-id '../../etc/x y': a run id is 1-64 letters",
        run_id="../../etc/x y",
    ),
    Case(
        "lr-negative",
        "lib",
        CheckFailed,
        "optimizer.lr: lr=-1e-6 must be greater than 0",
        sets=("optimizer.lr=-1e-6",),
    ),
    Case(
        "weight-decay-negative",
        "cli",
        CheckFailed,
        "optimizer.weight_decay: weight_decay=-0.1 must be 0 or more",
        sets=("optimizer.weight_decay=-0.1",),
    ),
    Case(
        "adam-beta-one",
        "lib",
        CheckFailed,
        "optimizer.adam_beta2: adam_beta2=1.0 must be in [0, 1)",
        sets=("optimizer.adam_beta2=1.0",),
    ),
    Case(
        "mem-fraction",
        "cli",
        CheckFailed,
        "sglang.mem_fraction_static: mem_fraction_static=1.2 is not a fraction of GPU memory",
        sets=("sglang.mem_fraction_static=1.2",),
    ),
    Case(
        "engine-attention-heads",
        "lib",
        CheckFailed,
        "sglang.gpus_per_engine: the engine's attention TP (64 GPUs / attention DP 1 = 64) does not split the model's "
        "96 attention heads",
        sets=(
            "sglang.gpus_per_engine=64",
            "sglang.enable_dp_attention=false",
            "sglang.dp_size=1",
            "sglang.ep_size=1",
        ),
    ),
    Case(
        "port-base-range",
        "lib",
        CheckFailed,
        "ports.base: port base 65530 is out of range: Ray uses ports base .. base+9, which must lie in 1024-65535; use --port-base",
        ports={"base": 65530},
    ),
    Case(
        "dashboard-port-range",
        "lib",
        CheckFailed,
        "ports.dashboard: dashboard port 80 is out of range; use --dashboard-port",
        ports={"dashboard": 80},
    ),
    Case(
        "ports-coincide",
        "lib",
        CheckFailed,
        "ports.dashboard: two Ray ports coincide: node_manager and dashboard are both port 6380 (Ray uses --port-base .. +9 = "
        "6379-6388); change --dashboard-port or --port-base",
        ports={"dashboard": 6380},
    ),
    Case(
        "nodes-flag-mismatch",
        "cli",
        CheckFailed,
        "cluster.nodes: the recipe wants 8 nodes but --nodes 4 was given; pass --nodes 8, or set cluster.nodes=4",
        None,
        nodes=4,
    ),
    Case(
        "nodes-gb200-four-gpus",
        "lib",
        CheckFailed,
        "world size 32 (actor 8 nodes × 4 GPUs) is not divisible by TP·PP·CP = 4·8·2 = 64",
        None,
        recipe="glm45-355b-a32b-grpo",
        nodes=8,
        sets=("cluster.hardware=GB200",),
    ),
    Case(
        "gpus-unknown-hostfile",
        "lib",
        CheckFailed,
        "cluster.gpus_per_node: GPUs per node unknown: the hostfile {hf} has no slots and the recipe sets none; "
        "write slots=N on every line",
        "10.0.0.1\n10.0.0.2\n",
        recipe="glm45-355b-a32b-grpo",
        sets=("cluster.hardware=cpu", "cluster.nodes=2"),
    ),
]


def _prepare(case: Case, tmp_path):
    """Write the row's hostfile and recipe file; return (hostfile path or None, recipe arg)."""
    hf = None
    if case.hostfile is MISSING:
        hf = tmp_path / "no-such-hostfile"
    elif case.hostfile is not None:
        hf = tmp_path / "hostfile"
        hf.write_text(case.hostfile)
    recipe = case.recipe
    if "\n" in recipe:
        p = tmp_path / f"recipe{case.recipe_suffix}"
        p.write_text(recipe)
        recipe = str(p)
    return hf, recipe


def _expected(case: Case, hf, recipe) -> str:
    msg = case.message.replace("{hf}", str(hf)).replace("{recipe}", str(recipe))
    return " ".join(msg.split())


def _flat(text: str) -> str:
    return " ".join(text.split())


def _run_lib(case: Case, hf, recipe):
    if case.slurm_env is not None:
        alloc = discover(slurm=True, env=case.slurm_env, head=case.head)
    elif case.nodes is not None:
        alloc = discover(nodes=case.nodes, gpus_per_node=case.gpus_per_node, env={})
    else:
        alloc = discover(str(hf), head=case.head, gpus_per_node=case.gpus_per_node, env={})
    r = load_recipe(recipe, list(case.sets))
    plan = checked_plan(
        r, alloc, run_id=case.run_id, ports=PortPlan(**case.ports), python="/opt/glm/bin/python3"
    )
    if plan.errors:
        raise CheckFailed(plan.findings)


def _run_cli(case: Case, hf, recipe, cli):
    args = [case.cmd]
    if case.cmd != "hosts":
        args.append(recipe)
        for s in case.sets:
            args += ["--set", s]
    if hf is not None:
        args += ["--hostfile", str(hf)]
    if case.nodes is not None:
        args += ["--nodes", str(case.nodes)]
    if case.head:
        args += ["--head", case.head]
    if case.gpus_per_node:
        args += ["--gpus-per-node", str(case.gpus_per_node)]
    return cli(*args)


def test_table_size():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    vias = [c.via for c in CASES]
    assert vias.count("cli") >= 30 and vias.count("lib") >= 30  # about half each
    assert all(c.via == "lib" for c in CASES if c.slurm_env is not None or c.ports or c.run_id != "bad")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, cli, monkeypatch):
    # no scontrol: node lists are expanded by python-hostlist
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda cmd, *a, **k: None if cmd == "scontrol" else real_which(cmd, *a, **k)
    )
    hf, recipe = _prepare(case, tmp_path)
    want = _expected(case, hf, recipe)
    if case.via == "lib":
        with pytest.raises(case.error) as ei:
            _run_lib(case, hf, recipe)
        assert type(ei.value) is case.error
        assert want in _flat(str(ei.value)), str(ei.value)
        assert ei.value.hint
        return
    res = _run_cli(case, hf, recipe, cli)
    out = res.output
    assert res.exit_code == EXIT[case.error], out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in out
    assert want in _flat(out), out
    if case.error is CheckFailed:
        assert "error " in out  # the findings list, one line per finding
    else:
        assert "error:" in out and "fix:" in out
