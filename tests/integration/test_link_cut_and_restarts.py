"""Recovery on the real test hosts: a host whose network is cut (its root-side veth down) while
glmlaunch talks to it, on connections it has open and on new ones (issue 14).

Before the fix, ``status``/``down`` and the watchdog of a running job opened a new SSH channel on
the cached connection to the cut host with no timeout and waited until TCP gave up (about 15
minutes). Every remote call is now bounded (connect, channel open, command, and a hard bound
around each) and the host that does not answer is named as unreachable while the others carry
on. Each test restores the link in a ``finally`` and then stops what the run left on the host.

The bounds asserted here are deliberately wide (minutes against the connect timeout of seconds):
they tell "bounded" from "waits for TCP", not one speed from another.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from pathlib import Path

import pytest
import test_ray_ssh as base

from glmlaunch.probe import PREFIX
from glmlaunch.run import Run, up
from glmlaunch.runs import RunDir
from glmlaunch.transport import Target

# test_ray_ssh's fixtures: a state dir of this module's own (autouse), a runs folder whose runs are
# taken down after each test; and its helpers
_isolated_state = base._isolated_state
runs = base.runs
GLMLAUNCH, RECIPE, _hostfile, _only_run, _ssh = (
    base.GLMLAUNCH,
    base.RECIPE,
    base._hostfile,
    base._only_run,
    base._ssh,
)
assert_no_leftovers = base.assert_no_leftovers

CONNECT_S = 5.0  # the connect timeout the tests use
BOUND_S = 120.0  # "bounded": far below TCP's ~15 minutes, far above CONNECT_S


def _link(host: str, state: str) -> None:
    subprocess.run(["ip", "link", "set", f"veth-{host}", state], check=True, timeout=30)


def _bounded(fn, limit_s: float = BOUND_S):
    """Run ``fn`` on a thread; fail (rather than hang the suite) if it is not done in ``limit_s``.
    Returns (its result, seconds taken)."""
    box: dict = {}

    def go():
        try:
            box["r"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed to the test thread)
            box["e"] = e

    t0 = time.monotonic()
    th = threading.Thread(target=go, daemon=True)
    th.start()
    th.join(limit_s)
    took = time.monotonic() - t0
    assert not th.is_alive(), f"still waiting after {limit_s:.0f} s: a call on the cut host is not bounded"
    if "e" in box:
        raise box["e"]
    return box["r"], took


@pytest.fixture
def cut_h3():
    """Take h3's link down when called; it comes back up whatever happens."""
    cut = []

    def do():
        _link("h3", "down")
        cut.append(1)

    try:
        yield do
    finally:
        if cut:
            _link("h3", "up")
            time.sleep(1)


def _up3(tc, tmp_path, runs):
    return up(
        RECIPE,
        _hostfile(tmp_path, tc),
        ssh=_ssh(tc, connect_timeout=CONNECT_S),
        runs_dir=str(runs),
        join_timeout_s=120,
    )


