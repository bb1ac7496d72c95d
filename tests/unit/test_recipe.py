"""glmlaunch.recipe: templates, overrides, number text, placeholders."""

from __future__ import annotations

import json
import re

import pytest
from planning import checked_plan

from glmlaunch.errors import RecipeError
from glmlaunch.hosts import placeholder_allocation
from glmlaunch.recipe import Recipe, list_templates, load_recipe, parse_override, template_path
from glmlaunch.resolve import paths

TEMPLATES = ["glm45-355b-a32b-grpo", "glm45-355b-a32b-gspo", "glm45-air-p2p", "local-probe"]


def argv_of(recipe: Recipe, nodes: int = 8) -> list[str]:
    return checked_plan(recipe, placeholder_allocation(nodes, 8), run_id="t", python="/py/bin/python3").argv


def values(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    out = []
    for tok in argv[i + 1 :]:
        if tok.startswith("--"):
            break
        out.append(tok)
    return out


def test_list_templates():
    assert list_templates() == TEMPLATES


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_loads_and_builds(name):
    r = load_recipe(name)
    assert r.run.name == name
    assert r.source == str(template_path(name))
    plan = checked_plan(
        r, placeholder_allocation(r.cluster.nodes or 3, 8), run_id="t", python="/py/bin/python3"
    )
    assert plan.argv and not plan.errors, [str(f) for f in plan.errors]


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_by_path_and_roundtrip(name):
    path = template_path(name)
    assert path.suffix == ".toml"
    by_path = load_recipe(path)
    assert by_path == load_recipe(name)
    # a Recipe and its dump load back to the same recipe
    again = load_recipe(by_path)
    assert again == by_path and again.source == by_path.source
    assert load_recipe(by_path.model_dump()).model_dump() == by_path.model_dump()


# ----------------------------------------------------------------------------- overrides


def test_override_int_bool_list_string():
    r = load_recipe(
        "glm45-355b-a32b-gspo",
        [
            "parallelism.tp=4",
            "cluster.colocate=false",
            "rollout.stop_token_ids=[1, 2, 3]",
            "sglang.cuda_graph_bs=[1,2]",
            "run.base_dir=/data/shared",
            'run.name="my-run"',
            "env.vars.FOO=bar baz",
            "parallelism.pp='2'",
        ],
    )
    assert r.parallelism.tp == 4 and r.cluster.colocate is False
    assert r.rollout.stop_token_ids == [1, 2, 3] and r.sglang.cuda_graph_bs == [1, 2]
    assert r.run.base_dir == "/data/shared" and r.run.name == "my-run"
    assert r.env.vars == {"FOO": "bar baz"}
    assert r.parallelism.pp == 2  # a quoted number still validates as an int


@pytest.mark.parametrize(
    "item, flag, rendered",
    [
        ("algorithm.eps_clip=3e-4", "--eps-clip", "3e-4"),
        ("algorithm.eps_clip_high=2.5E-4", "--eps-clip-high", "2.5E-4"),
        ("algorithm.kl_loss_coef=0.000", "--kl-loss-coef", "0.000"),
        ("optimizer.lr=1e-6", "--lr", "1e-6"),
        ("optimizer.lr=0.00001", "--lr", "0.00001"),
        ("optimizer.weight_decay=0.10", "--weight-decay", "0.10"),
        ('optimizer.adam_beta2="0.95"', "--adam-beta2", "0.95"),
        ("rollout.rollout_temperature=0.8", "--rollout-temperature", "0.8"),
        ("rollout.rollout_temperature=1", "--rollout-temperature", "1"),
        ("eval.top_p=0.7", "--eval-top-p", "0.7"),
        ("sglang.mem_fraction_static=0.85", "--sglang-mem-fraction-static", "0.85"),
    ],
)
def test_override_float_kept_as_text(item, flag, rendered):
    r = load_recipe("glm45-355b-a32b-gspo", [item])
    assert values(argv_of(r), flag) == [rendered]


@pytest.mark.parametrize(
    "toml_value, text",
    [
        ("3e-4", "3e-4"),
        ("0.0003", "3e-4"),
        ("1e-06", "1e-6"),
        ("0.1", "0.1"),
        ("0.98", "0.98"),
        ("2", "2"),
        ("1.5e3", "1500.0"),
    ],
)
def test_toml_floats_become_text(tmp_path, toml_value, text):
    # numbers written as TOML floats (not strings) are rendered without float noise
    src = (
        template_path("glm45-355b-a32b-gspo")
        .read_text()
        .replace('eps_clip = "1e-4"', f"eps_clip = {toml_value}")
    )
    p = tmp_path / "r.toml"
    p.write_text(src)
    assert load_recipe(p).algorithm.eps_clip == text


def test_override_applies_in_order_and_creates_sections():
    r = load_recipe("local-probe", ["parallelism.tp=2", "parallelism.tp=4", "wandb.enabled=true"])
    assert r.parallelism.tp == 4 and r.wandb.enabled


def test_empty_value_unsets_optional_fields():
    r = load_recipe(
        "glm45-355b-a32b-gspo",
        [
            "checkpoint.save_interval=",
            "algorithm.eps_clip_high=",
            "sglang.moe_dense_tp_size=",
            "cluster.nodes=",
        ],
    )
    assert r.checkpoint.save_interval is None and r.algorithm.eps_clip_high is None
    assert r.sglang.moe_dense_tp_size is None and r.cluster.nodes is None
    argv = argv_of(r)
    assert "--eps-clip-high" not in argv and "--sglang-moe-dense-tp-size" not in argv
    # a string field keeps "" as the empty string
    assert load_recipe("glm45-355b-a32b-gspo", ["checkpoint.load="]).checkpoint.load == ""


def test_empty_value_does_not_unset_required_ints():
    with pytest.raises(RecipeError, match="parallelism.tp: Input should be a valid integer"):
        load_recipe("glm45-355b-a32b-gspo", ["parallelism.tp="])


@pytest.mark.parametrize(
    "item, parts, value",
    [
        ("a.b=4", ["a", "b"], 4),
        ("a.b = true", ["a", "b"], True),
        ("a.b=[1, 2]", ["a", "b"], [1, 2]),
        ("a.b=1e-4", ["a", "b"], "1e-4"),
        ("a.b=plain text", ["a", "b"], "plain text"),
        ('a.b="quoted"', ["a", "b"], "quoted"),
        ("a.b=x=y", ["a", "b"], "x=y"),
        ("a.b=", ["a", "b"], ""),
    ],
)
def test_parse_override(item, parts, value):
    assert parse_override(item) == (parts, value)


def test_yaml_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(
        "run: {name: yrun, base_dir: /data}\n"
        "cluster: {nodes: 8, gpus_per_node: 8}\n"
        "algorithm: {eps_clip: 3e-4}\n"  # YAML reads 3e-4 as a string, kept as written
    )
    r = load_recipe(p)
    assert r.run.name == "yrun" and r.algorithm.eps_clip == "3e-4"
    assert r.source == str(p)


def test_dict_recipe_not_mutated():
    data = {"run": {"name": "d", "base_dir": "/x"}, "cluster": {}}
    r = load_recipe(data, ["parallelism.tp=2"])
    assert r.parallelism.tp == 2 and "parallelism" not in data and r.source == "<recipe>"


# ----------------------------------------------------------------------------- placeholders


def test_placeholders_expand():
    r = load_recipe(
        "glm45-355b-a32b-gspo",
        [
            "run.base_dir=/mnt/fs/",
            "trainer.miles_dir=/opt/miles/",
            "checkpoint.save={base_dir}/out/{run_name}",
            "checkpoint.hf_checkpoint={model_dir}",
            "checkpoint.ref_load={model_dir}_torch_dist/",
            "rollout.prompt_data={miles_dir}/data/p.jsonl",
            "eval.prompt_data={base_dir}/e.jsonl",
        ],
    )
    cp = paths(r)
    assert {k: cp[k] for k in ("hf_checkpoint", "ref_load", "save", "load")} == {
        "hf_checkpoint": "/mnt/fs/GLM-4.5-355B-A32B",
        "ref_load": "/mnt/fs/GLM-4.5-355B-A32B_torch_dist",
        "save": "/mnt/fs/out/glm45-355b-a32b-gspo",
        "load": "/mnt/fs/out/glm45-355b-a32b-gspo",
    }
    tp = paths(r)
    assert tp["prompt_data"] == "/opt/miles/data/p.jsonl" and tp["eval_data"] == "/mnt/fs/e.jsonl"
    argv = argv_of(r)
    assert not any("{" in t or "$" in t for t in argv)
    assert values(argv, "--save") == ["/mnt/fs/out/glm45-355b-a32b-gspo"]


def test_model_dir_follows_model_type():
    r = load_recipe("glm45-air-p2p", ["checkpoint.hf_checkpoint={model_dir}"])
    assert paths(r)["hf_checkpoint"] == "/root/shared_data/GLM-4.5-Air"


def test_default_paths_without_template_paths():
    r = load_recipe({"run": {"name": "bare", "base_dir": "/b"}, "cluster": {}})
    cp = paths(r)
    assert (
        cp["hf_checkpoint"] == "/b/GLM-4.5-355B-A32B" and cp["ref_load"] == "/b/GLM-4.5-355B-A32B_torch_dist"
    )
    assert cp["save"] == cp["load"] == "/b/runs/bare/checkpoints"
    assert paths(r)["eval_data"] == "/b/rl_data/aime-2024/aime-2024.jsonl"


def test_explicit_load():
    r = load_recipe("glm45-355b-a32b-gspo", ["checkpoint.load={base_dir}/elsewhere"])
    assert paths(r)["load"] == "/root/shared_data/elsewhere"


def test_probe_paths_and_setup_expand():
    r = load_recipe(
        "local-probe", ["trainer.probe_paths=['{base_dir}/a', '/abs']", "cluster.setup=['cd {base_dir}']"]
    )
    plan = checked_plan(r, placeholder_allocation(1, 8), run_id="t", python="/py/bin/python3")
    assert values(plan.argv, "--path")[:1] == ["/tmp/a"] and plan.argv[-2:] == ["--path", "/abs"]
    assert plan.setup == ["cd /tmp"]


def test_unknown_placeholder():
    """Refused when the recipe is loaded, naming the field; expand() itself refuses it too."""
    with pytest.raises(
        RecipeError,
        match=r"checkpoint.save: cannot expand '\{base_dir\}/\{nope\}': unknown placeholder 'nope'",
    ):
        load_recipe("glm45-355b-a32b-gspo", ["checkpoint.save={base_dir}/{nope}"])
    r = load_recipe("glm45-355b-a32b-gspo")
    r.checkpoint.save = "{base_dir}/{nope}"
    with pytest.raises(RecipeError, match="unknown placeholder 'nope'"):
        paths(r)


# ----------------------------------------------------------------------------- template modes


def _plan(template: str, sets: list[str], nodes: int = 8, gpus: int | None = 8):
    from glmlaunch.hosts import Allocation, Host

    hosts = tuple(Host(f"10.0.0.{i}", f"10.0.0.{i}", gpus) for i in range(1, nodes + 1))
    alloc = Allocation(hosts=hosts, gpus_per_node=gpus, origin="test")
    return checked_plan(load_recipe(template, sets), alloc, run_id="t", python="/py/bin/python3")


def test_grpo_small_layout_up_to_4_nodes():
    plan = _plan("glm45-355b-a32b-grpo", ["cluster.nodes=4"], nodes=4)
    assert not plan.errors, [str(f) for f in plan.errors]
    a = plan.argv
    assert [
        values(a, f)[0]
        for f in (
            "--tensor-model-parallel-size",
            "--pipeline-model-parallel-size",
            "--context-parallel-size",
            "--expert-model-parallel-size",
        )
    ] == ["4", "1", "1", "4"]
    assert "--decoder-last-pipeline-num-layers" not in a
    big = _plan("glm45-355b-a32b-grpo", []).argv
    assert values(big, "--pipeline-model-parallel-size") == ["8"] and values(
        big, "--decoder-last-pipeline-num-layers"
    ) == ["8"]


def test_hardware_sets_gpus_when_hostfile_has_no_slots():
    # GB200: 4 GPUs per node; the 8-node GRPO layout no longer fits (contract §2.3's arithmetic)
    plan = _plan("glm45-355b-a32b-grpo", ["cluster.hardware=GB200"], gpus=None)
    assert plan.gpus_per_node == 4 and plan.world_size == 32
    assert {f.field for f in plan.errors} == {
        "parallelism.tp/parallelism.pp/parallelism.cp",
        "parallelism.etp/parallelism.ep/parallelism.pp",
    }
    assert values(plan.argv, "--sglang-attention-backend") == ["trtllm_mha"]  # Blackwell option


def test_mtp_spec_v2_env():
    plan = _plan("glm45-355b-a32b-grpo", ["sglang.mtp=true"])
    assert plan.env_vars["SGLANG_ENABLE_SPEC_V2"] == "1" and "--sglang-speculative-algorithm" in plan.argv
    assert "SGLANG_ENABLE_SPEC_V2" not in _plan("glm45-355b-a32b-gspo", []).env_vars


def test_debug_minimal_mode():
    plan = _plan("glm45-355b-a32b-gspo", ["run.mode=debug_minimal"])
    a = plan.argv
    assert not plan.errors
    # miles' debug_minimal (scripts/run_glm45_355b_a32b.py:116-153): the batch stays, responses
    # are capped at 100 tokens, no dynamic sampling, no eval, checkpoints every 2 rollouts
    assert values(a, "--num-rollout") == ["3000"] and values(a, "--rollout-batch-size") == ["128"]
    assert values(a, "--rollout-max-response-len") == ["100"] and "--over-sampling-batch-size" not in a
    assert values(a, "--save-interval") == ["2"] and "--eval-interval" not in a


def test_air_template_matches_its_seed():
    """The Air profile's SGLang and clip flags are the seed's (contract §3): symmetric eps_clip, no
    --eps-clip-high, no --sglang-dp-size (SGLang's 1), no --sglang-moe-dense-tp-size; disaggregated
    with p2p."""
    a = _plan("glm45-air-p2p", []).argv
    assert values(a, "--eps-clip") == ["4e-4"] and "--eps-clip-high" not in a
    assert "--sglang-dp-size" not in a and "--sglang-moe-dense-tp-size" not in a
    assert values(a, "--rollout-num-gpus") == ["32"] and "--colocate" not in a
    assert values(a, "--actor-num-nodes") == ["4"] and values(a, "--sglang-cuda-graph-bs") == [
        "1",
        "2",
        "4",
        "8",
        "16",
    ]
    assert values(a, "--update-weight-transfer-mode") == ["p2p"]


def test_probe_template_takes_the_allocation_size():
    plan = _plan("local-probe", [], nodes=3)
    assert not plan.errors and values(plan.argv, "--nodes") == ["3"]


# ----------------------------------------------------------------------------- strict input


@pytest.mark.parametrize(
    "item, message",
    [
        ("parallelism.tp=true", "parallelism.tp: Input should be a valid integer (got True)"),
        ("parallelism.tp=8.0", "parallelism.tp: Input should be a valid integer (got '8.0')"),
        ("cluster.colocate=yes", "cluster.colocate: Input should be a valid boolean (got 'yes')"),
        ("cluster.colocate=1", "cluster.colocate: Input should be a valid boolean (got 1)"),
        ("cluster.nodes=2.5", "cluster.nodes: Input should be a valid integer (got '2.5')"),
        (
            "rollout.stop_token_ids=[1.5]",
            "rollout.stop_token_ids.0: Input should be a valid integer (got 1.5)",
        ),
    ],
)
def test_strict_types(item, message):
    with pytest.raises(RecipeError) as ei:
        load_recipe("glm45-355b-a32b-gspo", [item])
    assert message in ei.value.message and ei.value.hint


def test_strict_types_keep_numbers_literals_and_env_text():
    r = load_recipe(
        "glm45-355b-a32b-gspo",
        [
            "algorithm.eps_clip=3e-4",
            "optimizer.lr=1",
            "cluster.hardware=GB200",
            "env.vars.NCCL_DEBUG_SUBSYS=1",
            "parallelism.pp='2'",
        ],
    )
    assert r.algorithm.eps_clip == "3e-4" and r.optimizer.lr == "1" and r.cluster.hardware == "GB200"
    assert r.env.vars["NCCL_DEBUG_SUBSYS"] == "1" and r.parallelism.pp == 2


def test_yaml_recipe_with_proper_types(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(
        "run: {name: x, base_dir: /x}\ncluster: {nodes: 2, colocate: true}\n"
        "parallelism: {tp: 4, small_layouts: [{max_nodes: 4, tp: 2, pp: 1, cp: 1, ep: 2}]}\n"
        "optimizer: {lr: 1.0e-6}\n"
    )
    r = load_recipe(p)
    assert r.parallelism.tp == 4 and r.parallelism.small_layouts[0].ep == 2 and r.optimizer.lr == "1e-6"


def test_overrides_as_one_string():
    r = load_recipe("glm45-355b-a32b-gspo", "run.base_dir=/tmp")
    assert r.run.base_dir == "/tmp"
    assert load_recipe("glm45-355b-a32b-gspo", ("parallelism.tp=4",)).parallelism.tp == 4


@pytest.mark.parametrize("bad", [{"run.base_dir": "/tmp"}, 5, ["parallelism.tp=4", 4]])
def test_overrides_wrong_type(bad):
    with pytest.raises(RecipeError, match="overrides must be a list of KEY=VALUE strings") as ei:
        load_recipe("glm45-355b-a32b-gspo", bad)
    assert "parallelism.tp=4" in ei.value.hint


# ----------------------------------------------------------------------------- template_path


@pytest.mark.parametrize("name", ["lp.txt", "lp", "local-probe"])
def test_template_path_unsupported_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text('[run]\nname = "x"\n')
    with pytest.raises(
        RecipeError, match=r"unsupported recipe file type \('(\.txt|no extension)'\), use \.toml/\.yaml/\.yml"
    ):
        template_path(name)


@pytest.mark.parametrize("name", ["local-probe.toml", "local-probe.yaml", "local-probe"])
def test_template_path_by_name_with_suffix(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no such file here: the template of that name
    assert template_path(name).name == "local-probe.toml"


def test_template_path_prefers_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local-probe.toml").write_text("x")
    assert template_path("local-probe.toml").resolve() == (tmp_path / "local-probe.toml").resolve()


# ----------------------------------------------------------------------------- hostile input

BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
BASE = "run:\n  name: x\n  base_dir: /x\ncluster:\n  nodes: 1\n"


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    import time

    p = tmp_path / "bomb.yaml"
    p.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 500
    t0 = time.monotonic()
    with pytest.raises(RecipeError, match=r"bomb.yaml: not valid YAML at line 1: anchors and aliases") as ei:
        load_recipe(str(p))
    assert time.monotonic() - t0 < 1 and "*aliases" in ei.value.hint


def test_yaml_without_anchors_still_loads(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(BASE + "parallelism: {tp: 1}\n")
    assert load_recipe(str(p)).run.name == "x"


@pytest.mark.parametrize(
    "value, placeholder",
    [
        ("{base_dir.__class__}", "base_dir.__class__"),
        ("{base_dir[0]}", "base_dir[0]"),
        ("{run_name!r}", "run_name!r"),
        ("{run_name:>99}", "run_name:>99"),
        ("'{}'", ""),  # TOML literal text: {} alone is a table
        ("{0}", "0"),
    ],
)
def test_placeholders_are_plain_names(value, placeholder):
    with pytest.raises(
        RecipeError, match=rf"checkpoint.save: cannot expand .*unknown placeholder '{re.escape(placeholder)}'"
    ):
        load_recipe("local-probe", [f"checkpoint.save={value}"])


def test_placeholder_braces_escape():
    r = load_recipe("local-probe", ["checkpoint.save={base_dir}/{{x}}"])
    assert r.expand(r.checkpoint.save).endswith("/{x}")


@pytest.mark.parametrize(
    "line, why",
    [
        ("source /env # activate", "has a '#' outside quotes"),
        ("#module load cuda", "has a '#' outside quotes"),
        ("echo 'a", "has an unclosed ' quote"),
        ('echo "a', 'has an unclosed " quote'),
        ("echo a \\", "ends with a backslash"),
        ("  ", "is empty"),
        ("sleep 1 &", "ends with '&'"),
        ("true;", "ends with ';'"),
    ],
)
def test_setup_lines_that_break_the_chain(line, why):
    with pytest.raises(RecipeError, match=r"cluster.setup\[1\]: .* " + why.replace("(", r"\(")):
        load_recipe("local-probe", [f"cluster.setup={json.dumps(['true', line])}"])


@pytest.mark.parametrize(
    "line", ["echo '#quoted'", 'echo "a#b"', "echo \\#", "module load cuda/12 && nvidia-smi"]
)
def test_setup_lines_that_are_fine(line):
    assert load_recipe("local-probe", [f"cluster.setup={json.dumps([line])}"]).cluster.setup == [line]


@pytest.mark.parametrize("value", ["٣", "²", "'٣'", "８"])
def test_int_override_ascii_digits_only(value):
    with pytest.raises(RecipeError, match="parallelism.tp: Input should be a valid integer"):
        load_recipe("local-probe", [f"parallelism.tp={value}"])


@pytest.mark.parametrize("value", ["١e-4", "'1e-٤'", "'inf'", "'0x10'"])
def test_number_text_ascii_only(value):
    with pytest.raises(RecipeError, match="algorithm.eps_clip: "):
        load_recipe("local-probe", [f"algorithm.eps_clip={value}"])


def test_control_characters_are_refused_in_files(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[run]\nname = "x"\nbase_dir = "/x\\u001b]0;pwned\\u0007"\n[cluster]\nnodes = 1\n')
    with pytest.raises(RecipeError, match=r"run.base_dir: holds a control character \(\\x1b\)"):
        load_recipe(str(p))


def test_long_values_are_cut_in_messages():
    with pytest.raises(RecipeError) as ei:
        load_recipe("local-probe", ["parallelism.tp=" + "9" * 5000])
    assert len(ei.value.message) < 1000


@pytest.mark.parametrize(
    "text, message",
    [
        ("a = " + "9" * 5000 + "\n", "cannot read a value: a number has more than 4300 digits"),
        ("a = " + "[" * 5000 + "\n", "the recipe is nested too deeply"),
    ],
)
def test_toml_values_that_python_refuses(tmp_path, text, message):
    p = tmp_path / "r.toml"
    p.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(str(p))


def test_recipe_fifo_does_not_hang(tmp_path):
    import os

    os.mkfifo(tmp_path / "r.toml")
    with pytest.raises(RecipeError, match=r"the recipe is a named pipe \(FIFO\), not a regular file"):
        load_recipe(str(tmp_path / "r.toml"))
