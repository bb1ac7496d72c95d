"""Trust on shared machines (the security issue): ``/tmp`` is shared and the Ray token gives
root-equivalent access to the cluster, so

1. state directories are made fresh (mode 700, never through a symlink) under an unpredictable
   name, and one that is not the run's own is refused, naming it; the token, pid files and logs
   are new files (``O_EXCL|O_NOFOLLOW``);
2. ``ray start`` and the node operations get an explicit environment (an allowlist, the plan's
   variables, never a secret, never ``RAY_AUTH_TOKEN``);
3. ``down`` acts on a recorded process only where host, boot id, PID and start time all match;
4. ``status``/``down`` trust a run directory only if it and its files are the user's and not
   writable by others; ``down --purge`` removes only what this run created;
5. no part of the token in any argv or file other than the mode-600 token files.

nodeops functions are called directly in tmp_path; the cluster side runs on the fake transport
(tests/unit/fakes.py). Another user is simulated by making ``os.geteuid`` answer another uid.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import FakeClock, FakeHost, FakeTransport, install

from glmlaunch import nodeops
from glmlaunch.cluster import RayCluster
from glmlaunch.errors import RecipeError, TransportError, UsageError
from glmlaunch.hosts import read_hostfile
from glmlaunch.plan import build_plan
from glmlaunch.recipe import load_recipe
from glmlaunch.render import render_bash
from glmlaunch.run import Run
from glmlaunch.runs import RunDir, RunState
from glmlaunch.transport import Target, put_text_command
from glmlaunch.transport.local import LocalTransport

H1, H2, H3 = "10.0.0.1", "10.0.0.2", "10.0.0.3"
SECRETS = {
    "WANDB_API_KEY": "wk-secret-1",
    "HF_TOKEN": "hf-secret-2",
    "MY_SERVICE_SECRET_X": "secret-3",
    "DB_PASSWORD": "secret-4",
    "RAY_AUTH_TOKEN": "stray-ray-token",
}


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def private(tmp_path: Path, name: str = "run") -> Path:
    d = tmp_path / name
    d.mkdir(mode=0o700)
    d.chmod(0o700)
    return d


def other_user(monkeypatch) -> None:
    """From now on nodeops and runs see everything made so far as another user's."""
    uid = os.geteuid() + 4242
    monkeypatch.setattr(nodeops.os, "geteuid", lambda: uid)


def sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def _rec(p: subprocess.Popen) -> dict:
    return {
        "pid": p.pid,
        "starttime": nodeops._stat(p.pid)[2],
        "host": socket.gethostname(),
        "boot_id": nodeops.boot_id(),
    }


@pytest.fixture
def victim():
    p = sleeper()
    yield p
    p.kill()
    p.wait()


# ============================================================================= 1. state dirs, node side


def test_a_new_state_dir_is_mode_700_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        assert nodeops.make_private_dir(str(tmp_path / "d")) is True
    finally:
        os.umask(old)
    assert mode(tmp_path / "d") == 0o700 and os.lstat(tmp_path / "d").st_uid == os.geteuid()


def test_an_existing_node_dir_is_refused_even_a_private_one_of_ours(tmp_path):
    d = private(tmp_path)
    with pytest.raises(nodeops.Refused, match=re.escape(f"{d} exists already: not created by this run")):
        nodeops.make_private_dir(str(d))


@pytest.mark.parametrize("how", ["mode-777", "mode-755", "symlink", "another-owner", "a-file"])
def test_an_existing_run_dir_that_is_not_ours_is_refused_naming_it(how, tmp_path, monkeypatch):
    d = tmp_path / "glr-x"
    if how.startswith("mode"):
        d.mkdir()
        d.chmod(int(how[-3:], 8))
    elif how == "symlink":
        target = private(tmp_path, "elsewhere")
        d.symlink_to(target)
    elif how == "a-file":
        d.write_text("")
    else:
        private(tmp_path, "glr-x")
        other_user(monkeypatch)
    with pytest.raises(nodeops.Refused) as e:
        nodeops.make_private_dir(str(d), shared=True)
    assert str(d) in str(e.value)
    # and so is a token write into it, which leaves nothing there
    before = sorted(os.listdir(d)) if d.is_dir() else None
    with pytest.raises(nodeops.Refused):
        nodeops.write_secret(f"{d}/n0/auth_token", "tok\n", 0o600, [(str(d), True), (f"{d}/n0", False)])
    assert (sorted(os.listdir(d)) if d.is_dir() else None) == before