def test_a_command_running_when_the_link_is_cut_is_bounded(testcluster, tmp_path, cut_h3):
    """The transport alone: a command in flight on h3 when its link goes, then a new command on
    the same transport (the broken connection was dropped), and h1 answering throughout."""
    from glmlaunch.transport.ssh import SSHTransport

    s = _ssh(testcluster, connect_timeout=CONNECT_S)
    t = SSHTransport(ssh_config=s.ssh_config, key=s.key, known_hosts=s.known_hosts, connect_timeout=CONNECT_S)
    h1, h3 = Target("h1", testcluster.host_ips["h1"]), Target("h3", testcluster.host_ips["h3"])
    marker = tmp_path / "started"  # under /tmp: every test host sees the same file
    try:
        assert all(r.ok for r in t.run_many({h1: "true", h3: "true"}, timeout=30).values())
        box: dict = {}
        th = threading.Thread(
            target=lambda: box.update(
                r=t.run_many({h3: f"touch {marker}; sleep 300"}, timeout=20), t=time.monotonic()
            ),
            daemon=True,
        )
        th.start()
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and th.is_alive(), box
            time.sleep(0.1)
        cut_h3()
        t_cut = time.monotonic()
        th.join(BOUND_S)
        assert not th.is_alive(), "the command on the cut host is not bounded"
        r = box["r"][h3]
        assert r.exit_code is None and "h3" in r.error, r
        print(f"command in flight: reported {box['t'] - t_cut:.1f} s after the cut: {r.error}")

        res, took = _bounded(lambda: t.run_many({h1: "hostname", h3: "hostname"}, timeout=30))
        assert res[h1].ok and res[h1].stdout.strip() == "h1", res[h1]
        assert res[h3].exit_code is None and "h3" in res[h3].error, res[h3]
        print(f"next call: {took:.1f} s, h3: {res[h3].error}")
    finally:
        t.close()


def test_status_then_down_with_h3_cut(testcluster, tmp_path, runs, cut_h3):
    run = _up3(testcluster, tmp_path, runs)
    rd = run.run_dir
    assert run.cluster.status().ok  # the connections to every host are open and cached now
    cut_h3()

    # status on the open connections: h3 named as unreachable, the others as usual
    st, took = _bounded(run.cluster.status)
    assert "h3" in st.unreachable and st.nodes["h3"]["reachable"] is False, st
    assert st.nodes["h1"]["process"] is True and st.nodes["h2"]["process"] is True, st
    print(f"status with h3 cut (reused connections): {took:.1f} s: {st.unreachable['h3']}")

    # status from another shell (new connections)
    p, took = _bounded(
        lambda: subprocess.run(
            [str(GLMLAUNCH), "status", "--run", str(rd.path)],
            capture_output=True,
            text=True,
            timeout=BOUND_S,
        )
    )
    both = p.stdout + p.stderr
    assert p.returncode == 0, both
    assert "unreachable" in both and "h3" in both, both
    print(f"glmlaunch status with h3 cut (new connections): {took:.1f} s")

    # down: h1 and h2 are stopped, h3 is named, the run records that h3 is not done
    res, took = _bounded(run.down)
    assert "error" in res["h3"] and "h3" in res["h3"]["error"], res
    assert "error" not in res["h1"] and "error" not in res["h2"], res
    assert RunDir.open(rd.path).manifest.state == "down-incomplete"
    print(f"down with h3 cut: {took:.1f} s: {res['h3']['error']}")

    # the link back: a second down stops what is left on h3, and only that
    _link("h3", "up")
    time.sleep(1)
    res = Run.open(rd.path).down()
    assert "error" not in res.get("h3", {}), res
    assert RunDir.open(rd.path).manifest.state == "down"
    assert_no_leftovers(testcluster, rd)


def test_launch_exits_naming_h3_when_its_link_is_cut_mid_run(testcluster, tmp_path, runs, cut_h3):
    # gloo on lo: the probe's collective never completes, so the job runs until it is stopped
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
        "--connect-timeout",
        str(CONNECT_S),
        "--runs-dir",
        str(runs),
        "--join-timeout",
        "120",
        "--set",
        "env.vars.GLOO_SOCKET_IFNAME=lo",
    ]
    log = tmp_path / "out.txt"
    with open(log, "w") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 180
        while "Running entrypoint" not in log.read_text():
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)
        cut_h3()
        t_cut = time.monotonic()
        rc = p.wait(300)
        took = time.monotonic() - t_cut
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    out = log.read_text()
    assert rc == 1, out[-4000:]
    assert "error:" in out and "h3" in out.split("error:", 1)[1], out[-4000:]
    rd = _only_run(runs)
    assert rd.manifest.state == "down-incomplete", rd.manifest.state
    print(f"launch exited {took:.1f} s after h3's link was cut: {out.split('error:', 1)[1][:300]}")

    # the link back: what the run left on h3 is stopped through its record
    _link("h3", "up")
    time.sleep(1)
    Run.open(rd.path).down()
    assert_no_leftovers(testcluster, RunDir.open(rd.path))


