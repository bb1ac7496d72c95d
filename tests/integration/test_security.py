"""Another local user attacks a launch on this machine (shared ``/tmp``): the launch refuses or
ignores what it planted, and nothing of it is touched.

Self-contained: it does not use the test cluster of tests/harness. It runs ``glmlaunch`` with
the local transport on this machine (preflight, the token write, and in one test a real one-node
``ray start`` on ports 47379.. / 48265, with 0 GPUs, a minute at most) and needs root: it creates the user
``glmattacker`` (``useradd -M``) when missing, runs the attacker's commands as that user with
``setpriv --reuid --regid --clear-groups``, and removes the user (if it made it) and everything
either side created afterwards.

Run it alone, as root, from the repository root::

    .venv/bin/python -m pytest tests/integration/test_security.py -v

(tests/integration/conftest.py marks it ``integration``; it skips when not root or when
setpriv/useradd are missing.)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from glmlaunch import nodeops
from glmlaunch.errors import TransportError, UsageError
from glmlaunch.render import render_json
from glmlaunch.run import Run, plan_launch
from glmlaunch.runs import RunDir
from glmlaunch.transport.local import LocalTransport

pytestmark = pytest.mark.integration

ATTACKER = "glmattacker"
PORTS = {"port_base": 47379, "dashboard_port": 48265}  # away from the other integration tests' clusters
GLMLAUNCH = Path(sys.executable).parent / "glmlaunch"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def attacker():
    """(uid, gid) of the local user ``glmattacker``, created for this module when missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root (creates a user and runs commands as it)")
    for tool in ("setpriv", "useradd", "userdel"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    created = subprocess.run(["id", "-u", ATTACKER], capture_output=True).returncode != 0
    if created:
        subprocess.run(
            ["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", ATTACKER], check=True
        )
    uid = int(subprocess.run(["id", "-u", ATTACKER], capture_output=True, text=True, check=True).stdout)
    gid = int(subprocess.run(["id", "-g", ATTACKER], capture_output=True, text=True, check=True).stdout)
    assert uid != 0
    yield uid, gid
    if created:
        subprocess.run(["userdel", ATTACKER], check=False)


def as_attacker(who: tuple[int, int], script: str) -> None:
    """Run ``sh -c script`` as the attacker (umask 0: everything it makes is open to all)."""
    uid, gid = who
    subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            f"umask 0; {script}",
        ],
        check=True,
        cwd="/",
        timeout=30,
    )


@pytest.fixture
def cleanup():
    """Paths to remove (as root) after the test, whoever made them."""
    paths: list[str] = []
    yield paths
    for p in paths:
        if os.path.islink(p) or os.path.isfile(p):
            os.unlink(p)
        elif os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """A current-run pointer of our own, no usage stats."""
    state = tmp_path / "glmlaunch-state"
    monkeypatch.setenv("GLMLAUNCH_STATE_DIR", str(state))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def victim():
    """A process of root's that a planted pid file names."""
    p = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield p
    p.kill()
    p.wait()


def _record_of(p: subprocess.Popen) -> dict:
    return {
        "pid": p.pid,
        "starttime": nodeops._stat(p.pid)[2],
        "host": socket.gethostname(),
        "boot_id": nodeops.boot_id(),
    }


