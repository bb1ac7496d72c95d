"""Checks of values that only the checks see: computed env vars overridden, the port plan,
run ids, the wording of node / GPU count findings, and the plural forms of the bash render."""

from __future__ import annotations

import pytest
from planning import check_all, checked_plan

from glmlaunch.errors import RecipeError
from glmlaunch.hosts import local_allocation, placeholder_allocation, read_hostfile
from glmlaunch.plan import PortPlan, new_run_id
from glmlaunch.recipe import load_recipe
from glmlaunch.render import render_bash

GSPO = "glm45-355b-a32b-gspo"
PY = "/opt/glm/bin/python3"


def _findings(plan, field):
    return [f for f in plan.findings if f.field == field]


@pytest.mark.parametrize("key", ["MASTER_ADDR", "no_proxy", "NO_PROXY", "PYTHONPATH"])
def test_env_vars_overriding_computed_values_warn(key):
    r = load_recipe(GSPO, [f"env.vars.{key}=10.9.9.9"])
    plan = checked_plan(r, placeholder_allocation(8), run_id="t", python=PY)
    (f,) = _findings(plan, f"env.vars.{key}")
    assert f.severity == "warning"
    assert "'10.9.9.9' overrides the value glmlaunch computed" in f.message
    assert plan.env_vars[key] == "10.9.9.9"  # env.vars still wins; the warning says so


def test_env_vars_other_keys_do_not_warn():
    plan = checked_plan(
        load_recipe(GSPO, ["env.vars.FOO=1"]), placeholder_allocation(8), run_id="t", python=PY
    )
    assert not [f for f in plan.findings if f.field.startswith("env.vars")]


@pytest.mark.parametrize(
    "ports, field, message",
    [
        ({"base": 80}, "ports.base", "port base 80 is out of range"),
        ({"base": 65527}, "ports.base", "use --port-base with a value from 1024 to 65526"),
        ({"dashboard": 70000}, "ports.dashboard", "use --dashboard-port with a value from 1024 to 65535"),
        ({"min_worker": 100}, "ports.min_worker", "Ray worker port 100 is out of range 1024-65535"),
        ({"max_worker": 65536}, "ports.max_worker", "Ray worker port 65536 is out of range 1024-65535"),
        (
            {"min_worker": 14000, "max_worker": 13000},
            "ports.min_worker",
            "worker port range 14000-13000 is empty",
        ),
        (
            {"base": 7000, "dashboard": 7009},
            "ports.dashboard",
            "two Ray ports coincide: dashboard_metrics and dashboard are both port 7009",
        ),
    ],
)
def test_port_plan_checked(ports, field, message):
    plan = checked_plan(
        load_recipe(GSPO), placeholder_allocation(8), run_id="t", ports=PortPlan(**ports), python=PY
    )
    hits = [f for f in _findings(plan, field) if message in f.message]
    assert hits and hits[0].severity == "error", plan.findings
    assert "{" not in hits[0].message  # no raw dict


def test_default_ports_pass():
    plan = checked_plan(load_recipe(GSPO), placeholder_allocation(8), run_id="t", python=PY)
    assert not [f for f in plan.findings if f.field.startswith("ports")]


@pytest.mark.parametrize("run_id", ["../../etc/x y", "-x", ".hidden", "a/b", "x" * 65, "a b"])
def test_bad_run_ids(run_id):
    with pytest.raises(RecipeError, match="--run-id") as ei:
        checked_plan(load_recipe(GSPO), placeholder_allocation(8), run_id=run_id, python=PY)
    assert "--run-id exp-42" in ei.value.hint


@pytest.mark.parametrize("run_id", ["golden", "exp-42", "a.b_c-1", "x" * 64, new_run_id()])
def test_good_run_ids(run_id):
    assert (
        checked_plan(load_recipe(GSPO), placeholder_allocation(8), run_id=run_id, python=PY).run_id == run_id
    )


def test_gpus_unknown_local_names_nvidia_smi_not_a_hostfile():
    r = load_recipe("glm45-355b-a32b-grpo", ["cluster.hardware=cpu", "cluster.nodes=1"])
    (f,) = [f for f in check_all(r, local_allocation(0)) if f.field == "cluster.gpus_per_node"]
    assert f.message == (
        "GPUs per node unknown: this machine has no GPUs (nvidia-smi) and the recipe sets none; "
        "pass --gpus-per-node or set cluster.gpus_per_node"
    )


def test_nodes_mismatch_wording(write_hostfile):
    r = load_recipe(GSPO)
    (f,) = [f for f in check_all(r, placeholder_allocation(4)) if f.field == "cluster.nodes"]
    assert (
        f.message
        == "the recipe wants 8 nodes but --nodes 4 was given; pass --nodes 8, or set cluster.nodes=4"
    )
    (f,) = [f for f in check_all(r, local_allocation(8)) if f.field == "cluster.nodes"]
    assert (
        "but a local run uses this machine alone (1 node); pass --hostfile with 8 nodes, or set cluster.nodes=1"
        in f.message
    )
    hf = write_hostfile("10.0.0.1 slots=8\n")
    (f,) = [f for f in check_all(r, read_hostfile(hf)) if f.field == "cluster.nodes"]
    assert (
        f.message
        == f"the recipe wants 8 nodes but {hf} has 1 node; set cluster.nodes=1 or use a hostfile with 8 nodes"
    )