def test_a_killed_raylet_is_restarted_once_and_the_second_attempt_succeeds(testcluster, tmp_path, runs):
    """Supervision: attempt 1's job runs until h3's raylet is SIGKILLed (a cluster cause); the run
    is bundled, taken down, brought back (new state dirs) and resubmitted; attempt 2 succeeds."""
    run = _up3(testcluster, tmp_path, runs)
    rd = run.run_dir
    marker = tmp_path / "attempt1"  # under /tmp: every test host sees the same file
    script = f"if [ -e {marker} ]; then echo second-attempt-ok; exit 0; fi; touch {marker}; echo job-started; exec sleep 600"
    run.plan = run.cluster.plan = run.plan.model_copy(update=dict(argv=["bash", "-c", script]))
    box: dict = {}

    def go():
        try:
            box["r"] = run.supervise(max_restarts=1, watchdog_s=2, backoff_base_s=1)
        except BaseException as e:  # noqa: BLE001 (handed to the test thread)
            box["e"] = e

    th = threading.Thread(target=go, daemon=True)
    th.start()
    try:
        log = rd.path / "job.log"
        deadline = time.monotonic() + 90
        while "job-started" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline and th.is_alive(), box
            time.sleep(0.5)
        sid = RunDir.open(rd.path).manifest.nodes["h3"].pid
        raylets = [p for p in testcluster.processes(3) if p["comm"] == "raylet" and p["sid"] == sid]
        assert len(raylets) == 1, testcluster.processes(3)
        testcluster.kill(3, raylets[0]["pid"])
        th.join(400)
        assert not th.is_alive(), "supervise did not finish in 400 s"
    finally:
        run.down()
    assert "r" in box, box
    assert box["r"].ok, box
    m = RunDir.open(rd.path).manifest
    assert [a.number for a in m.attempts] == [1, 2]
    a1, a2 = m.attempts
    assert a1.cause == "cluster" and "h3" in a1.hosts and a1.restarted, a1
    assert a2.cause == "none" and a2.status == "SUCCEEDED" and not a2.restarted, a2
    bundle = Path(a1.bundle)
    for f in ("summary.txt", "manifest.json", "job-tail.log", "nodes.txt", "job.json", "ray-logs/h3.txt"):
        assert (bundle / f).is_file(), f
    assert "first failure: cluster" in (bundle / "summary.txt").read_text()
    assert (bundle.parent / "crash-1.tar.gz").is_file()
    assert "second-attempt-ok" in (rd.path / "job.log").read_text()
    assert_no_leftovers(testcluster, RunDir.open(rd.path))


