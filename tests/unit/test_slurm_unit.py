"""Slurm without a Slurm: node lists and GRES from a fake environment, the sbatch script that
glmlaunch.slurm.submit would write, bad input refused before anything is submitted or started,
the srun transport against a fake ``srun`` (held steps, stdin, step errors), and the submitit
entry's checkpoint/requeue bookkeeping."""

from __future__ import annotations

import inspect
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from glmlaunch import hosts as hosts_mod
from glmlaunch import nodeops
from glmlaunch.errors import (
    CheckFailed,
    GlmlaunchError,
    HostfileError,
    RecipeError,
    TransportError,
    UsageError,
)
from glmlaunch.hosts import _expand_nodelist, _slurm_gpus, from_slurm, parse_gres
from glmlaunch.transport import Target

# ----------------------------------------------------------------------------- node lists


@pytest.mark.parametrize(
    "nodelist, names",
    [
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("gpu-a[1-2],cpu[9-11]", ["gpu-a1", "gpu-a2", "cpu9", "cpu10", "cpu11"]),
        ("node[001-003]", ["node001", "node002", "node003"]),  # zero padding kept
        ("node[098-101]", ["node098", "node099", "node100", "node101"]),  # padding across a digit
        (
            "rack[1-2]-n[01-02]",
            ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"],
        ),  # several bracket groups
        ("a[1,3],b[05-06],c", ["a1", "a3", "b05", "b06", "c"]),
        ("h1", ["h1"]),
    ],
)
def test_expand_nodelist_fallback(no_scontrol, nodelist, names):
    assert _expand_nodelist(nodelist) == names


@pytest.mark.parametrize(
    "nodelist, names",
    [
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("gpu-a[1-2],cpu[9-11]", ["gpu-a1", "gpu-a2", "cpu9", "cpu10", "cpu11"]),
        ("node[09-11]", ["node09", "node10", "node11"]),
    ],
)
def test_from_slurm_fake_env(no_scontrol, fake_resolve, nodelist, names):
    env = {
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": str(len(names)),
        "SLURM_JOB_ID": "77",
        "SLURM_GPUS_ON_NODE": "8",
    }
    a = from_slurm(env)
    assert [h.name for h in a.hosts] == names
    assert [h.address for h in a.hosts] == [fake_resolve(n) for n in names]
    assert (a.gpus_per_node, a.origin, a.job_id) == (8, "slurm:77", "77")


def test_from_slurm_cartesian_with_resolver(no_scontrol):
    env = {
        "SLURM_JOB_NODELIST": "rack[1-2]-n[01-02]",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_GPUS_PER_NODE": "gpu:h200:8",
    }
    a = from_slurm(env, resolver=lambda n: f"10.9.{int(n[4])}.{int(n[-2:])}")
    assert [h.address for h in a.hosts] == ["10.9.1.1", "10.9.1.2", "10.9.2.1", "10.9.2.2"]
    assert a.gpus_per_node == 8


def test_bad_nodelist_is_named(no_scontrol):
    with pytest.raises(HostfileError, match=r"SLURM_JOB_NODELIST=node\[01-: cannot expand"):
        from_slurm({"SLURM_JOB_NODELIST": "node[01-"})


# ----------------------------------------------------------------------------- GRES


@pytest.mark.parametrize(
    "text, gpus",
    [
        ("gpu:8", 8),
        ("gpu:h100:8", 8),
        ("gpu:h100:8(IDX:0-7)", 8),
        ("gres:gpu:8", 8),
        ("gres/gpu=8", 8),
        ("gres/gpu:h200=4", 4),
        ("gpu", 1),
        ("gpu:h100", 1),
        ("gpu:a100:4,gpu:v100:4", 8),
        ("gpu:8(S:0-1),nic:2", 8),
        ("nic:1", None),
        ("(null)", None),
        ("N/A", None),
        ("", None),
    ],
)
def test_parse_gres(text, gpus):
    assert parse_gres(text) == gpus