def test_render_bash_plurals(write_hostfile):
    r = load_recipe("local-probe")
    two = render_bash(
        checked_plan(
            r, read_hostfile(write_hostfile("10.0.0.1 slots=1\n10.0.0.2 slots=1\n")), run_id="t", python=PY
        )
    )
    assert "# 2. 1 worker in parallel" in two and "until 2 nodes and 2 GPUs have joined" in two
    one = render_bash(
        checked_plan(r, read_hostfile(write_hostfile("10.0.0.1 slots=1\n")), run_id="t", python=PY)
    )
    assert "1 node x 1 GPU)" in one and "until 1 node and 1 GPU have joined" in one and "1 nodes" not in one


@pytest.mark.parametrize(
    "sets, field, message, source, severity",
    [
        (
            ["optimizer.lr=0"],
            "optimizer.lr",
            "lr=0 must be greater than 0",
            "docs/rules.md#lr-zero",
            "warning",
        ),
        (
            ["optimizer.lr=-1e-6"],
            "optimizer.lr",
            "lr=-1e-6 must be greater than 0",
            "torch/optim/adam.py:58-67",
            "error",
        ),
        (
            ["optimizer.weight_decay=-0.1"],
            "optimizer.weight_decay",
            "weight_decay=-0.1 must be 0 or more",
            "torch@2.13.0",
            "error",
        ),
        (
            ["optimizer.adam_beta1=-0.1"],
            "optimizer.adam_beta1",
            "adam_beta1=-0.1 must be in [0, 1)",
            "torch/optim/adam.py",
            "error",
        ),
        (
            ["optimizer.adam_beta2=1"],
            "optimizer.adam_beta2",
            "adam_beta2=1 must be in [0, 1)",
            "torch/optim/adam.py",
            "error",
        ),
        (
            ["sglang.mem_fraction_static=0"],
            "sglang.mem_fraction_static",
            "mem_fraction_static=0 is not a fraction",
            "sglang/srt/mem_cache/kv_cache_configurator.py",
            "error",
        ),
        (
            ["sglang.mem_fraction_static=1"],
            "sglang.mem_fraction_static",
            "between 0 and 1 (exclusive)",
            "sglang@0.5.23",
            "error",
        ),
        (
            ["algorithm.eps_clip=-0.2"],
            "algorithm.eps_clip",
            "eps_clip=-0.2 must be greater than 0",
            "math_utils.py:263",
            "warning",
        ),
        (
            ["algorithm.eps_clip_high=0"],
            "algorithm.eps_clip_high",
            "eps_clip_high=0 must be greater than 0",
            "miles@31f1ca961a94",
            "warning",
        ),
    ],
    # ids without "sglang", so that these run under -k "not sglang"
    ids=[
        "lr-0",
        "lr-neg",
        "wd-neg",
        "beta1-neg",
        "beta2-1",
        "mem-fraction-0",
        "mem-fraction-1",
        "eps-clip-neg",
        "eps-clip-high-0",
    ],
)
def test_number_ranges(sets, field, message, source, severity):
    plan = checked_plan(load_recipe(GSPO, sets), placeholder_allocation(8), run_id="t", python=PY)
    (f,) = _findings(plan, field)
    assert f.severity == severity and message in f.message and source in f.source


def test_number_ranges_defaults_pass():
    for name in (GSPO, "glm45-355b-a32b-grpo", "glm45-air-p2p"):
        plan = checked_plan(load_recipe(name), placeholder_allocation(8), run_id="t", python=PY)
        fields = {f.field for f in plan.findings}
        assert not fields & {
            "optimizer.lr",
            "optimizer.weight_decay",
            "optimizer.adam_beta1",
            "optimizer.adam_beta2",
            "sglang.mem_fraction_static",
            "algorithm.eps_clip_high",
        }


@pytest.mark.parametrize("key", ["RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"])
def test_ray_auth_variables_in_env_vars_are_errors(key):
    plan = checked_plan(
        load_recipe(GSPO, [f"env.vars.{key}=x"]), placeholder_allocation(8), run_id="t", python=PY
    )
    (f,) = _findings(plan, f"env.vars.{key}")
    assert f.severity == "error" and f.source == "docs/rules.md#ray-env" and "run's own" in f.message


def test_ray_address_in_env_vars_warns():
    plan = checked_plan(
        load_recipe(GSPO, ["env.vars.RAY_ADDRESS=http://x:8265"]),
        placeholder_allocation(8),
        run_id="t",
        python=PY,
    )
    (f,) = _findings(plan, "env.vars.RAY_ADDRESS")
    assert f.severity == "warning" and "another cluster" in f.message
