"""The rendered ``commands.sh`` (``render --format bash``, ``launch --dry-run``), executed.

Every script is run by bash against a stand-in ``ssh`` that runs the remote command with
``bash -c``, as sshd would (so both shells that read a remote command really parse it), and a
stand-in ``ray`` that records its argv and environment. The inputs carry shell syntax wherever
validation lets it through (paths, ``env.vars`` values, the run name) and the valid-but-unusual
forms of host names, users and IPv6 zone ids (run names are validated: letters, digits and
``._-``); no marker file may appear, and every value must
reach ``ray`` exactly as the plan holds it. Inputs that cannot be valid (host names, users, zone
ids, Slurm node names with shell syntax) are refused before anything is rendered: those rows
are in tests/unit/test_hostile_input.py, and a few are repeated at the end of this file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from glmlaunch.errors import HostfileError
from glmlaunch.hosts import read_hostfile
from glmlaunch.plan import build_plan
from glmlaunch.recipe import load_recipe
from glmlaunch.render import render_bash

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def _payloads(marker: Path) -> list[str]:
    """Shell syntax that creates a file under ``marker`` if any shell ever evaluates it."""
    m = str(marker)
    return [
        f"$(touch {m}/dollar-paren)",
        f"`touch {m}/backtick`",
        f"'; touch {m}/single-quote; '",
        f'"; touch {m}/double-quote; "',
        f"\\$(touch {m}/escaped)",
        f"a;touch {m}/semicolon",  # (a newline is refused: values hold no control characters)
        f"x && touch {m}/and-list",
        f"x | touch {m}/pipe",
        f"$((1+1))${{HOME}}$HOME*?[a]~ {{a,b}} <(touch {m}/procsub)",
        f"' \"$(touch {m}/mixed)\" '",
    ]


STAND_IN_SSH = r"""#!/usr/bin/env bash
# stand-in ssh: skip the options, record the destination, run the command as sshd would
while [ $# -gt 0 ]; do
  case $1 in
    -o|-p|-i|-l) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
dest=$1; shift
printf '%s\n' "$dest" >> "__LOG__/ssh-destinations"
exec bash -c "$*"
"""

STAND_IN_RAY = r"""#!__PYTHON__
# stand-in ray: record argv and environment; answer health-check/status; read the runtime env
import json, os, sys
log = "__LOG__/ray-calls.jsonl"
rec = {"argv": sys.argv[1:], "env": dict(os.environ)}
if sys.argv[1:3] == ["job", "submit"]:
    rec["runtime_env"] = json.load(open(sys.argv[sys.argv.index("--runtime-env") + 1]))
with open(log, "a") as f:
    f.write(json.dumps(rec) + "\n")
if sys.argv[1] == "status":  # the layout of Ray 2.60's `ray status`
    print("Node status\nActive:\n" + "".join(f" 1 node_{i:04x}\n" for i in range(__NODES__)) +
          "Idle:\n (no idle nodes)\nPending:\n (no pending nodes)\nResources\nUsage:\n 0.0/__GPUS__.0 GPU")
