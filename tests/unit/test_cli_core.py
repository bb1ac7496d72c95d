"""The pure CLI commands through typer's CliRunner: hosts, check, render, templates."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

GSPO = "glm45-355b-a32b-gspo"
TEMPLATES = ["glm45-355b-a32b-grpo", "glm45-355b-a32b-gspo", "glm45-air-p2p", "local-probe"]


def flat(text: str) -> str:
    return " ".join(text.split())


def clean(res, code: int = 0) -> str:
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    return res.output


def table_rows(out: str) -> list[list[str]]:
    """The body rows of a Rich table, as stripped cells."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]


# ----------------------------------------------------------------------------- hosts


def test_hosts_table(cli, write_hostfile):
    p = write_hostfile("# rack\nnode1 slots=8\nroot@10.0.0.2 slots=8 ssh_port=2222\n[fe80::3]:8\n")
    out = clean(cli("hosts", "--hostfile", p))
    assert f"3 nodes from {p}" in out
    assert table_rows(out) == [
        ["0", "head", "node1", "10.0.0.1", "8", "-", f"{p}:2"],
        ["1", "worker", "10.0.0.2", "10.0.0.2", "8", "root@:2222", f"{p}:3"],
        ["2", "worker", "fe80::3", "fe80::3", "8", "-", f"{p}:4"],
    ]


def test_hosts_head(cli, hostfile8):
    out = clean(cli("hosts", "--hostfile", hostfile8, "--head", "node5"))
    rows = table_rows(out)  # columns: # role host address GPUs ssh line
    assert [r[1] for r in rows] == ["head"] + ["worker"] * 7
    assert rows[0][3] == "10.0.0.5" and rows[0][6] == f"{hostfile8}:5"
    assert [r[3] for r in rows[1:]] == [f"10.0.0.{i}" for i in (1, 2, 3, 4, 6, 7, 8)]


def test_hosts_gpus_fill_in(cli, write_hostfile):
    out = clean(cli("hosts", "--hostfile", write_hostfile("10.0.0.1\n10.0.0.2\n"), "--gpus-per-node", "4"))
    assert [r[4] for r in table_rows(out)] == ["4", "4"]


# ----------------------------------------------------------------------------- check


@pytest.mark.parametrize("template", TEMPLATES)
def test_check_good_recipes_exit_0(cli, hostfile8, hostfile3, template):
    hf = hostfile3 if template == "local-probe" else hostfile8
    out = clean(cli("check", template, "--hostfile", hf))
    assert "error " not in out


def test_check_lists_all_failures(cli, hostfile8):
    res = cli(
        "check",
        GSPO,
        "--hostfile",
        hostfile8,
        "--set",
        "parallelism.cp=4",  # world % TP·PP·CP
        "--set",
        "sglang.enable_dp_attention=false",  # dp without dp-attention
        "--set",
        "algorithm.kl_coef=0.1",  # kl both non-zero
        "--set",
        "algorithm.kl_loss_coef=0.1",
        "--set",
        "optimizer.precision_aware=false",  # cpu offload without precision-aware
        "--set",
        "weight_transfer.mode=p2p",  # p2p with colocate
        "--set",
        "rollout.over_sampling_batch_size=8",  # over-sampling < rbs
    )
    out = flat(clean(res, 1))
    expected = [
        "world size 64 (actor 8 nodes × 8 GPUs) is not divisible by TP·PP·CP = 8·4·4 = 128",
        "sglang.dp_size: dp_size=4 needs sglang.enable_dp_attention = true",
        "algorithm.kl_coef: kl_coef=0.1 and kl_loss_coef=0.1 are both non-zero",
        "optimizer.precision_aware: optimizer.cpu_offload needs precision_aware = true",
        "weight_transfer.mode: 'p2p' weight transfer does not work with cluster.colocate = true",
        "rollout.over_sampling_batch_size: over_sampling_batch_size=8 < rollout_batch_size=128",
    ]
    for msg in expected:
        assert msg in out, msg
    # errors are listed before warnings
    assert out.index("error ") < out.index("warning ") if "warning " in out else True


def test_check_warnings_only_exit_0(cli, hostfile8):
    # the GRPO template warns (a GSPO-sized eps_clip under token-level GRPO) but has no errors
    out = flat(clean(cli("check", "glm45-355b-a32b-grpo", "--hostfile", hostfile8)))
    assert "warning algorithm.eps_clip" in out


