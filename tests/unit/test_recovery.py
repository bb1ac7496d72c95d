"""Recovery, pure logic: every remote call is bounded and a host that does not answer is named
and left behind (issue 14, "the launcher hangs when a node's network is cut").

The real cut link (a veth taken down under a running cluster) is in
tests/integration/test_link_cut_and_restarts.py; here the transports' bounding and the cluster's handling of
an unreachable host are checked with fakes.
"""

from __future__ import annotations

import threading

import pytest
from fakes import FakeClock, FakeJobs, FakeTransport, install

from glmlaunch import run as run_mod
from glmlaunch.cluster import RayCluster
from glmlaunch.errors import ClusterError, HostfileError, UsageError
from glmlaunch.hosts import discover, read_hostfile
from glmlaunch.plan import build_plan
from glmlaunch.recipe import load_recipe
from glmlaunch.render import render_bash, render_json
from glmlaunch.run import _watchdog, plan_launch
from glmlaunch.runs import RunDir
from glmlaunch.transport import RemoteResult, Target, run_parallel

H1, H2, H3 = "10.0.0.1", "10.0.0.2", "10.0.0.3"


# ----------------------------------------------------------------------------- run_parallel


def test_a_host_that_never_answers_is_reported_unreachable_and_abandoned():
    release = threading.Event()
    abandoned: list[str] = []
    t1, t2, t3 = (Target(f"h{i}", f"10.0.0.{i}") for i in (1, 2, 3))

    def run_one(t: Target, cmd: str, timeout: float) -> RemoteResult:
        if t is t2:
            release.wait()  # paramiko waiting for an answer that never comes
        return RemoteResult(t.name, 0, stdout=cmd)

    done: list[str] = []
    try:
        res = run_parallel(
            run_one,
            {t1: "a", t2: "b", t3: "c"},
            timeout=0.05,
            slack_s=0.05,
            abandon=lambda t: abandoned.append(t.name),
            on_done=lambda t, r: done.append(t.name),
        )
    finally:
        release.set()
    assert list(res) == [t1, t2, t3] and done == ["h1", "h2", "h3"]  # every host, in order
    assert res[t1].ok and res[t3].ok and res[t3].stdout == "c"
    r2 = res[t2]
    assert r2.exit_code is None and not r2.ok
    assert r2.error.startswith("h2: ") and "unreachable" in r2.error
    for _ in range(200):  # abandon runs on a thread of its own
        if abandoned:
            break
        threading.Event().wait(0.01)
    assert abandoned == ["h2"]


def test_the_bound_counts_from_each_hosts_own_start():
    # max_parallel=1: the second host starts only when the first is done; a slow first host
    # must not eat the second one's bound
    first_done = threading.Event()

    def run_one(t: Target, cmd: str, timeout: float) -> RemoteResult:
        if t.name == "h1":
            first_done.wait(0.3)
        return RemoteResult(t.name, 0)

    a, b = Target("h1", "10.0.0.1"), Target("h2", "10.0.0.2")
    res = run_parallel(run_one, {a: "x", b: "y"}, timeout=0.2, slack_s=0.5, max_parallel=1)
    assert res[a].ok and res[b].ok


def test_a_transport_that_raises_still_gives_a_result_naming_the_host():
    def run_one(t: Target, cmd: str, timeout: float) -> RemoteResult:
        raise RuntimeError("boom")

    t = Target("h9", "10.0.0.9")
    r = run_parallel(run_one, {t: "x"}, timeout=1)[t]
    assert r.exit_code is None and r.error.startswith("h9: ") and "boom" in r.error


# ----------------------------------------------------------------------------- SSH


@pytest.fixture
def ssh(tmp_path):
    from glmlaunch.transport.ssh import SSHTransport

    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n  StrictHostKeyChecking yes\n")
    return SSHTransport(ssh_config=str(cfg), connect_timeout=7)