def test_write_secret_makes_both_dirs_and_a_600_token(tmp_path):
    run = tmp_path / "glr-x"
    res = nodeops.write_secret(
        f"{run}/n0/auth_token", "tok\n", 0o600, [(str(run), True), (f"{run}/n0", False)]
    )
    assert res["created"] == [str(run), f"{run}/n0"]
    assert mode(run) == mode(run / "n0") == 0o700 and mode(run / "n0" / "auth_token") == 0o600
    assert (run / "n0" / "auth_token").read_text() == "tok\n"
    # a second node of the same machine shares the run's directory; its own is new
    res = nodeops.write_secret(
        f"{run}/n1/auth_token", "tok\n", 0o600, [(str(run), True), (f"{run}/n1", False)]
    )
    assert res["created"] == [f"{run}/n1"]


def test_a_refused_write_leaves_none_of_the_dirs_it_made(tmp_path, monkeypatch):
    run, ray = tmp_path / "glr-x", tmp_path / "glr-r-n0"
    ray.mkdir()
    ray.chmod(0o777)  # another user took the Ray directory's name
    dirs = [(str(run), True), (f"{run}/n0", False), (str(ray), False)]
    with pytest.raises(nodeops.Refused, match=str(ray)):
        nodeops.write_secret(f"{run}/n0/auth_token", "tok\n", 0o600, dirs)
    assert not run.exists() and ray.is_dir()


@pytest.mark.parametrize("planted", ["file", "symlink", "dangling-symlink"])
def test_the_token_never_goes_into_a_planted_file_or_through_a_symlink(planted, tmp_path):
    d = private(tmp_path)
    target = tmp_path / "target"
    target.write_text("keep me")
    tok = d / "auth_token"
    if planted == "file":
        tok.write_text("old")
    elif planted == "symlink":
        tok.symlink_to(target)
    else:
        tok.symlink_to(tmp_path / "nowhere")
    with pytest.raises(nodeops.Refused, match="exists already"):
        nodeops.write_secret(str(tok), "tok\n")
    assert target.read_text() == "keep me" and not (tmp_path / "nowhere").exists()