def test_check_with_placeholder_nodes(cli):
    out = clean(cli("check", GSPO, "--nodes", "8"))
    assert "8 nodes x 8 GPUs" in flat(out)


def test_check_recipe_file_with_set(cli, tmp_path, hostfile8):
    from glmlaunch.recipe import template_path

    p = tmp_path / "mine.toml"
    p.write_text(template_path(GSPO).read_text().replace('name = "glm45-355b-a32b-gspo"', 'name = "mine"'))
    out = clean(
        cli("check", p, "--hostfile", hostfile8, "--set", "parallelism.pp=2", "--set", "parallelism.cp=4")
    )
    assert "checks of mine on 8 nodes x 8 GPUs" in flat(out)


# ----------------------------------------------------------------------------- render


@pytest.mark.parametrize("template", TEMPLATES)
def test_render_json(cli, hostfile8, hostfile3, template):
    hf = hostfile3 if template == "local-probe" else hostfile8
    res = cli("render", template, "--hostfile", hf, "--format", "json", "--run-id", "cli-test")
    clean(res)
    d = json.loads(res.stdout)
    assert {"argv", "env_vars", "nodes", "submit"} <= set(d)
    assert d["run_id"] == "cli-test" and d["head_address"] == "10.0.0.1"
    assert d["submit"][-len(d["argv"]) :] == d["argv"]
    assert [n["role"] for n in d["nodes"]][0] == "head"
    assert all("ray_start" in n for n in d["nodes"])


def test_render_json_overrides(cli, hostfile8):
    res = cli(
        "render",
        GSPO,
        "--hostfile",
        hostfile8,
        "--format",
        "json",
        "--set",
        "algorithm.eps_clip=3e-4",
        "--head",
        "10.0.0.4",
    )
    clean(res)
    d = json.loads(res.stdout)
    argv = d["argv"]
    assert argv[argv.index("--eps-clip") + 1] == "3e-4"
    assert d["head_address"] == "10.0.0.4" and d["env_vars"]["MASTER_ADDR"] == "10.0.0.4"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("template", TEMPLATES)
def test_render_bash_parses(cli, hostfile8, hostfile3, tmp_path, template):
    hf = hostfile3 if template == "local-probe" else hostfile8
    res = cli("render", template, "--hostfile", hf, "--format", "bash")
    clean(res)
    script = tmp_path / "plan.sh"
    script.write_text(res.stdout)
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert res.stdout.startswith("#!/usr/bin/env bash\n")
    assert "${MASTER_ADDR}" not in res.stdout and "$BASE_DIR" not in res.stdout


def test_render_placeholder_nodes(cli):
    res = cli("render", GSPO, "--nodes", "8", "--format", "json")
    clean(res)
    d = json.loads(res.stdout)
    assert [n["address"] for n in d["nodes"]] == [f"node-{i}" for i in range(8)]


def test_render_bad_format(cli, hostfile8):
    out = clean(cli("render", GSPO, "--hostfile", hostfile8, "--format", "yaml"), 2)
    assert "--format yaml: unknown format" in flat(out)


def test_render_reports_findings_on_stderr(cli, hostfile8):
    res = cli("render", GSPO, "--hostfile", hostfile8, "--format", "json", "--set", "parallelism.cp=4")
    clean(res)  # render prints the plan even when checks fail; `check` is the gate
    json.loads(res.stdout)
    assert "error(s)" in res.stderr and "glmlaunch check" in res.stderr


# ----------------------------------------------------------------------------- templates


def test_templates(cli):
    out = clean(cli("templates"))
    for name in TEMPLATES:
        assert name in out
    assert "GLM-4.5-355B-A32B GSPO" in flat(out)


def test_nodes_without_gpus_per_node_uses_the_recipe(cli):
    # the template sets cluster.gpus_per_node = 8; the GRPO template only sets hardware
    assert "(recipe glm45-355b-a32b-gspo, 8 nodes x 8 GPUs)" in clean(cli("render", GSPO, "--nodes", "8"))
    out = flat(cli("check", "glm45-355b-a32b-grpo", "--nodes", "8", "--set", "cluster.hardware=GB200").output)
    assert "checks of glm45-355b-a32b-grpo on 8 nodes x 4 GPUs" in out
    assert "world size 32 (actor 8 nodes × 4 GPUs)" in out


def test_check_recipe_name_with_suffix(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = flat(clean(cli("check", "local-probe.toml")))
    assert "local-probe" in out and "not found" not in out
