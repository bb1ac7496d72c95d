"""Slurm on the test cluster (tests/harness: slurmctld + one slurmd per host, gpu:8 fake GRES,
sacct): ``glmlaunch launch`` inside an sbatch allocation, ``glmlaunch.slurm.submit`` from Python
through submitit, a requeue that resumes from the first attempt's checkpoint, ``job.cancel()``
leaving nothing behind, and bad input refused before anything starts.

Every Ray cluster started here uses ports 7379.. and dashboard 9265 (other tests use Ray's
defaults on the same hosts at the same time). Only our own job ids are cancelled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PORTS = dict(port_base=7379, dashboard_port=9265)
CLI_PORTS = "--port-base 7379 --dashboard-port 9265"


@pytest.fixture
def slurm(testcluster, tmp_path, monkeypatch):
    """The test process's environment for Slurm and glmlaunch: SLURM_CONF, a private state dir
    (the "current run" pointer) and runs dir under tmp_path (/tmp is shared by every host)."""
    if not all(_which(c) for c in ("sbatch", "srun", "scontrol", "sacct")):
        pytest.skip("the Slurm client is not installed")
    env = {
        "SLURM_CONF": str(testcluster.slurm_conf),
        "GLMLAUNCH_STATE_DIR": str(tmp_path / "state"),
        "GLMLAUNCH_RUNS_DIR": str(tmp_path / "runs"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        monkeypatch.delenv(k)  # the test itself is not inside an allocation
    return testcluster


def _which(cmd: str) -> bool:
    import shutil

    return shutil.which(cmd) is not None


def _run(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def _procs(tc, i: int, marker: str) -> list[str]:
    """Command lines on host h<i> that contain ``marker``."""
    out = tc.on_host(i, "ps", "-eo", "pid=,args=").stdout
    return [line.strip() for line in out.splitlines() if marker in line and "ps -eo" not in line]


def _wait_done(job, timeout: float):
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(
                f"Slurm job {job.job_id} not done after {timeout:.0f} s (cancelled):\n{(job.stdout() or '')[-4000:]}"
            )
        time.sleep(2)


def _steps(job_id: str) -> list[tuple[str, str, str]]:
    """(step id, name, state) of a job from sacct (the accounting lags slurmctld by about a second)."""
    out = _run("sacct", "-j", job_id, "-n", "-P", "--format=JobID,JobName,State").stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- node lists


@pytest.mark.parametrize(
    "nodelist", ["node[01-03,07]", "gpu-a[1-2],cpu[9-11]", "n[098-101]", "rack[1-2]-n[01-02]", "h[1-3]"]
)
def test_nodelist_fallback_matches_scontrol(slurm, nodelist):
    """python-hostlist (used where scontrol is missing) expands like `scontrol show hostnames`."""
    import hostlist

    assert (
        hostlist.expand_hostlist(nodelist) == _run("scontrol", "show", "hostnames", nodelist).stdout.split()
    )


# ----------------------------------------------------------------------------- inside an allocation


def test_cli_launch_probe_inside_sbatch(slurm, tmp_path):
    """`glmlaunch launch` in a batch script: nodes from SLURM_JOB_NODELIST, Ray on each node
    through srun steps, the probe passes on 3 nodes x 8 GPUs, and nothing is left running."""
    script = tmp_path / "launch.sh"
    script.write_text(
        f"#!/bin/bash\ncd {tmp_path}\nexport COLUMNS=200\n{VENV_BIN}/glmlaunch hosts\n"
        f"exec {VENV_BIN}/glmlaunch launch local-probe {CLI_PORTS} --join-timeout 180\n"
    )
    out = tmp_path / "launch.out"
    t0 = time.monotonic()
    r = _run(
        "sbatch",
        "--wait",
        "-N3",
        "--ntasks-per-node=1",
        "--cpus-per-task=1",
        "--gpus-per-node=8",
        "-t",
        "10",
        "-J",
        "glt-slurm-cli",
        "-o",
        str(out),
        str(script),
        timeout=300,
        check=False,
    )
    text = out.read_text() if out.exists() else ""
    assert r.returncode == 0, f"sbatch --wait: {r.stdout}{r.stderr}\n{text[-6000:]}"
    assert "probe PASSED" in text and "3 nodes from slurm:" in text
    job_id = r.stdout.split()[-1]
    (run_dir,) = (tmp_path / "runs").iterdir()  # GLMLAUNCH_RUNS_DIR reaches the job (sbatch --export=ALL)
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["transport"]["kind"] == "srun" and m["transport"]["job_id"] == job_id
    assert [h["name"] for h in m["hosts"]] == ["h1", "h2", "h3"] and m["state"] == "down"
    run_id = m["run_id"]
    for i in (1, 2, 3):
        assert _procs(slurm, i, f"glr-{run_id}") == [], f"h{i} still runs processes of {run_id}"
    time.sleep(1.5)
    steps = _steps(job_id)
    ours = [s for s in steps if s[1] == "glmlaunch"]
    assert len(ours) >= 9 and all(s[2] == "COMPLETED" for s in ours), steps  # every step ended cleanly
    print(f"sbatch launch: {time.monotonic() - t0:.1f} s, {len(ours)} srun steps")


def test_cli_up_status_down_inside_salloc(slurm, tmp_path):
    """`glmlaunch up` in salloc returns while each node's Ray step keeps running; `status`,
    `submit` and `down` from later commands reach it through new srun steps."""
    g = f"{VENV_BIN}/glmlaunch"
    cmd = (
        f"cd {tmp_path} && export COLUMNS=200 && {g} up {CLI_PORTS} && {g} status && {g} submit && {g} down; "
        "echo rc=$?; squeue -h -s -j $SLURM_JOB_ID -o '%i %j'"
    )
    r = _run(
        "salloc",
        "-N3",
        "--gpus-per-node=8",
        "--cpus-per-task=1",
        "-t",
        "5",
        "-J",
        "glt-slurm-salloc",
        "bash",
        "-c",
        cmd,
        timeout=300,
        check=False,
    )
    text = r.stdout + r.stderr
    assert "rc=0" in text, text[-5000:]
    assert "probe PASSED" in text and "is down (3 nodes)" in text
    assert " glmlaunch" not in r.stdout.split("rc=0", 1)[1]  # no step of ours left when down returned
    (run_dir,) = (tmp_path / "runs").iterdir()
    for i in (1, 2, 3):
        assert _procs(slurm, i, f"glr-{run_dir.name}") == []


def test_bad_input_inside_allocation(slurm, tmp_path):
    """A 4-GPU allocation against an 8-GPU recipe, or against --gpus-per-node 8: clear errors,
    and no job step was started (nothing touched a node)."""
    script = tmp_path / "bad.sh"
    g = f"{VENV_BIN}/glmlaunch"
    script.write_text(
        f"#!/bin/bash\ncd {tmp_path}\n"
        f'{g} launch local-probe --set cluster.gpus_per_node=8 {CLI_PORTS}; echo "rc1=$?"\n'
        f'{g} launch local-probe --gpus-per-node 8 {CLI_PORTS}; echo "rc2=$?"\n'
    )
    out = tmp_path / "bad.out"
    r = _run(
        "sbatch",
        "--wait",
        "-N2",
        "--ntasks-per-node=1",
        "--cpus-per-task=1",
        "--gpus-per-node=4",
        "-t",
        "5",
        "-J",
        "glt-slurm-bad",
        "-o",
        str(out),
        str(script),
        timeout=120,
        check=False,
    )
    text = out.read_text()
    job_id = r.stdout.split()[-1]
    assert (
        "rc1=1" in text
        and f"cluster.gpus_per_node: slurm:{job_id} says slots=4 but the recipe says 8" in text
    )
    assert "rc2=2" in text and f"slurm:{job_id} says 4 GPUs per node but --gpus-per-node 8" in text
    time.sleep(1.5)
    assert [s[1] for s in _steps(job_id) if s[0] != job_id] == ["batch"]  # no srun step: nothing started
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- submitit


def test_submit_probe_from_python(slurm, tmp_path):
    import glmlaunch.slurm

    t0 = time.monotonic()
    job = glmlaunch.slurm.submit(
        "local-probe",
        nodes=3,
        gpus_per_node=8,
        partition="debug",
        time=10,
        cpus_per_task=1,
        folder=tmp_path / "sub" / "%j",
        runs_dir=tmp_path / "runs",
        name="glt-slurm-submit",
        signal_delay_s=60,
        **PORTS,
    )
    _wait_done(job, 240)
    res = job.result()
    assert res["ok"] and res["status"] == "SUCCEEDED" and res["exit_code"] == 0, res
    assert res["probe"] == {"ok": True, "problems": [], "nodes": 3}
    assert res["nodes"] == ["h1", "h2", "h3"] and res["requeues"] == 0 and res["attempt"] == 0
    assert res["job_id"] == job.job_id and Path(res["run_dir"]).is_dir()
    m = json.loads((Path(res["run_dir"]) / "manifest.json").read_text())
    assert m["slurm"]["job_id"] == job.job_id and m["transport"]["kind"] == "srun" and m["state"] == "down"
    assert glmlaunch.slurm.record(job)["state"] == "finished"
    sub = Path(job.paths.folder)
    assert "#SBATCH --nodes=3" in (sub / f"{job.job_id}_submission.sh").read_text()
    others = [
        sub / f"{job.job_id}_{k}_result.pkl" for k in (1, 2)
    ]  # ranks 1, 2 waited for rank 0, then ended
    deadline = time.monotonic() + 20
    while not all(x.exists() for x in others) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(x.exists() for x in others)
    for i in (1, 2, 3):
        assert _procs(slurm, i, f"glr-{m['run_id']}") == []
    print(f"submit -> result: {time.monotonic() - t0:.1f} s")


FAKE_TRAIN = '''"""A fake miles train.py: resumes from --load when it holds a checkpoint, else saves one and waits."""
import os, signal, sys, time
a = sys.argv[1:]
opt = lambda k: a[a.index(k) + 1] if k in a else None
load, save, ref = opt("--load"), opt("--save"), opt("--ref-load")
tracker = "latest_checkpointed_iteration.txt"
if load and os.path.exists(os.path.join(load, tracker)):
    print(f"RESUMED from --load {load} at iteration {open(os.path.join(load, tracker)).read().strip()}", flush=True)
    sys.exit(0)
print(f"no checkpoint in --load {load}: starting from --ref-load {ref}", flush=True)
signal.signal(signal.SIGTERM, lambda *_: (print("SIGTERM: checkpoint saved", flush=True), sys.exit(0)))
os.makedirs(save, exist_ok=True)
with open(os.path.join(save, tracker + ".tmp"), "w") as f:
    f.write("7\\n")
os.replace(os.path.join(save, tracker + ".tmp"), os.path.join(save, tracker))
print("CHECKPOINT WRITTEN at iteration 7", flush=True)
time.sleep(600)
'''


def _fake_miles_recipe(d: Path, name: str) -> dict:
    """A miles recipe whose train.py is FAKE_TRAIN, with every file preflight asks for."""
    for sub in ("model", "ref", "miles", "megatron", "dapo-math-17k", "rl_data/aime-2024"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "model" / "config.json").write_text("{}")
    (d / "ref" / "latest_checkpointed_iteration.txt").write_text("release\n")
    (d / "dapo-math-17k" / "dapo-math-17k.jsonl").write_text("")
    (d / "rl_data" / "aime-2024" / "aime-2024.jsonl").write_text("")
    (d / "miles" / "train.py").write_text(FAKE_TRAIN)
    return {
        "run": {"name": name, "base_dir": str(d), "mode": "debug_minimal"},
        "cluster": {"hardware": "cpu", "gpus_per_node": 8},
        "model": {"type": "glm4.5-106B-A12B"},
        "checkpoint": {
            "hf_checkpoint": str(d / "model"),
            "ref_load": str(d / "ref"),
            "save": str(d / "ckpt"),
        },
        "sglang": {"gpus_per_engine": 8, "ep_size": 8},
        "trainer": {
            "kind": "miles",
            "python": sys.executable,
            "miles_dir": str(d / "miles"),
            "megatron_dir": str(d / "megatron"),
        },
        "env": {"nccl_preset": "none"},
    }


def _submit_fake(tmp_path: Path, name: str):
    import glmlaunch.slurm

    recipe = _fake_miles_recipe(tmp_path / "base", name)
    job = glmlaunch.slurm.submit(
        recipe,
        nodes=2,
        gpus_per_node=8,
        partition="debug",
        time=10,
        cpus_per_task=1,
        folder=tmp_path / "sub" / "%j",
        runs_dir=tmp_path / "runs",
        name=f"glt-{name}",
        signal_delay_s=60,
        stop_grace_s=30,
        max_requeues=2,
        **PORTS,
    )
    marker = tmp_path / "base" / "ckpt" / "latest_checkpointed_iteration.txt"
    deadline = time.monotonic() + 180
    while not marker.exists():
        if job.done() or time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"the fake trainer never wrote its checkpoint:\n{(job.stdout() or '')[-4000:]}")
        time.sleep(1)
    return job, marker


def test_requeue_resumes_from_checkpoint(slurm, tmp_path):
    """USR2 (what Slurm sends before the time limit): rank 0 stops the trainer with its grace
    period, tears the cluster down, records the requeue and requeues; the second attempt's
    trainer finds the first attempt's checkpoint through --load (the run's own directory)."""
    import glmlaunch.slurm

    t0 = time.monotonic()
    job, marker = _submit_fake(tmp_path, "fake-resume")
    first = glmlaunch.slurm.record(job)["run_dirs"][0]
    _run("scancel", "--signal=USR2", job.job_id)
    # a requeued job waits ~2 minutes (BeginTime); release it now
    deadline = time.monotonic() + 90
    while True:
        st = _run("squeue", "-h", "-j", job.job_id, "-o", "%T %r", check=False).stdout.strip()
        if st.startswith("PENDING") and glmlaunch.slurm.record(job).get("state") == "requeued":
            _run("scontrol", "update", f"JobId={job.job_id}", "StartTime=now", check=False)
            break
        assert time.monotonic() < deadline, f"not requeued: {st}\n{(job.stdout() or '')[-4000:]}"
        time.sleep(1)
    _wait_done(job, 240)
    res = job.result()
    assert res["status"] == "SUCCEEDED" and res["requeues"] == 1 and res["attempt"] == 1, res
    log = (Path(res["run_dir"]) / "job.log").read_text()
    assert f"RESUMED from --load {marker.parent} at iteration 7" in log
    m1 = json.loads((Path(first) / "manifest.json").read_text())
    ev = [e for e in m1["events"] if e["event"] == "requeue"]
    assert ev and ev[0]["requeue"] == 1 and ev[0]["trainer"] == "STOPPED" and m1["slurm"]["requeues"] == 1
    m2 = json.loads((Path(res["run_dir"]) / "manifest.json").read_text())
    assert (
        m2["slurm"]["requeues"] == 1
        and m2["slurm"]["attempt"] == 1
        and m2["slurm"]["previous_run_dirs"] == [first]
    )
    rec = glmlaunch.slurm.record(job)
    assert rec["requeues"] == 1 and rec["run_dirs"] == [first, res["run_dir"]] and rec["state"] == "finished"
    print(f"requeue round trip: {time.monotonic() - t0:.1f} s")


def test_cancel_leaves_nothing(slurm, tmp_path):
    """job.cancel() (scancel): every Ray process and the trainer the job started are gone."""
    import glmlaunch.slurm

    job, _ = _submit_fake(tmp_path, "fake-cancel")
    run_id = Path(glmlaunch.slurm.record(job)["run_dirs"][-1]).name
    assert _procs(slurm, 1, f"glr-{run_id}") and _procs(slurm, 2, f"glr-{run_id}")
    assert _procs(slurm, 1, str(tmp_path / "base" / "miles" / "train.py"))  # the trainer runs on the head
    t0 = time.monotonic()
    job.cancel()
    left: dict = {}
    while time.monotonic() - t0 < 30:
        left = {
            i: _procs(slurm, i, f"glr-{run_id}") + _procs(slurm, i, str(tmp_path / "base")) for i in (1, 2)
        }
        if not any(left.values()):
            break
        time.sleep(1)
    assert not any(left.values()), left
    print(f"cancel -> nothing left: {time.monotonic() - t0:.1f} s")


def test_node_step_dies_names_the_node(slurm, tmp_path):
    """The Ray step of one node is cancelled while the trainer runs: `glmlaunch launch` stops the
    job, tears down and exits 1 naming that node."""
    recipe = tmp_path / "fake.yaml"  # JSON is YAML
    recipe.write_text(json.dumps(_fake_miles_recipe(tmp_path / "base", "fake-kill")))
    script = tmp_path / "kill.sh"
    script.write_text(
        f"#!/bin/bash\ncd {tmp_path}\nexport COLUMNS=300\n"
        f'{VENV_BIN}/glmlaunch launch {recipe} {CLI_PORTS} --no-deep-check; echo "rc=$?"\n'
    )
    out = tmp_path / "kill.out"
    job_id = _run(
        "sbatch",
        "--parsable",
        "-N2",
        "--ntasks-per-node=1",
        "--cpus-per-task=1",
        "--gpus-per-node=8",
        "-t",
        "5",
        "-J",
        "glt-slurm-kill",
        "-o",
        str(out),
        str(script),
    ).stdout.strip()
    marker = tmp_path / "base" / "ckpt" / "latest_checkpointed_iteration.txt"
    deadline = time.monotonic() + 150
    while not marker.exists():
        if time.monotonic() > deadline or not _run("squeue", "-h", "-j", job_id, check=False).stdout.strip():
            _run("scancel", job_id, check=False)
            pytest.fail(
                f"the fake trainer never wrote its checkpoint:\n{out.read_text()[-4000:] if out.exists() else ''}"
            )
        time.sleep(1)
    steps = [
        line.split()
        for line in _run("squeue", "-h", "-s", "-j", job_id, "-o", "%i %j %N").stdout.splitlines()
    ]
    held = min(
        (s for s in steps if s[1] == "glmlaunch" and s[2] == "h2"), key=lambda s: int(s[0].split(".")[1])
    )
    t0 = time.monotonic()
    _run("scancel", held[0])
    while _run("squeue", "-h", "-j", job_id, check=False).stdout.strip():
        assert time.monotonic() - t0 < 120, f"the launch did not end:\n{out.read_text()[-4000:]}"
        time.sleep(1)
    text = out.read_text()
    assert (
        "rc=1" in text
        and "1 node(s) lost their Ray step while the job was running: h2: its Slurm step ended" in text
    ), text[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    run_id = run_dir.name
    for i in (1, 2):
        assert _procs(slurm, i, f"glr-{run_id}") == []
    print(f"step cancelled -> launch ended naming h2: {time.monotonic() - t0:.1f} s")


def test_submit_bad_input_nothing_queued(slurm, tmp_path):
    import glmlaunch.slurm
    from glmlaunch.errors import CheckFailed

    before = _run("squeue", "-h", "-o", "%i").stdout.split()
    with pytest.raises(CheckFailed, match=r"says slots=4 but the recipe says 8"):
        glmlaunch.slurm.submit(
            "local-probe",
            overrides=["cluster.gpus_per_node=8"],
            nodes=3,
            gpus_per_node=4,
            partition="debug",
            time=10,
            folder=tmp_path / "sub" / "%j",
            **PORTS,
        )
    assert _run("squeue", "-h", "-o", "%i").stdout.split() == before
    assert not (tmp_path / "sub").exists()
