"""Recipes: the typed, validated description of one training (or probe) run.

A recipe is a TOML (or YAML) file under ``templates/`` plus dotted overrides
(``--set parallelism.tp=4``). Unknown keys and wrong types are errors that name the key.
Paths may use ``{base_dir}``, ``{run_name}``, ``{model_dir}`` and ``{miles_dir}``; they are
expanded here, once, so that nothing reaches a node as an unset shell variable (the seed's
``$BASE_DIR`` bug, docs/rules.md#no-variables).

Numbers that the trainer receives as text (``eps_clip = "1e-4"``, ``kl_coef = "0.00"``) are kept
as the text written, so the rendered flags equal the seed's flag for flag.
"""

from __future__ import annotations

import copy
import math
import os
import re
import reprlib
import string
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import RecipeError, safe_text
from .hosts import read_input_file, shown

REPO_ROOT = Path(__file__).resolve().parent.parent
# The templates ship inside the package (``glmlaunch/templates/``, in every wheel). In a checkout
# the top-level ``templates/`` is a symlink to that directory and is looked in first, so that a
# recipe's source reads ``<repo>/templates/<name>.toml``; it counts only when it is that symlink
# (an installed package's parent is site-packages, whose ``templates/`` belongs to someone else).
PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE_DIRS = tuple(
    d for d in (REPO_ROOT / "templates",) if d.is_dir() and d.resolve() == PACKAGE_TEMPLATES
) + (PACKAGE_TEMPLATES,)


def _num_text(v: Any) -> str:
    """Keep a number as the text the user wrote; accept int/float from TOML too."""
    if isinstance(v, bool):
        raise ValueError("expected a number, got true/false")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("expected a finite number")
        r = repr(v)
        if "e" in r or (v != 0 and abs(v) < 1e-3):
            m, e = f"{v:e}".split("e")
            m = m.rstrip("0").rstrip(".")
            return f"{m}e{int(e)}"
        return r
    if isinstance(v, str):
        if not _NUM_TEXT.fullmatch(v.strip()):  # ASCII only: float() also reads "١" and "1_0"
            raise ValueError(f"'{shown(v, 80)}' is not a number")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError("expected a finite number")
        return v.strip()
    raise ValueError(f"expected a number, got {type(v).__name__}")


_NUM_TEXT = re.compile(r"[+-]?([0-9]{1,400}(\.[0-9]{0,400})?|\.[0-9]{1,400})([eE][+-]?[0-9]{1,4})?")

Num = Annotated[str, BeforeValidator(_num_text)]
"""A number kept as its text (rendered verbatim on the trainer's command line)."""


def _admits_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def _is_int_field(annotation: Any) -> bool:
    """``int`` or ``int | None``."""
    if annotation is int:
        return True
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else ()
    )
    return int in args and all(a in (int, type(None)) for a in args)


_WHOLE_TEXT = re.compile(r"[ \t]*[+-]?[0-9]{1,18}[ \t]*")  # ASCII digits only (not "٣"), fullmatch


class _Section(BaseModel):
    # strict: no coercion, so ``tp = true``, ``tp = 8.0``, ``colocate = "yes"`` or ``colocate = 1``
    # are errors rather than 1, 8 or True (``Num`` fields still take int, float or text).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_unsets(cls, data: Any) -> Any:
        """TOML has no null: ``""`` unsets an optional field (``--set checkpoint.save_interval=``).
        Text that is a whole number (``parallelism.pp='2'``) is that int; nothing else is coerced
        (``true``, ``8.0`` or ``"yes"`` stay errors)."""
        if isinstance(data, dict):
            fields = cls.model_fields
            out = {}
            for k, v in data.items():
                ann = fields[k].annotation if k in fields else None
                if v == "" and ann is not None and _admits_none(ann):
                    v = None
                elif (
                    isinstance(v, str) and ann is not None and _is_int_field(ann) and _WHOLE_TEXT.fullmatch(v)
                ):
                    v = int(v)
                out[k] = v
            data = out
        return data


