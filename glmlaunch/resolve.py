"""Resolve a recipe on an allocation, once: the values every later step needs.

:func:`resolve` turns a :class:`~glmlaunch.recipe.Recipe` and an
:class:`~glmlaunch.hosts.Allocation` into a frozen :class:`Resolved`: GPUs per node and where
that number came from, the parallel layout in force and its recipe section, the actor nodes, the
world size, the data-parallel size, the rollout GPUs and every path with its placeholders
expanded. The argv builder (:mod:`glmlaunch.plan`) and the checks (:mod:`glmlaunch.checks`)
both read it; neither computes these values again.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hosts import Allocation
from .models import HARDWARE_GPUS
from .recipe import Recipe


@dataclass(frozen=True)
class Task:
    """What ``rollout.task`` supplies to the fields a recipe leaves unset. Data paths are relative
    to ``run.base_dir``; ``debug_response_len`` caps the response length in ``debug_minimal``."""

    prompt_data: str
    input_key: str
    rm_type: str
    rollout_max_response_len: int
    debug_response_len: int
    eval_name: str
    eval_data: str
    n_samples_per_eval_prompt: int
    eval_max_response_len: int


# miles' two tasks, scripts/run_glm45_355b_a32b.py:148-171 (miles@31f1ca961a94): input key,
# response and eval lengths, eval samples. The aime eval path is where glmlaunch's data layout
# keeps `zhuzilin/aime-2024` ($BASE_DIR/rl_data/aime-2024, the seed's set-up; miles downloads it
# next to dapo-math-17k). The rm type of dapo_aime is the seed's (deepscaler); the GRPO template
# sets miles' `math` itself.
TASKS = {
    "dapo_aime": Task(
        prompt_data="dapo-math-17k/dapo-math-17k.jsonl",
        input_key="prompt",
        rm_type="deepscaler",
        rollout_max_response_len=8192,
        debug_response_len=100,
        eval_name="aime",
        eval_data="rl_data/aime-2024/aime-2024.jsonl",
        n_samples_per_eval_prompt=8,
        eval_max_response_len=8192,
    ),
    "gsm8k": Task(
        prompt_data="gsm8k/train.parquet",
        input_key="messages",
        rm_type="math",
        rollout_max_response_len=256,  # "deliberately make it very short for this easy task"
        debug_response_len=256,
        eval_name="gsm8k",
        eval_data="gsm8k/test.parquet",
        n_samples_per_eval_prompt=1,
        eval_max_response_len=256,
    ),
}


@dataclass(frozen=True)
class Layout:
    """The Megatron parallel sizes in force (TP, PP, CP, EP, ETP and the uneven first/last
    pipeline stages) and ``source``, the recipe section they come from (``parallelism`` or
    ``parallelism.small_layouts[i]``)."""

    tp: int
    pp: int
    cp: int
    ep: int
    etp: int
    first: int | None
    last: int | None
    source: str = "parallelism"

    def field(self, name: str) -> str:
        """The recipe field that sets ``name`` (``"tp"`` -> ``parallelism.tp``)."""
        return f"{self.source}.{name}"


@dataclass(frozen=True)
class Resolved:
    """A recipe on an allocation, computed once (see :func:`resolve`).

    ``recipe``: the recipe in force (its task's values filled in, ``run.mode = "debug_minimal"``
    applied). ``alloc``: the
    allocation as discovered. ``gpus_per_node``: GPUs per node (0: unknown or CPU-only),
    ``gpus_source``: the hostfile's ``slots``, ``cluster.gpus_per_node``, ``cluster.hardware`` or
    ``""``. ``world_size``: GPUs of the Megatron actors (miles) or of every node (probe).
    ``dp``: the data-parallel size (``None`` when TP·PP·CP does not divide the world).
    ``paths``: ``hf_checkpoint``, ``ref_load``, ``save``, ``load``, ``prompt_data``, ``rm_type``,
    ``eval_name``, ``eval_data``.
    """

    recipe: Recipe
    alloc: Allocation
    gpus_per_node: int
    gpus_source: str
    layout: Layout
    actor_nodes: int
    world_size: int
    dp: int | None
    rollout_gpus: int
    paths: dict[str, str]

    @property
    def num_nodes(self) -> int:
        return self.alloc.num_nodes


def gpus_per_node(recipe: Recipe, alloc: Allocation) -> tuple[int, str]:
    """GPUs per node and their source: the hostfile's slots, else the recipe's
    ``cluster.gpus_per_node``, else the hardware's count (miles ``NUM_GPUS_OF_HARDWARE``)."""
    if alloc.gpus_per_node is not None:  # 0 too: a CPU-only node says so
        return alloc.gpus_per_node, "slots"
    if recipe.cluster.gpus_per_node:
        return recipe.cluster.gpus_per_node, "cluster.gpus_per_node"
    hw = HARDWARE_GPUS.get(recipe.cluster.hardware, 0)
    return hw, "cluster.hardware" if hw else ""


