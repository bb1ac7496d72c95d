"""RayCluster: carry a launch plan out on the nodes, prove every node and GPU joined, and tear
down exactly what was started.

Order (each step bounded in time, each failure naming the host):

1. preflight, one parallel round over every node: reachable, the plan's Python and Ray present,
   every planned port free (a foreign Ray cluster on our ports is reported, never touched);
2. a random token per run (Ray token auth, ``RAY_AUTH_MODE=token``) written to each node by
   ``nodeops write_secret`` (on stdin: never in argv or logs) into the node's state directory,
   which that op creates fresh with mode 700 (an existing one, a symlink or another user's is
   refused and named), with mode 600 (``O_EXCL|O_NOFOLLOW``); ``ray start`` reads it through
   ``RAY_AUTH_TOKEN_PATH``. The directories it created are recorded in the manifest (``down
   --purge`` removes only those);
3. the head: ``ray start --head ... --block`` in a session of its own (its PID and start time
   recorded), then wait until its GCS and dashboard answer;
4. every worker in parallel, the same way;
5. wait until N nodes are alive with exactly G GPUs each, at the planned addresses. On timeout,
   or as soon as any node's ``ray start`` dies, name the missing hosts with the last lines of
   their Ray logs, and roll back (stop everything started);
6. ``down``: stop each recorded session (SIGTERM, grace, then SIGKILL of that session only),
   only where host, boot id, PID and start time all match the record. Never ``ray stop`` (it
   stops every Ray on the machine) and never kill by name.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import secrets
import shlex
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import nodeops
from .errors import CheckFailed, ClusterError, Finding, TransportError
from .options import Defaults
from .plan import LaunchPlan, NodePlan
from .progress import NullReporter, Reporter
from .runs import NodeRecord, RunDir, RunState
from .transport import RemoteResult, Target, Transport

log = logging.getLogger(__name__)

_NODEOPS_SRC = inspect.getsource(nodeops)
# The join and head waits poll Ray's state API (one HTTP request) every POLL_S and check the
# ray start processes (one SSH round) every PROC_CHECK_S; a ray start that exits within
# START_SETTLE_S (a missing binary, a bad cwd) is reported by the start itself, a later exit by
# the process check, with the node's log lines either way. Seconds; see bench/timeline.py.
POLL_S = 0.5
PROC_CHECK_S = 3.0
START_SETTLE_S = 0.5


@dataclass
class NodeState:
    """What is known about one node's Ray process: ``pid``/``starttime`` as seen on the node."""

    name: str
    address: str
    role: str
    pid: int | None = None
    starttime: int | None = None
    host: str | None = None  # the node's hostname and boot id when ray start was started
    boot_id: str | None = None
    created: list[str] = field(default_factory=list)  # directories this run created there
    joined: bool = False
    gpus: float | None = None
    start_sent: bool = False  # a start was sent: if its answer never came (Ctrl-C), down() reads the pid file
    token_sent: bool = False  # the run's token was (or may have been) written here: down() removes it


@dataclass
class ClusterStatus:
    """A snapshot: ``nodes`` maps host -> {"address", "role", "alive", "gpus", "process"}."""

    head: str
    dashboard_url: str
    nodes: dict[str, dict] = field(default_factory=dict)
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> why it did not answer (SSH/srun)


def target_of(node: NodePlan) -> Target:
    return Target(name=node.name, address=node.address, ssh_user=node.ssh_user, ssh_port=node.ssh_port)