@pytest.mark.parametrize(
    "env, gpus",
    [
        ({"SLURM_GPUS_ON_NODE": "8"}, 8),
        ({"SLURM_GPUS_PER_NODE": "h100:4"}, 4),
        ({"SLURM_GPUS_PER_NODE": "gpu:h100:8"}, 8),
        ({"SLURM_STEP_GPUS": "0,1"}, 2),
        ({"SLURM_GPUS_ON_NODE": "0"}, None),
        ({}, None),
    ],
)
def test_slurm_gpus_from_env(no_scontrol, env, gpus):
    assert _slurm_gpus(env) == gpus


def test_gres_of_job_from_scontrol(monkeypatch):
    """A ``--gres=gpu:8`` job whose environment has no GPU variable: the job's GRES."""
    out = (
        "JobId=42 JobName=x\n   TRES=cpu=2,node=2,billing=2\n   JOB_GRES=gpu:8\n"
        "     Nodes=n[1-2] CPU_IDs=0 Mem=0 GRES=gpu:8(IDX:0-7)\n   TresPerNode=gres:gpu:8\n"
    )
    calls = []
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: f"/usr/bin/{cmd}")
    monkeypatch.setattr(
        subprocess, "run", lambda argv, **kw: calls.append(argv) or SimpleNamespace(stdout=out, returncode=0)
    )
    assert _slurm_gpus({"SLURM_JOB_ID": "42"}) == 8
    assert calls == [["scontrol", "show", "job", "-d", "42"]]


# ----------------------------------------------------------------------------- sbatch script


def test_sbatch_script_rendering():
    from glmlaunch.slurm import render_sbatch

    text = render_sbatch(
        "/shared/sub/%j",
        command="python -u -m submitit.core._submit /shared/sub/%j",
        nodes=8,
        gpus_per_node=8,
        timeout_min=240,
        partition="batch",
        account="acct",
        name="glmlaunch-glm45-355b-a32b-gspo",
        cpus_per_task=4,
        exclusive=True,
        signal_delay_s=300,
        slurm_extra={"qos": "high"},
        setup=["module load cuda"],
    )
    lines = text.splitlines()
    sb = [x for x in lines if x.startswith("#SBATCH")]
    for want in (
        "--nodes=8",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--cpus-per-task=4",
        "--partition=batch",
        "--account=acct",
        "--time=240",
        "--signal=USR2@300",
        "--exclusive",
        "--mem=0",
        "--qos=high",
        "--job-name=glmlaunch-glm45-355b-a32b-gspo",
        "--output=/shared/sub/%j/%j_0_log.out",
        "--open-mode=append",
    ):
        assert f"#SBATCH {want}" in sb, want
    assert len([x for x in sb if x.startswith("#SBATCH --nodes=")]) == 1  # submitit's nodes=1 is overridden
    assert lines[0] == "#!/bin/bash" and "module load cuda" in lines
    srun = next(x for x in lines if x.startswith("srun "))
    assert (
        "--kill-on-bad-exit=1" in srun
        and "--unbuffered" in srun
        and srun.endswith("python -u -m submitit.core._submit /shared/sub/%j")
    )
    assert "export SUBMITIT_EXECUTOR=slurm" in lines


def test_sbatch_script_minimal():
    from glmlaunch.slurm import render_sbatch

    sb = [
        x
        for x in render_sbatch("/f", nodes=3, gpus_per_node=0, timeout_min=10).splitlines()
        if x.startswith("#SBATCH")
    ]
    assert "#SBATCH --nodes=3" in sb and "#SBATCH --signal=USR2@300" in sb
    assert not [x for x in sb if "gpus" in x or "partition" in x or "account" in x or "exclusive" in x]


@pytest.mark.parametrize(
    "value, minutes",
    [
        (90, 90),
        ("90", 90),
        ("04:00:00", 240),
        ("1-00:00:00", 1440),
        ("2-12", 3600),
        ("0-01:30", 90),
        ("10:30", 11),
        ("00:00:01", 1),
        (0.5, 1),
    ],
)
def test_parse_time(value, minutes):
    from glmlaunch.slurm import parse_time

    assert parse_time(value) == minutes


@pytest.mark.parametrize("value", ["4h", "", "00:00:00", 0, -5, "1-2-3", True])
def test_parse_time_errors(value):
    from glmlaunch.slurm import parse_time

    with pytest.raises(GlmlaunchError, match="time="):
        parse_time(value)


# ----------------------------------------------------------------------------- bad input, before anything starts


