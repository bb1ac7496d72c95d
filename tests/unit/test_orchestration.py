"""The orchestration core (RayCluster, Run, glmlaunch.run.up, jobs.follow) against a fake
transport and a fake Jobs client (tests/unit/fakes.py): the order of operations on the nodes,
rollback, fail-fast, reuse and job teardown, in a few seconds and with no Ray, SSH or network.

Waits run on a virtual clock (fakes.FakeClock replaces glmlaunch.cluster's and glmlaunch.jobs'
``time``), so join and stop timeouts are exercised in full without taking their time. The
integration tests (tests/integration) do the same on real namespaced hosts.
"""

from __future__ import annotations

import json
import time

import pytest
from fakes import FakeClock, FakeHost, FakeJobs, FakeTransport, install

from glmlaunch import jobs
from glmlaunch import run as run_mod
from glmlaunch.cluster import RayCluster
from glmlaunch.errors import ClusterError, TransportError
from glmlaunch.hosts import read_hostfile
from glmlaunch.plan import build_plan
from glmlaunch.recipe import load_recipe
from glmlaunch.run import Run
from glmlaunch.runs import RunDir, RunState

H1, H2, H3 = "10.0.0.1", "10.0.0.2", "10.0.0.3"
ALL = [H1, H2, H3]
WALL_LIMIT_S = (
    15.0  # a hang guard (the waits run on fake clocks), not a speed target: no test here may take longer
)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def recipe():
    return load_recipe("local-probe")


