"""glmlaunch's verdict on a Megatron layout vs megatron-core's own verdict on the same layout.

For every layout case the test calls megatron-core directly (``initialize_model_parallel`` on a
fake process group, and ``TransformerConfig``) and asserts that the deep check
(:func:`glmlaunch.deep.megatron.check_megatron`, which only runs megatron-core's validators)
reports an error from that validator iff megatron-core raised, quoting it and citing the
megatron-core line. What users see is the union of the deep findings and the hand-written rules
of :mod:`glmlaunch.checks` on the same layout as a recipe (:func:`resolved`); each case lists the
fields of every error and warning in that union. Rules megatron-core's configs accept but
Megatron-LM or the model build refuse are "core accepts, glmlaunch refuses".
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field

import pytest
from glm_args import M355, MAIR, drop_flag, set_flag

from glmlaunch import checks
from glmlaunch.deep import megatron as dm
from glmlaunch.deep.megatron import check_megatron, parse_flags, parse_moe_layer_freq
from glmlaunch.deepcheck import FLAG_FIELDS
from glmlaunch.hosts import placeholder_allocation
from glmlaunch.models import MODELS
from glmlaunch.recipe import load_recipe
from glmlaunch.resolve import resolve

FIELDS = FLAG_FIELDS
# the fields a Megatron layout decides (cluster / rollout / sglang findings depend on the allocation)
LAYOUT_FIELDS = ("parallelism.", "model.", "optimizer.", "--", "megatron")

OPT = (
    "--optimizer adam --lr 1e-6 --lr-decay-style constant --weight-decay 0.1 --adam-beta1 0.9 "
    "--adam-beta2 0.98 --optimizer-cpu-offload --overlap-cpu-optimizer-d2h-h2d --use-precision-aware-optimizer"
).split()
MISC = (
    "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
    "--use-dynamic-batch-size --max-tokens-per-gpu 16384 --attention-dropout 0.0 --hidden-dropout 0.0 "
    "--rollout-stop-token-ids 151329 151336 151338 --eval-prompt-data aime /data/aime.jsonl"
).split()

# The same models as TransformerConfig kwargs, written out independently of glmlaunch's mapping.
TC355 = dict(
    num_layers=92,
    hidden_size=5120,
    num_attention_heads=96,
    num_query_groups=8,
    kv_channels=128,
    ffn_hidden_size=12288,
    num_moe_experts=160,
    moe_router_topk=8,
    moe_ffn_hidden_size=1536,
    moe_shared_expert_intermediate_size=1536,
    moe_router_pre_softmax=True,
    moe_router_score_function="sigmoid",
    moe_router_enable_expert_bias=True,
    moe_router_load_balancing_type="seq_aux_loss",
    moe_layer_freq=[0] * 3 + [1] * 89,
    add_bias_linear=False,
    add_qkv_bias=True,
    qk_layernorm=True,
    gated_linear_unit=True,
    normalization="RMSNorm",
    recompute_granularity="full",
    recompute_method="uniform",
    recompute_num_layers=1,
    bf16=True,
)
TCAIR = dict(
    TC355,
    num_layers=46,
    hidden_size=4096,
    ffn_hidden_size=10944,
    num_moe_experts=128,
    moe_ffn_hidden_size=1408,
    moe_shared_expert_intermediate_size=1408,
    qk_layernorm=False,
    moe_layer_freq=[0] + [1] * 45,
)


_set, _drop = set_flag, drop_flag
MODEL_TYPE = {"355b": "glm4.5-355B-A32B", "air": "glm4.5-106B-A12B"}


@dataclass
class Case:
    id: str
    world: int
    model: str  # "355b" | "air"
    tp: int
    pp: int
    cp: int
    ep: int
    etp: int | None = 1  # None: not passed (Megatron-LM defaults ETP to TP)
    sp: bool = True
    last: int | None = None  # --decoder-last-pipeline-num-layers
    vpp: int | None = None
    model_args: list[list[str]] = field(default_factory=list)  # [flag, values...] set on the model args
    model_drop: list[str] = field(default_factory=list)  # model args dropped
    spec: dict = field(default_factory=dict)  # the same change as ModelSpec numbers
    drop: list[str] = field(default_factory=list)  # other trainer flags dropped ...
    sets: list[str] = field(default_factory=list)  # ... and the same as recipe overrides
    tc: dict = field(default_factory=dict)  # the same change as TransformerConfig kwargs
    gpus: int = 8  # GPUs per node of the recipe equivalent
    core_ps_error: bool = False  # declared: megatron-core's parallel_state refuses
    core_tc_error: bool = False  # declared: megatron-core's TransformerConfig refuses
    errors: set[str] = field(default_factory=set)  # fields of every error (deep + checks.shallow)
    warnings: set[str] = field(default_factory=set)  # fields of every warning (deep + checks.shallow)

    def model_tokens(self) -> list[str]:
        argv = list(M355 if self.model == "355b" else MAIR)
        for flag in self.model_drop:
            argv = _drop(argv, flag)
        for flag, *values in self.model_args:
            argv = _set(argv, flag, *values)
        return argv

    def argv(self) -> list[str]:
        argv = ["python3", "/root/miles/train.py", "--actor-num-nodes", "8", "--actor-num-gpus-per-node", "8"]
        argv += self.model_tokens()
        argv += ["--tensor-model-parallel-size", str(self.tp)]
        argv += ["--sequence-parallel"] if self.sp else []
        argv += ["--pipeline-model-parallel-size", str(self.pp), "--context-parallel-size", str(self.cp)]
        argv += ["--expert-model-parallel-size", str(self.ep)]
        if self.etp is not None:
            argv += ["--expert-tensor-parallel-size", str(self.etp)]
        if self.last is not None:
            argv += ["--decoder-last-pipeline-num-layers", str(self.last)]
        if self.vpp is not None:
            argv += ["--num-virtual-stages-per-pipeline-rank", str(self.vpp)]
        argv += MISC + OPT
        for flag in self.drop:
            argv = _drop(argv, flag)
        return argv

    def recipe_sets(self) -> list[str]:
        sets = [
            f"cluster.nodes={self.world // self.gpus}",
            f"cluster.gpus_per_node={self.gpus}",
            f"model.type={MODEL_TYPE[self.model]}",
            f"parallelism.tp={self.tp}",
            f"parallelism.pp={self.pp}",
            f"parallelism.cp={self.cp}",
            f"parallelism.ep={self.ep}",
            f"parallelism.etp={self.etp or self.tp}",
            f"parallelism.sequence_parallel={str(self.sp).lower()}",
            "rollout.rollout_max_response_len=16384",
        ]  # fits max_tokens_per_gpu at any CP
        if self.last is not None:
            sets.append(f"parallelism.decoder_last_pipeline_num_layers={self.last}")
        if self.vpp is not None:
            sets.append(f'trainer.extra_args=["--num-virtual-stages-per-pipeline-rank", "{self.vpp}"]')
        return sets + self.sets


def resolved(case: Case, monkeypatch):
    """The case as a recipe on a placeholder allocation (``Resolved``); a changed model is
    registered in ``MODELS`` for the test's duration."""
    sets = case.recipe_sets()
    if case.model_args or case.model_drop or case.spec:
        base = MODELS[MODEL_TYPE[case.model]]
        spec = dataclasses.replace(
            base, type=f"{base.type}-{case.id}", args=tuple(case.model_tokens()), **case.spec
        )
        monkeypatch.setitem(MODELS, spec.type, spec)
        sets.append(f"model.type={spec.type}")
    recipe = load_recipe("glm45-355b-a32b-gspo", sets)
    return resolve(recipe, placeholder_allocation(case.world // case.gpus, case.gpus))


# fmt: off
CASES = [
    # --- the seed layouts ---
    Case("355B-bash-64", 64, "355b", 8, 4, 2, 16),
    Case("py-debug-32", 32, "355b", 4, 1, 1, 4),
    Case("py-8node-4gpu-32", 32, "355b", 4, 8, 2, 8, gpus=4, core_ps_error=True,
         errors={"parallelism.tp", "parallelism.tp/parallelism.pp/parallelism.cp",
                 "parallelism.etp/parallelism.ep/parallelism.pp", "parallelism.pp"}),
    Case("air-32", 32, "air", 1, 4, 1, 8, last=10, tc=dict(num_layers_in_last_pipeline_stage=10),
         warnings={"parallelism.sequence_parallel"}),
    # --- valid variations ---
    Case("355B-128", 128, "355b", 8, 4, 2, 16),
    Case("355B-1024-ep32", 1024, "355b", 8, 4, 2, 32),
    # megatron-core replicates the 8 KV heads over TP 16: accepted, glmlaunch warns
    Case("355B-tp16-divisor-groups", 128, "355b", 16, 4, 2, 32, warnings={"parallelism.tp"}),
    Case("355B-ep1", 64, "355b", 8, 4, 2, 1),
    Case("air-64-uneven", 64, "air", 2, 4, 1, 16, last=10, tc=dict(num_layers_in_last_pipeline_stage=10)),
    # --- megatron-core parallel_state refuses ---
    Case("355B-world-48", 48, "355b", 8, 4, 2, 16, core_ps_error=True,
         errors={"parallelism.tp", "parallelism.tp/parallelism.pp/parallelism.cp",
                 "parallelism.etp/parallelism.ep/parallelism.pp"}),
    Case("cp3", 64, "355b", 8, 4, 3, 16, core_ps_error=True,
         errors={"parallelism.tp", "parallelism.tp/parallelism.pp/parallelism.cp"}),
    Case("etp4-expert-product", 64, "355b", 4, 2, 1, 16, etp=4, core_ps_error=True,
         errors={"parallelism.ep", "parallelism.etp/parallelism.ep/parallelism.pp"}),
    Case("etp-default-is-tp", 64, "355b", 8, 4, 2, 16, etp=None, core_ps_error=True,
         errors={"parallelism.ep", "parallelism.etp/parallelism.ep/parallelism.pp"}),
    Case("vpp-needs-pp", 32, "355b", 4, 1, 1, 4, vpp=2, core_ps_error=True,
         errors={"--num-virtual-stages-per-pipeline-rank"}),
    # --- megatron-core TransformerConfig refuses ---
    Case("heads-vs-tp5", 320, "355b", 5, 4, 2, 16, gpus=5, core_tc_error=True, errors={"parallelism.tp"}),
    Case("groups-vs-tp3", 48, "355b", 3, 4, 2, 4, gpus=6, core_tc_error=True, errors={"parallelism.tp"}),
    Case("air-uneven-last-11", 32, "air", 1, 4, 1, 8, last=11, tc=dict(num_layers_in_last_pipeline_stage=11),
         core_tc_error=True, errors={"parallelism.decoder_last_pipeline_num_layers"},
         warnings={"parallelism.sequence_parallel"}),
    Case("air-uneven-pp1", 32, "air", 1, 1, 1, 8, last=10, tc=dict(num_layers_in_last_pipeline_stage=10),
         core_tc_error=True, errors={"parallelism.decoder_last_pipeline_num_layers"},
         warnings={"parallelism.sequence_parallel"}),
    Case("expert-bias-softmax", 64, "355b", 8, 4, 2, 16, model_args=[["--moe-router-score-function", "softmax"]],
         tc=dict(moe_router_score_function="softmax"), core_tc_error=True, errors={"--moe-router-score-function"}),
    Case("recompute-no-method", 64, "355b", 8, 4, 2, 16, drop=["--recompute-method"],
         sets=["parallelism.recompute_method="], tc=dict(recompute_method=None), core_tc_error=True,
         errors={"parallelism.recompute_method"}),
    Case("ep-without-experts", 64, "355b", 8, 4, 2, 16, model_drop=["--num-experts"], spec=dict(num_experts=0),
         tc=dict(num_moe_experts=None, moe_ffn_hidden_size=None, moe_layer_freq=1,
                 moe_shared_expert_intermediate_size=None, moe_router_enable_expert_bias=False),
         core_tc_error=True, errors={"model.type's num_experts"}),
    # --- megatron-core's configs accept; Megatron-LM or the model build refuse ---
    Case("layers-not-div-pp", 64, "355b", 8, 8, 1, 8, errors={"parallelism.pp"}),
    Case("experts-not-div-ep", 192, "355b", 8, 4, 2, 12, errors={"parallelism.ep"}),
    Case("topk-above-experts", 32, "air", 1, 4, 1, 8, last=10, model_args=[["--moe-router-topk", "200"]],
         spec=dict(moe_router_topk=200), tc=dict(num_layers_in_last_pipeline_stage=10, moe_router_topk=200),
         errors={"model.type's moe_router_topk"}, warnings={"parallelism.sequence_parallel"}),
    Case("moe-freq-length", 64, "355b", 8, 4, 2, 16, model_args=[["--moe-layer-freq", "[0]*3+[1]*88"]],
         tc=dict(moe_layer_freq=[0] * 3 + [1] * 88), errors={"--moe-layer-freq"}),
    Case("offload-without-precision-aware", 64, "355b", 8, 4, 2, 16, drop=["--use-precision-aware-optimizer"],
         sets=["optimizer.precision_aware=false"], errors={"optimizer.precision_aware"}),
    # --- warnings only ---
    Case("ep-tp-without-sp", 32, "355b", 4, 1, 1, 4, sp=False, warnings={"parallelism.sequence_parallel"}),
    # --- more layouts of both models (docs/rules.md: each verdict equals megatron-core's) ---
    # valid: TP above the 8 query groups (a multiple of them: KV heads replicated), ETP != TP,
    # CP 2 / 4, VPP, the GRPO template's 8-node layout with its 8-layer last stage
    Case("355B-tp16-cp1", 256, "355b", 16, 4, 1, 16, warnings={"parallelism.tp"}),
    Case("air-tp16-divisor-groups", 128, "air", 16, 2, 1, 16, warnings={"parallelism.tp"}),
    Case("air-tp32-divisor-groups", 64, "air", 32, 1, 1, 8, warnings={"parallelism.tp"}),
    Case("355B-grpo-8node", 64, "355b", 4, 8, 2, 8, last=8, tc=dict(num_layers_in_last_pipeline_stage=8)),
    Case("355B-vpp2", 64, "355b", 8, 2, 2, 16, vpp=2),
    Case("355B-etp2", 64, "355b", 4, 4, 1, 8, etp=2),
    Case("355B-tp2", 64, "355b", 2, 4, 1, 16),
    Case("355B-cp4", 64, "355b", 8, 2, 4, 32),
    Case("air-etp2", 64, "air", 2, 2, 1, 8, etp=2),
    Case("air-cp2-ep16", 64, "air", 2, 1, 2, 16),
    # refused: 12 is neither a multiple nor a divisor of 8 query groups (TransformerConfig); ETP
    # defaulting to TP=16 makes the expert grid 16·16·4 (parallel_state)
    Case("air-tp12-groups", 96, "air", 12, 1, 1, 8, gpus=12, core_tc_error=True, errors={"parallelism.tp"}),
    Case("355B-tp16-etp-default", 256, "355b", 16, 4, 1, 16, etp=None, core_ps_error=True,
         errors={"parallelism.ep", "parallelism.etp/parallelism.ep/parallelism.pp"}, warnings={"parallelism.tp"}),
    # megatron-core's configs accept; Megatron-LM refuses (validate_args)
    Case("air-experts-not-div-ep3", 48, "air", 1, 2, 1, 3, gpus=6, errors={"parallelism.ep"},
         warnings={"parallelism.sequence_parallel"}),
    Case("air-pp4-without-last", 32, "air", 1, 4, 1, 8, errors={"parallelism.pp"},
         warnings={"parallelism.sequence_parallel"}),
    # the MTP layer is SGLang's draft model (num_nextn_predict_layers), not a Megatron layer: with
    # EAGLE on, 92 layers still do not split over PP=3
    Case("355B-pp3-mtp-not-a-layer", 48, "355b", 8, 3, 2, 16, sets=["sglang.mtp=true"], errors={"parallelism.pp"}),
]
# fmt: on


def _core_ps_verdict(case: Case) -> str | None:
    """megatron-core's own verdict on the process-group layout (None = accepted)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=case.world, store=FakeStore())
    try:
        ps.initialize_model_parallel(
            tensor_model_parallel_size=case.tp,
            pipeline_model_parallel_size=case.pp,
            virtual_pipeline_model_parallel_size=case.vpp,
            context_parallel_size=case.cp,
            expert_model_parallel_size=case.ep,
            expert_tensor_parallel_size=case.etp,
            create_gloo_process_groups=False,
        )
        return None
    except (RuntimeError, AssertionError) as exc:
        return str(exc)
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()


def _core_tc_verdict(case: Case) -> str | None:
    """megatron-core's own verdict on the TransformerConfig (None = accepted)."""
    import torch
    from megatron.core.transformer import TransformerConfig

    kw = dict(TC355 if case.model == "355b" else TCAIR)
    kw.update(
        tensor_model_parallel_size=case.tp,
        pipeline_model_parallel_size=case.pp,
        context_parallel_size=case.cp,
        expert_model_parallel_size=case.ep,
        expert_tensor_parallel_size=case.etp,
        sequence_parallel=case.sp and case.tp > 1,
        pipeline_dtype=torch.bfloat16 if case.pp > 1 else None,
        virtual_pipeline_model_parallel_size=case.vpp,
    )
    kw.update(case.tc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            TransformerConfig(**kw)
            return None
        except (ValueError, AssertionError) as exc:
            return str(exc)


def _layout_findings(findings):
    return [f for f in findings if f.field.startswith(LAYOUT_FIELDS)]


def test_case_count():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    for model in ("355b", "air"):  # both models, accepted and refused layouts of each
        assert {bool(c.errors) for c in CASES if c.model == model} == {True, False}
    # TP=16 with 8 query groups is accepted (Megatron replicates KV heads), on both models
    assert {c.model for c in CASES if c.tp == 16 and not c.core_tc_error and not c.errors} == {"355b", "air"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_layout_matches_megatron_core(case: Case, monkeypatch):
    pytest.importorskip("megatron.core")
    core_ps = _core_ps_verdict(case)
    core_tc = _core_tc_verdict(case)
    # The case table's claim about megatron-core holds.
    assert (core_ps is not None) == case.core_ps_error, core_ps
    assert (core_tc is not None) == case.core_tc_error, core_tc

    deep = check_megatron(case.argv(), case.world, FIELDS)
    errors = [f for f in deep if f.severity == "error"]
    ps_errors = [f for f in errors if "megatron/core/parallel_state.py:" in f.source]
    tc_errors = [f for f in errors if "megatron/core/transformer/transformer_config.py:" in f.source]
    # The deep check reports a parallel_state / TransformerConfig error iff megatron-core raised,
    # quoting it and citing the megatron-core line that raised.
    assert bool(ps_errors) == (core_ps is not None), deep
    assert bool(tc_errors) == (core_tc is not None), deep
    for got, core in ((ps_errors, core_ps), (tc_errors, core_tc)):
        if core is not None:
            assert len(got) == 1 and core in got[0].message
            assert got[0].source.endswith("(megatron-core@0.16.1)")
    # What users see: the deep findings plus glmlaunch's own rules on the same layout.
    union = _layout_findings([*deep, *checks.shallow(resolved(case, monkeypatch))])
    assert {f.field for f in union if f.severity == "error"} == case.errors, [str(f) for f in union]
    assert {f.field for f in union if f.severity == "warning"} == case.warnings, [str(f) for f in union]
    for f in union:
        assert f.source and f.rule
    # No error that megatron-core accepts is put on megatron-core: a hand rule citing its
    # parallel_state / TransformerConfig says error only where that code raised.
    for core, path in ((core_ps, "megatron/core/parallel_state.py:"), (core_tc, "transformer_config.py:")):
        if core is None:
            assert not [str(f) for f in union if f.severity == "error" and path in f.source]


def test_seed_8node_messages_name_numbers(monkeypatch):
    pytest.importorskip("megatron.core")
    case = next(c for c in CASES if c.id == "py-8node-4gpu-32")
    by_field = {f.field: f for f in checks.shallow(resolved(case, monkeypatch))}
    world = by_field["parallelism.tp/parallelism.pp/parallelism.cp"]
    assert "world size 32 (actor 8 nodes × 4 GPUs)" in world.message and "4·8·2 = 64" in world.message
    assert world.source == "megatron/training/arguments.py:314-319 (Megatron-LM@2e64d788b)"
    layers = by_field["parallelism.pp"]
    assert "92 layers" in layers.message and "PP=8" in layers.message
    assert layers.source == "megatron/training/arguments.py:623-636 (Megatron-LM@2e64d788b)"
    (core,) = [f for f in check_megatron(case.argv(), 32, FIELDS) if f.severity == "error"]
    assert core.field == "parallelism.tp" and "world_size (32) is not divisible by 64" in core.message
    assert core.source.startswith("megatron/core/parallel_state.py:")


def test_moe_rules_cite_the_megatron_core_line():
    pytest.importorskip("megatron.core")
    by_id = {c.id: c for c in CASES}
    (f,) = check_megatron(by_id["topk-above-experts"].argv(), 32, FIELDS)
    assert "selected index k out of range" in f.message
    assert f.source.startswith("megatron/core/transformer/moe/moe_utils.py:")
    (f,) = check_megatron(by_id["moe-freq-length"].argv(), 64, FIELDS)
    assert "Invalid length of moe_layer_pattern: 91, expected 92" in f.message
    assert f.source.startswith("megatron/core/models/gpt/gpt_layer_specs.py:")


def test_repeated_calls_leave_no_global_state():
    pytest.importorskip("megatron.core")
    import megatron.core.utils as mu
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    argv = CASES[0].argv()
    t0 = time.perf_counter()
    for _ in range(20):
        assert check_megatron(argv, 64) == []
        assert check_megatron(argv, 48)  # an error case in between
    assert time.perf_counter() - t0 < 10
    assert not dist.is_initialized()
    assert not ps.model_parallel_is_initialized()
    assert mu._te_version is None  # the TE-version workaround was undone


def test_existing_process_group_is_left_alone():
    pytest.importorskip("megatron.core")
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=4, store=FakeStore())
    try:
        findings = check_megatron(CASES[0].argv(), 64)
        assert [f.severity for f in findings] == ["warning"]
        assert "already initialized" in findings[0].message
        assert dist.get_world_size() == 4
    finally:
        dist.destroy_process_group()


def _core_optimizer_verdict(**kw) -> str | None:
    import megatron.core.utils as mu
    from megatron.core.optimizer import OptimizerConfig
    from packaging.version import Version

    saved = mu._te_version
    mu._te_version = Version("2.8.0")
    try:
        OptimizerConfig(**kw)
        return None
    except AssertionError as exc:
        return str(exc)
    finally:
        mu._te_version = saved


def test_optimizer_config_matches_megatron_core():
    pytest.importorskip("megatron.core")
    base = CASES[0].argv()

    def core_errors(argv):
        return [f for f in check_megatron(argv, 64) if "megatron/core/optimizer/" in f.source]

    # GLM recipe: offload + precision-aware + distributed (adam) -> accepted.
    assert (
        _core_optimizer_verdict(
            optimizer="adam",
            bf16=True,
            use_distributed_optimizer=True,
            use_precision_aware_optimizer=True,
            optimizer_cpu_offload=True,
            optimizer_offload_fraction=1.0,
            overlap_cpu_optimizer_d2h_h2d=True,
        )
        is None
    )
    assert not core_errors(base)
    # sgd + precision-aware -> megatron-core asserts (miles turns the distributed optimizer off).
    core = _core_optimizer_verdict(optimizer="sgd", bf16=True, use_precision_aware_optimizer=True)
    assert core == "--use-precision-aware-optimizer only supported with adam"
    findings = core_errors(_set(base, "--optimizer", "sgd"))
    assert len(findings) == 1 and core in findings[0].message
    assert findings[0].field == "--use-precision-aware-optimizer"
    # exp_avg_dtype bf16 without precision-aware -> megatron-core asserts.
    argv = _set(
        _drop(_drop(base, "--use-precision-aware-optimizer"), "--optimizer-cpu-offload"),
        "--exp-avg-dtype",
        "bf16",
    )
    (f,) = [f for f in check_megatron(argv, 64) if f.severity == "error"]
    assert f.source.startswith("megatron/core/optimizer/optimizer_config.py:")
    assert "exp_avg_dtype can only be fp32" in f.message
    # precision-aware without offload needs TE's FusedAdam: true on the GPU image, not an error here.
    argv = _drop(_drop(base, "--optimizer-cpu-offload"), "--overlap-cpu-optimizer-d2h-h2d")
    assert check_megatron(argv, 64) == []


def test_bad_values_are_findings_not_exceptions():
    pytest.importorskip("megatron.core")
    argv = _set(CASES[0].argv(), "--pipeline-model-parallel-size", "four")
    findings = check_megatron(argv, 64, FIELDS)
    assert [f.field for f in findings] == ["parallelism.pp"]
    assert "not an integer" in findings[0].message
    argv = _set(CASES[0].argv(), "--moe-layer-freq", "__import__('os')")
    assert [f.field for f in check_megatron(argv, 64, FIELDS)] == ["--moe-layer-freq"]
    argv = _set(CASES[0].argv(), "--exp-avg-dtype", "fp64")
    assert [f.field for f in check_megatron(argv, 64, FIELDS)] == ["--exp-avg-dtype"]


def test_missing_megatron_is_a_warning(monkeypatch):
    def boom():
        raise ImportError("No module named 'megatron'")

    monkeypatch.setattr(dm, "_import_megatron", boom)
    findings = check_megatron(CASES[0].argv(), 64)
    assert len(findings) == 1 and findings[0].severity == "warning"
    assert "skipped" in findings[0].message
    assert "pip install torch==2.13.0 && pip install 'glmlaunch[megatron]'" in findings[0].message


def test_parse_flags():
    flags = parse_flags(
        ["python3", "train.py", "--a", "1", "--b", "--c", "x", "y", "--a", "2", "--d=5", "--", "z"]
    )
    assert flags == {"--a": ["2"], "--b": [], "--c": ["x", "y"], "--d": ["5"]}
    assert parse_flags(["--eps", "-1e-4"]) == {"--eps": ["-1e-4"]}


def test_parse_moe_layer_freq():
    assert parse_moe_layer_freq("[0]*3+[1]*89") == [0] * 3 + [1] * 89
    assert parse_moe_layer_freq("([1]*3+[0]*1)*3") == [1, 1, 1, 0] * 3
    assert parse_moe_layer_freq("2") == 2
    for bad in ("__import__('os')", "[0]*3+", "[0.5]", "[0]*10**9"):
        with pytest.raises(ValueError):
            parse_moe_layer_freq(bad)
