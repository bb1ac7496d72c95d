"""One exit-code table for every command (glmlaunch.errors): bad input is exit 2 with one
message and a fix, no traceback, and nothing touched (no run directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

RECIPE_COMMANDS = ["check", "render", "up", "launch"]


def _bad(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    assert res.output.count("error:") == 1, res.output
    assert "fix:" in res.output, res.output
    for n in needles:
        assert n in res.output, res.output


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLMLAUNCH_STATE_DIR", str(tmp_path / "state"))
    for k in ("SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    yield
    assert not Path("runs").exists(), "a bad input created a run directory"


@pytest.mark.parametrize("cmd", ["hosts", *RECIPE_COMMANDS])
def test_missing_hostfile(cli, cmd, tmp_path):
    args = [cmd] + (["local-probe"] if cmd != "hosts" else [])
    _bad(cli(*args, "--hostfile", tmp_path / "nope"), "hostfile not found")


@pytest.mark.parametrize("cmd", RECIPE_COMMANDS)
def test_unknown_recipe(cli, cmd):
    _bad(cli(cmd, "no-such-recipe", "--local"), "recipe 'no-such-recipe' not found")


@pytest.mark.parametrize("cmd", RECIPE_COMMANDS)
def test_unknown_set_key(cli, cmd):
    _bad(cli(cmd, "local-probe", "--local", "--set", "cluster.nodez=2"), "cluster.nodez: unknown key")


@pytest.mark.parametrize("cmd", RECIPE_COMMANDS)
def test_conflicting_options(cli, cmd, hostfile3):
    _bad(
        cli(cmd, "local-probe", "--local", "--hostfile", hostfile3),
        "--local and --hostfile exclude each other",
    )


def test_conflicting_gpus_for_hosts(cli, hostfile3):
    _bad(
        cli("hosts", "--hostfile", hostfile3, "--gpus-per-node", "4"),
        "says 8 GPUs per node but --gpus-per-node 4",
    )


@pytest.mark.parametrize("cmd", ["submit", "status", "logs", "down"])
def test_unknown_run(cli, cmd):
    _bad(cli(cmd, "--run", "no-such-run"), "not a glmlaunch run directory")


@pytest.mark.parametrize("cmd", ["submit", "status", "logs", "down"])
def test_no_current_run(cli, cmd):
    _bad(cli(cmd), "no current run")


def test_render_equals_launch_dry_run(cli, hostfile8):
    """One discovery policy and one plan: `render` and `launch --dry-run` print the same script."""
    args = ["glm45-355b-a32b-gspo", "--hostfile", hostfile8, "--python", "/opt/p/bin/python3"]
    render = cli("render", *args, "--format", "bash")
    dry = cli("launch", *args, "--dry-run", "--no-deep-check")
    assert render.exit_code == dry.exit_code == 0, (render.output, dry.output)

    def script(text: str) -> str:  # the run id is new each time
        import re

        return re.sub(
            r"\d{8}-\d{6}-[0-9a-f]{4}|[0-9a-f]{16}",  # and the state dirs' random part
            "RUN",
            text[text.index("#!/usr/bin/env bash") : text.rindex("\n# 5.")],
        )

    assert script(render.stdout) == script(dry.stdout)


def test_render_equals_launch_dry_run_without_hostfile(cli, monkeypatch, tmp_path):
    """No hostfile anywhere: both use the recipe's node count as placeholders."""
    from glmlaunch import hosts

    monkeypatch.setattr(hosts, "DEFAULT_HOSTFILE", str(tmp_path / "none"))
    args = ["glm45-355b-a32b-gspo", "--python", "/opt/p/bin/python3"]
    render, dry = cli("render", *args), cli("launch", *args, "--dry-run", "--no-deep-check")
    assert render.exit_code == dry.exit_code == 0, (render.output, dry.output)
    assert "8 nodes x 8 GPUs" in render.stdout and "8 nodes x 8 GPUs" in dry.stdout


def test_library_logs_go_to_the_state_dir_not_the_terminal(tmp_path, capsys):
    """paramiko's tracebacks for an unreachable host (logged at ERROR) and Ray's job SDK stay off
    the terminal; glmlaunch's own warnings do not."""
    import logging

    from glmlaunch.cli import _setup_logging

    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        _setup_logging()
        logging.getLogger("paramiko.transport").error(
            "Exception (client): Error reading SSH protocol banner\nTraceback ..."
        )
        logging.getLogger("glmlaunch.run").warning("could not stop the job")
    finally:
        for h in root.handlers[len(before[0]) :]:
            h.close()
        root.handlers[:], root.level = before
    err = capsys.readouterr().err
    assert "could not stop the job" in err and "paramiko" not in err and "Traceback" not in err
    assert "Error reading SSH protocol banner" in (tmp_path / "state" / "glmlaunch.log").read_text()


@pytest.mark.parametrize("cmd", ["status", "down"])
def test_unreadable_current_pointer(cli, cmd, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    (state / "current").write_bytes(b"\xff\xfe")
    (state / "current").chmod(0o600)
    _bad(cli(cmd), "current-run pointer cannot be read")


def test_join_timeout_must_be_positive(cli):
    _bad(
        cli("up", "local-probe", "--local", "--join-timeout", "-1"),
        "--join-timeout -1.0: must be a number of seconds more than 0",
    )


def test_check_takes_the_port_options(cli, hostfile8):
    res = cli("check", "glm45-355b-a32b-gspo", "--hostfile", hostfile8, "--port-base", "65530")
    assert res.exit_code == 1 and "ports.base: port base 65530 is out of range" in res.output, res.output