class RayCluster:
    """A Ray cluster started from a :class:`~glmlaunch.plan.LaunchPlan` over a transport.

    Use as a context manager (``with RayCluster(plan, transport) as c: ...`` tears down on exit),
    or call :meth:`up` and :meth:`down`. Library code: raises, never prints; progress goes to
    ``reporter``. Times are seconds.

    Raises :class:`~glmlaunch.errors.ClusterError` (a node failed or never joined; ``missing``
    maps host -> reason) and :class:`~glmlaunch.errors.TransportError` (nodes unreachable).
    """

    def __init__(
        self,
        plan: LaunchPlan,
        transport: Transport,
        *,
        run_dir: RunDir | None = None,
        reporter: Reporter | None = None,
        join_timeout_s: float = Defaults.join_timeout_s,
        command_timeout_s: float = Defaults.command_timeout_s,
        stop_grace_s: float = Defaults.node_stop_grace_s,
        token: str | None = None,
        recipe=None,
    ):
        self.plan = plan
        self.recipe = recipe
        self.preflight_findings: list[Finding] = []
        self.transport = transport
        self.run_dir = run_dir
        self.reporter = reporter or NullReporter()
        self.join_timeout_s = join_timeout_s
        self.command_timeout_s = command_timeout_s
        self.stop_grace_s = stop_grace_s
        self.token = token
        self.sentinel = ""
        self.nodes: dict[str, NodeState] = {n.name: NodeState(n.name, n.address, n.role) for n in plan.nodes}
        self._targets = {n.name: target_of(n) for n in plan.nodes}
        self._node_plan = {n.name: n for n in plan.nodes}
        self.is_up = False
        self.unreachable: dict[str, str] = {}  # host -> why its last check did not answer

    @property
    def started(self) -> bool:
        """Whether any node may hold a Ray process of this cluster (a rollback must look)."""
        return any(n.pid or n.start_sent for n in self.nodes.values())

    def _touched(self, n: NodeState) -> bool:
        """Whether node ``n`` may hold something of this run: a process or the token."""
        return bool(n.pid or n.start_sent or n.token_sent)

    def _proc(self, n: NodeState) -> dict:
        """The record ``stop``/``alive`` match against the node: pid, start time, host, boot id."""
        return {"pid": n.pid, "starttime": n.starttime, "host": n.host, "boot_id": n.boot_id}

    # ------------------------------------------------------------------ helpers

    def _prefix(self) -> str:
        return "".join(f"{s} && " for s in self.plan.setup)

    def _nodeop_cmd(self, op: str, args: dict, python: str | None = None) -> str:
        py = python or self.plan.python
        return f"{self._prefix()}{shlex.quote(py)} -c {shlex.quote(_NODEOPS_SRC)} {op} {shlex.quote(json.dumps(args))}"

    def _nodeop(
        self,
        op: str,
        per_node: dict[str, dict],
        *,
        timeout: float | None = None,
        step: str | None = None,
        stdin: str | None = None,
    ) -> dict[str, tuple[dict | None, RemoteResult]]:
        """Run a node operation on several nodes at once; returns host -> (parsed JSON or None,
        result). ``stdin``: text for every node's stdin (a secret: never in argv or the logs)."""
        cmds = {self._targets[name]: self._nodeop_cmd(op, args) for name, args in per_node.items()}
        limit = timeout or self.command_timeout_s
        sent = time.time()
        if stdin is None:
            res = self.transport.run_many(cmds, timeout=limit)
        else:
            res = self.transport.run_many(cmds, timeout=limit, stdin=stdin)
        out = {}
        for t, r in res.items():
            parsed = None
            if r.ok:
                try:
                    parsed = json.loads(r.stdout.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    r.error = (
                        r.error or f"unreadable answer from the node: {r.stdout[-200:]!r} {r.stderr[-300:]!r}"
                    )
            if self.run_dir and step:
                self.run_dir.host_log(t.name, step, f"nodeops {op}", r.stdout, r.stderr, r.exit_code, r.error)
            out[t.name] = (parsed, r)
        if self.run_dir and step:  # per-host phases for bench/timeline.py: Unix start, seconds
            self.run_dir.event(
                "phase",
                step=step,
                op=op,
                hosts={
                    t.name: {
                        "start": round(r.started or sent, 3),
                        "seconds": round(r.duration_s, 3),
                        "connect_s": round(r.connect_s, 3),
                        "ok": out[t.name][0] is not None,
                    }
                    for t, r in res.items()
                },
            )
        return out

    def _record(self) -> None:
        if self.run_dir:
            self.run_dir.update(
                nodes={
                    n.name: NodeRecord(
                        address=n.address,
                        role=n.role,
                        pid=n.pid,
                        starttime=n.starttime,
                        host=n.host,
                        boot_id=n.boot_id,
                        created=list(n.created),
                    )
                    for n in self.nodes.values()
                }
            )

    def _log_files(self, host: str) -> list[str]:
        n = self._node_plan[host]
        r = f"{n.ray_dir or n.state_dir}/ray/session_latest/logs"
        return [f"{n.state_dir}/ray-start.log", f"{r}/raylet.err", f"{r}/raylet.out", f"{r}/gcs_server.err"]

    def tail_logs(self, hosts: list[str], lines: int = 12) -> dict[str, str]:
        """The last lines of each host's Ray logs (``ray-start.log``, raylet/GCS logs)."""
        res = self._nodeop(
            "tail", {h: {"files": self._log_files(h), "lines": lines} for h in hosts}, timeout=30
        )
        out = {}
        for h, (parsed, r) in res.items():
            if parsed is None:
                out[h] = f"(could not read logs: {r.reason()})"
                continue
            parts = []
            for f, ls in parsed.items():
                ls = [x for x in ls if x.strip()]
                if ls:
                    parts.append(f"{Path(f).name}:\n    " + "\n    ".join(ls[-lines:]))
            out[h] = "\n  ".join(parts) or "(no Ray log lines)"
        return out

    # ------------------------------------------------------------------ steps

    def preflight(self) -> list[Finding]:
        """One parallel round over every node: reachable, the plan's Python answers, every planned
        port free, and what :mod:`glmlaunch.preflight` inspects (versions, GPUs, files, shared
        ``--save``, space, interface, clock). Returns all findings; raises
        :class:`TransportError` for unreachable nodes and :class:`CheckFailed` for errors."""
        from . import preflight as pf

        step = "preflight"
        self.token = self.token or secrets.token_hex(32)
        self.sentinel = secrets.token_hex(8)  # the shared --save check's nonce: nothing of the token
        self.reporter.step(
            "preflight: reach every node, check ports, versions, GPUs and files", total=len(self.nodes)
        )
        sent = time.time()
        res = self._nodeop("preflight", pf.requests(self.plan, self.recipe, self.sentinel), step=step)
        unreachable, busy, answers = {}, {}, {}
        for h, (parsed, r) in res.items():
            if parsed is None:
                unreachable[h] = r.reason()
                self.reporter.host(step, h, "failed", r.reason())
                continue
            answers[h] = parsed
            if parsed["ports"]["busy"]:
                busy[h] = parsed["ports"]["busy"]
                self.reporter.host(step, h, "failed", f"{len(busy[h])} port(s) busy")
            else:
                self.reporter.host(step, h, "ok")
        if unreachable:
            self.reporter.done("preflight", False)
            raise TransportError(
                f"{len(unreachable)} of {len(self.nodes)} nodes cannot be used:\n"
                + "\n".join(f"  - {h}: {why}" for h, why in unreachable.items()),
                failures=unreachable,
                hint=f"check ssh access (key, user, known_hosts) and that {self.plan.python} exists on every node "
                "(or give setup lines with cluster.setup)",
            )
        findings = pf.analyze(self.plan, self.recipe, answers, sent, time.time())
        for h, ports in busy.items():  # one finding per host, naming each port and its holder
            owners = "; ".join(f"{p} {why}" for p, why in sorted(ports.items(), key=lambda kv: int(kv[0])))
            text = " ".join(ports.values())
            glr = re.search(r"/glr-([A-Za-z0-9_.-]+?)(?:-[0-9a-f]{16})?/n\d+", text)
            ray_dir = re.search(r"(/\S*/glr-[0-9a-f]{16}-n\d+)/ray", text)
            if ray_dir and not glr:
                what = (
                    f"; they are held by another glmlaunch run (its Ray directory {ray_dir.group(1)}): "
                    "`glmlaunch down` that run, or give this cluster other ports with --port-base/--dashboard-port"
                )
            elif glr:
                what = (
                    f"; they are held by glmlaunch run {glr.group(1)}: `glmlaunch down --run {glr.group(1)}`, "
                    "or give this cluster other ports with --port-base/--dashboard-port"
                )
            elif "gcs_server" in text or "raylet" in text or "ray start" in text:
                what = "; another Ray cluster holds them and is left alone: move this one with --port-base/--dashboard-port"
            else:
                what = "; free them or move Ray's ports with --port-base/--dashboard-port"
            findings.insert(
                0,
                Finding(
                    "ports",
                    f"{h}: {len(ports)} planned port(s) in use: {owners}{what}",
                    "planned ports free",
                    "docs/rules.md#preflight",
                ),
            )
        findings += self._shared_check(answers)
        self._apply_probes(answers)
        _, writable = pf.recipe_files(self.recipe)
        if writable:  # leave --save as it was: remove each node's sentinel
            self._nodeop(
                "remove",
                {h: {"files": [f"{writable[0]}/{self._sentinel_file(a)}"]} for h, a in answers.items()},
                timeout=60,
            )
        self.preflight_findings = findings
        if self.run_dir:
            self.run_dir.update(preflight=[f.__dict__ | {"extra": None} for f in findings])
        errors = [f for f in findings if f.severity == "error"]
        if findings and not errors:
            self.reporter.findings("preflight", findings)
        self.reporter.done(
            "preflight", not errors, f"{len(errors)} error(s), {len(findings) - len(errors)} warning(s)"
        )
        if errors:
            raise CheckFailed(
                findings,
                hint="nothing was started; fix what the nodes report above (free the ports or "
                "move ours with --port-base/--dashboard-port, install or fix files) and run again",
            )
        return findings

    def node_faults(self) -> dict[str, str]:
        """Which of the plan's nodes cannot be used now, each judged on its own: host -> why (it
        does not answer, a planned port is in use, or an error finding of the preflight about it
        alone: Ray missing, GPUs, files, ``--save``, interface). One bounded, read-only round
        (the preflight's; its sentinel files in ``--save`` are removed after); starts nothing
        and raises nothing for a bad node. Cross-node rules (same versions everywhere, one
        shared ``--save``) are left to the full :meth:`preflight` of the next ``up``. Used by
        supervision to pick the nodes and spares of the next attempt (issue 14)."""
        from . import preflight as pf

        self.sentinel = secrets.token_hex(8)  # the --save check's nonce (as in preflight)
        sent = time.time()
        res = self._nodeop("preflight", pf.requests(self.plan, self.recipe, self.sentinel), step="node check")
        bad: dict[str, str] = {}
        answers: dict[str, dict] = {}
        for h, (parsed, r) in res.items():
            if parsed is None:
                bad[h] = f"unreachable: {r.reason()}"
                continue
            answers[h] = parsed
            why = []
            busy = parsed["ports"]["busy"]
            if busy:
                why.append(
                    f"{len(busy)} planned port(s) in use: " + "; ".join(f"{p} {w}" for p, w in busy.items())
                )
            one = pf.analyze(self.plan, self.recipe, {h: parsed}, sent, time.time())
            why += [f.message for f in one if f.severity == "error"]
            if why:
                bad[h] = "; ".join(why)
        _, writable = pf.recipe_files(self.recipe)
        if writable and answers:
            self._nodeop(
                "remove",
                {h: {"files": [f"{writable[0]}/{self._sentinel_file(a)}"]} for h, a in answers.items()},
                timeout=60,
            )
        return bad

    def _apply_probes(self, answers: dict[str, dict]) -> None:
        """The plan's probed variables (``NCCL_NVLS_ENABLE``) from the nodes' answers, into the
        plan the job is submitted with (:func:`glmlaunch.plan.apply_probes`); the run directory's
        ``plan.json`` is written again with them and an event records the values."""
        from .plan import apply_probes

        if not self.plan.probed_env:
            return
        values = apply_probes(self.plan, {h: a["inspect"] for h, a in answers.items()})
        if self.run_dir:
            from .render import render_json

            self.run_dir.write("plan.json", render_json(self.plan))
            self.run_dir.event("probed", env=values)

    def inspect(self) -> list[Finding]:
        """The preflight round, read-only (nothing is started), as findings: what the nodes
        report, and one error finding per unreachable node. For ``check --deep``."""
        try:
            return self.preflight()
        except CheckFailed as e:
            return e.findings
        except TransportError as e:
            return [
                Finding(h, why, "node reachable", "docs/rules.md#preflight") for h, why in e.failures.items()
            ] or [Finding("nodes", e.message, "node reachable", "docs/rules.md#preflight")]

    def _shared_check(self, answers: dict[str, dict]) -> list[Finding]:
        """Is ``--save`` one filesystem? Every node wrote a sentinel; the head reads the others'."""
        from . import preflight as pf

        files, writable = pf.recipe_files(self.recipe)
        if not writable or len(self.plan.nodes) < 2:
            return []
        d = writable[0]
        others = {h: f"{d}/{self._sentinel_file(a)}" for h, a in answers.items() if h != self.plan.head.name}
        res = self._nodeop(
            "inspect", {self.plan.head.name: {"shared_read": list(others.values())}}, timeout=60
        )
        parsed, r = res[self.plan.head.name]
        if parsed is None:
            return [
                Finding(
                    "checkpoint.save",
                    f"could not verify that {d} is shared: {r.reason()}",
                    "",
                    "docs/rules.md#preflight",
                    "warning",
                )
            ]
        out = []
        for h, path in others.items():
            if parsed.get("shared", {}).get(path) != self.sentinel:
                out.append(
                    Finding(
                        "checkpoint.save",
                        f"{d} is not shared: the head does not see what {h} wrote there",
                        "--save on a filesystem every node shares",
                        "docs/rules.md#preflight",
                    )
                )
        return out

    def check_shared(
        self, directory: str, field: str, nodes: list[str] | None = None, *, here: bool = False
    ) -> dict[str, str]:
        """Is ``directory`` one filesystem on ``nodes`` (default: every node)? The first of them
        writes a marker there (a random nonce, ``nodeops inspect`` ``writable``), every other
        reads it (``shared_read``), then the marker is removed. The same probe as the preflight's
        ``--save`` check (:meth:`_shared_check`), from one writer. Returns ``{host: why}`` for
        each node that does not see the marker (empty: shared); raises
        :class:`~glmlaunch.errors.TransportError` naming unreachable nodes. ``field``: the
        recipe field named in the reasons; ``here``: this machine must see the marker too (key
        ``"this machine"``: what runs here, the downloads and the verifications, writes there)."""
        names = nodes or [n.name for n in self.plan.nodes]
        writer, readers = names[0], names[1:]
        nonce = secrets.token_hex(8)
        res = self._nodeop(
            "inspect", {writer: {"writable": [directory], "sentinel": nonce}}, timeout=60, step="shared-fs"
        )
        parsed, r = res[writer]
        if parsed is None:
            raise TransportError(
                f"{writer}: cannot write the shared-filesystem marker in {directory}: {r.reason()}",
                {writer: r.reason()},
            )
        state = parsed["writable"].get(directory)
        if state != "ok":
            return {writer: f"{field} = {directory}: {state}"}
        marker = f"{directory}/{nodeops.sentinel_name(nonce, parsed['hostname'])}"
        out: dict[str, str] = {}
        try:
            if readers:
                seen = self._nodeop(
                    "inspect", {h: {"shared_read": [marker]} for h in readers}, timeout=60, step="shared-fs"
                )
                unreachable = {h: r.reason() for h, (p, r) in seen.items() if p is None}
                if unreachable:
                    raise TransportError(
                        "cannot read the shared-filesystem marker on "
                        + ", ".join(unreachable)
                        + ":\n"
                        + "\n".join(f"  - {h}: {why}" for h, why in unreachable.items()),
                        unreachable,
                    )
                for h, (p, _r) in seen.items():
                    if (p or {}).get("shared", {}).get(marker) != nonce:
                        out[h] = (
                            f"{field} = {directory} is not shared: {h} does not see what {writer} wrote there"
                        )
            if here:
                try:
                    mine = Path(marker).read_text()[:256]
                except OSError:
                    mine = None
                if mine != nonce:
                    out["this machine"] = (
                        f"{field} = {directory}: this machine does not see what {writer} wrote there "
                        "(prepare downloads and verifies here)"
                    )
        finally:
            self._nodeop("remove", {writer: {"files": [marker]}}, timeout=60)
        return out

    def _sentinel_file(self, answer: dict) -> str:
        return nodeops.sentinel_name(self.sentinel, answer["inspect"]["hostname"])

    def _state_dirs(self, n: NodePlan) -> list[list]:
        """What ``write_secret`` creates on node ``n``: the run's directory (shared by the nodes
        of one machine: accepted when it is this user's and private), the node's own and its Ray
        directory (both always new)."""
        parent = self.plan.state_dir.rstrip("/")
        out: list[list] = [[parent, True]] if n.state_dir.startswith(parent + "/") else []
        out.append([n.state_dir, False])
        if n.ray_dir:  # Ray's temp dir goes in there: Ray makes that one mode 777, this one keeps others out
            out.append([n.ray_dir, False])
        return out

    def _write_token(self) -> None:
        """Create each node's state directory and write the token there (``nodeops
        write_secret``, the token on stdin). Raises :class:`TransportError` naming each node
        that refused (a directory that is not this run's) or could not be reached."""
        assert self.token, "preflight() sets the token"
        for n in self.plan.nodes:
            self.nodes[n.name].token_sent = True  # even a failed write may have left a file
        per_node = {
            n.name: {"path": f"{n.state_dir}/auth_token", "mode": 0o600, "dirs": self._state_dirs(n)}
            for n in self.plan.nodes
        }
        res = self._nodeop("write_secret", per_node, step="token", stdin=self.token + "\n")
        bad = {}
        for h, (parsed, r) in res.items():
            if parsed is None:
                bad[h] = r.reason()
            else:
                self.nodes[h].created = list(parsed.get("created", []))
        self._record()
        if bad:
            refused = any("refused" in why for why in bad.values())
            raise TransportError(
                "cannot write the Ray auth token on "
                + ", ".join(bad)
                + ":\n"
                + "\n".join(f"  - {h}: {why}" for h, why in bad.items()),
                failures=bad,
                hint="a state directory that is not this run's (another user's, a symlink, open to others) "
                "is never used: remove it or launch again (each run gets a new random directory)"
                if refused
                else "check that /tmp is writable on every node",
            )

    def _start(self, nodes: list[NodePlan], step: str) -> dict[str, str]:
        """Start ``ray start --block`` on ``nodes`` in their own sessions; returns host -> error."""
        args = {}
        for n in nodes:
            args[n.name] = {
                "argv": n.ray_start,
                "env": n.env,
                "cwd": n.state_dir,
                "log": f"{n.state_dir}/ray-start.log",
                "pidfile": f"{n.state_dir}/ray.pid",
                "settle_s": START_SETTLE_S,
                # a transport whose steps end their processes (srun) keeps one step per node alive
                **getattr(self.transport, "start_options", {}),
            }
        for n in nodes:  # from now on a rollback must look at these nodes
            self.nodes[n.name].start_sent = True
        res = self._nodeop("start", args, step=step)
        failed = {}
        for h, (parsed, r) in res.items():
            if parsed is None:
                failed[h] = r.reason()
                continue
            ns = self.nodes[h]
            ns.pid, ns.starttime = parsed["pid"], parsed.get("starttime")
            ns.host, ns.boot_id = parsed.get("host"), parsed.get("boot_id")
            if "exited" in parsed:
                failed[h] = f"ray start exited at once with code {parsed['exited']}"
        self._record()
        return failed

    def _api(self, path: str, timeout: float = 5.0):
        req = urllib.request.Request(self.plan.dashboard_url + path)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (cluster-internal URL)
            return json.loads(r.read().decode())

    def ray_nodes(self) -> list[dict]:
        """Nodes as the Ray state API (dashboard ``/api/v0/nodes``) reports them:
        ``[{"node_ip", "state", "resources_total", "node_name"}, ...]``."""
        data = self._api("/api/v0/nodes?limit=10000&detail=1")
        res = data.get("data", {}).get("result", {})
        return res.get("result", res) if isinstance(res, dict) else res

    def _alive_procs(self) -> dict[str, bool | None]:
        """host -> whether its recorded ``ray start`` session is alive, for every node with a
        recorded process; ``None`` where the host did not answer within the transport's bounds
        (connect timeout, 30 s command): its reason is kept in :attr:`unreachable`. One parallel
        round, so a cut host costs about the connect timeout, not TCP's 15 minutes."""
        per = {n.name: {"procs": [self._proc(n)]} for n in self.nodes.values() if n.pid}
        res = self._nodeop("alive", per, timeout=30)
        out: dict[str, bool | None] = {}
        for h, (parsed, r) in res.items():
            if parsed is None and r.exit_code is None:  # the command never ran there
                self.unreachable[h] = r.reason()
                out[h] = None
                continue
            self.unreachable.pop(h, None)
            out[h] = bool(parsed and all(parsed.values()))
        return out

    def _fail(self, message: str, missing: dict[str, str], hint: str) -> None:
        ours = [h for h in missing if h in self._node_plan]  # a stranger (an IP) has no logs of ours
        logs = self.tail_logs(ours) if ours else {}
        detail = "\n".join(f"  - {h}: {why}\n  {logs.get(h, '')}" for h, why in missing.items())
        if self.run_dir:
            self.run_dir.event("failed", message=message, missing=missing)
        raise ClusterError(f"{message}\n{detail}", missing=missing, hint=hint)

    def _wait_head(self) -> None:
        deadline = time.monotonic() + min(self.join_timeout_s, 180)
        head = self.plan.head
        last = ""
        last_proc_check = time.monotonic()
        while time.monotonic() < deadline:
            try:
                self._api("/api/version", timeout=3)
                if self.run_dir:
                    self.run_dir.event("head answers", host=head.name)
                return
            except (urllib.error.URLError, OSError, ValueError) as e:
                last = str(e)
            # the process check is a round over SSH (a Python on the head): every PROC_CHECK_S,
            # not every poll, so it does not compete with Ray's own start for the head's CPU
            if time.monotonic() - last_proc_check > PROC_CHECK_S:
                last_proc_check = time.monotonic()
                alive = self._alive_procs().get(head.name, False)
                if alive is None:
                    self._fail(
                        "the head node stopped answering while it started",
                        {head.name: self.unreachable.get(head.name, "unreachable")},
                        "check the head's network and sshd, then launch again",
                    )
                if not alive:
                    self._fail(
                        "the head node's ray start exited",
                        {head.name: "ray start --head exited"},
                        "read the log lines above; a busy port or a bad flag is the usual cause",
                    )
            time.sleep(POLL_S)
        self._fail(
            f"the head's dashboard/job API at {self.plan.dashboard_url} did not answer in time ({last})",
            {head.name: "no answer"},
            "check the head's Ray logs in the run directory",
        )

    def wait_ready(self, timeout_s: float | None = None) -> ClusterStatus:
        """Wait until every planned node is alive at its address with exactly G GPUs. Fails fast
        when a node's ``ray start`` dies. Raises :class:`ClusterError` naming the missing hosts."""
        timeout_s = self.join_timeout_s if timeout_s is None else timeout_s
        step = "join"
        want = {n.address: n for n in self.plan.nodes}
        g = float(self.plan.gpus_per_node)
        self.reporter.step(
            f"waiting for {len(want)} nodes x {self.plan.gpus_per_node} GPUs to join", total=len(want)
        )
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        joined_at: dict[str, float] = {}  # host -> Unix time its GPUs were first seen
        last_proc_check = time.monotonic()  # ray start was just checked by its settle
        status = ClusterStatus(self.plan.head.name, self.plan.dashboard_url)
        while True:
            try:
                ray_nodes = self.ray_nodes()
            except (urllib.error.URLError, OSError, ValueError) as e:
                ray_nodes, status.problems = [], [f"state API: {e}"]
            alive: dict[str, dict] = {}
            for rn in ray_nodes:
                if rn.get("state") == "ALIVE":
                    alive[str(rn.get("node_ip"))] = rn
            wrong = {}
            for addr, n in want.items():
                joined = alive.get(addr)
                if joined is None:
                    continue
                rn = joined
                gpus = float(rn.get("resources_total", {}).get("GPU", 0))
                self.nodes[n.name].gpus = gpus
                if gpus != g:
                    wrong[n.name] = f"joined with {gpus:g} GPUs, expected {g:g}"
                elif n.name not in seen:
                    seen.add(n.name)
                    joined_at[n.name] = round(time.time(), 3)
                    self.nodes[n.name].joined = True
                    self.reporter.host(step, n.name, "ok", f"{gpus:g} GPUs")
            strangers = [ip for ip in alive if ip not in want]
            if wrong:
                self._fail(
                    "nodes joined with the wrong GPU count",
                    wrong,
                    "make the hostfile's slots match the nodes' GPUs",
                )
            if strangers:
                self._fail(
                    f"unexpected nodes joined this cluster: {', '.join(strangers)}",
                    {ip: "not in the plan" for ip in strangers},
                    "another launcher may be using the same head address and port; move ports with --port-base",
                )
            if len(seen) == len(want):
                status.ok = True
                status.nodes = {
                    n.name: {"address": n.address, "role": n.role, "alive": True, "gpus": n.gpus}
                    for n in self.nodes.values()
                }
                self.reporter.done("join", True, f"{len(want)} nodes, {int(g * len(want))} GPUs")
                if self.run_dir:
                    self.run_dir.event("ready", joined=joined_at)
                return status
            now = time.monotonic()
            if now - last_proc_check > PROC_CHECK_S:
                last_proc_check = now
                procs = self._alive_procs()
                dead = {
                    h: "ray start exited before the node joined"
                    if ok is False
                    else f"unreachable before it joined: {self.unreachable.get(h, '')}"
                    for h, ok in procs.items()
                    if not ok and h not in seen
                }
                if dead:
                    self.reporter.done("join", False)
                    self._fail(
                        f"{len(dead)} node(s) failed to join",
                        dead,
                        "read each node's log lines above (unreachable head GCS, busy port, version mismatch)",
                    )
            if now > deadline:
                missing = {n.name: "not joined" for n in self.plan.nodes if n.name not in seen}
                self.reporter.done("join", False)
                self._fail(
                    f"{len(missing)} of {len(want)} nodes did not join within {timeout_s:.0f} s",
                    missing,
                    "check the named hosts' network path to the head "
                    f"({self.plan.head_address}:{self.plan.ports.gcs}) and their Ray logs; raise --join-timeout if they are slow",
                )
            time.sleep(POLL_S)

    def up(self) -> ClusterStatus:
        """Preflight, start the head, start the workers, wait for every node and GPU. On any
        failure (or Ctrl-C) everything started so far is stopped before the error propagates.
        Calling it on a cluster that is already up returns its status."""
        if self.is_up:
            return self.status()
        try:
            self.preflight()
            self._write_token()
            if self.run_dir:
                self.run_dir.update(state=RunState.STARTING)
            self.reporter.step(f"starting the head node {self.plan.head.name}", total=1)
            failed = self._start([self.plan.head], "ray-start")
            if failed:
                self._fail("the head node did not start", failed, "read the log lines above")
            self._wait_head()
            self.reporter.host("head", self.plan.head.name, "ok", self.plan.dashboard_url)
            self.reporter.done("head", True)
            if self.plan.workers:
                self.reporter.step(f"starting {len(self.plan.workers)} workers", total=len(self.plan.workers))
                failed = self._start(self.plan.workers, "ray-start")
                for w in self.plan.workers:
                    if w.name not in failed:
                        self.reporter.host("workers", w.name, "ok", "ray start running")
                if failed:
                    self._fail(
                        f"{len(failed)} worker(s) did not start", failed, "read each node's log lines above"
                    )
                self.reporter.done("workers", True)
            status = self.wait_ready()
            if self.run_dir:
                self.run_dir.update(state=RunState.UP)
            self.is_up = True
            return status
        except BaseException:
            if any(self._touched(n) for n in self.nodes.values()):
                try:
                    self.down()
                except Exception as e:  # the original error matters more
                    log.warning("rollback after a failed start was incomplete: %s", e)
            raise

    def status(self) -> ClusterStatus:
        """Nodes as Ray sees them (the head's state API, 5 s bound), plus whether each node's
        ``ray start`` process is alive (one bounded round over the nodes). A node that does not
        answer is named in ``unreachable`` (host -> reason) with ``process`` ``None`` and
        ``reachable`` false; the others are reported as usual. Never waits on a cut host longer
        than the transport's bounds (for SSH: about the connect timeout)."""
        st = ClusterStatus(self.plan.head.name, self.plan.dashboard_url)
        try:
            by_ip = {rn.get("node_ip"): rn for rn in self.ray_nodes()}
        except (urllib.error.URLError, OSError, ValueError) as e:
            by_ip, st.problems = {}, [f"state API at {self.plan.dashboard_url}: {e}"]
        procs = self._alive_procs() if any(n.pid for n in self.nodes.values()) else {}
        for n in self.plan.nodes:
            rn = by_ip.get(n.address, {})
            why = self.unreachable.get(n.name) if n.name in procs else None
            st.nodes[n.name] = {
                "address": n.address,
                "role": n.role,
                "alive": rn.get("state") == "ALIVE",
                "gpus": rn.get("resources_total", {}).get("GPU", 0.0) if rn else None,
                "process": procs.get(n.name),
                "reachable": why is None,
            }
            if why is not None:
                st.unreachable[n.name] = why
        st.ok = not st.unreachable and all(
            v["alive"] and v["gpus"] == self.plan.gpus_per_node for v in st.nodes.values()
        )
        return st

    def down(self, purge: bool = False) -> dict[str, dict]:
        """Stop this cluster's Ray processes on every node, all nodes in one parallel round (with
        ``purge`` of a run directory that several nodes share: the workers first, then the head,
        which removes the shared parent once the workers' directories are gone), by
        recorded session only (host, boot id, PID and start time must match), and remove the
        run's token from the nodes. With ``purge`` the state directories this run created (Ray's
        logs of this run) go too, each only while it is still this user's private directory.
        Returns host -> what was stopped. Idempotent."""
        self.reporter.step("stopping Ray on every node", total=len(self.nodes))
        parent = self.plan.state_dir.rstrip("/")
        parent_ours = any(parent in n.created for n in self.nodes.values())
        per_node = {}
        for n in self.nodes.values():
            if self._touched(n) or (purge and n.created):
                sd = self._node_plan[n.name].state_dir
                per_node[n.name] = {
                    **self._proc(n),
                    "grace_s": self.stop_grace_s,
                    # a start whose answer never came: the node's own record (read only if trusted)
                    "pidfile": f"{sd}/ray.pid" if n.start_sent else None,
                    "remove": [f"{sd}/auth_token"],
                }
                if purge:
                    per_node[n.name]["purge"] = [d for d in n.created if d != parent]
                    if parent_ours:
                        per_node[n.name]["purge_parent"] = parent
        results = {}
        if purge and parent_ours:
            workers = {h: a for h, a in per_node.items() if self.nodes[h].role != "head"}
            head = {h: a for h, a in per_node.items() if self.nodes[h].role == "head"}
            groups = [workers, head]
        else:  # one round: a stop waits for its node's sessions to end, so rounds add up
            groups = [per_node]
        for group in groups:
            if not group:
                continue
            res = self._nodeop("stop", group, timeout=self.stop_grace_s + 30, step="down")
            for h, (parsed, r) in res.items():
                results[h] = parsed or {"error": r.reason()}
                self.reporter.host("down", h, "ok" if parsed else "failed", "" if parsed else r.reason())
        for h in per_node:
            got = results.get(h, {})
            if "error" in got:
                continue
            ns = self.nodes[h]
            if str(got.get("note", "")).startswith(("not touched", "pid file not trusted")):
                log.warning("%s: %s", h, got["note"])  # kept in the record: not ours to stop here
            else:
                ns.pid, ns.start_sent = None, False
            ns.token_sent = False
            gone = set(got.get("removed", []))
            ns.created = [d for d in ns.created if d not in gone]
        self.is_up = False
        self._record()
        if self.run_dir:
            self.run_dir.update(state=RunState.DOWN if not self.started else RunState.DOWN_INCOMPLETE)
            self.run_dir.event("down", results=results)
        self.reporter.done("down", not self.started)
        return results

    def __enter__(self) -> RayCluster:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # ------------------------------------------------------------------ restore

    @classmethod
    def from_run(cls, run_dir: RunDir, transport: Transport, reporter: Reporter | None = None) -> RayCluster:
        """Rebuild the handle of a run started elsewhere (``status``/``down`` from another shell).
        The run directory must pass :meth:`RunDir.verify` first: its plan's ``setup`` lines are
        shell commands run on every node, and its token opens the cluster."""
        run_dir.verify()
        plan = LaunchPlan.model_validate_json((run_dir.path / "plan.json").read_text())
        token = None
        tok = run_dir.path / "auth_token"
        if tok.exists():
            token = tok.read_text().strip()
        c = cls(plan, transport, run_dir=run_dir, reporter=reporter, token=token)
        m = run_dir.manifest
        for name, rec in m.nodes.items():
            if name in c.nodes:
                n = c.nodes[name]
                n.pid, n.starttime, n.host, n.boot_id = rec.pid, rec.starttime, rec.host, rec.boot_id
                n.created = list(rec.created)
        if m.state is RunState.STARTING:  # the launcher died while starting nodes
            for n in c.nodes.values():
                n.start_sent = True
        c.is_up = any(n.pid for n in c.nodes.values()) and m.state.cluster_up
        return c
