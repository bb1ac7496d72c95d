"""Ray over SSH on the real test hosts h1..h3: real sshd (Fabric, host keys checked), real
``ray start``, the Jobs SDK, and teardown of exactly what a run started.

Every Ray cluster here uses the default port plan (6379.., dashboard 8265), so the clusters run
one after another: the read-only checks share one cluster (class ``TestSharedCluster``); every
other test starts its own and leaves nothing behind (checked inside each host, by the run's
recorded session ids and by its state directory, which every Ray process carries in its
environment through ``RAY_AUTH_TOKEN_PATH``).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from glmlaunch import jobs
from glmlaunch.errors import CheckFailed, ClusterError, GlmlaunchError, TransportError
from glmlaunch.options import SSHOptions
from glmlaunch.probe import PREFIX
from glmlaunch.run import Run, launch, up
from glmlaunch.runs import RunDir

VENV_BIN = Path(sys.executable).parent
GLMLAUNCH = VENV_BIN / "glmlaunch"
RECIPE = "local-probe"


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def _isolated_state(tmp_path_factory):
    """A "current run" pointer of our own (``up`` reuses the current run), no usage stats."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLMLAUNCH_STATE_DIR", str(tmp_path_factory.mktemp("glmlaunch-state")))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield


def _ssh(tc, connect_timeout: float = 10.0) -> SSHOptions:
    return SSHOptions(
        ssh_config=str(tc.ssh_config),
        key=str(tc.ssh_key),
        known_hosts=str(tc.known_hosts),
        connect_timeout=connect_timeout,
    )


def _hostfile(d: Path, tc) -> str:
    p = d / "hostfile"
    p.write_text("".join(f"{h} slots=8\n" for h in tc.hosts))
    return str(p)