@pytest.fixture
def no_submit(monkeypatch):
    """Fail the test if anything would be submitted (any submitit executor constructed)."""
    import submitit

    def boom(*a, **k):
        raise AssertionError("an executor was created: something would have been submitted")

    for name in ("SlurmExecutor", "LocalExecutor", "AutoExecutor"):
        monkeypatch.setattr(submitit, name, boom)
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: f"/usr/bin/{cmd}")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            dict(nodes=8, gpus_per_node=4),
            CheckFailed,
            "cluster.gpus_per_node: slurm.submit(nodes=8, gpus_per_node=4) says slots=4 but the recipe says 8",
        ),
        (
            dict(nodes=6, gpus_per_node=8),
            CheckFailed,
            "the recipe wants 8 nodes but slurm.submit(nodes=6, gpus_per_node=8) has 6",
        ),
        (dict(nodes=0, gpus_per_node=8), GlmlaunchError, "nodes=0: need a whole number of nodes, at least 1"),
        (dict(nodes=8, gpus_per_node=-1), GlmlaunchError, "gpus_per_node=-1: need a whole number of GPUs"),
        (dict(nodes=8, gpus_per_node=8, cluster="pbs"), GlmlaunchError, "cluster='pbs': unknown"),
        (dict(nodes=8, gpus_per_node=8, time="4h"), GlmlaunchError, "time='4h': not a Slurm time limit"),
        (
            dict(nodes=8, gpus_per_node=8, time=5, signal_delay_s=300),
            GlmlaunchError,
            "signal_delay_s=300 is not shorter than the time limit (5 min)",
        ),
        (dict(nodes=8, gpus_per_node=8, max_requeues=-1), GlmlaunchError, "max_requeues=-1: need 0 or more"),
        (
            dict(nodes=8, gpus_per_node=8, cluster="local"),
            GlmlaunchError,
            'cluster="local" runs on this machine alone, but nodes=8',
        ),
        (dict(nodes=8, gpus_per_node=8, overrides=["parallelism.tp=3"]), CheckFailed, "parallelism"),
    ],
)
def test_submit_bad_input(no_submit, kwargs, error, message):
    from glmlaunch.slurm import submit

    with pytest.raises(error) as ei:
        submit("glm45-355b-a32b-gspo", **kwargs)
    assert message in str(ei.value)
    if error is CheckFailed:
        assert "nothing was submitted" in str(ei.value)


def test_submit_unknown_recipe(no_submit):
    from glmlaunch.slurm import submit

    with pytest.raises(RecipeError, match="no-such-recipe"):
        submit("no-such-recipe", nodes=1, gpus_per_node=8)


def test_submit_without_slurm_client(monkeypatch):
    """No sbatch/srun on this machine: a clear error, not submitit's RuntimeError."""
    from glmlaunch.slurm import submit

    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda cmd, *a, **k: None if cmd in ("sbatch", "srun") else real_which(cmd, *a, **k)
    )
    with pytest.raises(GlmlaunchError, match="sbatch/srun not found: this machine is not a Slurm login node"):
        submit("local-probe", nodes=3, gpus_per_node=8)