def test_the_write_secret_op_reads_the_token_from_stdin_and_refuses_with_exit_3(tmp_path):
    import inspect

    src = inspect.getsource(nodeops)
    d = tmp_path / "glr-x"
    args = {"path": f"{d}/n0/auth_token", "mode": 0o600, "dirs": [[str(d), True], [f"{d}/n0", False]]}
    argv = [sys.executable, "-I", "-c", src, "write_secret", json.dumps(args)]
    r = subprocess.run(argv, input="s3cret\n", capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["created"] == [str(d), f"{d}/n0"]
    assert (d / "n0" / "auth_token").read_text() == "s3cret\n" and "s3cret" not in " ".join(argv)
    again = subprocess.run(argv, input="other\n", capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 3
    assert f"refused: {d}/n0 exists already: not created by this run" in again.stderr
    assert (d / "n0" / "auth_token").read_text() == "s3cret\n"


def test_start_refuses_a_state_dir_that_is_not_private(tmp_path, victim):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(nodeops.Refused, match="group/others may use it"):
        nodeops.op_start({"argv": ["true"], "cwd": str(d), "log": f"{d}/log", "pidfile": f"{d}/pid"})
    assert os.listdir(d) == []


@pytest.mark.parametrize("which", ["log", "pidfile"])
def test_start_refuses_a_planted_log_or_pid_file_and_starts_nothing(which, tmp_path):
    d = private(tmp_path)
    target = tmp_path / "target"
    target.write_text("keep me")
    (d / which).symlink_to(target)
    marker = tmp_path / "ran"
    with pytest.raises(nodeops.Refused, match="exists already"):
        nodeops.op_start(
            {"argv": ["touch", str(marker)], "cwd": str(d), "log": f"{d}/log", "pidfile": f"{d}/pidfile"}
        )
    time.sleep(0.2)
    assert target.read_text() == "keep me" and not marker.exists()


def test_start_writes_its_log_and_pid_file_600_with_host_and_boot_id(tmp_path):
    d = private(tmp_path)
    rec = nodeops.op_start(
        {"argv": ["true"], "cwd": str(d), "log": f"{d}/log", "pidfile": f"{d}/pid", "settle_s": 1}
    )
    assert mode(d / "log") == mode(d / "pid") == 0o600
    saved = json.loads((d / "pid").read_text())
    assert saved["host"] == socket.gethostname() == rec["host"]
    assert saved["boot_id"] == nodeops.boot_id() == rec["boot_id"] and rec["boot_id"]


# ============================================================================= 1. transports' put_text


def test_local_put_text_creates_a_private_parent_and_refuses_what_exists(tmp_path):
    t = Target("localhost", "127.0.0.1")
    p = private(tmp_path) / "d" / "secret"
    assert LocalTransport().put_text([t], str(p), "tok\n")[t].ok
    assert mode(p.parent) == 0o700 and mode(p) == 0o600 and p.read_text() == "tok\n"
    again = LocalTransport().put_text([t], str(p), "other\n")[t]
    assert not again.ok and "exists already" in again.error and p.read_text() == "tok\n"
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    r = LocalTransport().put_text([t], str(open_dir / "secret"), "tok\n")[t]
    assert not r.ok and str(open_dir) in r.error and not (open_dir / "secret").exists()


def test_ssh_and_srun_put_text_run_write_secret_with_the_text_on_stdin(tmp_path, monkeypatch):
    from glmlaunch.transport.srun import SrunTransport
    from glmlaunch.transport.ssh import SSHTransport

    seen = []

    def run_many(self, commands, *, timeout=60.0, on_done=None, stdin=None):
        seen.extend((cmd, stdin) for cmd in commands.values())
        return {}

    for cls in (SSHTransport, SrunTransport):
        monkeypatch.setattr(cls, "run_many", run_many)
        obj = object.__new__(cls)
        cls.put_text(obj, [Target("h", "10.0.0.9")], "/tmp/glr-x/n0/auth_token", "s3cret\n")
    assert len(seen) == 2
    for cmd, stdin in seen:
        assert stdin == "s3cret\n" and "s3cret" not in cmd
        assert cmd == put_text_command("/tmp/glr-x/n0/auth_token", 0o600)
        assert " write_secret " in cmd and "mkdir -p" not in cmd


def test_ssh_sends_stdin_to_the_remote_command_never_in_its_line(monkeypatch):
    from types import SimpleNamespace

    from glmlaunch.transport.ssh import SSHTransport

    got: dict = {}

    class Conn:
        client = None  # no paramiko client: nothing to bound

        def open(self):
            pass

        def run(self, cmd, **kw):
            stream = kw["in_stream"]
            got.update(cmd=cmd, data=stream.read() if stream else stream, pty=kw["pty"])
            return SimpleNamespace(exited=0, stdout="ok", stderr="")

    monkeypatch.setattr(SSHTransport, "_connection", lambda self, target: Conn())
    t = object.__new__(SSHTransport)
    r = t._run_one(Target("h", "10.0.0.9"), "cat > /tmp/x", 5.0, "s3cret\n")
    assert r.ok and got["data"] == "s3cret\n" and "s3cret" not in got["cmd"] and got["pty"] is False
    t._run_one(Target("h", "10.0.0.9"), "true", 5.0)
    assert got["data"] is False  # no stdin: none is read from the launcher's


def _fake_srun(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "bin"
    d.mkdir()
    # like srun: the step's own SLURM_* and Slurm's CUDA_VISIBLE_DEVICES are set for the task
    (d / "srun").write_text(
        "#!/bin/bash\nexport SLURM_STEP_ID=0 CUDA_VISIBLE_DEVICES=0\n"
        'while [ $# -gt 0 ] && [ "$1" != bash ]; do shift; done\nexec "$@"\n'
    )
    (d / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")


def test_srun_put_text_refuses_a_planted_symlink(tmp_path, monkeypatch):
    from glmlaunch.transport.srun import SrunTransport

    _fake_srun(tmp_path, monkeypatch)
    t = SrunTransport(log_dir=tmp_path / "logs")
    d = private(tmp_path)
    target = tmp_path / "target"
    target.write_text("keep me")
    (d / "secret").symlink_to(target)
    node = Target("node01", "10.0.1.1")
    r = t.put_text([node], str(d / "secret"), "s3cret\n")[node]
    t.close()
    assert not r.ok and "exists already" in r.reason() and target.read_text() == "keep me"


# ============================================================================= 1. the plan and the script


@pytest.fixture
def recipe():
    return load_recipe("local-probe")


@pytest.fixture
def plan(recipe, hostfile3):
    return build_plan(recipe, read_hostfile(str(hostfile3)))


def test_the_state_dir_has_an_unpredictable_part_decided_in_the_plan(recipe, hostfile3):
    alloc = read_hostfile(str(hostfile3))
    a, b = (build_plan(recipe, alloc, run_id="exp-42") for _ in range(2))
    assert re.fullmatch(r"/tmp/glr-exp-42-[0-9a-f]{16}", a.state_dir) and a.state_dir != b.state_dir
    nonce = a.state_dir[-16:]
    assert [n.state_dir for n in a.nodes] == [f"{a.state_dir}/n{i}" for i in range(3)]
    assert [n.ray_dir for n in a.nodes] == [f"/tmp/glr-{nonce}-n{i}" for i in range(3)]
    assert a.state_dir in render_bash(a)
    pinned = build_plan(recipe, alloc, run_id="exp-42", state_nonce="0123456789abcdef")
    assert pinned.state_dir == "/tmp/glr-exp-42-0123456789abcdef"
    with pytest.raises(RecipeError, match="16 hex digits"):
        build_plan(recipe, alloc, run_id="exp-42", state_nonce="../../etc")


def test_rays_temp_dir_is_short_enough_for_its_socket_paths(recipe, hostfile3):
    """Ray's sockets live at <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store,
    at most 107 bytes: the temp dir may have 43 characters, even for the longest run id."""
    alloc = read_hostfile(str(hostfile3))
    for run_id in ("a", "20261201-102446-eed0", "x" * 64):
        p = build_plan(recipe, alloc, run_id=run_id)
        for n in p.nodes:
            temp = n.ray_start[n.ray_start.index("--temp-dir") + 1]
            assert temp == f"{n.ray_dir}/ray" and len(temp) <= 43, temp
            sock = f"{temp}/session_2026-12-01_10-24-10_546166_4194304/sockets/plasma_store"
            assert len(sock) <= 107


def test_the_bash_script_never_reuses_an_existing_state_dir_or_token(plan):
    text = render_bash(plan)
    assert '[ -f "$STATE/auth_token" ] ||' not in text and "mkdir -p" not in text
    assert 'mkdir -m 700 "$STATE" || {' in text
    for n in plan.nodes:
        assert (
            f"mkdir -m 700 {n.state_dir} {n.ray_dir} && set -o noclobber && cat > {n.state_dir}/auth_token"
            in text
        )


# ============================================================================= 1./4. the cluster on fake nodes


def make_cluster(plan, transport, recipe, **kw) -> RayCluster:
    kw = {"join_timeout_s": 5, "stop_grace_s": 0.1, "command_timeout_s": 5} | kw
    return RayCluster(plan, transport, recipe=recipe, **kw)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    runs, state = tmp_path / "runs", tmp_path / "state"
    monkeypatch.setenv("GLMLAUNCH_STATE_DIR", str(state))
    monkeypatch.setenv("GLMLAUNCH_RUNS_DIR", str(runs))
    return runs, state


@pytest.mark.parametrize("which", ["run-dir", "node-dir"])
def test_a_state_dir_that_is_not_the_runs_stops_the_launch_naming_host_and_dir(
    which, plan, recipe, monkeypatch
):
    bad = plan.state_dir if which == "run-dir" else plan.nodes[1].state_dir
    fake = FakeTransport({H2: FakeHost(foreign_dirs={bad})})
    fake.node(H2).files[f"{plan.nodes[1].state_dir}/ray.pid"] = json.dumps({"pid": 1, "starttime": 5})
    install(monkeypatch, fake, clock=FakeClock())
    c = make_cluster(plan, fake, recipe)

    with pytest.raises(TransportError) as e:
        c.up()

    assert set(e.value.failures) == {H2}
    assert H2 in e.value.message and bad in e.value.message and "not this run's directory" in e.value.message
    assert "never used" in (e.value.hint or "")
    assert fake.ops("start") == []
    stop = fake.ops("stop", H2)[0].args
    assert stop["pidfile"] is None  # nothing was started: no pid file is read, the planted one is left
    assert f"{plan.nodes[1].state_dir}/ray.pid" in fake.node(H2).files
    for n in plan.nodes:  # the token is gone from the nodes that got it
        assert f"{n.state_dir}/auth_token" not in fake.node(n.name).files


def test_created_dirs_are_recorded_and_purge_removes_only_those(plan, recipe, dirs, monkeypatch):
    runs, _ = dirs
    fake = FakeTransport()
    fake.node(H2).dirs.add(plan.state_dir)  # H2 shares the run's directory with another node of its machine
    install(monkeypatch, fake, clock=FakeClock())
    run = Run(plan, fake, recipe=recipe, join_timeout_s=5)
    run.up(runs_dir=str(runs))
    m = RunDir.open(run.path).manifest
    assert m.state_dir == plan.state_dir
    n0, n1 = plan.nodes[0], plan.nodes[1]
    assert m.nodes[H1].created == [plan.state_dir, n0.state_dir, n0.ray_dir]
    assert m.nodes[H2].created == [n1.state_dir, n1.ray_dir]  # the run's directory existed there

    run.down(purge=True)

    stops = {c.host: c.args for c in fake.ops("stop")}
    assert stops[H2]["purge"] == [n1.state_dir, n1.ray_dir] and stops[H1]["purge"] == [
        n0.state_dir,
        n0.ray_dir,
    ]
    assert all(s["purge_parent"] == plan.state_dir for s in stops.values())
    assert fake.node(H1).dirs == set() and fake.node(H2).dirs == set()
    assert all(not rec.created for rec in RunDir.open(run.path).manifest.nodes.values())


def test_down_without_purge_keeps_the_dirs_and_a_later_purge_still_finds_them(
    plan, recipe, dirs, monkeypatch
):
    runs, _ = dirs
    fake = FakeTransport()
    install(monkeypatch, fake, clock=FakeClock())
    run = Run(plan, fake, recipe=recipe, join_timeout_s=5)
    run.up(runs_dir=str(runs))
    run.down()
    assert all(fake.node(n.name).dirs for n in plan.nodes)

    again = Run.open(run.path, transport=fake)
    again.down(purge=True)

    assert all(not fake.node(n.name).dirs for n in plan.nodes)


def test_purge_on_the_node_keeps_a_dir_that_is_no_longer_private(tmp_path):
    run = tmp_path / "glr-x"
    nodeops.write_secret(f"{run}/n0/auth_token", "tok\n", 0o600, [(str(run), True), (f"{run}/n0", False)])
    nodeops.make_private_dir(f"{run}/n1")
    (run / "n1").chmod(0o755)  # changed since: not purged
    out = nodeops._remove([f"{run}/n0/auth_token"], [f"{run}/n0", f"{run}/n1"], str(run))
    assert f"{run}/n0" in out["removed"] and not (run / "n0").exists()
    assert (run / "n1").is_dir() and f"{run}/n1" in out["kept"]
    assert run.is_dir()  # not empty: kept
    (run / "n1").rmdir()
    assert nodeops._remove([], [], str(run))["removed"] == [str(run)] and not run.exists()


def test_purge_never_follows_a_symlinked_node_dir(tmp_path):
    run = private(tmp_path, "glr-x")
    elsewhere = private(tmp_path, "elsewhere")
    (elsewhere / "keep").write_text("x")
    (run / "n0").symlink_to(elsewhere)
    out = nodeops._remove([f"{run}/n0/keep"], [f"{run}/n0"], None)
    assert (elsewhere / "keep").read_text() == "x" and f"{run}/n0" in out["kept"]


# ============================================================================= 2. the environment


def test_the_child_env_is_the_allowlist_plus_the_plan_without_secrets():
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LC_ALL": "C",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "VIRTUAL_ENV": "/venv",
        "SLURM_JOB_ID": "7",
        "SOMETHING_ELSE": "x",
        "NVIDIA_API_KEY": "nv-secret",
        **SECRETS,
    }
    plan_env = {
        "RAY_AUTH_TOKEN_PATH": "/tmp/glr-x/n0/auth_token",
        "RAY_AUTH_TOKEN": "nope",
        "MY_OWN_KEY": "planned",
    }
    env = nodeops.child_env(environ, plan_env)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LC_ALL": "C",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "VIRTUAL_ENV": "/venv",
        "RAY_AUTH_TOKEN_PATH": "/tmp/glr-x/n0/auth_token",
        "MY_OWN_KEY": "planned",  # the plan's own variables are the run's choice
    }
    assert nodeops.child_env(environ, {}, slurm=True)["SLURM_JOB_ID"] == "7"


def test_ray_start_gets_the_explicit_env_on_the_node(tmp_path, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("UNLISTED", "x")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    d = private(tmp_path)
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    nodeops.op_start(
        {
            "argv": [sys.executable, "-c", dump],
            "cwd": str(d),
            "log": f"{d}/log",
            "env": {"RAY_AUTH_TOKEN_PATH": f"{d}/auth_token"},
            "settle_s": 3,
        }
    )
    env = json.loads((d / "log").read_text().strip().splitlines()[-1])
    assert env["RAY_AUTH_TOKEN_PATH"] == f"{d}/auth_token" and env["PATH"] == os.environ["PATH"]
    assert not set(SECRETS) & set(env) and "UNLISTED" not in env and "SLURM_STEP_ID" not in env


def test_the_local_transport_gives_its_commands_the_allowlist(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LC_TIME", "C")
    t = Target("localhost", "127.0.0.1")
    out = LocalTransport().run_many({t: "env"})[t].stdout
    names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    assert "PATH" in names and "LC_TIME" in names and not set(SECRETS) & names
    assert not any(v in out for v in SECRETS.values())


def test_the_srun_transport_strips_secrets_and_unlisted_variables(tmp_path, monkeypatch):
    from glmlaunch.transport.srun import SrunTransport, _clean_env

    _fake_srun(tmp_path, monkeypatch)
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("UNLISTED", "x")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    assert not set(SECRETS) & set(_clean_env())  # not even srun itself gets them
    t = SrunTransport(log_dir=tmp_path / "logs")
    node = Target("node01", "10.0.1.1")
    out = t.run_many({node: "env"}, timeout=20)[node].stdout
    t.close()
    names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    assert {"PATH", "SLURM_CONF", "SLURM_STEP_ID", "CUDA_VISIBLE_DEVICES"} <= names
    assert "UNLISTED" not in names and not set(SECRETS) & names
    assert t.start_options["slurm_env"] is True


def test_the_plan_never_passes_ray_auth_token_to_ray_start(plan, recipe, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "stray")
    fake = FakeTransport()
    install(monkeypatch, fake, clock=FakeClock())
    make_cluster(plan, fake, recipe).up()
    for c in fake.ops("start"):
        assert "RAY_AUTH_TOKEN" not in c.args["env"] and c.args["env"]["RAY_AUTH_TOKEN_PATH"].endswith(
            "/auth_token"
        )


# ============================================================================= 3. down: host, boot id, PID, start time


def test_stop_refuses_a_record_without_a_start_time(victim):
    res = nodeops.op_stop({**_rec(victim), "starttime": None, "grace_s": 0.2})
    assert res["note"] == "not touched: no start time was recorded" and victim.poll() is None
    assert nodeops.op_alive({"procs": [{**_rec(victim), "starttime": None}]}) == {str(victim.pid): False}


@pytest.mark.parametrize("field, value", [("boot_id", "another-boot"), ("host", "another-host")])
def test_stop_refuses_a_record_of_another_boot_or_host(field, value, victim):
    rec = {**_rec(victim), field: value}
    res = nodeops.op_stop({**rec, "grace_s": 0.2})
    assert res["note"].startswith("not touched: recorded ") and value in res["note"]
    time.sleep(0.1)
    assert victim.poll() is None and nodeops.op_alive({"procs": [rec]}) == {str(victim.pid): False}
    assert nodeops.op_alive({"procs": [_rec(victim)]}) == {str(victim.pid): True}


@pytest.mark.parametrize("how", ["symlink", "open-dir", "another-owner"])
def test_a_planted_pid_file_is_never_acted_on(how, tmp_path, victim, monkeypatch):
    d = tmp_path / "n0"
    planted = json.dumps(_rec(victim))
    if how == "symlink":
        private(tmp_path, "n0")
        (tmp_path / "elsewhere.json").write_text(planted)
        (d / "ray.pid").symlink_to(tmp_path / "elsewhere.json")
    elif how == "open-dir":
        d.mkdir()
        d.chmod(0o777)
        (d / "ray.pid").write_text(planted)
    else:
        private(tmp_path, "n0")
        (d / "ray.pid").write_text(planted)
        other_user(monkeypatch)
    (d / "auth_token").write_text("someone else's")
    res = nodeops.op_stop(
        {"pid": None, "pidfile": f"{d}/ray.pid", "remove": [f"{d}/auth_token"], "grace_s": 0.2}
    )
    assert res["note"].startswith("pid file not trusted") and res["killed"] == []
    time.sleep(0.1)
    assert victim.poll() is None
    if how != "symlink":  # a dir that is not ours: not even the file named as our token is removed
        assert (d / "auth_token").exists()


def test_a_node_that_rebooted_is_not_touched_and_the_run_stays_incomplete(plan, recipe, dirs, monkeypatch):
    runs, _ = dirs
    fake = FakeTransport()
    install(monkeypatch, fake, clock=FakeClock())
    run = Run(plan, fake, recipe=recipe, join_timeout_s=5)
    run.up(runs_dir=str(runs))
    m = RunDir.open(run.path).manifest
    assert m.nodes[H3].host == f"fake-{H3}" and m.nodes[H3].boot_id == "boot-1"
    fake.host(H3).boot = "boot-2"  # a reboot: PIDs and start times start over

    results = run.down()

    assert results[H3]["note"].startswith("not touched: recorded in another boot")
    assert set(fake.live()) == {H3}  # the fake keeps it "alive": nothing was sent to it
    assert run.state is RunState.DOWN_INCOMPLETE
    assert RunDir.open(run.path).manifest.nodes[H3].pid is not None  # kept, reported


def test_status_after_a_reboot_does_not_count_the_old_process(plan, recipe, dirs, monkeypatch):
    runs, _ = dirs
    fake = FakeTransport()
    install(monkeypatch, fake, clock=FakeClock())
    run = Run(plan, fake, recipe=recipe, join_timeout_s=5)
    run.up(runs_dir=str(runs))
    fake.host(H2).boot = "boot-2"
    st = Run.open(run.path, transport=fake).cluster.status()
    assert st.nodes[H2]["process"] is False and st.nodes[H1]["process"] is True


# ============================================================================= 4. trusting a run directory


@pytest.fixture
def a_run(plan, recipe, dirs, monkeypatch):
    runs, _ = dirs
    fake = FakeTransport()
    install(monkeypatch, fake, clock=FakeClock())
    run = Run(plan, fake, recipe=recipe, join_timeout_s=5)
    run.up(runs_dir=str(runs))
    return run, fake


def test_the_run_directory_is_700_and_its_files_600_whatever_the_umask(plan, recipe, dirs, monkeypatch):
    runs, _ = dirs
    old = os.umask(0o002)
    try:
        fake = FakeTransport()
        install(monkeypatch, fake, clock=FakeClock())
        run = Run(plan, fake, recipe=recipe, join_timeout_s=5)
        run.up(runs_dir=str(runs))
    finally:
        os.umask(old)
    assert mode(run.path) == mode(run.path / "hosts") == 0o700
    for f in ("manifest.json", "plan.json", "commands.sh", "auth_token"):
        assert mode(run.path / f) == 0o600, f
    assert all(mode(p) == 0o600 for p in (run.path / "hosts").rglob("*.log"))
    RunDir.open(run.path)  # trusted


@pytest.mark.parametrize(
    "tamper",
    [
        "dir-group-writable",
        "manifest-other-writable",
        "plan-group-writable",
        "plan-symlink",
        "token-readable",
    ],
)
def test_a_run_directory_others_can_change_is_not_trusted(tamper, a_run):
    run, fake = a_run
    p = run.path
    if tamper == "dir-group-writable":
        p.chmod(0o770)
        bad = p
    elif tamper == "manifest-other-writable":
        (p / "manifest.json").chmod(0o666)
        bad = p / "manifest.json"
    elif tamper == "plan-group-writable":
        (p / "plan.json").chmod(0o620)
        bad = p / "plan.json"
    elif tamper == "plan-symlink":
        (p / "plan.copy").write_text((p / "plan.json").read_text())
        (p / "plan.json").unlink()
        (p / "plan.json").symlink_to(p / "plan.copy")
        bad = p / "plan.json"
    else:
        (p / "auth_token").chmod(0o644)
        bad = p / "auth_token"
    n = len(fake.calls)
    with pytest.raises(UsageError) as e:
        Run.open(p, transport=fake)
    assert str(bad) in e.value.message and "not trusted" in e.value.message
    assert len(fake.calls) == n  # nothing reached a node


def test_a_run_directory_of_another_user_is_not_trusted(a_run, monkeypatch):
    run, fake = a_run
    from glmlaunch import runs as runs_mod

    uid = os.geteuid() + 4242
    monkeypatch.setattr(runs_mod.os, "geteuid", lambda: uid)
    with pytest.raises(UsageError, match=f"owned by uid {os.getuid()}, not by you"):
        Run.open(run.path, transport=fake)


def test_setup_lines_of_a_tampered_plan_never_run(a_run, tmp_path):
    run, fake = a_run
    plan = json.loads((run.path / "plan.json").read_text())
    plan["setup"] = [f"touch {tmp_path}/pwned"]
    (run.path / "plan.json").write_text(json.dumps(plan))
    (run.path / "plan.json").chmod(0o666)  # what another user could write into
    with pytest.raises(UsageError):
        Run.open(run.path, transport=fake)
    rd = RunDir(run.path, run.run_dir.manifest)
    with pytest.raises(UsageError):
        RayCluster.from_run(rd, fake)  # the library entry checks too
    assert not any("pwned" in cmd for cmd in fake.commands)


def test_the_current_run_pointer_must_be_trusted(a_run, dirs):
    run, fake = a_run
    _, state = dirs
    run.run_dir.make_current()
    (state / "current").chmod(0o666)
    with pytest.raises(UsageError, match="current"):
        Run.open(transport=fake)


# ============================================================================= 5. the token in no argv, no other file


def test_the_preflight_sentinel_is_a_nonce_of_its_own(plan, recipe, monkeypatch):
    fake = FakeTransport()
    install(monkeypatch, fake, clock=FakeClock())
    c = make_cluster(plan, fake, recipe)
    c.preflight()
    token = c.token
    assert token and re.fullmatch(r"[0-9a-f]{16}", c.sentinel) and c.sentinel not in token
    for call in fake.ops("preflight"):
        assert call.args["sentinel"] == c.sentinel and "token" not in call.args
    for cmd in fake.commands:
        assert all(token[i : i + 8] not in cmd for i in range(len(token) - 7))


def test_op_inspect_writes_the_sentinel_not_the_token(tmp_path):
    save = tmp_path / "save"
    info = nodeops.op_inspect({"writable": [str(save)], "sentinel": "0123456789abcdef"})
    assert info["writable"] == {str(save): "ok"}
    probe = save / nodeops.sentinel_name("0123456789abcdef")
    assert probe.read_text() == "0123456789abcdef"
    assert nodeops.op_remove({"files": [str(probe)]})["removed"] == [str(probe)] and not probe.exists()


def test_the_token_is_in_no_file_of_the_run_but_the_token_file(a_run):
    run, fake = a_run
    token = (run.path / "auth_token").read_text().strip()
    assert token == run.token and mode(run.path / "auth_token") == 0o600
    for p in run.path.rglob("*"):
        if p.is_file() and p.name != "auth_token":
            assert token not in p.read_text(errors="replace"), p
    assert all(token not in cmd for cmd in fake.commands)
    assert {text for _, _, text in fake.stdins} == {token + "\n"}