def _only_run(runs: Path) -> RunDir:
    dirs = [p for p in runs.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return RunDir.open(dirs[0])


def leftovers(tc, rd: RunDir) -> dict[str, list[dict]]:
    """Processes of this run still alive on any host: members of a recorded ``ray start``
    session, or anything whose command line or environment names the run's state directory."""
    rd = RunDir.open(rd.path)  # re-read the manifest
    marker = rd.manifest.state_dir
    sids = {h: rec.get("pid") for h, rec in rd.manifest.model_dump().get("nodes", {}).items()}
    out = {}
    for h in tc.hosts:
        procs = tc.processes(tc.index(h), marker)
        ours = [p for p in procs if p["marked"] or (sids.get(h) and p["sid"] == sids[h])]
        if ours:
            out[h] = ours
    return out


def assert_no_leftovers(tc, rd: RunDir) -> None:
    """Nothing of the run is alive on any host (checked at once: no grace period)."""
    left = leftovers(tc, rd)
    assert not left, "processes of the run are still alive: " + json.dumps(left, indent=1)[:3000]


@pytest.fixture
def runs(tmp_path, testcluster):
    """A runs folder for one test; whatever a failing test left up there is stopped afterwards
    (through the run's own records: only processes this run started)."""
    d = tmp_path / "runs"
    d.mkdir()
    yield d
    for p in d.iterdir():
        try:
            rd = RunDir.open(p)
        except GlmlaunchError:
            continue
        if rd.manifest.state not in ("created", "down"):
            Run.open(rd.path).down()


def probe_nodes(job_log: str) -> list[dict]:
    return [json.loads(line[len(PREFIX) :]) for line in job_log.splitlines() if line.startswith(PREFIX)]


# ----------------------------------------------------------------------------- 1. launch()


def test_launch_probe_on_three_hosts(testcluster, tmp_path, runs):
    t0 = time.monotonic()
    res = launch(
        RECIPE,
        _hostfile(tmp_path, testcluster),
        ssh=_ssh(testcluster),
        runs_dir=str(runs),
        join_timeout_s=120,
    )
    took = time.monotonic() - t0
    rd = RunDir.open(res.run_dir)
    job_log = (res.run_dir / "job.log").read_text()
    assert res.ok, (res.job, job_log[-3000:])
    assert res.job.status == "SUCCEEDED" and res.job.exit_code == 0
    assert res.probe == {"ok": True, "problems": [], "nodes": 3}

    nodes = probe_nodes(job_log)
    assert sorted(n["hostname"] for n in nodes) == ["h1", "h2", "h3"]
    assert {n["hostname"]: n["ip"] for n in nodes} == testcluster.host_ips
    for n in nodes:
        assert n["gpus"] == 8 and n["cuda_visible_devices"] == "0,1,2,3,4,5,6,7", n
        assert n["collective"]["backend"] == "gloo" and n["collective"]["ok"] is True, n
        assert n["paths"] == {"/tmp": "readable"}
    assert "probe PASSED" in job_log

    # nothing of the run is left on any host, right after launch() returned
    assert_no_leftovers(testcluster, rd)

    # the run directory
    for f in ("plan.json", "commands.sh", "manifest.json", "job.log"):
        assert (res.run_dir / f).is_file(), f
    m = rd.manifest.model_dump()
    assert m["state"] == "down"
    assert m["job"]["status"] == "SUCCEEDED" and m["job"]["exit_code"] == 0
    assert sorted(m["nodes"]) == ["h1", "h2", "h3"] and all(v["pid"] is None for v in m["nodes"].values())
    for h in testcluster.hosts:
        logs = {p.name for p in (res.run_dir / "hosts" / h).glob("*.log")}
        assert {"preflight.log", "ray-start.log", "down.log"} <= logs, (h, logs)
    # the token: mode 600 in the run dir, in no other file of the run, removed from the nodes
    tok_file = res.run_dir / "auth_token"
    assert stat.S_IMODE(tok_file.stat().st_mode) == 0o600
    token = tok_file.read_text().strip()
    for p in res.run_dir.rglob("*"):
        if p.is_file() and p != tok_file:
            assert token not in p.read_text(errors="replace"), p
    plan = json.loads((res.run_dir / "plan.json").read_text())
    for n in plan["nodes"]:
        assert not Path(n["state_dir"], "auth_token").exists(), n["state_dir"]
    print(f"launch of the probe on 3 hosts: {took:.1f} s")


# ----------------------------------------------------------------------------- 2. the CLI


def _cli(tc, tmp_path, runs, *extra, timeout=300) -> subprocess.CompletedProcess:
    argv = [
        str(GLMLAUNCH),
        "launch",
        RECIPE,
        "--hostfile",
        _hostfile(tmp_path, tc),
        "--ssh-config",
        str(tc.ssh_config),
        "--ssh-key",
        str(tc.ssh_key),
        "--known-hosts",
        str(tc.known_hosts),
        "--runs-dir",
        str(runs),
        "--join-timeout",
        "120",
        *extra,
    ]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=dict(os.environ), cwd=tmp_path
    )


def test_cli_launch_probe_passes(testcluster, tmp_path, runs):
    p = _cli(testcluster, tmp_path, runs)
    both = p.stdout + p.stderr
    assert p.returncode == 0, both[-4000:]
    assert "probe PASSED" in p.stdout
    assert "SUCCEEDED" in p.stderr
    assert_no_leftovers(testcluster, _only_run(runs))


def test_cli_launch_failing_probe_exits_with_the_trainers_status(testcluster, tmp_path, runs):
    # gloo cannot find this interface on any node: the probe's collective fails inside the job
    p = _cli(testcluster, tmp_path, runs, "--set", "env.vars.GLOO_SOCKET_IFNAME=nope0")
    both = p.stdout + p.stderr
    assert p.returncode == 1, both[-4000:]  # the probe's exit code
    assert "probe FAILED" in p.stdout and "Unable to find address for: nope0" in p.stdout
    assert "FAILED (exit code 1" in p.stderr
    rd = _only_run(runs)
    assert rd.manifest.state == "down" and rd.manifest.job.exit_code == 1
    assert_no_leftovers(testcluster, rd)