class RunSection(_Section):
    """Names and the shared directory. ``base_dir`` is the seed's ``BASE_DIR``: a directory on a
    filesystem every node mounts at the same path. ``mode = "debug_minimal"`` is miles' smoke mode
    (:func:`glmlaunch.resolve.debug_minimal`)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    base_dir: str = Field(min_length=1)
    mode: Literal["normal", "debug_minimal"] = "normal"
    description: str = ""


Hardware = Literal["H100", "H200", "B200", "B300", "GB200", "GB300", "cpu"]
"""The accelerators ``cluster.hardware`` names (``cpu``: none)."""


class ClusterSection(_Section):
    """Node layout. ``nodes`` × ``gpus_per_node`` GPUs (``nodes`` unset: as many as the allocation
    has); ``hardware`` sets GPUs per node when the
    hostfile has no slots (miles ``NUM_GPUS_OF_HARDWARE``) and turns on Blackwell-only options."""

    nodes: int | None = Field(default=None, ge=1)
    gpus_per_node: int | None = Field(default=None, ge=1)
    hardware: Hardware = "H200"
    colocate: bool = True
    actor_nodes: int | None = Field(default=None, ge=1)
    rollout_gpus: int = Field(default=0, ge=0)
    setup: list[str] = Field(default_factory=list)


class ModelSection(_Section):
    """The model (a miles ``megatron_model_type``) and the Megatron MoE options that override its
    args: ``moe_token_dispatcher = "flex"`` with ``moe_enable_deepep`` is the seed's DeepEP setting."""

    type: str = "glm4.5-355B-A32B"
    moe_token_dispatcher: Literal["", "alltoall", "allgather", "flex"] = ""
    moe_enable_deepep: bool = False


class CheckpointSection(_Section):
    """``load`` defaults to ``save`` (the run's own checkpoints), so a restart resumes; the trainer
    falls back to ``ref_load`` only while ``save`` has no checkpoint yet (miles/utils/arguments.py:3046-3057 (miles@31f1ca961a94))."""

    hf_checkpoint: str = "{model_dir}"
    hf_checkpoint_fp8: str = "{model_dir}-FP8"
    ref_load: str = "{model_dir}_torch_dist"
    save: str = "{base_dir}/runs/{run_name}/checkpoints"
    load: str = ""
    save_interval: int | None = Field(default=20, ge=1)
    save_retain_interval: int | None = Field(default=None, ge=1)
    """``--save-retain-interval``: keep every N-th checkpoint for good, older others are removed
    (unset: not passed, Megatron keeps them all)."""
    model_local_dir: str = ""
    """``glmlaunch prepare`` copies the HF checkpoint and the ``torch_dist`` output from the shared
    ``base_dir`` to this directory on every node's local disk (miles' ``model_local_dir``,
    scripts/run_glm45_355b_a32b.py:29 (miles@31f1ca961a94)); unset: no node-local copies."""
    convert_extra_args: list[str] = Field(default_factory=list)
    """Extra arguments of ``tools/convert_hf_to_torch_dist.py`` after the model args (miles'
    ``convert_checkpoint(extra_args=)``), e.g. ``["--mtp-num-layers", "1"]``."""