"""


def _stand_ins(tmp: Path, gpus: int, nodes: int = 3) -> tuple[Path, Path]:
    bin_dir, log = tmp / "bin", tmp / "log"
    bin_dir.mkdir()
    log.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(STAND_IN_SSH.replace("__LOG__", str(log)))
    ray = bin_dir / "ray"
    ray.write_text(
        STAND_IN_RAY.replace("__LOG__", str(log))
        .replace("__PYTHON__", sys.executable)
        .replace("__GPUS__", str(gpus))
        .replace("__NODES__", str(nodes))
    )
    ssh.chmod(0o755)
    ray.chmod(0o755)
    return bin_dir, log


def _run_script(plan, tmp: Path, extra_env: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path]:
    bin_dir = Path(plan.ray_bin).parent
    script = tmp / "commands.sh"
    script.write_text(render_bash(plan))
    # the directories the script makes (fresh; names with the plan's random part): exactly these
    dirs = [plan.state_dir, *{n.ray_dir for n in plan.nodes}]
    assert all(d.startswith("/tmp/glr-") and len(d) > len("/tmp/glr-") + 16 for d in dirs), dirs
    assert not any(os.path.lexists(d) for d in dirs), dirs
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        # the SSH login environment of every node (the stand-in ssh passes it on): secrets that
        # must never reach ray start, and a stray token that must never override the run's
        "HF_TOKEN": "hf-secret-value",
        "WANDB_API_KEY": "wandb-secret-value",
        "RAY_AUTH_TOKEN": "stray-token",
        "UNLISTED_VAR": "dropped",
        **extra_env,
    }
    try:
        r = subprocess.run([BASH, str(script)], env=env, capture_output=True, text=True, timeout=120)
    finally:
        for d in dirs:  # made by the script (fresh, under /tmp, names with a random part)
            shutil.rmtree(d, ignore_errors=True)
    return r, tmp / "log"


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in (log / "ray-calls.jsonl").read_text().splitlines()]


def _plan(recipe, alloc, bin_dir: Path):
    return build_plan(recipe, alloc, run_id="t-script", python=str(bin_dir / "python3"))


@pytest.mark.parametrize("where", ["env.vars", "base_dir", "probe_paths"])
def test_shell_syntax_in_values_is_never_evaluated_and_reaches_ray_exactly(where, tmp_path, write_hostfile):
    marker = tmp_path / "marker"
    marker.mkdir()
    payloads = _payloads(marker)
    sets: list[str] = []
    if where == "env.vars":
        sets = [f"env.vars.HOSTILE_{i}={json.dumps(p)}" for i, p in enumerate(payloads)]
    elif where == "base_dir":
        sets = [f"run.base_dir={json.dumps('/tmp/x ' + payloads[0] + payloads[2])}"]
    else:
        # paths expand {placeholders}: a literal brace is written twice
        sets = [
            f"trainer.probe_paths={json.dumps([p.replace('{', '{{').replace('}', '}}') for p in payloads])}"
        ]
    recipe = load_recipe("local-probe", sets)
    alloc = read_hostfile(write_hostfile("10.0.0.1 slots=2\nroot@10.0.0.2 slots=2\nfe80::1%eth0 slots=2\n"))
    bin_dir, _ = _stand_ins(tmp_path, 6)
    plan = _plan(recipe, alloc, bin_dir)
    r, log = _run_script(plan, tmp_path, {})
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(marker.iterdir()) == [], "a shell evaluated an input"
    calls = _calls(log)
    starts = [c for c in calls if c["argv"][0] == "start"]
    assert sorted(c["argv"] for c in starts) == sorted(n.ray_start[1:] for n in plan.nodes)
    (submit,) = [c for c in calls if c["argv"][:2] == ["job", "submit"]]
    assert submit["argv"] == plan.submit[1:]
    assert submit["runtime_env"]["env_vars"] == plan.env_vars
    dests = (log / "ssh-destinations").read_text().split()
    assert set(dests) == {"10.0.0.1", "root@10.0.0.2", "fe80::1%eth0"}


def test_ray_start_gets_the_allowlist_and_the_plan_never_the_login_secrets(tmp_path, write_hostfile):
    recipe = load_recipe("local-probe", ['env.secret_vars=["WANDB_API_KEY"]'])
    alloc = read_hostfile(write_hostfile("10.0.0.1 slots=1\n10.0.0.2 slots=1\n"))
    bin_dir, _ = _stand_ins(tmp_path, 2, nodes=2)
    plan = _plan(recipe, alloc, bin_dir)
    r, log = _run_script(plan, tmp_path, {"LC_ALL": "C.UTF-8", "NVIDIA_VISIBLE_DEVICES": "all"})
    assert r.returncode == 0, r.stderr[-3000:]
    calls = _calls(log)
    for call, node in zip([c for c in calls if c["argv"][0] == "start"], plan.nodes, strict=True):
        env = call["env"]
        assert not {"HF_TOKEN", "WANDB_API_KEY", "RAY_AUTH_TOKEN", "UNLISTED_VAR"} & set(env), sorted(env)
        assert env["RAY_AUTH_TOKEN_PATH"] == node.env["RAY_AUTH_TOKEN_PATH"]
        assert {k: env[k] for k in node.env} == node.env
        assert env["LC_ALL"] == "C.UTF-8" and env["NVIDIA_VISIBLE_DEVICES"] == "all"
        assert env["PATH"].startswith(str(bin_dir))
    # health-check, status and the submit never see the stray RAY_AUTH_TOKEN either
    assert all("RAY_AUTH_TOKEN" not in c["env"] for c in calls)
    (submit,) = [c for c in calls if c["argv"][:2] == ["job", "submit"]]
    # the secret goes only into the runtime env file, read from the launching shell at submit
    assert submit["runtime_env"]["env_vars"]["WANDB_API_KEY"] == "wandb-secret-value"
    assert "wandb-secret-value" not in json.dumps(submit["argv"])


@pytest.mark.parametrize(
    "line",
    [
        "h1;touch${IFS}x slots=1",
        "$(touch${IFS}x) slots=1",
        "-oProxyCommand=x slots=1",
        "-l@h1 slots=1",
        "a`b`@h1 slots=1",
        "fe80::1%$(x) slots=1",
        "fe80::1%eth0;x slots=1",
        "h1 slots=1 ssh_user=-oProxyCommand=x",
    ],
)
def test_host_names_users_and_zone_ids_that_cannot_be_valid_never_reach_a_script(line, write_hostfile):
    with pytest.raises(HostfileError, match=r"hostfile:1: "):
        read_hostfile(write_hostfile(line + "\n"))


def test_a_local_plan_runs_its_node_commands_without_ssh(tmp_path):
    from glmlaunch.hosts import local_allocation

    recipe = load_recipe("local-probe", [f"env.vars.HOSTILE={json.dumps(_payloads(tmp_path / 'marker')[0])}"])
    (tmp_path / "marker").mkdir()
    bin_dir, log = _stand_ins(tmp_path, 0, nodes=1)
    (bin_dir / "ssh").write_text("#!/bin/sh\necho ssh must not run >&2\nexit 99\n")
    plan = _plan(recipe, local_allocation(0), bin_dir)
    assert plan.local
    r, log = _run_script(plan, tmp_path, {})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ssh must not run" not in r.stderr and not (log / "ssh-destinations").exists()
    assert list((tmp_path / "marker").iterdir()) == []
    (start,) = [c for c in _calls(log) if c["argv"][0] == "start"]
    assert start["argv"] == plan.nodes[0].ray_start[1:] and "HF_TOKEN" not in start["env"]


def test_the_join_wait_counts_nodes_and_gpus(tmp_path, write_hostfile):
    # two of three nodes up: the script must not go on to submit (its wait is bounded; the
    # stand-in answers at once, so the test only checks the condition, with a short loop)
    recipe = load_recipe("local-probe")
    alloc = read_hostfile(write_hostfile("10.0.0.1 slots=1\n10.0.0.2 slots=1\n10.0.0.3 slots=1\n"))
    bin_dir, log = _stand_ins(tmp_path, 3, nodes=2)
    plan = _plan(recipe, alloc, bin_dir)
    text = render_bash(plan).replace("$(seq 120)", "$(seq 2)").replace("sleep 5", "sleep 0")
    script = tmp_path / "short.sh"
    script.write_text(text)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    try:
        r = subprocess.run([BASH, str(script)], env=env, capture_output=True, text=True, timeout=120)
    finally:
        for d in [plan.state_dir, *{n.ray_dir for n in plan.nodes}]:
            assert d.startswith("/tmp/glr-") and len(d) > len("/tmp/glr-") + 16
            shutil.rmtree(d, ignore_errors=True)
    assert r.returncode == 1 and "did not reach 3 nodes and 3 GPUs" in r.stderr, r.stderr[-2000:]
    assert not [c for c in _calls(log) if c["argv"][:2] == ["job", "submit"]]


TEMPLATES = sorted(p.stem for p in (Path(__file__).parents[2] / "glmlaunch" / "templates").glob("*.toml"))


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders_a_script_that_runs_and_evaluates_no_input(template, tmp_path, write_hostfile):
    marker = tmp_path / "marker"
    marker.mkdir()
    payloads = _payloads(marker)
    sets = [f"env.vars.HOSTILE_{i}={json.dumps(p)}" for i, p in enumerate(payloads)]
    sets.append(f"run.base_dir={json.dumps('/tmp/x ' + payloads[0] + payloads[2])}")
    recipe = load_recipe(template, sets)
    n = recipe.cluster.nodes or 3
    alloc = read_hostfile(write_hostfile("".join(f"10.0.0.{i} slots=8\n" for i in range(1, n + 1))))
    bin_dir, _ = _stand_ins(tmp_path, 8 * n, nodes=n)
    plan = _plan(recipe, alloc, bin_dir)
    r, log = _run_script(plan, tmp_path, {k: "secret" for k in plan.secret_env})
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(marker.iterdir()) == [], "a shell evaluated an input"
    calls = _calls(log)
    assert sorted(c["argv"] for c in calls if c["argv"][0] == "start") == sorted(
        n.ray_start[1:] for n in plan.nodes
    )
    (submit,) = [c for c in calls if c["argv"][:2] == ["job", "submit"]]
    assert submit["argv"] == plan.submit[1:]
    want = {**plan.env_vars, **{k: "secret" for k in plan.secret_env}}
    assert submit["runtime_env"]["env_vars"] == want