@pytest.fixture
def outside_slurm(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("SLURM_"):
            monkeypatch.delenv(k)
    monkeypatch.setattr(hosts_mod, "DEFAULT_HOSTFILE", str(tmp_path / "no-hostfile"))
    monkeypatch.chdir(tmp_path)


def test_no_allocation_library(outside_slurm):
    """A multi-node recipe with no hostfile, outside Slurm: refused before anything starts."""
    from glmlaunch.run import up

    with pytest.raises(
        UsageError, match="the nodes are placeholders .*no hostfile given.*not a Slurm allocation"
    ) as ei:
        up("glm45-355b-a32b-gspo", env={})
    assert "run inside salloc/sbatch" in ei.value.hint


def test_no_allocation_cli(outside_slurm, cli):
    r = cli("launch", "glm45-355b-a32b-gspo", "--no-deep-check")
    assert r.exit_code == 2
    assert "this is not a Slurm allocation" in r.output and "run inside salloc/sbatch" in r.output
    assert not (Path("runs")).exists()  # no run directory: nothing started


def test_no_allocation_srun_transport(outside_slurm):
    from glmlaunch.transport.srun import SrunTransport

    with pytest.raises(TransportError, match=r"needs a Slurm job id \(SLURM_JOB_ID is not set\)"):
        SrunTransport()


def _slurm_env(gpus="4", **extra):
    return {
        "SLURM_JOB_NODELIST": "node[01-02]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_ID": "42",
        "SLURM_GPUS_ON_NODE": gpus,
        **extra,
    }


def test_gpu_mismatch_inside_allocation(no_scontrol, outside_slurm):
    """The recipe says 8 GPUs per node, the allocation has 4: CheckFailed naming both."""
    from glmlaunch.run import plan_launch

    with pytest.raises(CheckFailed) as ei:
        plan_launch(
            "local-probe", overrides=["cluster.gpus_per_node=8"], env=_slurm_env("4")
        ).findings.raise_for_errors()
    assert "cluster.gpus_per_node: slurm:42 says slots=4 but the recipe says 8" in str(ei.value)


def test_gpu_option_mismatch_inside_allocation(no_scontrol, outside_slurm):
    from glmlaunch.run import plan_launch

    with pytest.raises(HostfileError, match="slurm:42 says 4 GPUs per node but --gpus-per-node 8"):
        plan_launch("local-probe", gpus_per_node=8, env=_slurm_env("4"))


def test_allocation_picks_srun_transport(no_scontrol, outside_slurm, monkeypatch):
    from glmlaunch.run import make_transport, plan_launch
    from glmlaunch.transport.srun import SrunTransport

    p = plan_launch("local-probe", env=_slurm_env("8"))
    alloc, plan = p.alloc, p.plan
    assert (
        alloc.origin == "slurm:42"
        and [n.name for n in plan.nodes] == ["node01", "node02"]
        and plan.gpus_per_node == 8
    )
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: f"/usr/bin/{cmd}")
    t = make_transport(alloc)
    assert isinstance(t, SrunTransport) and t.job_id == "42" and t.start_options["hold"] is True
    argv = t.argv(Target("node02", "10.0.1.2"), "hostname")
    assert argv[1:7] == [
        "--jobid=42",
        "--overlap",
        "--nodes=1",
        "--ntasks=1",
        "--nodelist=node02",
        "--kill-on-bad-exit=1",
    ]
    assert argv[-3:] == ["bash", "-c", "hostname"]


# ----------------------------------------------------------------------------- srun transport, fake srun

FAKE_SRUN = r"""#!/bin/bash
# fake srun: check the options, then run the command here
echo "$*" >> "$FAKE_SRUN_LOG"
while [ $# -gt 0 ] && [ "$1" != bash ]; do
  case "$1" in
    --nodelist=ghost*) echo "srun: error: Unable to create step for job 42: Invalid node name specified" >&2; exit 1;;
    --jobid=*|--overlap|--nodes=1|--ntasks=1|--nodelist=*|--kill-on-bad-exit=1|--job-name=*) ;;
    *) echo "fake srun: unexpected option $1" >&2; exit 2;;
  esac
  shift
done
exec "$@"
"""


@pytest.fixture
def fake_srun(tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "srun").write_text(FAKE_SRUN)
    (d / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SRUN_LOG", str(tmp_path / "srun.log"))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_NTASKS", "3")  # the launcher's own step: must not reach our steps
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    from glmlaunch.transport.srun import SrunTransport

    t = SrunTransport(log_dir=tmp_path / "srunlogs")
    yield t
    t.close()


NODE = Target("node01", "10.0.1.1")


def test_srun_run_many(fake_srun):
    res = fake_srun.run_many(
        {
            NODE: "echo out; echo err >&2; echo ${SLURM_NTASKS:-unset} $SLURM_CONF; exit 3",
            Target("node02", "10.0.1.2"): "true",
        },
        timeout=20,
    )
    r = res[NODE]
    assert (
        r.exit_code == 3
        and r.stdout.split() == ["out", "unset", "/etc/slurm/slurm.conf"]
        and "err" in r.stderr
    )
    assert res[Target("node02", "10.0.1.2")].ok
    assert (
        "--jobid=42 --overlap --nodes=1 --ntasks=1 --nodelist=node01"
        in Path(os.environ["FAKE_SRUN_LOG"]).read_text()
    )