def test_ssh_bounds_the_channel_open_on_a_reused_connection(ssh):
    c = ssh._connection(Target("h1", "10.0.0.1"))
    # paramiko's default wait for a channel on an open connection is an hour
    assert c.connect_kwargs["channel_timeout"] == 7
    assert c.connect_kwargs["banner_timeout"] == 7 and c.connect_kwargs["auth_timeout"] == 7
    assert c.connect_timeout == 7
    assert ssh.slack_s == 4 * 7 + 5


@pytest.mark.parametrize(
    "exc",
    [
        "Timeout opening channel.",  # paramiko/transport.py open_channel
        "SSH session not active",  # the transport thread ended (TCP_USER_TIMEOUT)
    ],
)
def test_ssh_names_a_host_that_stopped_answering_as_unreachable(ssh, exc):
    import paramiko

    t = Target("h3", "10.0.0.3")
    c = ssh._connection(t)
    msg = ssh._describe(t, c, paramiko.SSHException(exc))
    assert "h3" in msg and "unreachable" in msg


def test_ssh_drops_only_the_connection_that_failed(ssh):
    t = Target("h3", "10.0.0.3")
    old = ssh._connection(t)
    ssh._drop(t, old)
    new = ssh._connection(t)
    assert new is not old
    ssh._drop(t, old)  # a late failure of the old connection leaves the new one cached
    assert ssh._connection(t) is new
    ssh._drop(t)  # the hard bound's abandon: whatever is cached goes
    assert ssh._connection(t) is not new


# ----------------------------------------------------------------------------- the cluster


@pytest.fixture
def cluster(hostfile3, monkeypatch):
    recipe = load_recipe("local-probe")
    plan = build_plan(recipe, read_hostfile(str(hostfile3)))
    fake = FakeTransport()
    install(monkeypatch, fake, clock=FakeClock())
    c = RayCluster(plan, fake, recipe=recipe, join_timeout_s=5, stop_grace_s=0.1, command_timeout_s=5)
    c.up()
    return c, fake


def test_status_names_an_unreachable_node_and_reports_the_others(cluster):
    c, fake = cluster
    fake.host(H3).unreachable = True
    st = c.status()
    assert st.unreachable == {H3: f"{H3}: connection refused (fake)"}
    assert st.nodes[H3]["reachable"] is False and st.nodes[H3]["process"] is None
    for h in (H1, H2):
        assert st.nodes[h]["reachable"] is True and st.nodes[h]["process"] is True
    assert not st.ok
    fake.host(H3).unreachable = False  # it answers again: no longer named
    st = c.status()
    assert st.unreachable == {} and st.ok


def test_down_stops_the_reachable_nodes_and_names_the_unreachable_one(cluster):
    c, fake = cluster
    fake.host(H3).unreachable = True
    res = c.down()
    assert "error" in res[H3] and H3 in res[H3]["error"]
    assert "error" not in res[H1] and "error" not in res[H2]
    assert set(fake.live()) == {H3}  # only the node that could not be reached keeps its process
    assert c.started  # the record of h3's session is kept for a later down


def test_the_watchdog_names_the_dead_node_and_why_it_does_not_answer(cluster, monkeypatch):
    c, fake = cluster
    fake.host(H3).unreachable = True
    node = fake.node(H3)
    for p in node.procs.values():  # Ray reports it dead once its raylet is gone
        p.alive = False
    check = _watchdog(c, every_s=0)
    with pytest.raises(ClusterError) as e:
        check()
    assert set(e.value.missing) == {H3}
    assert "Ray reports it dead" in e.value.missing[H3] and "connection refused" in e.value.missing[H3]


# ----------------------------------------------------------------------------- supervision logic

from glmlaunch import recovery  # noqa: E402
from glmlaunch.bundle import redact_argv, redact_env  # noqa: E402
from glmlaunch.jobs import JobResult  # noqa: E402
from glmlaunch.nodeops import latest_complete  # noqa: E402
from glmlaunch.runs import Attempt, Manifest  # noqa: E402


def _job(status: str, code: int | None = 1, message: str = "") -> JobResult:
    return JobResult("sid", status, code, message, 1.0)