class RolloutSection(_Section):
    """Rollout data and sizes. ``task`` (:data:`glmlaunch.resolve.TASKS`) supplies every field left
    unset here: ``prompt_data``, ``input_key``, ``rm_type``, ``rollout_max_response_len`` (and the
    eval section's data, name, samples and length), as miles' ``--task`` does."""

    task: Literal["dapo_aime", "gsm8k"] = "dapo_aime"
    prompt_data: str = ""
    input_key: str = ""
    """``--input-key`` (unset: the task's, ``prompt`` or ``messages``)."""
    label_key: str = "label"
    apply_chat_template: bool = True
    rollout_shuffle: bool = True
    rm_type: str = ""
    num_rollout: int | None = Field(default=3000, ge=1)
    rollout_batch_size: int = Field(default=128, ge=1)
    n_samples_per_prompt: int = Field(default=8, ge=1)
    rollout_max_response_len: int | None = Field(default=None, ge=1)
    """``--rollout-max-response-len`` (unset: the task's)."""
    rollout_temperature: Num = "1"
    dynamic_sampling: bool = True
    over_sampling_batch_size: int | None = Field(default=256, ge=1)
    dynamic_sampling_filter_path: str = (
        "miles.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std"
    )
    num_steps_per_rollout: int | None = Field(default=4, ge=1)
    """``--num-steps-per-rollout`` (unset: not passed; the global batch is then ``global_batch_size``)."""
    global_batch_size: int | None = Field(default=None, ge=1)
    balance_data: bool = True
    stop_token_ids: list[int] = Field(default_factory=lambda: [151329, 151336, 151338])
    prompt_len: int | None = Field(default=None, ge=1)


class EvalSection(_Section):
    """Evaluation. ``enabled = false`` passes no eval flag at all; ``name``, ``prompt_data``,
    ``n_samples_per_eval_prompt`` and ``max_response_len`` left unset are the task's."""

    enabled: bool = True
    interval: int | None = Field(default=20, ge=1)
    name: str = ""
    prompt_data: str = ""
    n_samples_per_eval_prompt: int | None = Field(default=None, ge=1)
    """``--n-samples-per-eval-prompt`` (unset: the task's)."""
    max_response_len: int | None = Field(default=None, ge=1)
    """``--eval-max-response-len`` (unset: the task's)."""
    top_p: Num = "1"


class PipelineStage(_Section):
    """A parallel layout that applies up to ``max_nodes`` nodes (the Python launcher's
    ``num_nodes <= 4`` debug layout)."""

    max_nodes: int = Field(ge=1)
    tp: int = Field(ge=1)
    pp: int = Field(ge=1)
    cp: int = Field(ge=1)
    ep: int = Field(ge=1)
    etp: int = Field(default=1, ge=1)
    decoder_last_pipeline_num_layers: int | None = Field(default=None, ge=1)


class ParallelismSection(_Section):
    """Megatron parallel sizes: TP, PP, CP, EP (experts) and ETP (expert TP)."""

    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    cp: int = Field(default=1, ge=1)
    ep: int = Field(default=1, ge=1)
    etp: int = Field(default=1, ge=1)
    sequence_parallel: bool = True
    max_tokens_per_gpu: int | None = Field(default=16384, ge=1)
    use_dynamic_batch_size: bool = True
    recompute_granularity: Literal["full", "selective", ""] = "full"
    recompute_method: Literal["uniform", "block", ""] = "uniform"
    recompute_num_layers: int | None = Field(default=1, ge=1)
    decoder_first_pipeline_num_layers: int | None = Field(default=None, ge=1)
    decoder_last_pipeline_num_layers: int | None = Field(default=None, ge=1)
    small_layouts: list[PipelineStage] = Field(default_factory=list)


class AlgorithmSection(_Section):
    advantage_estimator: Literal[
        "grpo", "gspo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "ppo"
    ] = "gspo"
    use_kl_loss: bool = False
    kl_loss_coef: Num = "0.00"
    kl_loss_type: str = "low_var_kl"
    kl_coef: Num | None = "0.00"
    entropy_coef: Num = "0.00"
    eps_clip: Num = "1e-4"
    eps_clip_high: Num | None = "2e-4"
    use_tis: bool = True
    use_rollout_logprobs: bool = False
    enable_mis: bool = False
    tis_use_rs: bool = True
    use_rollout_routing_replay: bool = False


class OptimizerSection(_Section):
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: Num = "1e-6"
    lr_decay_style: str = "constant"
    weight_decay: Num = "0.1"
    adam_beta1: Num = "0.9"
    adam_beta2: Num = "0.98"
    cpu_offload: bool = True
    overlap_cpu_optimizer_d2h_h2d: bool = True
    precision_aware: bool = True