@pytest.fixture
def h2_sshd(testcluster):
    """h2's sshd (in-host pid); started again afterwards if a test stopped it (the harness's own
    command, as test_ray_ssh's ``h3_sshd``)."""
    d = testcluster.state_dir / "ssh" / "h2"
    pid = int((d / "sshd.pid").read_text())
    yield pid
    testcluster.kill(2, pid, "CONT")
    if not testcluster.pid_alive(2, pid):
        testcluster.on_host(2, "/usr/sbin/sshd", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log"))
    for _ in range(50):
        r = subprocess.run(
            ["ssh", "-F", str(testcluster.ssh_config), "h2", "hostname"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if r.stdout.strip() == "h2":
            break
        time.sleep(0.2)
    else:
        pytest.fail("h2's sshd did not come back")


def test_a_failed_node_is_replaced_by_the_spare(testcluster, tmp_path, runs, h2_sshd):
    """Spares: cluster.nodes=2 and a 3-line hostfile (h3 the spare, never started). During
    attempt 1 h2's sshd is stopped and its raylet killed; supervision finds h2 unreachable after
    the failure, replaces it by h3 and attempt 2 (the probe) runs on h1 + h3, with h2 excluded."""
    from glmlaunch.probe import parse_report

    run = up(
        RECIPE,
        _hostfile(tmp_path, testcluster),
        overrides=["cluster.nodes=2"],
        ssh=_ssh(testcluster, connect_timeout=CONNECT_S),
        runs_dir=str(runs),
        join_timeout_s=120,
    )
    rd = run.run_dir
    assert [n.name for n in run.plan.nodes] == ["h1", "h2"]
    assert [h.name for h in rd.manifest.spares] == ["h3"]
    assert not [p for p in testcluster.processes(3) if p["comm"] == "raylet"], "the spare was started"
    marker = tmp_path / "attempt1"  # under /tmp: every test host sees the same file
    probe = shlex.join(run.plan.argv)  # attempt 2 runs the real probe: it names the nodes it sees
    script = f"if [ -e {marker} ]; then exec {probe}; fi; touch {marker}; echo job-started; exec sleep 600"
    run.plan = run.cluster.plan = run.plan.model_copy(update=dict(argv=["bash", "-c", script]))
    box: dict = {}

    def go():
        try:
            box["r"] = run.supervise(max_restarts=1, watchdog_s=2, backoff_base_s=1)
        except BaseException as e:  # noqa: BLE001 (handed to the test thread)
            box["e"] = e

    th = threading.Thread(target=go, daemon=True)
    th.start()
    try:
        log = rd.path / "job.log"
        deadline = time.monotonic() + 90
        while "job-started" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline and th.is_alive(), box
            time.sleep(0.5)
        sid = RunDir.open(rd.path).manifest.nodes["h2"].pid
        raylets = [p for p in testcluster.processes(2) if p["comm"] == "raylet" and p["sid"] == sid]
        assert len(raylets) == 1, testcluster.processes(2)
        testcluster.kill(2, h2_sshd, "TERM")  # new connections to h2 are refused from now on
        testcluster.kill(2, raylets[0]["pid"])
        th.join(480)
        assert not th.is_alive(), "supervise did not finish in 480 s"
    finally:
        run.down()
    assert "r" in box, box
    text = (rd.path / "job.log").read_text()
    assert box["r"].ok, (box, text[-3000:])
    m = RunDir.open(rd.path).manifest
    a1, a2 = m.attempts
    assert a1.cause == "cluster" and "h2" in a1.hosts and a1.restarted and a1.nodes == ["h1", "h2"], a1
    assert a2.nodes == ["h1", "h3"] and a2.replaced == {"h2": "h3"} and a2.status == "SUCCEEDED", a2
    assert set(m.excluded) == {"h2"} and m.spares == [], (m.excluded, m.spares)
    report = parse_report(text)
    assert report == {"ok": True, "problems": [], "nodes": 2}, text[-3000:]
    seen = sorted(
        json.loads(line[len(PREFIX) :])["hostname"] for line in text.splitlines() if line.startswith(PREFIX)
    )
    assert seen == ["h1", "h3"], seen

    p = subprocess.run(
        [str(GLMLAUNCH), "status", "--run", str(rd.path)], capture_output=True, text=True, timeout=BOUND_S
    )
    assert "excluded" in p.stdout and "h2" in p.stdout and "replaced by spare h3" in p.stdout, (
        p.stdout + p.stderr
    )
    # h2's sshd back: nothing of the run is left on any host (h2 was stopped on the open connection)
    testcluster.kill(2, h2_sshd, "CONT")
    assert_no_leftovers(testcluster, RunDir.open(rd.path))
    both = f"/glr-{m.run_id}-"  # both attempts' state directories
    left = {
        h: [p for p in testcluster.processes(i + 1, both) if p["marked"]]
        for i, h in enumerate(testcluster.hosts)
    }
    assert not any(left.values()), left
