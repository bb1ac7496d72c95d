"""nodeops on this machine: a started command gets a session of its own; stop ends exactly that
session (children included), never an unrelated process, and never a recycled PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from glmlaunch import nodeops


def _alive(pid: int) -> bool:
    st = nodeops._stat(pid)
    return bool(st) and st[0] != "Z"


def test_start_then_stop_ends_the_whole_session_only(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a parent that starts a child and a grandchild in the same session, like `ray start --block`
        script = "sleep 60 & (sleep 60 &) ; sleep 60"
        rec = nodeops.op_start(
            {
                "argv": ["bash", "-c", script],
                "cwd": str(tmp_path),
                "log": str(tmp_path / "log"),
                "pidfile": str(tmp_path / "pid"),
                "settle_s": 0.5,
            }
        )
        assert "exited" not in rec
        time.sleep(0.3)
        members = nodeops._session_members(rec["pid"])
        assert rec["pid"] in members and len(members) >= 3
        assert nodeops._stat(bystander.pid)[1] != rec["pid"]
        res = nodeops.op_stop(
            {
                "pid": rec["pid"],
                "starttime": rec["starttime"],
                "host": rec["host"],
                "boot_id": rec["boot_id"],
                "grace_s": 1,
            }
        )
        assert res["left"] == []
        assert not any(_alive(m) for m in members)
        assert bystander.poll() is None  # an unrelated process survives
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_never_touches_a_recycled_pid(tmp_path):
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        st = nodeops._stat(other.pid)
        res = nodeops.op_stop(
            {
                "pid": other.pid,
                "starttime": st[2] + 12345,
                "host": socket.gethostname(),
                "boot_id": nodeops.boot_id(),
                "grace_s": 0.5,
            }
        )
        assert "reused" in res["note"]
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_start_reports_an_immediate_failure(tmp_path):
    rec = nodeops.op_start(
        {
            "argv": ["bash", "-c", "echo boom; exit 7"],
            "cwd": str(tmp_path),
            "log": str(tmp_path / "log"),
            "settle_s": 3,
        }
    )
    assert rec["exited"] == 7
    assert "boom" in (tmp_path / "log").read_text()


def test_ports_reports_a_listener_and_ignores_time_wait():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        busy = nodeops.op_ports({"addr": "127.0.0.1", "ports": [port]})["busy"]
        assert str(port) in busy and f"pid {os.getpid()}" in busy[str(port)]
    finally:
        s.close()
    assert nodeops.op_ports({"addr": "127.0.0.1", "ports": [port]})["busy"] == {}


def test_inspect_and_tail(tmp_path):
    f = tmp_path / "x.log"
    f.write_text("".join(f"line {i}\n" for i in range(50)))
    info = nodeops.op_inspect(
        {
            "files": [str(f), str(tmp_path / "nope")],
            "writable": [str(tmp_path / "w")],
            "space": ["/tmp"],
            "token": "t0k",
        }
    )
    assert info["files"] == {str(f): "readable", str(tmp_path / "nope"): "missing"}
    assert info["writable"] == {str(tmp_path / "w"): "ok"}
    assert info["python"] == sys.version.split()[0]
    assert nodeops.op_tail({"files": [str(f)], "lines": 3})[str(f)] == ["line 47", "line 48", "line 49"]


def test_the_module_runs_as_python_c_without_glmlaunch(tmp_path):
    # the launcher sends the source to nodes that do not have glmlaunch installed
    import inspect
    import json

    src = inspect.getsource(nodeops)
    out = subprocess.run(
        [sys.executable, "-I", "-c", src, "tail", json.dumps({"files": ["/nonexistent"]})],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert json.loads(out) == {}