class SglangSection(_Section):
    """Rollout engines. An engine spans ``gpus_per_engine`` GPUs (its TP size, miles forces
    ``sglang_tp_size = rollout_num_gpus_per_engine``, miles/backends/sglang_utils/arguments.py:184
    (miles@31f1ca961a94), so ``--sglang-tp-size`` is never passed)."""

    gpus_per_engine: int = Field(default=32, ge=1)
    cap_gpus_per_engine: bool = False
    """``gpus_per_engine`` is an upper bound: with fewer rollout GPUs, one engine spans them all
    (miles' ``min(32, GPUs)``, scripts/run_glm45_355b_a32b.py:229 (miles@31f1ca961a94))."""
    mem_fraction_static: Num = "0.7"
    mem_fraction_static_by_hardware: dict[Hardware, Num] = Field(default_factory=dict)
    """``mem_fraction_static`` for the hardware named (``{ GB300 = "0.8" }``); others use
    ``mem_fraction_static``."""
    chunked_prefill_size_per_gpu: int | None = Field(default=None, ge=1)
    """``--sglang-chunked-prefill-size`` is this × the engine's GPUs (unset: not passed, SGLang's
    default)."""
    enable_dp_attention: bool = True
    dp_size: int | None = Field(default=4, ge=1)
    ep_size: int | None = Field(default=32, ge=1)
    enable_dp_lm_head: bool = True
    moe_dense_tp_size: int | None = Field(default=1, ge=1)
    mtp: bool = True
    spec_v2: bool = False
    speculative_num_steps: int = Field(default=1, ge=1)
    speculative_eagle_topk: int = Field(default=1, ge=1)
    speculative_num_draft_tokens: int = Field(default=2, ge=1)
    draft_weights_cpu_backup: bool = True
    cuda_graph_bs: list[int] = Field(default_factory=list)
    fp8_rollout: bool = False
    """Roll out in FP8 as scripts/run_glm45_355b_a32b.py:244-263 (miles@31f1ca961a94) does: the
    FP8 checkpoint (``checkpoint.hf_checkpoint_fp8``), DP-attention over attention-TP groups of
    at most 8 GPUs, EP over the engine, DeepGEMM MoE with DeepEP low-latency all-to-all, decode
    batches of 256 (flags and ``SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK``). It replaces
    ``enable_dp_attention``, ``dp_size``, ``ep_size``, ``enable_dp_lm_head``,
    ``moe_dense_tp_size`` and ``chunked_prefill_size_per_gpu`` (a note says so when they differ)."""
    fp8_kv_cache: bool = False
    attention_backend: str = ""


class WeightTransferSection(_Section):
    """How weights reach the rollout engines. ``colocate`` uses CUDA IPC; ``p2p`` and
    ``broadcast`` need separate rollout nodes (miles/utils/arguments.py:3263-3277 (miles@31f1ca961a94))."""

    mode: Literal["colocate", "p2p", "broadcast", "disk-delta"] = "colocate"
    buffer_size: int | None = Field(default=None, ge=1)
    check_weight_update_equal: bool = False


class WandbSection(_Section):
    """W&B logging. The key is read from the launcher's environment variable ``key_env`` at submit
    time and passed in the job's runtime env; it never appears in argv, the plan or a script."""

    enabled: bool = False
    project: str = "glmlaunch"
    group: str = ""
    key_env: str = "WANDB_API_KEY"


class TrainerSection(_Section):
    """What the Ray job runs. ``kind = "miles"``: miles' ``train.py``; ``kind = "probe"``: the
    cluster probe (``python -m glmlaunch.probe``)."""

    kind: Literal["miles", "probe"] = "miles"
    python: str = "python3"
    miles_dir: str = "/root/miles"
    megatron_dir: str = "/root/Megatron-LM"
    train_script: str = "train.py"
    extra_args: list[str] = Field(default_factory=list)
    attention_backend: str = "flash"
    dump_details: str = ""
    """``--dump-details``: the directory the trainer dumps every rollout's and step's data to
    (placeholders expanded; unset: not passed)."""
    distributed_timeout_minutes: int | None = Field(default=None, ge=1)
    probe_paths: list[str] = Field(default_factory=list)
    probe_timeout_s: int = Field(default=300, ge=1)