def _procs_naming(text: str) -> list[int]:
    """PIDs whose command line names ``text`` (a run's state directory)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        out.append(int(name))
            except OSError:
                pass
    return out


def _plan(run_id: str | None = None):
    p = plan_launch("local-probe", local=True, python=sys.executable, run_id=run_id, **PORTS)
    assert not p.findings.errors, [str(f) for f in p.findings.errors]
    return p


# ----------------------------------------------------------------------------- 1. the state directory


@pytest.mark.parametrize("taken", ["state-dir", "ray-dir"])
def test_a_dir_taken_first_by_another_user_is_refused_and_nothing_planted_is_used(
    taken, attacker, victim, tmp_path, cleanup
):
    """Worst case: the attacker knows the run's directory names (random part included) and makes
    one first, open to all: the run's state dir with a symlinked token file, a symlinked log and a
    pid file naming a process of root's, or the node's Ray dir. The launch refuses it, naming it;
    nothing is written through the symlinks, the named process lives, no ray start runs, and no
    directory of the run is left behind."""
    p = _plan()
    sd, n0, ray = p.plan.state_dir, p.plan.nodes[0].state_dir, p.plan.nodes[0].ray_dir
    cleanup += [sd, ray]
    target = tmp_path / "target"
    target.write_text("keep me")
    target.chmod(0o644)
    if taken == "state-dir":
        bad = sd
        pidrec = json.dumps(_record_of(victim))
        as_attacker(
            attacker,
            f"mkdir -m 777 {sd} {n0} && ln -s {target} {n0}/auth_token && ln -s {target} {n0}/ray-start.log "
            f"&& printf '%s' '{pidrec}' > {n0}/ray.pid",
        )
    else:
        bad = ray
        as_attacker(attacker, f"mkdir -m 777 {ray} && ln -s {target} {ray}/ray")
    run = Run(p.plan, LocalTransport(), recipe=p.recipe, join_timeout_s=60)

    with pytest.raises(TransportError) as e:
        run.up(runs_dir=str(tmp_path / "runs"))

    assert bad in e.value.message and (
        "not this run's directory" in e.value.message or "not created by this run" in e.value.message
    ), e.value.message
    time.sleep(0.5)
    assert victim.poll() is None  # a planted pid file is never acted on
    assert target.read_text() == "keep me"
    assert os.lstat(bad).st_uid == attacker[0]  # not taken over, not removed
    if taken == "state-dir":
        assert os.path.islink(f"{n0}/auth_token") and os.path.islink(f"{n0}/ray-start.log")
        assert json.loads(Path(f"{n0}/ray.pid").read_text())["pid"] == victim.pid  # left as it was
        assert not os.path.exists(ray)
    else:
        assert os.path.islink(f"{ray}/ray") and not os.path.exists(sd)  # the dirs it made are gone again
    assert _procs_naming(sd) == [] and _procs_naming(ray) == []
    m = RunDir.open(run.path).manifest
    assert m.state == "down" and all(not rec.created for rec in m.nodes.values())


def test_the_old_guessable_name_taken_by_another_user_changes_nothing(
    attacker, tmp_path, cleanup, monkeypatch
):
    """The attacker makes ``/tmp/glr-<run-id>`` (the name before the random part) with a symlinked
    token file: the launch uses its own new directory, a real ``ray start`` runs there with an
    explicit environment (no secrets, no stray RAY_AUTH_TOKEN), and ``down --purge`` removes only
    what the run made."""
    run_id = f"sec-{secrets.token_hex(3)}"
    guess = f"/tmp/glr-{run_id}"
    cleanup.append(guess)
    target = tmp_path / "target"
    target.write_text("keep me")
    as_attacker(attacker, f"mkdir -m 777 {guess} {guess}/n0 && ln -s {target} {guess}/n0/auth_token")
    monkeypatch.setenv("WANDB_API_KEY", "wk-must-not-leak")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "stray-token-must-lose")
    p = _plan(run_id)
    sd, n0, ray = p.plan.state_dir, p.plan.nodes[0].state_dir, p.plan.nodes[0].ray_dir
    assert sd.startswith(guess + "-") and len(sd) == len(guess) + 17
    cleanup += [sd, ray]
    run = Run(p.plan, LocalTransport(), recipe=p.recipe, join_timeout_s=120)
    try:
        status = run.up(runs_dir=str(tmp_path / "runs"))
        assert status.ok, status
        for d in (sd, n0, ray):
            st = os.lstat(d)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700, d
        assert stat.S_IMODE(os.lstat(f"{n0}/auth_token").st_mode) == 0o600
        assert stat.S_IMODE(os.lstat(f"{n0}/ray.pid").st_mode) == 0o600
        pid = run.cluster.nodes["localhost"].pid
        assert pid and run.cluster.nodes["localhost"].boot_id == nodeops.boot_id()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {e.split(b"=", 1)[0].decode() for e in environ if b"=" in e}
        assert "WANDB_API_KEY" not in names and "RAY_AUTH_TOKEN" not in names, names
        assert f"RAY_AUTH_TOKEN_PATH={n0}/auth_token".encode() in environ
        m = RunDir.open(run.path).manifest
        assert m.state_dir == sd and m.nodes["localhost"].created == [sd, n0, ray]
    finally:
        run.down(purge=True)
    assert not os.path.exists(sd) and not os.path.exists(ray)  # what the run made is gone
    assert os.path.islink(f"{guess}/n0/auth_token") and target.read_text() == "keep me"  # the rest untouched
    assert os.lstat(guess).st_uid == attacker[0]
    assert _procs_naming(sd) == []


# ----------------------------------------------------------------------------- 2. the run directory


def test_a_run_directory_planted_by_another_user_is_not_trusted(attacker, tmp_path, cleanup):
    """A runs folder others can write to (``/tmp/...``, mode 1777): the attacker plants a run
    whose plan.json has a setup line. ``status``/``down`` refuse it, naming it; the line never runs."""
    runs = Path(tempfile.mkdtemp(prefix="glmsec-runs-"))
    cleanup.append(str(runs))
    runs.chmod(0o1777)
    pwned = f"/tmp/glmsec-pwned-{secrets.token_hex(4)}"
    cleanup.append(pwned)
    plan = _plan().plan.model_copy(update={"setup": [f"touch {pwned}"]})
    staged = Path(tempfile.mkdtemp(prefix="glmsec-staged-"))  # readable by the attacker (tmp_path is not)
    cleanup.append(str(staged))
    staged.chmod(0o755)
    (staged / "plan.json").write_text(render_json(plan))
    (staged / "manifest.json").write_text(
        json.dumps({"run_id": plan.run_id, "state": "up", "transport": {"kind": "local"}, "nodes": {}})
    )
    for f in staged.iterdir():
        f.chmod(0o644)
    evil = runs / "evil"
    as_attacker(attacker, f"mkdir {evil} && cp {staged}/plan.json {staged}/manifest.json {evil}/")

    with pytest.raises(UsageError) as e:
        Run.open(evil)
    assert str(evil) in e.value.message and "not trusted" in e.value.message

    for cmd in ("status", "down"):
        r = subprocess.run(
            [str(GLMLAUNCH), cmd, "--run", str(evil)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "not trusted" in r.stderr and str(evil) in r.stderr.replace("\n", ""), r.stderr
    assert not os.path.exists(pwned)
