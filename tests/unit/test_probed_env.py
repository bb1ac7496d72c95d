"""NCCL_NVLS_ENABLE decided per machine, as miles decides it (docs/fidelity.md#probed-env).

miles' ``execute_train`` sets ``NCCL_NVLS_ENABLE`` from ``nvidia-smi topo -m | grep -o
'NV[0-9][0-9]*' | wc -l`` (miles/utils/external_utils/command_utils.py:205, :248-250
(miles@31f1ca961a94)); the user's value wins. Here: the parsing of the node's answer (pure
logic, with the subprocess replaced), the precedence of the runtime env (probe < rack preset <
``env.vars``), the render before the nodes answer, and the preflight round that puts the nodes'
answer into the plan the job is submitted with (against the fake transport of fakes.py).
"""

from __future__ import annotations

import json
import subprocess

import pytest
from fakes import FakeClock, FakeHost, FakeTransport, install

from glmlaunch import nodeops, preflight
from glmlaunch.cluster import RayCluster
from glmlaunch.errors import RecipeError
from glmlaunch.hosts import Allocation, Host
from glmlaunch.plan import NCCL_RACK, PROBE_DEFAULT, LaunchPlan, apply_probes, build_plan, probe_answers
from glmlaunch.recipe import load_recipe
from glmlaunch.render import render_bash
from glmlaunch.runs import RunDir

# `nvidia-smi topo -m` of an 8-GPU NVSwitch machine (H100 SXM), cut to 2 GPUs and its legend
TOPO_NVLINK = """\
\t\x1b[4mGPU0\tGPU1\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m
GPU0\t X \tNV18\tPIX\t0-55,112-167\t0\t\tN/A
GPU1\tNV18\t X \tNODE\t0-55,112-167\t0\t\tN/A
NIC0\tPIX\tNODE\t X \t\t\t\t

Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks

NIC Legend:

  NIC0: mlx5_0
"""
# a PCIe machine: no NV<n> cell, only the legend's NV# and "NVLinks"
TOPO_PCIE = TOPO_NVLINK.replace("NV18", "SYS")


# ---------------------------------------------------------------- the node's answer


def test_nvlink_count_counts_nv_cells_as_miles_greps_them():
    assert nodeops.nvlink_count(TOPO_NVLINK) == 2
    assert nodeops.nvlink_count(TOPO_PCIE) == 0  # the legend's NV# and NVLinks are no count
    assert nodeops.nvlink_count("") == nodeops.nvlink_count(None) == 0


def _run_giving(stdout="", code=0, raises=None):
    calls = []

    def run(argv, **kw):
        calls.append((argv, kw))
        if raises is not None:
            raise raises
        return subprocess.CompletedProcess(argv, code, stdout=stdout, stderr="")

    return run, calls


def test_nvlink_probe_runs_topo_with_a_timeout():
    run, calls = _run_giving(TOPO_NVLINK)
    got = nodeops.nvlink_probe(run=run, which=lambda name: "/usr/bin/" + name)
    assert got["nvlink"] == 2 and "2 NVLink" in got["nvlink_why"]
    [(argv, kw)] = calls
    assert argv == ["nvidia-smi", "topo", "-m"] and kw["timeout"] == nodeops.NVLINK_TIMEOUT_S


@pytest.mark.parametrize(
    "which, run, why",
    [
        (lambda name: None, None, "no nvidia-smi"),
        (str, _run_giving(raises=subprocess.TimeoutExpired(["nvidia-smi"], 20))[0], "more than 20 s"),
        (str, _run_giving(raises=OSError("exec format error"))[0], "exec format error"),
        (str, _run_giving("NVIDIA-SMI has failed", code=9)[0], "exited 9"),
        (str, _run_giving(TOPO_PCIE)[0], "0 NVLink"),
    ],
    ids=["no-nvidia-smi", "timeout", "oserror", "failed", "pcie"],
)
def test_no_nvidia_smi_or_a_failed_probe_is_no_nvlink(which, run, why):
    got = nodeops.nvlink_probe(run=run or (lambda *a, **k: pytest.fail("nvidia-smi is not run")), which=which)
    assert got["nvlink"] == 0 and why in got["nvlink_why"]