class EnvSection(_Section):
    """Runtime env for the trainer. Precedence: glmlaunch defaults (``NCCL_NVLS_ENABLE`` from
    the nodes' NVLink probe, as miles' ``execute_train``) < ``nccl_preset`` < ``interface`` <
    ``vars`` (same order as ``execute_train``, where the user's ``extra_env_vars`` win).

    ``nccl_preset``: ``"none"`` (default: miles' ``execute_train`` adds no NCCL tuning) or
    ``"rack"``, opt-in: the 8-node script's NCCL/IB constants, ``NCCL_NVLS_ENABLE=0`` included
    (:data:`glmlaunch.plan.NCCL_RACK`). ``interface`` sets GLOO/TP/NCCL_SOCKET_IFNAME; it must
    exist on every node. ``no_proxy``: the entries ``no_proxy``/``NO_PROXY`` start with, before
    the head and every other node (default ``127.0.0.1``: ``execute_train``'s list;
    docs/fidelity.md#computed-env)."""

    nccl_preset: Literal["rack", "none"] = "none"
    no_proxy: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    interface: str = ""
    vars: dict[str, str] = Field(default_factory=dict)
    secret_vars: list[str] = Field(default_factory=list)

    @field_validator("no_proxy")
    @classmethod
    def _no_proxy_entries(cls, v: list[str]) -> list[str]:
        for e in v:
            if not e or any(c.isspace() or c == "," for c in e):
                raise ValueError(
                    f"'{shown(e, 80)}': one host, address or domain per entry (no commas or spaces)"
                )
        return v


class Recipe(BaseModel):
    """A complete recipe. Build with :func:`load_recipe`; fields are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    run: RunSection
    cluster: ClusterSection
    model: ModelSection = Field(default_factory=ModelSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    parallelism: ParallelismSection = Field(default_factory=ParallelismSection)
    algorithm: AlgorithmSection = Field(default_factory=AlgorithmSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    sglang: SglangSection = Field(default_factory=SglangSection)
    weight_transfer: WeightTransferSection = Field(default_factory=WeightTransferSection)
    wandb: WandbSection = Field(default_factory=WandbSection)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    env: EnvSection = Field(default_factory=EnvSection)

    source: str = Field(default="", exclude=True)

    def expand(self, value: str) -> str:
        """Expand ``{base_dir}``, ``{run_name}``, ``{model_dir}``, ``{miles_dir}`` in a path."""
        from .models import MODELS

        spec = MODELS.get(self.model.type)
        model_dir = f"{self.run.base_dir.rstrip('/')}/{spec.dir_name if spec else self.model.type}"
        keys = {
            "base_dir": self.run.base_dir.rstrip("/"),
            "run_name": self.run.name,
            "model_dir": model_dir,
            "miles_dir": self.trainer.miles_dir.rstrip("/"),
        }
        return expand_placeholders(value, keys)


PLACEHOLDER_HINT = "use only {base_dir}, {run_name}, {model_dir} or {miles_dir} (write {{ and }} for a brace)"


def expand_placeholders(value: str, keys: dict[str, str]) -> str:
    """``value`` with each ``{name}`` replaced by ``keys[name]``. Only plain names: no attribute,
    index, conversion or format spec (``{base_dir.x}``, ``{base_dir[0]}``, ``{run_name!r}``), which
    :meth:`str.format` would evaluate. Raises :class:`RecipeError` naming the placeholder."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as e:  # a single '{' or '}'
        raise RecipeError(f"cannot expand '{shown(value)}': {e}", PLACEHOLDER_HINT) from None
    out = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        if name not in keys or spec or conversion:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise RecipeError(
                f"cannot expand '{shown(value)}': unknown placeholder '{shown(written)}'", PLACEHOLDER_HINT
            )
        out.append(keys[name])
    return "".join(out)