@pytest.mark.parametrize(
    ("result", "error", "dead", "tail", "kind"),
    [
        (_job("SUCCEEDED", 0), None, {}, "", "none"),
        (None, ClusterError("1 node(s) died", missing={"h3": "dead"}), {}, "", "cluster"),
        (None, ClusterError("the job printed no new log line for 60 s: hung"), {}, "", "cluster"),
        (_job("FAILED"), None, {"h2": "Ray reports it dead"}, "", "cluster"),
        (_job("FAILED", None, "Job supervisor actor died"), None, {}, "", "cluster"),
        (_job("FAILED"), None, {}, "ray.exceptions.ActorDiedError: ... its node has died", "cluster"),
        (_job("FAILED"), None, {}, "The actor died because its node has died. Node Id: ab", "cluster"),
        (_job("FAILED", 1), None, {}, "ZeroDivisionError: division by zero", "trainer"),
        (_job("STOPPED", None), None, {}, "", "stopped"),
    ],
)
def test_classify(result, error, dead, tail, kind):
    assert recovery.classify(result, error, dead_nodes=dead, log_tail=tail).kind == kind


def test_a_trainer_failure_is_restarted_only_when_asked():
    trainer = recovery.Cause(recovery.CauseKind.TRAINER, "exit 1")
    cluster = recovery.Cause(recovery.CauseKind.CLUSTER, "node lost")
    assert not recovery.should_restart(trainer, "cluster", 3)
    assert recovery.should_restart(trainer, "any", 3)
    assert recovery.should_restart(cluster, "cluster", 1)
    assert not recovery.should_restart(cluster, "cluster", 0)  # exhausted
    assert not recovery.should_restart(recovery.Cause(recovery.CauseKind.STOPPED), "any", 3)


def test_backoff_doubles_up_to_its_cap():
    assert [recovery.backoff_s(i, base_s=10, max_s=50) for i in (1, 2, 3, 4)] == [10, 20, 40, 50]


def test_a_bad_node_is_replaced_by_a_spare_in_place():
    active, left, swapped = recovery.replace_nodes(["h1", "h2", "h3"], ["s1", "s2"], {"h2": "unreachable"})
    assert active == ["h1", "s1", "h3"] and left == ["s2"] and swapped == {"h2": "s1"}


def test_no_spare_left_names_the_bad_node():
    with pytest.raises(ClusterError) as e:
        recovery.replace_nodes(["h1", "h2"], ["s1"], {"h2": "unreachable", "s1": "failed preflight"})
    assert set(e.value.missing) == {"h2"} and "h2" in e.value.message


def _iteration(save, it: int, *, complete: bool = True) -> None:
    d = save / f"iter_{it:07d}"
    d.mkdir(parents=True)
    for f in ("metadata.json", "common.pt", ".metadata"):
        (d / f).write_text("x")
    if complete:
        (d / "__0_0.distcp").write_bytes(b"x")