def effective_layout(recipe: Recipe, num_nodes: int) -> Layout:
    """The parallel sizes in force: a ``parallelism.small_layouts`` entry whose ``max_nodes`` covers
    ``num_nodes`` wins over the main sizes (the Python launcher's ≤ 4-node debug layout)."""
    p = recipe.parallelism
    for i, small in enumerate(sorted(p.small_layouts, key=lambda s: s.max_nodes)):
        if num_nodes <= small.max_nodes:
            return Layout(
                small.tp,
                small.pp,
                small.cp,
                small.ep,
                small.etp,
                None,
                small.decoder_last_pipeline_num_layers,
                f"parallelism.small_layouts[{i}]",
            )
    return Layout(
        p.tp, p.pp, p.cp, p.ep, p.etp, p.decoder_first_pipeline_num_layers, p.decoder_last_pipeline_num_layers
    )


def apply_task(recipe: Recipe) -> Recipe:
    """The recipe with the fields it leaves unset taken from its ``rollout.task`` (:data:`TASKS`):
    ``rollout.input_key``, ``rollout.rollout_max_response_len``,
    ``eval.n_samples_per_eval_prompt``, ``eval.max_response_len``. The data paths, rm type and
    eval name are filled in by :func:`paths`."""
    ro, ev = recipe.rollout, recipe.eval
    if ro.input_key and ro.rollout_max_response_len and ev.n_samples_per_eval_prompt and ev.max_response_len:
        return recipe
    t = TASKS[ro.task]
    r = recipe.model_copy(deep=True)
    r.rollout.input_key = ro.input_key or t.input_key
    r.rollout.rollout_max_response_len = ro.rollout_max_response_len or t.rollout_max_response_len
    r.eval.n_samples_per_eval_prompt = ev.n_samples_per_eval_prompt or t.n_samples_per_eval_prompt
    r.eval.max_response_len = ev.max_response_len or t.eval_max_response_len
    return r


def debug_minimal(recipe: Recipe) -> Recipe:
    """``run.mode = "debug_minimal"``: miles' smoke mode (scripts/run_glm45_355b_a32b.py:116-153
    (miles@31f1ca961a94)). The batch sizes and rollout count stay; responses are capped at the
    task's debug length (100 tokens for dapo_aime, gsm8k's 256 stay), dynamic sampling and eval
    are off, and checkpoints are written (and retained, when ``save_retain_interval`` is set)
    every 2 rollouts."""
    if recipe.run.mode != "debug_minimal":
        return recipe
    r = apply_task(recipe).model_copy(deep=True)
    cap = TASKS[r.rollout.task].debug_response_len
    r.rollout.rollout_max_response_len = min(r.rollout.rollout_max_response_len or cap, cap)
    r.rollout.dynamic_sampling = False
    r.eval.enabled = False
    r.checkpoint.save_interval = 2
    if r.checkpoint.save_retain_interval is not None:
        r.checkpoint.save_retain_interval = 2
    return r


def paths(recipe: Recipe) -> dict[str, str]:
    """Checkpoint and data paths with placeholders expanded (explicit fields win over the
    task's). ``load`` defaults to ``save`` (the run's own checkpoints, so a restart resumes);
    with FP8 rollout the FP8 checkpoint is the HF checkpoint."""
    c = recipe.checkpoint
    hf = c.hf_checkpoint_fp8 if recipe.sglang.fp8_rollout else c.hf_checkpoint
    save = recipe.expand(c.save).rstrip("/") if c.save else ""
    t = TASKS[recipe.rollout.task]
    base = recipe.run.base_dir.rstrip("/")
    return {
        "hf_checkpoint": recipe.expand(hf).rstrip("/"),
        "ref_load": recipe.expand(c.ref_load).rstrip("/"),
        "save": save,
        "load": recipe.expand(c.load).rstrip("/") if c.load else save,
        "prompt_data": recipe.expand(recipe.rollout.prompt_data)
        if recipe.rollout.prompt_data
        else f"{base}/{t.prompt_data}",
        "rm_type": recipe.rollout.rm_type or t.rm_type,
        "eval_name": recipe.eval.name or t.eval_name,
        "eval_data": recipe.expand(recipe.eval.prompt_data)
        if recipe.eval.prompt_data
        else f"{base}/{t.eval_data}",
    }


def resolve(recipe: Recipe, alloc: Allocation) -> Resolved:
    """Compute :class:`Resolved` for ``recipe`` on ``alloc``. Pure: touches no node.

    Actor nodes: every node when ``cluster.actor_nodes`` is unset. Rollout GPUs: every actor GPU
    when colocated (miles forces it, miles/utils/arguments.py:3312-3317 (miles@31f1ca961a94)), else
    ``cluster.rollout_gpus``. Raises :class:`~glmlaunch.errors.RecipeError` for a path with an
    unknown placeholder.
    """
    r = debug_minimal(apply_task(recipe))
    gpus, source = gpus_per_node(r, alloc)
    n = alloc.num_nodes
    lay = effective_layout(r, n)
    if r.trainer.kind == "miles":
        a_nodes = r.cluster.actor_nodes or n
        world = a_nodes * gpus
    else:
        a_nodes, world = n, n * gpus
    mp = lay.tp * lay.pp * lay.cp
    return Resolved(
        recipe=r,
        alloc=alloc,
        gpus_per_node=gpus,
        gpus_source=source,
        layout=lay,
        actor_nodes=a_nodes,
        world_size=world,
        dp=world // mp if world and world % mp == 0 else None,
        rollout_gpus=a_nodes * gpus if r.cluster.colocate else r.cluster.rollout_gpus,
        paths=paths(r),
    )