# ----------------------------------------------------------------------------- loading


RECIPE_SUFFIXES = (".toml", ".yaml", ".yml")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def template_path(name: str) -> Path:
    """Find a recipe: an existing ``.toml``/``.yaml``/``.yml`` file, else a template by name
    (``glm45-355b-a32b-gspo``, also written ``glm45-355b-a32b-gspo.toml``). An existing file of
    another type is refused. Raises :class:`RecipeError`."""
    if "\0" in name or safe_text(name, keep_newlines=False) != name:
        raise RecipeError(
            f"{shown(name)}: a recipe name or path cannot contain a NUL byte or control characters",
            f"pass a path to a .toml/.yaml recipe, or one of: {', '.join(list_templates())}",
        )
    p = Path(name)
    if os.path.isfile(name):
        if p.suffix in RECIPE_SUFFIXES:
            return p
        raise RecipeError(
            f"{p}: unsupported recipe file type ('{p.suffix or 'no extension'}'), use .toml/.yaml/.yml",
            f"rename it to {p.stem}.toml (TOML) or {p.stem}.yaml (YAML), or pass a template name: "
            f"{', '.join(list_templates())}",
        )
    if p.suffix in RECIPE_SUFFIXES and os.path.lexists(name):
        return p  # there but not a regular file (a directory, FIFO, device, symlink loop): read says which
    stem = name[: -len(p.suffix)] if p.suffix in RECIPE_SUFFIXES else name
    if _TEMPLATE_NAME.fullmatch(stem):
        for d in TEMPLATE_DIRS:
            for ext in RECIPE_SUFFIXES:
                cand = d / f"{stem}{ext}"
                if cand.is_file():
                    return cand
    if os.path.lexists(name):
        return p  # not a regular file: read says which
    raise RecipeError(
        f"recipe '{shown(name)}' not found (not a file, and not a template name)",
        f"pass a path to a .toml/.yaml recipe, or one of: {', '.join(list_templates())}",
    )


def list_templates() -> list[str]:
    """The template names, sorted, each once (the checkout's ``templates/`` is the package's)."""
    names: set[str] = set()
    for d in TEMPLATE_DIRS:
        if d.is_dir():
            names |= {p.stem for p in d.glob("*.toml")}
    return sorted(names)


class _AliasRefused(yaml.composer.ComposerError):
    pass