@pytest.fixture
def no_torch(monkeypatch):
    """The launcher-side fallback (file presence): torch's reader would refuse our fake files."""
    import builtins

    real = builtins.__import__

    def imp(name, *a, **kw):
        if name.startswith("torch"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", imp)


def test_latest_complete_checkpoint_follows_the_tracker(tmp_path, no_torch):
    _iteration(tmp_path, 10)
    _iteration(tmp_path, 20)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("20\n")
    assert latest_complete(str(tmp_path)) == {"tracker": 20, "iteration": 20, "torn": {}}


def test_a_torn_latest_checkpoint_falls_back_to_the_newest_complete_one(tmp_path, no_torch):
    _iteration(tmp_path, 10)
    _iteration(tmp_path, 20, complete=False)  # the save was killed halfway
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("20")
    found = latest_complete(str(tmp_path))
    assert found["iteration"] == 10 and "20" in found["torn"]
    argv, note = recovery.resume_args(["train.py", "--load", str(tmp_path)], found)
    assert argv[-2:] == ["--ckpt-step", "10"] and "iteration 20 is torn" in note


def test_no_checkpoint_yet(tmp_path, no_torch):
    assert latest_complete(str(tmp_path / "none")) == {"tracker": None, "iteration": None, "torn": {}}
    argv, note = recovery.resume_args(["train.py", "--ckpt-step", "5"], latest_complete(str(tmp_path)))
    assert argv == ["train.py"] and "ref-load" in note  # an old --ckpt-step goes


def test_secrets_never_enter_the_bundle():
    env = redact_env(
        {"WANDB_API_KEY": "k", "HF_TOKEN": "t", "MY_PASS": "p", "NCCL_DEBUG": "INFO"}, ["MY_PASS"]
    )
    assert env == {
        "WANDB_API_KEY": "<redacted>",
        "HF_TOKEN": "<redacted>",
        "MY_PASS": "<redacted>",
        "NCCL_DEBUG": "INFO",
    }
    argv = redact_argv(["train.py", "--wandb-key", "abc", "--api-token=xyz", "--lr", "1e-6"])
    assert argv == ["train.py", "--wandb-key", "<redacted>", "--api-token=<redacted>", "--lr", "1e-6"]


def test_attempts_are_kept_in_the_manifest():
    m = Manifest(run_id="r")
    m.attempts = [Attempt(number=1, nodes=["h1"], cause="cluster", hosts={"h3": "dead"}, resumed_from=None)]
    back = Manifest.model_validate_json(m.model_dump_json())
    assert back.attempts[0].hosts == {"h3": "dead"} and back.attempts[0].cause == "cluster"
    assert Manifest.model_validate_json('{"run_id": "old"}').attempts == []  # older manifests read


# ----------------------------------------------------------------------------- spares: discovery


def test_hosts_beyond_cluster_nodes_are_spares(hostfile3):
    a = discover(str(hostfile3), want_nodes=2)
    assert [h.address for h in a.hosts] == [H1, H2]
    assert [h.address for h in a.spares] == [H3] and a.spares[0].slots == 8
    assert a.spares[0].source.endswith("hostfile3:3")
    every = discover(str(hostfile3))  # without cluster.nodes every host is a node, as before
    assert every.num_nodes == 3 and every.spares == ()


def test_the_head_stays_a_node_when_it_is_listed_last(hostfile3):
    a = discover(str(hostfile3), want_nodes=2, head=H3)
    assert [h.address for h in a.hosts] == [H3, H1] and [h.address for h in a.spares] == [H2]


def test_spares_from_a_file_of_their_own(write_hostfile, hostfile3):
    spares = write_hostfile("10.0.0.7\n10.0.0.8\n", "spares")
    a = discover(str(hostfile3), want_nodes=2, spares=str(spares))
    assert [h.address for h in a.spares] == [H3, "10.0.0.7", "10.0.0.8"]
    assert all(h.slots == 8 for h in a.spares)  # a spare without slots takes the nodes' count


def test_a_spare_that_is_also_a_node_is_refused_naming_its_line(write_hostfile, hostfile3):
    spares = write_hostfile("# spares\n10.0.0.9 slots=8\n10.0.0.2 slots=8\n", "spares")
    with pytest.raises(HostfileError) as ei:
        discover(str(hostfile3), spares=str(spares))
    assert "spares:3" in ei.value.message and "10.0.0.2" in ei.value.message, ei.value.message
    assert "hostfile3:2" in ei.value.message and ei.value.hint


def test_a_spare_with_other_slots_is_refused(write_hostfile, hostfile3):
    spares = write_hostfile("10.0.0.9 slots=4\n", "spares")
    with pytest.raises(HostfileError) as ei:
        discover(str(hostfile3), want_nodes=2, spares=str(spares))
    assert "spares:1" in ei.value.message and "slots=4" in ei.value.message and "slots=8" in ei.value.message


def test_spares_need_a_hostfile(write_hostfile):
    spares = write_hostfile("10.0.0.9 slots=8\n", "spares")
    for kw in ({"local": True}, {"nodes": 2}):
        with pytest.raises(UsageError) as ei:
            discover(spares=str(spares), **kw)
        assert "--spares" in ei.value.message and ei.value.hint


def test_the_plan_leaves_spares_out_and_a_note_names_them(hostfile3):
    p = plan_launch("local-probe", str(hostfile3), overrides=["cluster.nodes=2"])
    assert [n.address for n in p.plan.nodes] == [H1, H2] and p.plan.num_nodes == 2
    assert not p.findings.errors, [str(f) for f in p.findings]  # once refused: 3 hosts, cluster.nodes=2
    notes = [f for f in p.findings if f.severity == "note"]
    assert len(notes) == 1 and H3 in notes[0].message and "hostfile3:3" in notes[0].message
    assert H3 not in render_json(p.plan) and H3 not in render_bash(p.plan)


# ----------------------------------------------------------------------------- spares: supervise


class _FailsFirst(FakeJobs):
    """The first job fails as Ray reports a lost node; ``then`` runs when it does. Later jobs succeed."""

    def __init__(self, then, **kw):
        super().__init__(**kw)
        self.then, self.first = then, None

    def _settle(self, j):
        self.first = self.first or j.sid
        if j.sid == self.first and j.status == "RUNNING" and j.produced >= len(j.lines):
            j.status, j.exit_code = "FAILED", 1
            j.lines.append("The node with node id: abc has been marked dead\n")
            j.produced = len(j.lines)
            self.then()
            return
        super()._settle(j)


def _supervised(tmp_path, hostfile, monkeypatch, clock, then, **up_kw):
    fake = FakeTransport()
    jobs = _FailsFirst(lambda: then(fake))
    install(monkeypatch, fake, jobs, clock=clock)
    monkeypatch.setenv("GLMLAUNCH_STATE_DIR", str(tmp_path / "state"))
    run = run_mod.up(
        "local-probe",
        str(hostfile),
        transport=fake,
        runs_dir=str(tmp_path / "runs"),
        join_timeout_s=5,
        **up_kw,
    )
    return fake, run


def _cut(host):
    """``host`` dies (its Ray processes gone, as Ray then reports it) and stops answering."""

    def then(fake):
        fake.host(host).unreachable = True
        for p in fake.node(host).procs.values():
            p.alive = False

    return then


def test_a_node_unreachable_after_a_failure_is_replaced_by_a_spare(tmp_path, hostfile3, monkeypatch):
    fake, run = _supervised(
        tmp_path, hostfile3, monkeypatch, FakeClock(), _cut(H2), overrides=["cluster.nodes=2"]
    )
    assert [n.address for n in run.plan.nodes] == [H1, H2]
    assert [h.name for h in run.run_dir.manifest.spares] == [H3]
    assert not fake.ops("start", H3)  # a spare is never started
    first_dir = run.plan.state_dir
    result = run.supervise(max_restarts=1, backoff_base_s=0, watchdog_s=1e9, sleep=lambda s: None)
    assert result.ok, result
    m = RunDir.open(run.path).manifest
    a1, a2 = m.attempts
    assert a1.cause == "cluster" and a1.restarted and a1.nodes == [H1, H2]
    assert a2.nodes == [H1, H3] and a2.replaced == {H2: H3} and a2.status == "SUCCEEDED"
    assert set(m.excluded) == {H2} and "unreachable" in m.excluded[H2]
    assert m.spares == [] and [h.address for h in m.hosts] == [H1, H3]
    assert [n.address for n in run.plan.nodes] == [H1, H3] and run.plan.state_dir != first_dir
    assert run.plan.head.role == "head" and run.plan.nodes[1].ray_start[-1] != ""
    assert [c.host for c in fake.ops("start")][-2:] == [H1, H3]  # attempt 2 started H1 then H3
    st = run.status()
    assert st.excluded == m.excluded and st.spares == []
    run.down()
    assert not fake.live()


def test_no_spare_left_stops_naming_the_bad_node(tmp_path, hostfile3, monkeypatch):
    fake, run = _supervised(tmp_path, hostfile3, monkeypatch, FakeClock(), _cut(H3))
    with pytest.raises(ClusterError) as ei:
        run.supervise(max_restarts=2, backoff_base_s=0, watchdog_s=1e9, sleep=lambda s: None)
    e = ei.value
    assert H3 in e.message and "no spare" in e.message and set(e.missing) == {H3} and e.hint
    m = RunDir.open(run.path).manifest
    assert len(m.attempts) == 1 and not m.attempts[0].restarted
    assert H3 in m.excluded
    assert len(fake.ops("start")) == 3  # attempt 1 only: never a smaller world


def test_a_spare_that_fails_its_check_is_skipped(tmp_path, write_hostfile, monkeypatch):
    hf = write_hostfile("".join(f"10.0.0.{i} slots=8\n" for i in range(1, 5)), "hostfile4")

    def then(fake):
        _cut(H2)(fake)
        fake.host(H3).unreachable = True  # the first spare is down too

    fake, run = _supervised(tmp_path, hf, monkeypatch, FakeClock(), then, overrides=["cluster.nodes=2"])
    assert run.supervise(max_restarts=1, backoff_base_s=0, watchdog_s=1e9, sleep=lambda s: None).ok
    m = RunDir.open(run.path).manifest
    assert m.attempts[1].replaced == {H2: "10.0.0.4"} and [h.name for h in m.spares] == [H3]
    assert set(m.excluded) == {H2}


def test_a_restart_rebuilds_the_same_plan_with_new_state_dirs(tmp_path, hostfile3, monkeypatch):
    fake, run = _supervised(tmp_path, hostfile3, monkeypatch, FakeClock(), lambda fake: None)
    old = run.plan
    new = run._build(run._plan_hosts())
    nonce_old, nonce_new = old.state_dir[-16:], new.state_dir[-16:]
    assert nonce_old != nonce_new
    # the same plan, not probed yet: the restart's preflight asks the nodes again (NVLink), so
    # its note says "decided at launch" where the first attempt's says what the nodes answered
    assert render_json(new).replace(nonce_new, nonce_old) == render_json(
        old.model_copy(update={"probed": False, "notes": new.notes})
    )
    assert [n for n in new.notes if not n.startswith("decided at launch")] == [
        n for n in old.notes if not n.startswith("NCCL_NVLS_ENABLE=")
    ]
    run.down()


# ----------------------------------------------------------------------------- CLI: status, bundle, --backoff


def test_status_and_an_on_demand_bundle_after_a_replacement(tmp_path, hostfile3, monkeypatch, cli):
    fake, run = _supervised(
        tmp_path, hostfile3, monkeypatch, FakeClock(), _cut(H2), overrides=["cluster.nodes=2"]
    )
    monkeypatch.setattr(run_mod, "transport_from_record", lambda rec: fake)
    r = cli("status", "--run", run.path)
    assert r.exit_code == 0 and f"spares (not started): {H3}" in r.output, r.output
    assert run.supervise(max_restarts=1, backoff_base_s=0, watchdog_s=1e9, sleep=lambda s: None).ok
    r = cli("status", "--run", run.path)
    assert r.exit_code == 0, r.output
    assert f"({H2} replaced by spare {H3})" in r.output and f"excluded: {H2}: unreachable" in r.output, (
        r.output
    )
    assert "spares (not started)" not in r.output
    r = cli("bundle", "--run", run.path)
    assert r.exit_code == 0, r.output
    (d,) = [p for p in run.path.iterdir() if p.name.startswith("bundle-") and p.is_dir()]
    assert (d / "summary.txt").is_file() and (d / "nodes.txt").is_file() and (d / "job-tail.log").is_file()
    assert (run.path / f"{d.name}.tar.gz").is_file() and d.name in r.output
    assert "nodes replaced" in (d / "summary.txt").read_text()
    run.down()


def test_launch_passes_backoff_to_supervision(monkeypatch, cli):
    seen = {}

    def fake_launch(*a, **kw):
        seen.update(kw)
        raise run_mod.UsageError("stop here", "nothing")

    monkeypatch.setattr(run_mod, "launch", fake_launch)
    r = cli("launch", "--max-restarts", "2", "--backoff", "5", "--spares", "/nonexistent")
    assert r.exit_code == 2 and seen["backoff_base_s"] == 5 and seen["spares"] == "/nonexistent", r.output
    assert cli("launch", "--backoff", "-1").exit_code == 2