def test_probe_answers_need_nvlink_on_every_node():
    probed = {"NCCL_NVLS_ENABLE": "nvlink"}
    assert probe_answers(probed, {"a": {"nvlink": 12}, "b": {"nvlink": 4}})[0] == {"NCCL_NVLS_ENABLE": "1"}
    values, why = probe_answers(
        probed, {"a": {"nvlink": 12}, "b": {"nvlink": 0, "nvlink_why": "no nvidia-smi"}}
    )
    assert values == {"NCCL_NVLS_ENABLE": "0"}
    assert "1 of 2" in why[0] and "b: no nvidia-smi" in why[0]
    assert probe_answers(probed, {"a": {}})[0] == {"NCCL_NVLS_ENABLE": "0"}  # an old node op: no answer
    assert probe_answers({}, {"a": {"nvlink": 3}}) == ({}, [])


# ---------------------------------------------------------------- the runtime env's precedence


def _plan(template="glm45-355b-a32b-grpo", sets=(), nodes=2):
    hosts = tuple(Host(f"10.0.0.{i}", f"10.0.0.{i}", 8) for i in range(1, nodes + 1))
    alloc = Allocation(hosts=hosts, gpus_per_node=8, origin="test")
    return build_plan(load_recipe(template, list(sets)), alloc, run_id="p", python="/py/bin/python3")


def test_by_default_nvls_is_probed_and_no_rack_constant_is_set():
    plan = _plan("glm45-355b-a32b-grpo", ["env.vars={}"])
    assert plan.probed_env == {"NCCL_NVLS_ENABLE": "nvlink"} and not plan.probed
    assert plan.env_vars["NCCL_NVLS_ENABLE"] == PROBE_DEFAULT == "0"
    assert not set(NCCL_RACK) - {"NCCL_NVLS_ENABLE"} & set(plan.env_vars)
    assert any(n.startswith("decided at launch: NCCL_NVLS_ENABLE") for n in plan.notes)


@pytest.mark.parametrize(
    "sets, value",
    [
        (["env.vars.NCCL_NVLS_ENABLE=1"], "1"),
        (["env.vars.NCCL_NVLS_ENABLE=0"], "0"),
        (["env.nccl_preset=rack"], "0"),  # the 8-node script: off whatever the probe finds
        (["env.nccl_preset=rack", "env.vars.NCCL_NVLS_ENABLE=1"], "1"),  # env.vars wins
    ],
)
def test_the_rack_preset_and_env_vars_win_over_the_probe(sets, value):
    plan = _plan("glm45-355b-a32b-grpo", sets)
    assert plan.probed_env == {} and plan.env_vars["NCCL_NVLS_ENABLE"] == value
    assert apply_probes(plan, {n.name: {"nvlink": 18 if value == "0" else 0} for n in plan.nodes}) == {}
    assert plan.env_vars["NCCL_NVLS_ENABLE"] == value
    if "env.nccl_preset=rack" in sets:
        assert {k: plan.env_vars[k] for k in NCCL_RACK if k != "NCCL_NVLS_ENABLE"} == {
            k: v for k, v in NCCL_RACK.items() if k != "NCCL_NVLS_ENABLE"
        }


def test_templates_follow_their_launchers():
    assert _plan("glm45-355b-a32b-grpo").probed_env == {"NCCL_NVLS_ENABLE": "nvlink"}  # execute_train
    assert _plan("glm45-355b-a32b-gspo").probed_env == {}  # the 8-node script: NCCL_RACK
    assert _plan("glm45-air-p2p").probed_env == {}  # run.py: enable_nccl_nvls False
    assert _plan("glm45-air-p2p").env_vars["NCCL_NVLS_ENABLE"] == "0"
    # the probe's NCCL collective runs as the trainer would: decided by the same probe
    assert _plan("local-probe").probed_env == {"NCCL_NVLS_ENABLE": "nvlink"}


def test_no_proxy_starts_with_miles_entries_then_every_node():
    assert (
        _plan("glm45-355b-a32b-grpo", nodes=3).env_vars["no_proxy"] == "127.0.0.1,10.0.0.1,10.0.0.2,10.0.0.3"
    )
    gspo = _plan("glm45-355b-a32b-gspo", nodes=2).env_vars
    assert gspo["no_proxy"] == gspo["NO_PROXY"] == "localhost,127.0.0.1,0.0.0.0,10.0.0.1,10.0.0.2"
    assert _plan(sets=['env.no_proxy=["10.0.0.2"]']).env_vars["no_proxy"] == "10.0.0.2,10.0.0.1"