def test_srun_step_error_names_node(fake_srun):
    r = fake_srun.run_many({Target("ghost1", "10.0.9.1"): "true"}, timeout=20)[Target("ghost1", "10.0.9.1")]
    assert r.exit_code is None and not r.ok
    assert (
        r.error
        == "ghost1: srun could not start a step in job 42: srun: error: Unable to create step for job 42: Invalid node name specified"
    )


def test_srun_timeout(fake_srun):
    t0 = time.monotonic()
    r = fake_srun.run_many({NODE: "sleep 30"}, timeout=1)[NODE]
    assert r.exit_code is None and "timed out after 1 s" in r.error and time.monotonic() - t0 < 10


def test_srun_put_text_uses_stdin(fake_srun, tmp_path):
    p = tmp_path / "d" / "secret"
    res = fake_srun.put_text([NODE], str(p), "s3cret-token\n")
    assert res[NODE].ok and p.read_text() == "s3cret-token\n" and (p.stat().st_mode & 0o777) == 0o600
    assert "s3cret" not in Path(os.environ["FAKE_SRUN_LOG"]).read_text()  # never in argv


def _nodeop(op: str, args: dict) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(inspect.getsource(nodeops))} {op} {shlex.quote(json.dumps(args))}"


def _alive(pid: int) -> bool:
    st = nodeops._stat(pid)
    return bool(st) and st[0] != "Z"


