"""Sanity checks of the test cluster itself (real sshd, real Slurm, host namespaces)."""

from __future__ import annotations

import subprocess
import time
import uuid

import fabric
import pytest
from paramiko import RejectPolicy


def test_fabric_threadinggroup_runs_on_every_host(testcluster):
    config = fabric.Config(runtime_ssh_path=str(testcluster.ssh_config))
    group = fabric.ThreadingGroup(*testcluster.hosts, config=config)
    for conn in group:
        # Fabric ignores UserKnownHostsFile/StrictHostKeyChecking and auto-adds unknown keys;
        # load the harness's known_hosts and reject unknown keys to prove it is right.
        conn.client.load_host_keys(str(testcluster.known_hosts))
        conn.client.set_missing_host_key_policy(RejectPolicy())
    try:
        # in_stream=False: Invoke otherwise reads stdin, which pytest's capture forbids.
        results = group.run("hostname", hide=True, in_stream=False)
        # conn.host is the HostName from ssh_config (the IP); original_host is "h1"...
        got = {conn.original_host: result.stdout.strip() for conn, result in results.items()}
        assert {conn.host for conn in results} == set(testcluster.host_ips.values())
    finally:
        group.close()
    assert got == {h: h for h in testcluster.hosts}
    assert testcluster.hosts == ["h1", "h2", "h3"]


def test_openssh_cli_with_ssh_config(testcluster):
    out = subprocess.run(
        ["ssh", "-F", str(testcluster.ssh_config), "h3", "hostname; hostname -I"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert out == ["h3", testcluster.host_ips["h3"]]


def test_srun_spans_three_hosts(testcluster):
    out = subprocess.run(
        ["srun", "-N3", "--ntasks-per-node=1", "hostname"],
        env=testcluster.slurm_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert sorted(out) == ["h1", "h2", "h3"]


def test_slurm_fake_gpus_and_accounting(testcluster):
    env = testcluster.slurm_env()
    proc = subprocess.run(
        ["srun", "-N1", "--gpus-per-node=8", "sh", "-c", 'echo "$SLURM_JOB_ID $CUDA_VISIBLE_DEVICES"'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    job_id, cvd = proc.stdout.split()
    assert cvd == "0,1,2,3,4,5,6,7"
    state = ""
    for _ in range(40):  # sacct lags slurmctld by about a second
        state = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        if state == "COMPLETED":
            break
        time.sleep(0.5)
    assert state == "COMPLETED"


def test_on_host_starts_and_kills_a_process(testcluster):
    assert testcluster.on_host(2, "hostname").stdout.strip() == "h2"
    marker = f"glt-{uuid.uuid4().hex[:8]}"
    # exec -a gives the process a unique argv[0], so it can be told apart from anything else
    pid = testcluster.on_host(
        2, "bash", "-c", f"(exec -a {marker} sleep 300) </dev/null >/dev/null 2>&1 & echo $!"
    ).stdout.strip()
    assert pid.isdigit()

    def args_on(i: int) -> str:
        return testcluster.on_host(i, "ps", "-eo", "pid,args").stdout

    try:
        assert f"{pid} {marker}" in " ".join(args_on(2).split())
        assert marker not in args_on(1)  # own PID namespace per host
    finally:
        testcluster.on_host(2, "kill", pid, check=False)
    for _ in range(50):  # tini (PID 1 of h2) reaps it
        if marker not in args_on(2):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {pid} ({marker}) still alive in h2")