class _RecipeYamlLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` without anchors and aliases (``&name`` / ``*name``): a recipe has
    no use for them, and a few hundred bytes of nested aliases expand to gigabytes ("billion
    laughs"). Refused at the first anchor or alias, with its line."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasRefused(
                None, None, "anchors and aliases (&name, *name) are not allowed in a recipe", event.start_mark
            )
        return super().compose_node(parent, index)


def _read_mapping(path: Path) -> dict:
    text = read_input_file(
        path,
        "recipe",
        RecipeError,
        "pass a readable .toml/.yaml recipe file (at most 1 MiB), or a template name",
    )
    where = shown(path)
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.load(text, Loader=_RecipeYamlLoader) or {}  # noqa: S506 (a SafeLoader)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{where}: not valid TOML: {e}", "fix the syntax at the line named") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        hint = (
            "write the values out instead of &anchors and *aliases"
            if isinstance(e, _AliasRefused)
            else "fix the syntax"
        )
        raise RecipeError(
            f"{where}: not valid YAML{line}: {shown(getattr(e, 'problem', e), 300)}", hint
        ) from None
    except RecursionError:
        raise RecipeError(
            f"{where}: the recipe is nested too deeply", "write a flat table of sections"
        ) from None
    except ValueError as e:  # a number too long to convert, a date that does not exist
        why = "a number has more than 4300 digits" if "Exceeds the limit" in str(e) else shown(e)
        raise RecipeError(f"{where}: cannot read a value: {why}", "fix the value") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe must be a table of sections", "see templates/ for examples")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value``. The value is read as TOML (``4``, ``true``, ``[1, 2]``,
    ``"text"``); anything that is not valid TOML is taken as a plain string. Floats keep their
    text (``1e-4`` stays ``1e-4``)."""
    if safe_text(item, keep_newlines=False) != item:
        raise RecipeError(
            f"--set {shown(item)}: holds a control character or a line break",
            "write the value on one line, without control characters",
        )
    if "=" not in item:
        raise RecipeError(f"--set {item}: expected KEY=VALUE", "for example --set parallelism.tp=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise RecipeError(f"--set {item}: '{key}' is not a dotted key", "for example --set parallelism.tp=4")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (ValueError, RecursionError):  # not TOML (TOMLDecodeError), a number too long, too deep
        value = raw
    if isinstance(value, float):
        value = raw  # kept as written: a Num field renders it verbatim, an int field refuses it
    if parts[:2] == ["env", "vars"] and isinstance(value, int | float | bool):
        value = raw  # environment values are text: env.vars.NCCL_DEBUG_SUBSYS=1 is "1"
    return parts, value


def _apply(data: dict, parts: list[str], value: Any, item: str) -> None:
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise RecipeError(f"--set {item}: '{p}' is a value, not a section", "set the value itself")
        cur = nxt
    cur[parts[-1]] = value


# what to write instead, for the strict type errors (no coercion: see _Section)
_TYPE_HINTS = {
    "int_type": "; write a whole number, e.g. 8",
    "bool_type": "; write true or false",
    "string_type": '; write text, e.g. "value"',
    "list_type": "; write a list, e.g. [1, 2]",
}


def _format_loc(loc: tuple) -> str:
    return ".".join(shown(x, 80) for x in loc)


_INPUT_REPR = reprlib.Repr()
_INPUT_REPR.maxstring = _INPUT_REPR.maxother = 80
_MAX_PROBLEMS = 20


def _problems(label: str, lines: list[str]) -> RecipeError:
    more = len(lines) - _MAX_PROBLEMS
    lines = lines[:_MAX_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
    return RecipeError(
        f"{label}: invalid recipe:\n" + "\n".join(f"  - {x}" for x in lines),
        "fix the keys named above in the file, or with --set KEY=VALUE; see templates/ for the known keys",
    )


# the fields whose placeholders are expanded (Recipe.expand), checked when the recipe is loaded
_EXPANDED = (
    "checkpoint.hf_checkpoint",
    "checkpoint.hf_checkpoint_fp8",
    "checkpoint.ref_load",
    "checkpoint.save",
    "checkpoint.load",
    "checkpoint.model_local_dir",
    "rollout.prompt_data",
    "eval.prompt_data",
    "cluster.setup",
    "trainer.probe_paths",
)


def _setup_problem(line: str) -> str | None:
    """Why a ``cluster.setup`` line cannot be joined with `` && `` in front of ``ray start``, or
    ``None``: a ``#`` outside quotes (the shell would comment out the rest, ``ray start``
    included), an unclosed quote or a trailing backslash, a line break, an empty line, a trailing
    ``&``, ``|`` or ``;``."""
    if "\n" in line or "\r" in line:
        return "holds a line break; write one command per entry"
    if not line.strip():
        return "is empty"
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote == "'":
            quote = None if c == "'" else quote
        elif quote == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                quote = None
        elif c == "\\":
            i += 1
            if i >= len(line):
                return "ends with a backslash"
        elif c in "'\"":
            quote = c
        elif c == "#":
            return (
                "has a '#' outside quotes: setup lines are joined with ' && ' in front of `ray start`, "
                "and the shell would ignore everything after the '#'"
            )
        i += 1
    if quote:
        return f"has an unclosed {quote} quote"
    if line.rstrip()[-1] in "&|;":
        return f"ends with '{line.rstrip()[-1]}': setup lines are joined with ' && '"
    return None


def _unsafe_chars(value: Any, where: str, out: list[str], allow: str = "") -> None:
    """Add ``where: ...`` to ``out`` for each string (or key) under ``value`` that holds a control
    character: it would reach a node's shell, a file or a terminal as it is."""
    if isinstance(value, str):
        v = value.translate({ord(c): None for c in allow}) if allow else value
        if safe_text(v, keep_newlines=False) != v:
            bad = next(c for c in v if safe_text(c, keep_newlines=False) != c)
            out.append(f"{where}: holds a control character ({safe_text(bad, keep_newlines=False)})")
    elif isinstance(value, dict):
        for k, v in value.items():
            _unsafe_chars(k, where, out)
            _unsafe_chars(v, f"{where}.{shown(k, 80)}", out, allow)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _unsafe_chars(v, f"{where}[{i}]", out, allow)


def _after_validation(r: Recipe) -> list[str]:
    """Problems that pydantic's field checks do not see: control characters, placeholders that
    cannot be expanded, setup lines that would break the `` && `` chain."""
    out: list[str] = []
    data = r.model_dump()
    for section, fields in data.items():
        if not isinstance(fields, dict):
            continue
        for key, value in fields.items():
            allow = "\n\t" if (section, key) == ("run", "description") else ""
            _unsafe_chars(value, f"{section}.{key}", out, allow)
    if out:
        return out
    for dotted in _EXPANDED:
        section, key = dotted.split(".")
        value = data[section][key]
        for i, v in enumerate(value) if isinstance(value, list) else [(None, value)]:
            where = dotted if i is None else f"{dotted}[{i}]"
            if v:
                try:
                    r.expand(v)
                except RecipeError as e:
                    out.append(f"{where}: {e.message}")
    for i, line in enumerate(r.cluster.setup):
        why = _setup_problem(line)
        if why:
            out.append(f"cluster.setup[{i}]: {shown(line, 80)!r} {why}")
    return out


def recipe_from_dict(data: dict, source: str = "<recipe>", label: str | None = None) -> Recipe:
    """Validate a recipe mapping. Raises :class:`RecipeError` listing every bad field; the
    message names ``label`` (the file and the overrides applied) or ``source``."""
    try:
        r = Recipe.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = _format_loc(err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"{loc}: unknown key")
            elif err["type"] == "missing":
                lines.append(f"{loc}: required but not set")
            else:
                how = _TYPE_HINTS.get(err["type"], "")
                got = safe_text(_INPUT_REPR.repr(err.get("input")), keep_newlines=False)
                lines.append(f"{loc}: {shown(err['msg'], 300)} (got {got}){how}")
        raise _problems(label or source, lines) from None
    problems = _after_validation(r)
    if problems:
        raise _problems(label or source, problems)
    r.source = source
    return r


def load_recipe(recipe: str | Path | dict | Recipe, overrides: list[str] | str | None = None) -> Recipe:
    """Load a recipe (template name, file path, mapping or :class:`Recipe`) and apply dotted
    ``overrides`` (``["parallelism.tp=4", ...]``; one plain string is one override). Returns a
    validated :class:`Recipe`.

    Raises :class:`RecipeError` naming the file, key or override that is wrong.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    elif overrides is not None and (
        not isinstance(overrides, list | tuple) or not all(isinstance(x, str) for x in overrides)
    ):
        raise RecipeError(
            f"overrides must be a list of KEY=VALUE strings, got {type(overrides).__name__}: {overrides!r}",
            'pass overrides=["parallelism.tp=4", "run.base_dir=/data"]',
        )
    overrides = list(overrides or [])
    if isinstance(recipe, Recipe):
        data, source = recipe.model_dump(), recipe.source or "<recipe>"
    elif isinstance(recipe, dict):
        data, source = copy.deepcopy(recipe), "<recipe>"
    else:
        path = template_path(str(recipe))
        data, source = _read_mapping(path), str(path)
    for item in overrides or []:
        parts, value = parse_override(item)
        _apply(data, parts, value, item)
    label = f"{source} with --set {' --set '.join(shown(o, 120) for o in overrides)}" if overrides else None
    return recipe_from_dict(data, source, label)