def _wait(cond, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def _start_held(t, tmp_path, argv):
    args = {
        "argv": argv,
        "env": {},
        "cwd": str(tmp_path),
        "log": str(tmp_path / "start.log"),
        "settle_s": 0.3,
        **t.start_options,
    }
    t0 = time.monotonic()
    r = t.run_many({NODE: _nodeop("start", args)}, timeout=30)[NODE]
    assert r.ok, r.reason()
    assert time.monotonic() - t0 < 10  # returned on the DETACH line, the step still runs
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_srun_held_step_lives_until_stopped(fake_srun, tmp_path):
    rec = _start_held(fake_srun, tmp_path, ["sleep", "60"])
    pid = rec["pid"]
    assert _alive(pid) and fake_srun.ended_steps() == {}
    os.kill(pid, signal.SIGUSR2)  # Slurm's preemption signal reaches every step: ignored
    time.sleep(0.5)
    assert _alive(pid)
    r = fake_srun.run_many(
        {NODE: _nodeop("stop", {"pid": pid, "starttime": rec["starttime"], "grace_s": 5})}, timeout=30
    )[NODE]
    assert r.ok and json.loads(r.stdout)["was_alive"]
    assert _wait(lambda: "node01" in fake_srun.ended_steps())  # the step ended with its session
    assert "its Slurm step ended (srun exit code 0)" in fake_srun.ended_steps()["node01"]


def test_srun_held_step_stops_its_session_on_sigterm(fake_srun, tmp_path):
    """scancel / the end of the job: Slurm SIGTERMs the step's task, which stops the session."""
    rec = _start_held(fake_srun, tmp_path, ["bash", "-c", "sleep 60 & sleep 60; wait"])
    pid = rec["pid"]
    members = nodeops._session_members(pid)
    assert len(members) >= 2
    held = fake_srun._held["node01"][0]
    held.send_signal(signal.SIGTERM)
    assert _wait(lambda: not nodeops._session_members(pid), timeout=15)
    assert _wait(lambda: held.poll() is not None)


# ----------------------------------------------------------------------------- the submitit entry


class FakeEnv:
    def __init__(self, folder: Path, rank: int = 0):
        self.paths = SimpleNamespace(folder=folder)
        self.job_id = "42"
        self.global_rank = rank
        self.cluster = "slurm"
        self.hostnames = ["node01", "node02"]


class FakeCluster:
    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.plan = SimpleNamespace(submission_id="glmlaunch-x-1", dashboard_url="http://10.0.1.1:8265")
        self.token = "t"
        self.downs = 0

    def down(self):
        self.downs += 1


@pytest.fixture
def entry(tmp_path, monkeypatch):
    import submitit

    from glmlaunch import jobs
    from glmlaunch.recipe import load_recipe
    from glmlaunch.runs import RunDir
    from glmlaunch.slurm import LaunchJob

    monkeypatch.setenv("GLMLAUNCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: FakeEnv(tmp_path))
    stops = []
    monkeypatch.setattr(jobs, "client_for", lambda plan, token: "client")
    monkeypatch.setattr(
        jobs, "stop_job", lambda client, sid, grace_s: stops.append((sid, grace_s)) or "STOPPED"
    )
    job = LaunchJob(
        load_recipe("local-probe"), runs_dir=str(tmp_path / "runs"), stop_grace_s=77, max_requeues=2
    )
    rd = RunDir.create("run-1", tmp_path / "runs")
    rd.update(submission_id="glmlaunch-x-1", slurm={"job_id": "42", "requeues": 0})
    job._cluster = FakeCluster(rd)
    return job, stops, rd


def test_checkpoint_stops_trainer_records_and_requeues(entry, tmp_path):
    import cloudpickle

    job, stops, rd = entry
    cluster = job._cluster
    delayed = job.checkpoint()
    assert stops == [("glmlaunch-x-1", 77)] and cluster.downs == 1 and job._cluster is None
    assert delayed.function is job and job.requeues == 1
    m = json.loads((rd.path / "manifest.json").read_text())
    assert m["state"] == "requeued" and m["slurm"]["requeues"] == 1
    assert [e for e in m["events"] if e["event"] == "requeue"][0]["trainer"] == "STOPPED"
    assert json.loads((tmp_path / "42_glmlaunch.json").read_text())["requeues"] == 1
    job._cluster = cluster
    again = cloudpickle.loads(cloudpickle.dumps(delayed))  # what submitit re-pickles for the requeue
    assert again.function.requeues == 1 and again.function._cluster is None


def test_checkpoint_requeue_limit(entry):
    from glmlaunch.slurm import RequeueLimit

    job, stops, rd = entry
    job.requeues = 2
    cluster = job._cluster
    with pytest.raises(RequeueLimit, match=r"already requeued 2 times \(max_requeues=2\)"):
        job.checkpoint()
    assert stops and cluster.downs == 1  # the trainer still got its grace period, the cluster is down
    assert json.loads((rd.path / "manifest.json").read_text())["state"] == "requeue-limit"


def test_other_ranks_wait_for_rank0(tmp_path, monkeypatch):
    import submitit

    from glmlaunch.recipe import load_recipe
    from glmlaunch.slurm import LaunchJob

    monkeypatch.setattr(submitit, "JobEnvironment", lambda: FakeEnv(tmp_path, rank=1))
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    done = tmp_path / "42_glmlaunch.0.done"
    threading.Timer(1.0, lambda: done.write_text("x")).start()
    out = LaunchJob(load_recipe("local-probe"))()
    assert out["rank"] == 1 and out["waited_s"] >= 0.9


def test_rank0_refuses_beyond_max_requeues(tmp_path, monkeypatch):
    import submitit

    from glmlaunch.recipe import load_recipe
    from glmlaunch.slurm import LaunchJob, RequeueLimit

    monkeypatch.setattr(submitit, "JobEnvironment", lambda: FakeEnv(tmp_path, rank=0))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "4")
    with pytest.raises(RequeueLimit, match="more than max_requeues=3"):
        LaunchJob(load_recipe("local-probe"))()
    assert (tmp_path / "42_glmlaunch.4.done").exists()  # the other ranks are released


@pytest.mark.parametrize("value, expected", [(None, 0), ("", 0), ("0", 0), ("3", 3)])
def test_restart_count_reads_slurms_count(value, expected):
    from glmlaunch.slurm import restart_count

    env = {} if value is None else {"SLURM_RESTART_COUNT": value}
    assert restart_count(env) == expected


@pytest.mark.parametrize("value", ["²", "٣", "-1", "1.0", "x"])
def test_a_restart_count_that_is_not_ascii_digits_is_a_usage_error_naming_it(value):
    from glmlaunch.errors import UsageError
    from glmlaunch.slurm import restart_count

    with pytest.raises(UsageError, match="SLURM_RESTART_COUNT=.*not a whole number"):
        restart_count({"SLURM_RESTART_COUNT": value})