def test_cli_launch_missing_probe_path_is_refused_before_start(testcluster, tmp_path, runs):
    p = _cli(testcluster, tmp_path, runs, "--set", 'trainer.probe_paths=["/nonexistent"]', timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    for h in testcluster.hosts:
        assert f"{h}: /nonexistent is missing" in p.stdout + p.stderr
    rd = _only_run(runs)
    assert not rd.manifest.nodes or all(not v.get("pid") for v in rd.manifest.model_dump()["nodes"].values())
    assert_no_leftovers(testcluster, rd)


@pytest.mark.parametrize(
    ("sig", "when"), [("SIGINT", "Running entrypoint"), ("SIGTERM", "starting 2 workers")]
)
def test_cli_launch_interrupted_cleans_up(testcluster, tmp_path, runs, sig, when):
    # Ctrl-C while the job runs (gloo on lo hangs the probe's collective), or SIGTERM (kill,
    # scancel, a CI timeout) while the workers join: the job is stopped and the cluster torn down
    argv = [
        str(GLMLAUNCH),
        "launch",
        RECIPE,
        "--hostfile",
        _hostfile(tmp_path, testcluster),
        "--ssh-config",
        str(testcluster.ssh_config),
        "--ssh-key",
        str(testcluster.ssh_key),
        "--known-hosts",
        str(testcluster.known_hosts),
        "--runs-dir",
        str(runs),
        "--set",
        "env.vars.GLOO_SOCKET_IFNAME=lo",
    ]
    log = tmp_path / "out.txt"
    with open(log, "w") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while when not in log.read_text():
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)
        p.send_signal(getattr(signal, sig))
        t0 = time.monotonic()
        rc = p.wait(120)
    finally:
        if p.poll() is None:
            p.kill()
    took = time.monotonic() - t0
    assert rc == 130, log.read_text()[-3000:]
    rd = _only_run(runs)
    assert rd.manifest.state == "down", log.read_text()[-3000:]
    assert_no_leftovers(testcluster, rd)
    print(f"{sig} after '{when}': clean exit in {took:.1f} s")


# ----------------------------------------------------------------------------- 3. sshd down