@pytest.mark.parametrize("entry", ["", "a,b", "a b"])
def test_a_bad_no_proxy_entry_is_a_recipe_error(entry):
    with pytest.raises(RecipeError) as e:
        load_recipe("glm45-355b-a32b-grpo", [f"env.no_proxy={json.dumps([entry])}"])
    assert "env.no_proxy" in str(e.value)


def test_the_probed_plan_round_trips_and_its_bash_does_not_probe_again():
    plan = _plan()
    assert "nvidia-smi topo -m" in render_bash(plan) and '"$NVLINK"' in render_bash(plan)
    apply_probes(plan, {n.name: {"nvlink": 18} for n in plan.nodes})
    again = LaunchPlan.model_validate_json(plan.model_dump_json())
    assert again.probed and again.env_vars["NCCL_NVLS_ENABLE"] == "1"
    assert not [n for n in again.notes if n.startswith("decided at launch")]
    assert "nvidia-smi" not in render_bash(again)
    for p in (plan, _plan()):
        subprocess.run(["bash", "-n"], input=render_bash(p), text=True, check=True)


# ---------------------------------------------------------------- the preflight round


@pytest.mark.parametrize("links, value", [((18, 18), "1"), ((18, 0), "0"), ((0, 0), "0")])
def test_preflight_puts_the_nodes_answer_into_the_plan(links, value, tmp_path, monkeypatch):
    sets = ["cluster.nodes=2", "checkpoint.save="]  # no --save: the fake nodes share no filesystem
    recipe = load_recipe("glm45-355b-a32b-grpo", sets)
    plan = _plan(sets=sets)
    hosts = {n.name: FakeHost(nvlink=k) for n, k in zip(plan.nodes, links, strict=True)}
    fake = FakeTransport(hosts)
    install(monkeypatch, fake, clock=FakeClock())
    rd = RunDir.create(plan.run_id, tmp_path / "runs", current=False)
    rd.write("plan.json", plan.model_dump_json())
    c = RayCluster(plan, fake, recipe=recipe, run_dir=rd, command_timeout_s=5)
    findings = c.preflight()
    assert plan.env_vars["NCCL_NVLS_ENABLE"] == value and plan.probed
    saved = LaunchPlan.model_validate_json((rd.path / "plan.json").read_text())
    assert saved.env_vars["NCCL_NVLS_ENABLE"] == value and saved.probed
    assert [e.model_extra for e in rd.reload().events if e.event == "probed"] == [
        {"env": {"NCCL_NVLS_ENABLE": value}}
    ]
    mixed = [f for f in findings if f.field == "env.vars.NCCL_NVLS_ENABLE"]
    assert [f.severity for f in mixed] == (["warning"] if len(set(links)) > 1 else [])
    assert not [f for f in findings if f.severity == "error"]


def test_analyze_says_nothing_of_nvlink_when_nothing_is_probed():
    plan = _plan("glm45-355b-a32b-gspo")
    answers = {n.name: {"inspect": {"nvlink": 18 if i else 0, "gpus": 8}} for i, n in enumerate(plan.nodes)}
    assert not [f for f in preflight.analyze(plan, None, answers, 0.0) if "NVLink" in f.message]


def test_a_running_cluster_with_the_probed_value_is_the_same_plan():
    """``up`` twice: the running plan holds the nodes' answer, the new one the value until they
    answer; that is no difference (another env.vars value is)."""
    from glmlaunch.run import plan_differences

    running = _plan()
    apply_probes(running, {n.name: {"nvlink": 18} for n in running.nodes})
    assert running.env_vars["NCCL_NVLS_ENABLE"] == "1"
    assert plan_differences(running, _plan()) == []
    assert plan_differences(running, _plan(sets=["env.vars.NCCL_NVLS_ENABLE=0"])) == ["runtime env"]
    assert plan_differences(running, _plan(sets=["env.vars.X=1"])) == ["runtime env"]