@pytest.fixture
def plan(recipe, hostfile3):
    return build_plan(recipe, read_hostfile(str(hostfile3)))


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def job_clock():
    return FakeClock()


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Run directories and the current-run pointer under tmp_path."""
    runs, state = tmp_path / "runs", tmp_path / "state"
    monkeypatch.setenv("GLMLAUNCH_STATE_DIR", str(state))
    monkeypatch.setenv("GLMLAUNCH_RUNS_DIR", str(runs))
    return runs, state


@pytest.fixture(autouse=True)
def _quick():
    """Every test of this module ends within WALL_LIMIT_S of wall time."""
    t0 = time.monotonic()
    yield
    took = time.monotonic() - t0
    assert took < WALL_LIMIT_S, f"the test took {took:.1f} s"


def make_cluster(plan, transport, recipe, **kw) -> RayCluster:
    kw = {"join_timeout_s": 5, "stop_grace_s": 0.1, "command_timeout_s": 5} | kw
    return RayCluster(plan, transport, recipe=recipe, **kw)


def seq_of(fake: FakeTransport, op: str, host: str | None = None) -> list[int]:
    return [c.seq for c in fake.ops(op, host)]


def assert_rolled_back(fake: FakeTransport, plan, started: list[str]) -> None:
    """Stop went to every node that got a start or the token (all in one round), and nothing is
    left on any node: no process, no token."""
    touched = set(started) | {c.host for c in fake.ops("write_secret")}
    assert {c.host for c in fake.ops("stop")} == touched
    batches = [set(b) for b in fake.batches("stop")]
    assert batches == [touched]
    assert min(seq_of(fake, "stop")) > max(seq_of(fake, "start"), default=0)
    assert fake.live() == {}
    for n in plan.nodes:
        assert f"{n.state_dir}/auth_token" not in fake.node(n.name).files


# ----------------------------------------------------------------------------- (1) start order, token


def test_head_answers_before_any_worker_start_then_workers_start_together(plan, recipe, clock, monkeypatch):
    fake = FakeTransport()
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe)

    status = c.up()

    assert status.ok and c.is_up
    assert fake.batches("preflight") == [ALL]
    assert fake.batches("start") == [[H1], [H2, H3]]  # the head alone, then both workers in one round
    head_start = seq_of(fake, "start", H1)[0]
    worker_start = min(seq_of(fake, "start", H2) + seq_of(fake, "start", H3))
    answered = [i for i, e in enumerate(fake.events) if e == ("api", "/api/version", "ok")]
    assert answered and head_start < answered[0] < worker_start  # the head's API answered first
    assert set(fake.live()) == set(ALL)
    assert {n: v["gpus"] for n, v in status.nodes.items()} == dict.fromkeys(ALL, 8.0)


def test_token_is_written_to_every_node_before_start_and_never_in_a_command_line(
    plan, recipe, clock, monkeypatch
):
    fake = FakeTransport()
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe)
    c.up()

    token = c.token
    assert token and len(token) >= 32
    first_start = min(seq_of(fake, "start"))
    for n in plan.nodes:
        path = f"{n.state_dir}/auth_token"
        assert (n.name, path, token + "\n", 0o600) in fake.writes
        assert all(s < first_start for s in seq_of(fake, "write_secret", n.name))
        start = fake.ops("start", n.name)[0].args
        assert start["env"]["RAY_AUTH_TOKEN_PATH"] == path  # ray start reads it from the file
        assert start["pidfile"] == f"{n.state_dir}/ray.pid"
    assert fake.commands
    # no part of the token in any command line (the preflight's shared-dir sentinel is a nonce of its own)
    for cmd in fake.commands:
        assert all(token[i : i + 8] not in cmd for i in range(0, len(token) - 7))
    assert {(h, op) for h, op, _ in fake.stdins} == {(n.name, "write_secret") for n in plan.nodes}


# ----------------------------------------------------------------------------- (2) rollback


@pytest.mark.parametrize("how", ["start-exits-non-zero", "ray-start-exited-at-once", "unreachable-at-start"])
def test_a_failed_worker_start_rolls_back_every_started_node_workers_first(
    how, plan, recipe, clock, monkeypatch
):
    h3 = {
        "start-exits-non-zero": FakeHost(start_fails=True),
        "ray-start-exited-at-once": FakeHost(start_exits=1),
        "unreachable-at-start": FakeHost(unreachable_ops={"start"}),
    }[how]
    fake = FakeTransport({H3: h3})
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe)

    with pytest.raises(ClusterError) as e:
        c.up()

    assert set(e.value.missing) == {H3}
    assert H3 in e.value.message and H2 not in e.value.message.split("\n", 1)[1]
    assert "1 worker(s) did not start" in e.value.message
    assert_rolled_back(fake, plan, ALL)
    h3_stop = fake.ops("stop", H3)[0].args
    assert h3_stop["pidfile"] == f"{plan.nodes[2].state_dir}/ray.pid"  # even without an answer, its pid file
    assert not fake.ops("alive") or max(seq_of(fake, "alive")) < min(seq_of(fake, "stop"))  # no join wait
    assert not c.started and not c.is_up


def test_a_failed_head_start_sends_no_worker_start(plan, recipe, clock, monkeypatch):
    fake = FakeTransport({H1: FakeHost(start_fails=True)})
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe)

    with pytest.raises(ClusterError) as e:
        c.up()

    assert set(e.value.missing) == {H1} and "head node did not start" in e.value.message
    assert fake.batches("start") == [[H1]]
    assert_rolled_back(fake, plan, [H1])


@pytest.mark.parametrize("how", ["head-start-fails", "token-write-fails-on-h3"])
def test_a_rollback_removes_the_token_from_every_node(how, plan, recipe, clock, monkeypatch):
    host = {
        "head-start-fails": (H1, FakeHost(start_fails=True)),
        "token-write-fails-on-h3": (H3, FakeHost(unreachable_ops={"write_secret"})),
    }[how]
    fake = FakeTransport(dict([host]))
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe)

    with pytest.raises((ClusterError, TransportError)):
        c.up()

    left = {n.name for n in plan.nodes if f"{n.state_dir}/auth_token" in fake.node(n.name).files}
    assert left == set()


def test_an_unreachable_node_stops_the_launch_before_anything_starts(plan, recipe, clock, monkeypatch):
    fake = FakeTransport({H2: FakeHost(unreachable=True)})
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe)

    with pytest.raises(TransportError) as e:
        c.up()

    assert set(e.value.failures) == {H2} and H2 in e.value.message
    assert {c.op for c in fake.calls} == {"preflight"}  # no token written, nothing started or stopped
    assert fake.live() == {}


# ----------------------------------------------------------------------------- (3)-(5) the join wait


@pytest.mark.parametrize("alive_checks", [0, 1, 2])
def test_a_node_whose_ray_start_dies_ends_the_join_wait_at_once(
    alive_checks, plan, recipe, clock, monkeypatch
):
    fake = FakeTransport({H3: FakeHost(joins=False, dies_after_alive_checks=alive_checks)})
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe, join_timeout_s=120)
    t0 = clock.now

    with pytest.raises(ClusterError) as e:
        c.up()

    waited = clock.now - t0
    assert e.value.missing == {H3: "ray start exited before the node joined"}
    assert "1 node(s) failed to join" in e.value.message and "did not join within" not in e.value.message
    assert waited < 5 * (alive_checks + 1)  # RayCluster looks at the processes every 3 s, far below 120 s
    assert "fake ray-start.log line on 10.0.0.3" in e.value.message  # the dead node's log lines are shown
    assert_rolled_back(fake, plan, ALL)


def test_a_node_that_never_joins_is_named_after_the_join_timeout(plan, recipe, clock, monkeypatch):
    fake = FakeTransport({H3: FakeHost(joins=False)})
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe, join_timeout_s=5)
    t0 = clock.now

    with pytest.raises(ClusterError) as e:
        c.up()

    assert e.value.missing == {H3: "not joined"}
    assert "1 of 3 nodes did not join within 5 s" in e.value.message
    assert 5 <= clock.now - t0 < 8
    assert_rolled_back(fake, plan, ALL)


def test_a_slow_node_that_joins_within_the_timeout_is_waited_for(plan, recipe, clock, monkeypatch):
    fake = FakeTransport({H2: FakeHost(join_after_polls=3)})
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe, join_timeout_s=30)

    assert c.up().ok
    assert fake.ops("stop") == []


def test_a_node_joining_with_the_wrong_gpu_count_is_named(plan, recipe, clock, monkeypatch):
    fake = FakeTransport({H2: FakeHost(gpus=4)})
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe)

    with pytest.raises(ClusterError) as e:
        c.up()

    assert e.value.missing == {H2: "joined with 4 GPUs, expected 8"}
    assert "wrong GPU count" in e.value.message
    assert_rolled_back(fake, plan, ALL)


# ----------------------------------------------------------------------------- (6) up() reuse


def _up(hostfile, runs, fake, **kw):
    return run_mod.up(
        "local-probe", str(hostfile), transport=fake, runs_dir=str(runs), join_timeout_s=5, **kw
    )


def test_up_returns_the_current_run_when_it_is_up_on_the_same_nodes(hostfile3, dirs, clock, monkeypatch):
    runs, state = dirs
    fake = FakeTransport()
    install(monkeypatch, fake, clock=clock)
    monkeypatch.setattr(run_mod, "transport_from_record", lambda rec: fake)  # see the xfail test below

    first = _up(hostfile3, runs, fake)
    assert not first.reused and first.state is RunState.UP
    assert (state / "current").read_text().strip() == str(first.path)
    n = len(fake.calls)

    again = _up(hostfile3, runs, fake)

    assert again.reused and again.run_id == first.run_id and again.path == first.path
    assert {c.op for c in fake.calls[n:]} <= {"alive"}  # looked at the processes; started nothing
    assert sorted(p.name for p in runs.iterdir()) == [first.run_id]

    n = len(fake.calls)
    with pytest.raises(ClusterError) as e:
        _up(hostfile3, runs, fake, overrides=["trainer.probe_timeout_s=60"])
    assert "trainer argv" in e.value.message and first.run_id in e.value.message
    assert {c.op for c in fake.calls[n:]} <= {"alive"}
    assert set(fake.live()) == set(ALL)  # the running cluster is left alone
    assert sorted(p.name for p in runs.iterdir()) == [first.run_id]


def test_up_reuse_goes_through_the_callers_transport(hostfile3, dirs, clock, monkeypatch):
    runs, _ = dirs
    fake = FakeTransport()
    install(monkeypatch, fake, clock=clock)
    rebuilt = []

    def from_record(rec):  # stands in for the SSHTransport glmlaunch would open (no network here)
        t = FakeTransport({h: FakeHost(unreachable=True) for h in ALL})
        rebuilt.append(t)
        return t

    monkeypatch.setattr(run_mod, "transport_from_record", from_record)
    first = _up(hostfile3, runs, fake)

    again = _up(hostfile3, runs, fake)

    assert again.run_id == first.run_id
    assert again.transport is fake and not rebuilt


# ----------------------------------------------------------------------------- (7) follow


@pytest.mark.parametrize("drop_with_error", [False, True], ids=["stream-ends-quietly", "stream-raises"])
def test_follow_reconnects_and_delivers_every_line_once(drop_with_error, job_clock, monkeypatch):
    monkeypatch.setattr(jobs, "time", job_clock)
    lines = [f"step {i}\n" for i in range(12)]
    client = FakeJobs(lines=lines, drops=[3, 7, 7], drop_with_error=drop_with_error)
    sid = client.submit_job(entrypoint="python -m glmlaunch.probe", submission_id="glmlaunch-test-1")
    got: list[str] = []

    res = jobs.follow(client, sid, got.append, poll_s=0.01)

    assert "".join(got) == "".join(lines)
    text = "".join(got)
    assert all(text.count(line) == 1 for line in lines)
    assert client.connections[sid] == 4  # three streams ended early: three reconnects
    assert res.status == "SUCCEEDED" and res.exit_code == 0 and res.ok
    statuses = [e[3] for e in client.events if e[1] == "get_job_status"]
    assert statuses[-1] == "SUCCEEDED" and "RUNNING" in statuses


# ----------------------------------------------------------------------------- (8) down with a job


def test_down_stops_the_running_job_and_waits_for_it_before_stopping_any_node(
    plan, recipe, dirs, clock, job_clock, monkeypatch
):
    runs, _ = dirs
    events: list = []
    fake = FakeTransport(events=events)
    client = FakeJobs(events=events, hold=True, stop_polls=2)
    install(monkeypatch, fake, client, clock=clock, job_clock=job_clock)
    run = Run(plan, fake, recipe=recipe, join_timeout_s=5)
    run.up(runs_dir=str(runs))
    assert run.submit(follow=False) is None
    sid = run.run_dir.manifest.submission_id
    assert run.state is RunState.RUNNING and client.jobs[sid].status == "RUNNING"
    mark = len(events)

    results = run.down(grace_s=30)

    after = events[mark:]
    idx = lambda pred: next(i for i, e in enumerate(after) if pred(e))  # noqa: E731
    stop_asked = idx(lambda e: e[:3] == ("job", "stop_job", sid))
    terminal = idx(lambda e: e[:2] == ("job", "get_job_status") and e[3] == "STOPPED")
    first_node_stop = idx(lambda e: e[:2] == ("node", "stop"))
    assert stop_asked < terminal < first_node_stop
    waited = [e for e in after[stop_asked:terminal] if e[:2] == ("job", "get_job_status")]
    assert len(waited) >= 2  # it polled the stopping job, not just asked
    assert all(e[0] != "node" for e in after[:terminal])  # no node op of any kind before the job ended
    kept = (run.path / f"{sid}.log").read_text()
    assert kept == "".join(client.jobs[sid].lines) and kept.endswith("SIGTERM: checkpoint saved, exiting\n")
    assert set(results) == set(ALL) and fake.live() == {}
    assert run.state is RunState.DOWN and fake.closed
    # how the job ended is kept: `status` says it once Ray is gone
    rec = RunDir.open(run.path).manifest.job_states[sid]
    assert (rec.status, rec.exit_code) == ("STOPPED", -15)
    (job,) = Run.open(run.path).status().jobs
    assert (job.status, job.exit_code) == ("STOPPED", -15)


# ----------------------------------------------------------------------------- (9) Ctrl-C


def test_ctrl_c_during_the_workers_start_rolls_back_everything_started(
    plan, recipe, dirs, clock, monkeypatch
):
    runs, state = dirs
    fake = FakeTransport(interrupt=("start", H2))  # both workers start; their answers never arrive
    install(monkeypatch, fake, clock=clock)
    run = Run(plan, fake, recipe=recipe, join_timeout_s=5)

    with pytest.raises(KeyboardInterrupt):
        run.up(runs_dir=str(runs))

    assert fake.batches("start") == [[H1], [H2, H3]]
    assert_rolled_back(fake, plan, ALL)
    head_pid = json.loads(fake.node(H1).files[f"{plan.nodes[0].state_dir}/ray.pid"])["pid"]
    stops = {c.host: c.args for c in fake.ops("stop")}
    assert stops[H1]["pid"] == head_pid
    for n in plan.nodes[1:]:
        assert stops[n.name]["pid"] is None  # no answer: the node's own pid file says what to stop
        assert stops[n.name]["pidfile"] == f"{n.state_dir}/ray.pid"
    assert run.state is RunState.DOWN
    assert not (state / "current").exists()  # a failed start does not become the current run


def test_ctrl_c_during_the_head_start_stops_the_head_by_its_pid_file(plan, recipe, clock, monkeypatch):
    fake = FakeTransport(interrupt=("start", H1))
    install(monkeypatch, fake, clock=clock)
    c = make_cluster(plan, fake, recipe)

    with pytest.raises(KeyboardInterrupt):
        c.up()

    assert fake.batches("start") == [[H1]]
    assert_rolled_back(fake, plan, [H1])
    assert fake.ops("stop", H1)[0].args["pid"] is None
    assert fake.ops("stop", H1)[0].args["pidfile"] == f"{plan.nodes[0].state_dir}/ray.pid"


# ----------------------------------------------------------------------------- down, incomplete


def test_down_with_an_unreachable_node_is_incomplete_and_a_second_down_finishes_it(
    plan, recipe, dirs, clock, monkeypatch
):
    runs, _ = dirs
    fake = FakeTransport()
    install(monkeypatch, fake, clock=clock)
    run = Run(plan, fake, recipe=recipe, join_timeout_s=5)
    run.up(runs_dir=str(runs))
    fake.host(H2).unreachable_ops.add("stop")

    results = run.down()

    assert "error" in results[H2] and "error" not in results[H1] and "error" not in results[H3]
    assert run.state is RunState.DOWN_INCOMPLETE
    assert set(fake.live()) == {H2}
    assert run.run_dir.manifest.nodes[H2].pid is not None  # kept, for the next down
    fake.host(H2).unreachable_ops.discard("stop")
    n = len(fake.calls)

    run.down()

    assert [(c.op, c.host) for c in fake.calls[n:]] == [("stop", H2)]  # only what is left
    assert run.state is RunState.DOWN and fake.live() == {}