@pytest.fixture
def h3_sshd(testcluster):
    """h3's sshd (in-host pid) and its restart/resume afterwards (the harness's own command)."""
    d = testcluster.state_dir / "ssh" / "h3"
    pid = int((d / "sshd.pid").read_text())
    yield pid
    testcluster.kill(3, pid, "CONT")
    if not testcluster.pid_alive(3, pid):
        testcluster.on_host(3, "/usr/sbin/sshd", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log"))
    for _ in range(50):
        r = subprocess.run(
            ["ssh", "-F", str(testcluster.ssh_config), "h3", "hostname"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if r.stdout.strip() == "h3":
            break
        time.sleep(0.2)
    else:
        pytest.fail("h3's sshd did not come back")


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_unreachable_host_fails_fast_and_starts_nothing(testcluster, tmp_path, runs, h3_sshd, how):
    # killed: connection refused at once; stopped (SIGSTOP): TCP connects, no SSH banner ever comes
    testcluster.kill(3, h3_sshd, "TERM" if how == "killed" else "STOP")
    if how == "killed":
        for _ in range(50):
            if "10.79.0.13:22" not in testcluster.listening(3):
                break
            time.sleep(0.1)
    t0 = time.monotonic()
    with pytest.raises(TransportError) as ei:
        up(
            RECIPE,
            _hostfile(tmp_path, testcluster),
            ssh=_ssh(testcluster, connect_timeout=3),
            runs_dir=str(runs),
            join_timeout_s=30,
        )
    took = time.monotonic() - t0
    e = ei.value
    assert set(e.failures) == {"h3"}, e.failures
    assert "h3" in str(e)
    assert ("refused" if how == "killed" else "3 s") in e.failures["h3"], e.failures
    assert took < 3 + 10, f"up() took {took:.1f} s with a 3 s connect timeout"
    rd = _only_run(runs)
    assert rd.manifest.state == "created" and not rd.manifest.nodes
    assert_no_leftovers(testcluster, rd)
    print(f"sshd {how}: up() failed after {took:.1f} s")


# ----------------------------------------------------------------------------- 4. a worker's ray start fails


def _fake_bin(d: Path, on_h3: str) -> str:
    """A python + ray pair in a shared directory: the real venv, except that ``ray`` on h3 runs
    ``on_h3`` (a broken install on one node)."""
    d.mkdir()
    (d / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (d / "ray").write_text(
        f'#!/bin/sh\nif [ "$(hostname)" = h3 ]; then\n{on_h3}\nfi\nexec {VENV_BIN}/ray "$@"\n'
    )
    for f in ("python", "ray"):
        (d / f).chmod(0o755)
    return str(d / "python")


@pytest.mark.parametrize("when", ["at-once", "later"])
def test_worker_ray_start_fails_rolls_back(testcluster, tmp_path, runs, when):
    on_h3 = {
        "at-once": 'echo "simulated failure: ray is broken on h3" >&2; exit 3',
        "later": 'sleep 5; echo "simulated failure: ray died on h3" >&2; exit 3',
    }[when]
    python = _fake_bin(tmp_path / "bin", on_h3)
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as ei:
        up(
            RECIPE,
            _hostfile(tmp_path, testcluster),
            ssh=_ssh(testcluster),
            runs_dir=str(runs),
            python=python,
            join_timeout_s=90,
        )
    took = time.monotonic() - t0
    e = ei.value
    assert set(e.missing) == {"h3"}, e.missing
    assert "h3" in str(e) and "simulated failure" in str(e), str(e)  # the node's log lines are shown
    assert took < 60, f"the failure took {took:.0f} s to be noticed"
    rd = _only_run(runs)
    assert rd.manifest.state == "down", rd.manifest.state
    assert rd.manifest.nodes["h1"].pid is None and rd.manifest.nodes["h2"].pid is None
    assert "failed" in [ev["event"] for ev in rd.manifest.model_dump()["events"]]
    assert_no_leftovers(testcluster, rd)  # head and h2 rolled back
    print(f"worker failure ({when}) noticed and rolled back in {took:.1f} s")


# ----------------------------------------------------------------------------- 5. busy GCS port


def test_busy_gcs_port_on_head_is_refused_and_left_alone(testcluster, tmp_path, runs):
    ip = testcluster.host_ips["h1"]
    # SO_REUSEADDR: the previous tests' GCS connections may linger in TIME_WAIT on 6379
    src = (
        f"import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(({ip!r}, 6379)); s.listen(); time.sleep(1000)"
    )
    pid = testcluster.spawn(1, sys.executable, "-c", src)
    try:
        for _ in range(100):
            if f"{ip}:6379" in testcluster.listening(1):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the listener did not start")
        t0 = time.monotonic()
        with pytest.raises(CheckFailed) as ei:
            up(
                RECIPE,
                _hostfile(tmp_path, testcluster),
                ssh=_ssh(testcluster),
                runs_dir=str(runs),
                join_timeout_s=30,
            )
        took = time.monotonic() - t0
        errors = [str(f) for f in ei.value.findings if f.severity == "error"]
        assert any("h1" in m and "6379" in m and f"pid {pid}" in m for m in errors), errors
        assert not any("h2" in m or "h3" in m for m in errors), errors
        rd = _only_run(runs)
        assert rd.manifest.state == "created" and not rd.manifest.nodes
        assert_no_leftovers(testcluster, rd)
        # the stranger is untouched
        assert testcluster.pid_alive(1, pid)
        assert f"{ip}:6379" in testcluster.listening(1)
        print(f"busy port refused in {took:.1f} s")
    finally:
        testcluster.kill(1, pid)


# ----------------------------------------------------------------------------- 6. a node dies


def _follow_a_long_job(c):
    """Submit a job that runs until it is stopped and follow it on a thread (watchdog every 2 s);
    return once its first line is in job.log. ``box`` gets the result or the error, and the time
    following ended."""
    c.plan = c.plan.model_copy(update=dict(argv=["bash", "-c", "echo job-started; exec sleep 600"]))
    box: dict = {}

    def follow():
        try:
            box["result"] = c.submit(watchdog_s=2)
        except BaseException as e:  # noqa: BLE001 (handed to the test thread)
            box["error"] = e
        box["t"] = time.monotonic()

    th = threading.Thread(target=follow, daemon=True)
    th.start()
    log = c.run_dir.path / "job.log"
    deadline = time.monotonic() + 60
    while "job-started" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and th.is_alive(), box
        time.sleep(0.5)
    return th, box


def test_node_killed_after_joining(testcluster, tmp_path, runs):
    c = up(
        RECIPE,
        _hostfile(tmp_path, testcluster),
        ssh=_ssh(testcluster),
        runs_dir=str(runs),
        join_timeout_s=120,
    )
    try:
        assert c.cluster.status().ok
        rd = c.run_dir
        th, box = _follow_a_long_job(c)

        # SIGKILL h3's raylet (inside h3, found in h3's recorded ray start session)
        sid = rd.manifest.nodes["h3"].pid
        raylets = [p for p in testcluster.processes(3) if p["comm"] == "raylet" and p["sid"] == sid]
        assert len(raylets) == 1, testcluster.processes(3)
        testcluster.kill(3, raylets[0]["pid"])
        t_kill = time.monotonic()

        th.join(120)
        assert not th.is_alive(), "Run.submit did not notice the dead node in 120 s"
        err = box.get("error")
        assert isinstance(err, ClusterError), box
        assert set(err.missing) == {"h3"} and "h3" in str(err)
        noticed = box["t"] - t_kill
        assert noticed < 90, noticed

        st = c.cluster.status()
        assert not st.ok
        assert st.nodes["h3"]["alive"] is False
        assert st.nodes["h1"]["alive"] and st.nodes["h2"]["alive"]
        # the job was stopped, not left running
        client = jobs.client_for(c.plan, c.token)
        assert jobs._status(client, c.plan.submission_id) in jobs.TERMINAL
        print(f"dead node noticed {noticed:.1f} s after the kill")
    finally:
        c.down()
    assert_no_leftovers(testcluster, rd)
    assert RunDir.open(rd.path).manifest.state == "down"


def test_head_crash_while_following_names_the_head(testcluster, tmp_path, runs):
    # two hosts are enough here; the head "crashes": every process of its ray start session is
    # SIGKILLed inside h1, so the job API stops answering
    hostfile = tmp_path / "hostfile2"
    hostfile.write_text("h1 slots=8\nh2 slots=8\n")
    c = up(RECIPE, str(hostfile), ssh=_ssh(testcluster), runs_dir=str(runs), join_timeout_s=120)
    rd = c.run_dir
    try:
        th, box = _follow_a_long_job(c)
        sid = rd.manifest.nodes["h1"].pid
        victims = [p["pid"] for p in testcluster.processes(1) if p["sid"] == sid]
        assert victims
        testcluster.on_host(1, "kill", "-KILL", *map(str, victims), check=False)
        t_kill = time.monotonic()
        th.join(150)
        assert not th.is_alive(), "Run.submit did not notice the dead head in 150 s"
        err = box.get("error")
        assert isinstance(err, ClusterError), repr(box)  # not a raw requests.ConnectionError
        assert set(err.missing) == {"h1"} and "h1" in str(err)
        noticed = box["t"] - t_kill
        assert noticed < 90, noticed
        print(f"dead head noticed {noticed:.1f} s after the kill")
    finally:
        c.cluster.stop_grace_s = (
            5  # h2's ray start, cut off from its GCS, does not end on SIGTERM: SIGKILL sooner
        )
        c.down()
    assert_no_leftovers(testcluster, rd)


# ----------------------------------------------------------------------------- 7. down spares strangers


def test_down_leaves_unrelated_processes_alive(testcluster, tmp_path, runs):
    strangers = [
        testcluster.spawn(2, "sleep", "1000"),
        testcluster.spawn(2, "python3", "-c", "import time; time.sleep(1000)"),
        # a stranger that even calls itself "ray start --block": never killed by name
        testcluster.spawn(2, "python3", "-c", "import time; time.sleep(1000)", "ray", "start", "--block"),
    ]
    try:
        c = up(
            RECIPE,
            _hostfile(tmp_path, testcluster),
            ssh=_ssh(testcluster),
            runs_dir=str(runs),
            join_timeout_s=120,
        )
        rd = c.run_dir
        # status and down from "another shell": the CLI rebuilds the handle from the run directory
        st = subprocess.run(
            [str(GLMLAUNCH), "status", "--run", str(rd.path)], capture_output=True, text=True, timeout=120
        )
        assert st.returncode == 0, st.stdout + st.stderr
        assert st.stdout.count("alive") == 3 and "not alive" not in st.stdout, st.stdout
        dn = subprocess.run(
            [str(GLMLAUNCH), "down", "--run", str(rd.path)], capture_output=True, text=True, timeout=120
        )
        assert dn.returncode == 0, dn.stdout + dn.stderr
        assert "is down (3 nodes)" in dn.stdout
        res = RunDir.open(rd.path).manifest.model_dump()["events"][-1]["results"]
        assert set(res) == {"h1", "h2", "h3"} and all(
            r["was_alive"] and not r["left"] for r in res.values()
        ), res
        for pid in strangers:
            assert testcluster.pid_alive(2, pid), pid
        assert_no_leftovers(testcluster, rd)
    finally:
        for pid in strangers:
            testcluster.kill(2, pid)
    for pid in strangers:
        for _ in range(50):
            if not testcluster.pid_alive(2, pid):
                break
            time.sleep(0.1)
        assert not testcluster.pid_alive(2, pid)


# ----------------------------------------------------------------------------- 8. Run.down() from Python


def test_run_down_gives_the_trainer_its_grace_period(testcluster, tmp_path, runs):
    """`Run.open(...).down()` from a notebook stops a running trainer the way `glmlaunch down`
    does: SIGTERM first, time to exit (it would save a checkpoint), and only then Ray stops."""
    run = up(
        RECIPE,
        _hostfile(tmp_path, testcluster),
        ssh=_ssh(testcluster),
        runs_dir=str(runs),
        join_timeout_s=120,
    )
    marker = tmp_path / "trainer.txt"  # under /tmp: every test host sees the same file
    script = (
        f"trap 'echo sigterm $(date +%s.%N) >> {marker}; sleep 3; echo exited $(date +%s.%N) >> {marker}; exit 0' "
        f"TERM; echo started >> {marker}; while true; do sleep 0.2; done"
    )
    try:
        run.plan = run.plan.model_copy(update=dict(argv=["bash", "-c", script]))
        run.submit(follow=False)
        deadline = time.monotonic() + 60
        while "started" not in (marker.read_text() if marker.exists() else ""):
            assert time.monotonic() < deadline, "the job did not start in 60 s"
            time.sleep(0.5)
        again = Run.open(run.path)  # a handle from "another shell", as a notebook would get it
        again.down()
    finally:
        run.down()
    words = marker.read_text().split()
    assert words[0] == "started" and "sigterm" in words and "exited" in words, words
    exited = float(words[words.index("exited") + 1])
    events = RunDir.open(run.path).manifest.events
    stopped = next(ev.t for ev in events if ev.event == "job stopped")
    ray_down = next(ev.t for ev in events if ev.event == "down")
    assert exited <= stopped <= ray_down, (exited, stopped, ray_down)
    assert (run.path / f"{run.run_dir.manifest.submission_id}.log").exists()  # the job's log was kept
    assert_no_leftovers(testcluster, run.run_dir)


# ----------------------------------------------------------------------------- shared cluster


@pytest.fixture(scope="class")
def shared(testcluster, tmp_path_factory):
    """One cluster for the read-only checks (torn down, and checked, when the class is done)."""
    d = tmp_path_factory.mktemp("shared")
    runs = d / "runs"
    hostfile = _hostfile(d, testcluster)
    t0 = time.monotonic()
    c = up(RECIPE, hostfile, ssh=_ssh(testcluster), runs_dir=str(runs), join_timeout_s=120)
    print(f"shared cluster up in {time.monotonic() - t0:.1f} s")
    try:
        yield {"cluster": c, "hostfile": hostfile, "runs": runs}
    finally:
        c.down()
        assert_no_leftovers(testcluster, c.run_dir)


class TestSharedCluster:
    def test_job_api_needs_the_token(self, shared):
        c = shared["cluster"]
        url = c.plan.dashboard_url + "/api/version"
        for headers in ({}, {"Authorization": "Bearer " + "0" * 64}):
            with pytest.raises(urllib.error.HTTPError) as ei:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
            assert ei.value.code in (401, 403), (headers, ei.value.code)
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {c.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["ray_version"]

    def test_dashboard_bound_to_the_heads_address(self, testcluster, shared):
        listen = testcluster.listening(1)
        ip = testcluster.host_ips["h1"]
        assert f"{ip}:8265" in listen, listen
        assert not [a for a in listen if a.endswith(":8265") and not a.startswith(ip)], listen

    def test_job_logs_followed_to_the_end_with_exit_status(self, shared):
        c = shared["cluster"]
        script = (
            'for i in $(seq 1 40); do echo "line-$i"; sleep 0.05; done; echo "hello from the job" >&2; exit 3'
        )
        plan = c.plan.model_copy(
            update=dict(argv=["bash", "-c", script], submission_id=c.plan.submission_id + "-exit3")
        )
        client = jobs.client_for(plan, c.token)
        sid = jobs.submit(plan, c.token, client=client)
        chunks: list[str] = []
        res = jobs.follow(client, sid, chunks.append, poll_s=0.5, timeout_s=120)
        text = "".join(chunks)
        assert res.status == "FAILED" and res.exit_code == 3, res
        assert not res.ok
        assert "hello from the job" in text
        assert [x for x in text.splitlines() if x.startswith("line-")] == [f"line-{i}" for i in range(1, 41)]
        # the same submission id twice is refused (the trainer never runs twice)
        with pytest.raises(GlmlaunchError, match="already submitted"):
            jobs.submit(plan, c.token, client=client)

    def test_submit_and_follow_records_the_failed_job(self, shared):
        c = shared["cluster"]
        orig = c.plan
        c.plan = orig.model_copy(update=dict(argv=["bash", "-c", "echo recorded-line; exit 3"]))
        try:
            res = c.submit()
        finally:
            c.plan = orig
        assert res.status == "FAILED" and res.exit_code == 3
        assert "recorded-line" in (c.run_dir.path / "job.log").read_text()
        m = RunDir.open(c.run_dir.path).manifest.model_dump()
        assert m["job"]["status"] == "FAILED" and m["job"]["exit_code"] == 3

    def test_second_up_is_idempotent(self, testcluster, shared):
        c = shared["cluster"]
        c2 = up(
            RECIPE, shared["hostfile"], ssh=_ssh(testcluster), runs_dir=str(shared["runs"]), join_timeout_s=60
        )
        assert c2.reused is True
        assert c2.run_dir.path == c.run_dir.path
        assert c2.token == c.token
        assert [n.pid for n in c2.cluster.nodes.values()] == [n.pid for n in c.cluster.nodes.values()]
        assert len([p for p in shared["runs"].iterdir() if p.is_dir()]) == 1
        head_sid = c.cluster.nodes["h1"].pid
        gcs = [p for p in testcluster.processes(1) if p["comm"] == "gcs_server" and p["sid"] == head_sid]
        assert len(gcs) == 1, gcs
        assert c2.cluster.status().ok

    def test_down_while_a_job_runs_leaves_nothing(self, testcluster, shared):
        # last in the class: the job's driver runs in a session of its own (Ray's job supervisor
        # starts it with start_new_session), so down must not rely on the ray start session alone
        c = shared["cluster"]
        src = (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('driver-up', flush=True); "
            "time.sleep(600)"
        )
        plan = c.plan.model_copy(
            update=dict(argv=[sys.executable, "-c", src], submission_id=c.plan.submission_id + "-long")
        )
        client = jobs.client_for(plan, c.token)
        sid = jobs.submit(plan, c.token, client=client)
        deadline = time.monotonic() + 60
        while "driver-up" not in client.get_job_logs(sid):
            assert time.monotonic() < deadline, jobs._status(client, sid)
            time.sleep(0.5)
        marker = c.run_dir.manifest.state_dir
        drivers = [p for p in testcluster.processes(1, marker) if "driver-up" in p["args"]]
        # the entrypoint shell and the driver: both found by the run's marker in their environment
        assert drivers and all(p["marked"] for p in drivers), drivers
        assert all(p["sid"] != c.cluster.nodes["h1"].pid for p in drivers), (
            drivers
        )  # outside the ray start session
        c.down()
        assert_no_leftovers(testcluster, c.run_dir)
