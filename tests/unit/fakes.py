"""Fakes for the orchestration unit tests: a transport that plays the nodes and a Ray Jobs client.

:class:`FakeTransport` decodes each command line that :class:`~glmlaunch.cluster.RayCluster`
sends (``[setup && ] PYTHON -c <nodeops source> OP JSON``: the op and its JSON args are the last
two shell words), records every call in order as :class:`Call` ``(op, host, args)``, and answers
as :mod:`glmlaunch.nodeops` would on a node scripted by a :class:`FakeHost` (start fails, the
process dies after N alive checks, the host is unreachable, the node never joins or joins with
other GPUs, its state directory is not the run's, it rebooted ...). It keeps each node's
directories, files (token, pid file) and processes, so a test can see what is left after a
rollback. Text sent on stdin (the token, to ``write_secret``) is kept apart from the command
lines (:attr:`FakeTransport.stdins`). :meth:`FakeTransport.ray_nodes` is what Ray's state API
would report and :meth:`FakeTransport.api` what the head's dashboard answers.

:class:`FakeJobs` is a ``JobSubmissionClient``: ``submit_job``, ``get_job_status``,
``get_job_info``, ``get_job_logs``, ``stop_job`` and an async ``tail_job_logs`` whose stream can be
told to end early (quietly or with an error), as Ray's websocket does (ray#57002).

Both may share one ``events`` list, so that a test can assert the order of job and node
operations. :func:`install` patches glmlaunch to use them; :class:`FakeClock` replaces the
``time`` module of glmlaunch.cluster / glmlaunch.jobs so that polls and timeouts take no time.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import threading
import time as _time
import urllib.error
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from glmlaunch.transport import RemoteResult, Target

# ----------------------------------------------------------------------------- time


class FakeClock:
    """A stand-in for the ``time`` module: ``monotonic`` is virtual and ``sleep`` advances it
    (plus a tiny real sleep, so that other threads run). ``time`` stays the wall clock."""

    def __init__(self, start: float = 1000.0, real_sleep: float = 0.001):
        self.now = start
        self.real_sleep = real_sleep
        self.slept = 0.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, s: float) -> None:
        with self._lock:
            self.now += s
            self.slept += s
        _time.sleep(self.real_sleep)

    def time(self) -> float:
        return _time.time()


# ----------------------------------------------------------------------------- nodes


@dataclass
class FakeHost:
    """How one fake node behaves.

    - ``unreachable``: every command and write fails with a connection error (exit code None);
    - ``unreachable_ops``: only these ops fail that way (e.g. ``{"start"}``);
    - ``start_fails``: ``start`` exits non-zero with ``start_stderr`` (no process is left);
    - ``start_exits``: ``start`` answers, but ``ray start`` exited at once with this code;
    - ``dies_after_alive_checks``: the process answers alive to N ``alive`` checks, then is dead;
    - ``joins``: whether the node ever shows up in Ray's state API; ``join_after_polls``: only
      after that many ``ray_nodes`` polls; ``gpus``: the GPUs it joins with;
    - ``api_ok``: (head) whether the dashboard answers while the head's process is alive;
    - ``foreign_dirs``: paths that exist on the node and are not this run's (another user's, a
      symlink, open to others): ``write_secret`` refuses them as nodeops does;
    - ``boot``: the node's boot id (change it to play a reboot); ``hostname``: what the node calls
      itself (default ``fake-<name>``); ``nvlink``: the NVLink connections its ``nvidia-smi topo
      -m`` shows (``inspect``'s ``nvlink``).
    """

    unreachable: bool = False
    unreachable_ops: set[str] = field(default_factory=set)
    start_fails: bool = False
    start_stderr: str = "ray: error: unrecognized arguments"
    start_exits: int | None = None
    dies_after_alive_checks: int | None = None
    joins: bool = True
    join_after_polls: int = 0
    gpus: float = 8.0
    api_ok: bool = True
    foreign_dirs: set[str] = field(default_factory=set)
    boot: str = "boot-1"
    hostname: str | None = None
    nvlink: int = 0


@dataclass
class FakeProc:
    pid: int
    starttime: int
    alive: bool = True
    alive_checks: int = 0
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class NodeState:
    """What is on one fake node: its files (path -> text) and the processes started there."""

    files: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    procs: dict[int, FakeProc] = field(default_factory=dict)
    polls: int = 0  # ray_nodes polls seen while its process was alive

    def live(self) -> list[FakeProc]:
        return [p for p in self.procs.values() if p.alive]


@dataclass(frozen=True)
class Call:
    """One recorded operation: ``op`` (a nodeops op, or ``put_text``), ``host``, its ``args``
    (the op's JSON; for put_text path and mode), ``batch`` (which run_many call it came in) and
    ``seq`` (its place in the shared event log)."""

    op: str
    host: str
    args: dict
    batch: int
    seq: int


class FakeTransport:
    """A :class:`~glmlaunch.transport.Transport` over scripted fake nodes (see the module doc).

    ``hosts`` maps host name -> :class:`FakeHost` (hosts not named behave well). ``interrupt``
    ``(op, host)``: the first ``run_many`` of ``op`` that includes ``host`` runs its commands and
    then raises ``KeyboardInterrupt`` before any answer comes back (Ctrl-C while waiting).
    """

    kind = "ssh"

    def __init__(
        self,
        hosts: dict[str, FakeHost] | None = None,
        *,
        events: list | None = None,
        interrupt: tuple[str, str] | None = None,
        ray_version: str = "2.53.0",
    ):
        self.hosts = dict(hosts or {})
        self.events = events if events is not None else []
        self.interrupt = interrupt
        self.ray_version = ray_version
        self.calls: list[Call] = []
        self.commands: list[str] = []  # every raw command line, in order
        self.writes: list[tuple[str, str, str, int]] = []  # (host, path, text, mode): write_secret, put_text
        self.stdins: list[
            tuple[str, str, str]
        ] = []  # (host, op, text) sent on stdin, never in a command line
        self.nodes: dict[str, NodeState] = {}
        self.address: dict[str, str] = {}  # host -> address, as targets gave them
        self.head: str | None = None  # the host that was started with --head
        self.closed = 0
        self._batch = 0
        self._pid = 4000
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ helpers

    def host(self, name: str) -> FakeHost:
        return self.hosts.setdefault(name, FakeHost())

    def node(self, name: str) -> NodeState:
        return self.nodes.setdefault(name, NodeState())

    def ops(self, op: str | None = None, host: str | None = None) -> list[Call]:
        """Recorded calls, filtered by op and/or host."""
        return [c for c in self.calls if (op is None or c.op == op) and (host is None or c.host == host)]

    def batches(self, op: str) -> list[list[str]]:
        """For each run_many call of ``op``, in order: the hosts it went to."""
        out: dict[int, list[str]] = {}
        for c in self.ops(op):
            out.setdefault(c.batch, []).append(c.host)
        return [out[b] for b in sorted(out)]

    def live(self) -> dict[str, list[FakeProc]]:
        """Host -> its processes still running."""
        return {h: n.live() for h, n in self.nodes.items() if n.live()}

    def _log(self, *entry) -> int:
        self.events.append(entry)
        return len(self.events) - 1

    @staticmethod
    def decode(command: str) -> tuple[str, dict, list[str]]:
        """(op, args, words) of a nodeops command line."""
        words = shlex.split(command)
        assert len(words) >= 4 and words[-3].startswith('"""Operations that run ON a node'), command[:200]
        assert words[-4] == "-c", words[-4]
        return words[-2], json.loads(words[-1]), words

    def _unreachable(self, name: str, op: str) -> bool:
        h = self.host(name)
        return h.unreachable or op in h.unreachable_ops

    # ------------------------------------------------------------------ Transport

    def run_many(
        self, commands: dict[Target, str], *, timeout: float = 60.0, on_done=None, stdin: str | None = None
    ) -> dict[Target, RemoteResult]:
        with self._lock:
            self._batch += 1
            batch = self._batch
            out: dict[Target, RemoteResult] = {}
            ops = set()
            for t, cmd in commands.items():
                op, args, _words = self.decode(cmd)
                ops.add(op)
                self.commands.append(cmd)
                self.address[t.name] = t.address
                seq = self._log("node", op, t.name)
                self.calls.append(Call(op, t.name, args, batch, seq))
                if stdin is not None:
                    self.stdins.append((t.name, op, stdin))
                out[t] = self._answer(t.name, op, args, stdin)
            if (
                self.interrupt
                and self.interrupt[0] in ops
                and any(t.name == self.interrupt[1] for t in commands)
            ):
                self.interrupt = None
                self._log("interrupt", batch)
                raise KeyboardInterrupt
        for t, r in out.items():
            if on_done:
                on_done(t, r)
        return out

    def put_text(
        self, targets: list[Target], path: str, text: str, *, mode: int = 0o600, timeout: float = 30.0
    ):
        out = {}
        with self._lock:
            for t in targets:
                self.address[t.name] = t.address
                seq = self._log("node", "put_text", t.name)
                self.calls.append(Call("put_text", t.name, {"path": path, "mode": mode}, 0, seq))
                self.writes.append((t.name, path, text, mode))
                if self._unreachable(t.name, "put_text"):
                    out[t] = RemoteResult(t.name, None, error=f"{t.name}: connection refused")
                    continue
                self.node(t.name).files[path] = text
                out[t] = RemoteResult(t.name, 0)
        return out

    def close(self) -> None:
        self.closed += 1

    # ------------------------------------------------------------------ the node side

    def hostname(self, name: str) -> str:
        return self.host(name).hostname or f"fake-{name}"

    def _mismatch(self, name: str, starttime, host, boot) -> str | None:
        """nodeops.mismatch on this fake node."""
        if starttime is None:
            return "no start time was recorded"
        if boot and boot != self.host(name).boot:
            return f"recorded in another boot of the node (boot id {boot}, now {self.host(name).boot})"
        if host and host != self.hostname(name):
            return f"recorded on host {host}, this is {self.hostname(name)}"
        return None

    def _remove(self, name: str, files, dirs, parent) -> dict:
        n, h = self.node(name), self.host(name)
        out: dict = {"removed": [], "kept": {}}
        for f in files:
            parent_dir = f.rsplit("/", 1)[0]
            if parent_dir in h.foreign_dirs:
                out["kept"][f] = f"{parent_dir}: not this run's directory"
            elif f in n.files:
                del n.files[f]
                out["removed"].append(f)
        for d in [*dirs, *([parent] if parent else [])]:
            if d in h.foreign_dirs:
                out["kept"][d] = f"{d}: not this run's directory"
                continue
            if d not in n.dirs:
                continue
            if d == parent and any(x.startswith(d + "/") for x in n.dirs):
                continue  # rmdir: not empty
            n.dirs.discard(d)
            for f in [f for f in n.files if f.startswith(d + "/")]:
                del n.files[f]
            out["removed"].append(d)
        return out

    def _answer(self, name: str, op: str, a: dict, stdin: str | None = None) -> RemoteResult:
        if self._unreachable(name, op):
            return RemoteResult(name, None, error=f"{name}: connection refused (fake)")
        h, n = self.host(name), self.node(name)
        if op == "write_secret":
            created = []
            for d, shared in a.get("dirs", []):
                if d in h.foreign_dirs:
                    why = f"{d} is owned by uid 1001, not 0: not this run's directory"
                elif d in n.dirs and not shared:
                    why = f"{d} exists already: not created by this run"
                else:
                    why = ""
                if why:
                    return RemoteResult(name, 3, stderr=f"glmlaunch nodeops write_secret: refused: {why}\n")
                if d not in n.dirs:
                    n.dirs.add(d)
                    created.append(d)
            if a["path"] in n.files:
                return RemoteResult(
                    name, 3, stderr=f"glmlaunch nodeops write_secret: refused: {a['path']} exists already\n"
                )
            n.files[a["path"]] = stdin or ""
            self.writes.append((name, a["path"], stdin or "", a.get("mode", 0o600)))
            res = {"path": a["path"], "created": created}
        elif op == "preflight":
            res = {
                "ports": {"busy": {}},
                "inspect": {
                    "hostname": f"fake-{name}",
                    "time": _time.time(),
                    "python": "3.12.3",
                    "executable": "/usr/bin/python3",
                    "ray": self.ray_version,
                    "torch": None,
                    "sglang": None,
                    "megatron_core": None,
                    "gpus": int(h.gpus),
                    "gpu_models": [],
                    "strays": [],
                    "files": {p: "readable" for p in a.get("files", [])},
                    "writable": {p: "ok" for p in a.get("writable", [])},
                    "free_gib": {p: 100.0 for p in a.get("space", [])},
                    "interface": True if a.get("interface") else None,
                    "repos": {p: "abc123" for p in a.get("repos", [])},
                    "nvlink": h.nvlink,
                    "nvlink_why": f"nvidia-smi topo -m shows {h.nvlink} NVLink connection(s)",
                },
            }
        elif op == "start":
            if h.start_fails:
                return RemoteResult(
                    name, 1, stdout="", stderr=f"Traceback (most recent call last):\n{h.start_stderr}"
                )
            self._pid += 1
            p = FakeProc(self._pid, 50_000 + self._pid, argv=list(a["argv"]), env=dict(a.get("env", {})))
            n.procs[p.pid] = p
            if "--head" in p.argv:
                self.head = name
            res = {
                "pid": p.pid,
                "starttime": p.starttime,
                "host": self.hostname(name),
                "boot_id": h.boot,
                "started": _time.time(),
            }
            if a.get("pidfile"):
                n.files[a["pidfile"]] = json.dumps(res)
            if h.start_exits is not None:
                p.alive = False
                res["exited"] = h.start_exits
        elif op == "alive":
            res = {}
            for r in a["procs"]:
                p = n.procs.get(r["pid"])
                ok = bool(
                    p
                    and p.alive
                    and r["starttime"] == p.starttime
                    and self._mismatch(name, r.get("starttime"), r.get("host"), r.get("boot_id")) is None
                )
                if ok:
                    p.alive_checks += 1
                    if h.dies_after_alive_checks is not None and p.alive_checks > h.dies_after_alive_checks:
                        p.alive = ok = False
                res[str(r["pid"])] = ok
        elif op == "stop":
            pid, starttime = a.get("pid"), a.get("starttime")
            host, boot = a.get("host"), a.get("boot_id")
            base = {"pid": pid, "was_alive": False, "killed": [], "left": []}
            purge = (a.get("remove", []), a.get("purge", []), a.get("purge_parent"))
            if not pid and a.get("pidfile"):
                if a["pidfile"].rsplit("/", 1)[0] in h.foreign_dirs:
                    res = base | {"note": "pid file not trusted: not this run's directory"}
                    res.update(self._remove(name, purge[0], [], None))
                    return RemoteResult(name, 0, stdout=json.dumps(res) + "\n")
                if a["pidfile"] in n.files:
                    rec = json.loads(n.files[a["pidfile"]])
                    pid, starttime, host, boot = (
                        rec["pid"],
                        rec.get("starttime"),
                        rec.get("host"),
                        rec.get("boot_id"),
                    )
            why = self._mismatch(name, starttime, host, boot) if pid else None
            p = n.procs.get(pid) if pid else None
            if not pid:
                res = base | {"pid": None, "note": "nothing was started here"}
                res.update(self._remove(name, *purge))
            elif why:
                res = base | {"pid": pid, "note": f"not touched: {why}"}
                res.update(self._remove(name, purge[0], [], None))
            elif p and p.starttime != starttime:
                res = base | {"pid": pid, "note": "PID was reused by another process: not touched"}
                res.update(self._remove(name, purge[0], [], None))
            else:
                res = base | {"pid": pid, "was_alive": bool(p and p.alive)}
                if p:
                    p.alive = False
                res.update(self._remove(name, *purge))
        elif op == "tail":
            res = {f: [f"fake {f.rsplit('/', 1)[-1]} line on {name}"] for f in a["files"]}
        elif op in ("remove", "inspect"):
            res = {} if op == "remove" else {"shared": {p: None for p in a.get("shared_read", [])}}
        else:
            raise AssertionError(f"FakeTransport: unexpected op {op}")
        return RemoteResult(name, 0, stdout="some noise\n" + json.dumps(res) + "\n")

    # ------------------------------------------------------------------ what Ray reports

    def ray_nodes(self) -> list[dict]:
        """Ray's state API: the nodes whose process is alive and that have joined (ALIVE, with
        their GPUs); a node whose process died is reported DEAD."""
        out = []
        with self._lock:
            self._log("ray", "nodes")
            for name, n in self.nodes.items():
                h = self.host(name)
                if not n.procs or not h.joins:
                    continue
                alive = bool(n.live())
                if alive:
                    n.polls += 1
                    if n.polls <= h.join_after_polls:
                        continue
                out.append(
                    {
                        "node_ip": self.address.get(name, name),
                        "state": "ALIVE" if alive else "DEAD",
                        "resources_total": {"CPU": 16.0, "GPU": float(h.gpus)},
                        "node_name": name,
                    }
                )
        return out

    def api(self, path: str) -> Any:
        """The head's dashboard: answers while the head's process is alive."""
        with self._lock:
            head = self.head
            if head is None or not self.node(head).live() or not self.host(head).api_ok:
                self._log("api", path, "refused")
                raise urllib.error.URLError("[Errno 111] Connection refused (fake)")
            self._log("api", path, "ok")
            if path.startswith("/api/version"):
                return {"version": "4", "ray_version": self.ray_version}
            if path.startswith("/api/v0/nodes"):
                return {"data": {"result": {"result": self.ray_nodes()}}}
            raise AssertionError(f"FakeTransport.api: unexpected path {path}")


# ----------------------------------------------------------------------------- jobs


@dataclass
class FakeJob:
    sid: str
    entrypoint: str
    runtime_env: dict
    lines: list[str]
    drops: list[int]  # connection k ends (early) once this many lines of the log exist
    drop_with_error: bool = False
    produced: int = 0  # lines of the log that exist so far
    status: str = "RUNNING"
    stop_requested: bool = False
    polls_after_stop: int = 0
    exit_code: int | None = None


class FakeJobs:
    """A fake ``JobSubmissionClient``.

    Each submitted job has ``lines`` of log, produced as they are streamed; it is ``RUNNING`` until
    every line exists, then ``final_status``. ``drops``: the k-th ``tail_job_logs`` connection ends
    early once that many lines exist (quietly, or raising with ``drop_with_error``), as Ray's
    websocket does; every connection replays the log from its start, as Ray's does. ``stop_job``
    makes the job ``STOPPED`` after ``stop_polls`` more status polls (the trainer checkpoints).
    ``hold``: the job stays RUNNING (lines or not) until stopped.
    """

    def __init__(
        self,
        *,
        events: list | None = None,
        lines: list[str] | None = None,
        drops: list[int] | None = None,
        drop_with_error: bool = False,
        final_status: str = "SUCCEEDED",
        stop_polls: int = 2,
        hold: bool = False,
    ):
        self.events = events if events is not None else []
        self.default_lines = (
            lines if lines is not None else [f"step {i}: loss {1 / (i + 1):.4f}\n" for i in range(12)]
        )
        self.default_drops = list(drops or [])
        self.drop_with_error = drop_with_error
        self.final_status = final_status
        self.stop_polls = stop_polls
        self.hold = hold
        self.jobs: dict[str, FakeJob] = {}
        self.connections: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.RLock()

    def _log(self, method: str, sid: str, *extra) -> None:
        with self._lock:
            self.calls.append((method, sid))
            self.events.append(("job", method, sid, *extra))

    def _job(self, sid: str) -> FakeJob:
        if sid not in self.jobs:
            raise RuntimeError(f"Job {sid} does not exist")  # what Ray's SDK raises, roughly
        return self.jobs[sid]

    def _settle(self, j: FakeJob) -> None:
        if j.status == "RUNNING" and not self.hold and j.produced >= len(j.lines):
            j.status, j.exit_code = self.final_status, 0 if self.final_status == "SUCCEEDED" else 1

    # ------------------------------------------------------------------ the SDK

    def submit_job(
        self,
        *,
        entrypoint: str,
        submission_id: str | None = None,
        runtime_env: dict | None = None,
        metadata: dict | None = None,
        entrypoint_num_cpus: float | None = None,
        **_kw,
    ) -> str:
        with self._lock:
            self._log("submit_job", submission_id)
            if submission_id in self.jobs:
                raise RuntimeError(f"Job with submission_id {submission_id} already exists")
            j = FakeJob(
                submission_id,
                entrypoint,
                runtime_env or {},
                list(self.default_lines),
                list(self.default_drops),
                self.drop_with_error,
            )
            if self.hold:  # a long job: its log so far exists already
                j.produced = len(j.lines)
            self.jobs[submission_id] = j
            return submission_id

    def get_job_status(self, sid: str):
        with self._lock:
            j = self._job(sid)
            if j.stop_requested and j.status == "RUNNING":
                j.polls_after_stop += 1
                if j.polls_after_stop > self.stop_polls:  # the trainer saved a checkpoint and exited
                    j.lines.append("SIGTERM: checkpoint saved, exiting\n")
                    j.produced = len(j.lines)
                    j.status, j.exit_code = "STOPPED", -15
            self._settle(j)
            self._log("get_job_status", sid, j.status)
            return SimpleNamespace(value=j.status)

    def get_job_info(self, sid: str):
        with self._lock:
            j = self._job(sid)
            self._log("get_job_info", sid)
            return SimpleNamespace(
                status=j.status,
                driver_exit_code=j.exit_code,
                message=f"job {j.status.lower()}",
                entrypoint=j.entrypoint,
            )

    def get_job_logs(self, sid: str) -> str:
        with self._lock:
            j = self._job(sid)
            self._log("get_job_logs", sid)
            return "".join(j.lines[: j.produced])

    def stop_job(self, sid: str) -> bool:
        with self._lock:
            j = self._job(sid)
            self._log("stop_job", sid)
            if j.status != "RUNNING":
                return False
            j.stop_requested = True
            return True

    async def tail_job_logs(self, sid: str):
        with self._lock:
            j = self._job(sid)
            k = self.connections.get(sid, 0)
            self.connections[sid] = k + 1
            self._log("tail_job_logs", sid, k)
            drop_at = j.drops[k] if k < len(j.drops) else None
        i = 0
        while True:
            with self._lock:
                if drop_at is not None and i >= drop_at and i >= j.produced:
                    self._log("tail dropped", sid, i)
                    if j.drop_with_error:
                        raise ConnectionResetError("websocket closed (fake)")
                    return
                if i >= len(j.lines):
                    if self.hold and j.status == "RUNNING":
                        line = None
                    else:
                        return
                else:
                    if i >= j.produced:
                        j.produced = i + 1  # the job writes its next line
                    line = j.lines[i]
            if line is None:
                await asyncio.sleep(0.01)
                continue
            i += 1
            yield line
            await asyncio.sleep(0)


# ----------------------------------------------------------------------------- wiring


def install(
    monkeypatch,
    transport: FakeTransport,
    client: FakeJobs | None = None,
    *,
    clock: FakeClock | None = None,
    job_clock: FakeClock | None = None,
) -> None:
    """Point glmlaunch at the fakes: Ray's state API and the dashboard at ``transport``, the Jobs
    client at ``client``, and (optionally) glmlaunch.cluster's / glmlaunch.jobs' ``time`` at fake
    clocks."""
    from glmlaunch import cluster as cluster_mod
    from glmlaunch import jobs as jobs_mod

    monkeypatch.setattr(cluster_mod.RayCluster, "ray_nodes", lambda self: transport.ray_nodes())
    monkeypatch.setattr(cluster_mod.RayCluster, "_api", lambda self, path, timeout=5.0: transport.api(path))
    if client is not None:
        monkeypatch.setattr(jobs_mod, "client_for", lambda plan, token: client)
    if clock is not None:
        monkeypatch.setattr(cluster_mod, "time", clock)
    if job_clock is not None:
        monkeypatch.setattr(jobs_mod, "time", job_clock)
