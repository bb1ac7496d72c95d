"""HF -> Megatron ``torch_dist`` conversion with ``torchrun`` on the training nodes.

The command is miles' ``convert_checkpoint`` (miles/utils/external_utils/command_utils.py:35-76
(miles@31f1ca961a94)), rendered per node instead of through a running Ray cluster:

    PYTHONPATH=<miles_dir>:<megatron_dir> <python> -m torch.distributed.run
        --nnodes N --node-rank R --master-addr <head address> --master-port <PortPlan.convert>
        --nproc-per-node <GPUs per node> <miles_dir>/tools/convert_hf_to_torch_dist.py
        <model args> --hf-checkpoint <HF checkpoint> --save <ref_load>.partial <checkpoint.convert_extra_args>

(``python -m torch.distributed.run`` is ``torchrun`` run by the plan's interpreter, so the nodes'
PATH does not decide which torch runs.) The model args are the model's own
(:attr:`glmlaunch.models.ModelSpec.args`, miles' ``shell_safe_model_args``), without the
recipe's dispatcher override, as miles passes them; the tool raises PP to the world size itself
(tools/convert_hf_to_torch_dist.py:70-86). The nodes are the actor (training) nodes, the
head's address is the plan's (the chosen network), the port is the plan's ``ports.convert``
(miles' fixed 23456, checked free on the head first).

Each node's ``torchrun`` runs as a session of its own (:func:`glmlaunch.nodeops.op_start`) in a
fresh private state directory; its output goes to ``convert.log`` there and, at the end, to the
run directory (``hosts/<host>/convert.log``), and the node's directory is removed. A node whose ``torchrun`` fails ends the step: the
other nodes' sessions are stopped, and the error names the node with its last lines. The output
goes to ``<ref_load>.partial`` (removed first when a stale one is there), which the caller
renames to ``ref_load`` only once it verified (:mod:`glmlaunch.prep.verify`), so a killed
conversion never leaves anything a later step could take for done.
"""

from __future__ import annotations

import shlex
import time

from ..cluster import RayCluster
from ..errors import PrepareError
from ..models import get_model
from ..plan import LaunchPlan, NodePlan
from ..progress import NullReporter, Reporter
from ..resolve import Resolved
from .result import NodeOutcome

CONVERTER = "tools/convert_hf_to_torch_dist.py"
PARTIAL = ".partial"


def converter_model_args(res: Resolved) -> list[str]:
    """The converter's model args: the model's own tokens, then ``checkpoint.convert_extra_args``."""
    r = res.recipe
    return list(get_model(r.model.type).args) + list(r.checkpoint.convert_extra_args)


def training_nodes(res: Resolved, plan: LaunchPlan) -> list[NodePlan]:
    """The nodes that convert: the actor nodes (the first ``Resolved.actor_nodes``, head first)."""
    return plan.nodes[: res.actor_nodes]


def converter_argv(
    res: Resolved, plan: LaunchPlan, node_rank: int, hf_checkpoint: str, save: str
) -> list[str]:
    """One node's ``torchrun`` argv (see the module). ``node_rank``: 0 on the head."""
    r = res.recipe
    miles = r.trainer.miles_dir.rstrip("/")
    model_args = list(get_model(r.model.type).args)
    return [
        plan.python,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(len(training_nodes(res, plan))),
        "--node-rank",
        str(node_rank),
        "--master-addr",
        plan.head_address,
        "--master-port",
        str(plan.ports.convert),
        "--nproc-per-node",
        str(max(res.gpus_per_node, 1)),
        f"{miles}/{CONVERTER}",
        *model_args,
        "--hf-checkpoint",
        hf_checkpoint,
        "--save",
        save,
        *r.checkpoint.convert_extra_args,
    ]


def converter_env(res: Resolved) -> dict[str, str]:
    """The converter's environment (on top of :func:`glmlaunch.nodeops.child_env`'s allowlist):
    ``PYTHONPATH`` with miles and Megatron (command_utils.py:26-32), and the socket interface
    variables when ``env.interface`` names one."""
    r = res.recipe
    env = {"PYTHONPATH": f"{r.trainer.miles_dir.rstrip('/')}:{r.trainer.megatron_dir.rstrip('/')}"}
    if r.env.interface:
        for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME"):
            env[k] = r.env.interface
    return env


def _wrapped(argv: list[str]) -> list[str]:
    # the session leader records torchrun's exit status in its private directory (cwd)
    return ["/bin/sh", "-c", '"$@"; rc=$?; echo "$rc" > convert.rc; exit "$rc"', "sh", *argv]


def run_conversion(
    cluster: RayCluster,
    res: Resolved,
    *,
    hf_checkpoint: str,
    save: str,
    reporter: Reporter | None = None,
    timeout_s: float,
    poll_s: float = 2.0,
) -> list[NodeOutcome]:
    """Run the conversion on the training nodes and wait for it (at most ``timeout_s`` seconds).
    Returns one outcome per node. Raises :class:`PrepareError` naming each node that failed (its
    exit status and last log lines), and :class:`~glmlaunch.errors.TransportError` for a node that
    cannot be reached; the other nodes' sessions are stopped first."""
    reporter = reporter or NullReporter()
    plan = cluster.plan
    nodes = training_nodes(res, plan)
    step = "convert"
    parent = plan.state_dir.rstrip("/")
    dirs = {n.name: [[parent, True], [f"{n.state_dir}-convert", False]] for n in nodes}
    sd = {n.name: f"{n.state_dir}-convert" for n in nodes}
    made = cluster._nodeop(
        "write_secret",
        {n.name: {"path": f"{sd[n.name]}/convert.json", "mode": 0o600, "dirs": dirs[n.name]} for n in nodes},
        step=step,
        stdin="{}\n",
    )
    bad = {h: r.reason() for h, (parsed, r) in made.items() if parsed is None}
    if bad:
        raise PrepareError(
            "cannot make the conversion's directory on " + ", ".join(bad) + _lines(bad),
            bad,
            "check that /tmp is writable on these nodes",
        )
    head = plan.head
    busy = cluster._nodeop(
        "ports", {head.name: {"ports": [plan.ports.convert], "addr": head.address}}, timeout=30
    )
    parsed, r = busy[head.name]
    if parsed is None or parsed.get("busy"):
        why = r.reason() if parsed is None else "; ".join(f"{p} {w}" for p, w in parsed["busy"].items())
        raise PrepareError(
            f"the conversion's master port {plan.ports.convert} on {head.name} ({head.address}) is not free: {why}",
            {head.name: why},
            "free it, or move the port with --convert-port",
        )
    env = converter_env(res)
    args = {}
    for rank, n in enumerate(nodes):
        argv = converter_argv(res, plan, rank, hf_checkpoint, save)
        args[n.name] = {
            "argv": _wrapped(argv),
            "env": env,
            "cwd": sd[n.name],
            "log": f"{sd[n.name]}/convert.log",
            "pidfile": f"{sd[n.name]}/convert.pid",
            "settle_s": 0,
        }
        if cluster.run_dir:
            cluster.run_dir.host_log(n.name, "convert-command", shlex.join(argv), "", "", 0)
    reporter.step(
        f"converting on {len(nodes)} node(s) with torchrun: {hf_checkpoint} -> {save}", total=len(nodes)
    )
    started = cluster._nodeop("start", args, step=step)
    recs: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for h, (parsed, r) in started.items():
        if parsed is None:
            failed[h] = r.reason()
        else:
            recs[h] = {k: parsed.get(k) for k in ("pid", "starttime", "host", "boot_id")}
    outcomes: dict[str, NodeOutcome] = {}
    tails: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout_s
    running = dict(recs)
    try:
        while running and not failed:
            if time.monotonic() > deadline:
                for h in running:
                    failed[h] = f"still converting after {timeout_s:.0f} s"
                break
            time.sleep(poll_s)
            alive = cluster._nodeop("alive", {h: {"procs": [rec]} for h, rec in running.items()}, timeout=30)
            for h, (parsed, r) in alive.items():
                if parsed is None:
                    failed[h] = f"cannot ask the node: {r.reason()}"
                elif not any(parsed.values()):
                    running.pop(h)
                    rc = _exit_status(cluster, h, sd[h])
                    if rc == 0:
                        outcomes[h] = NodeOutcome(node=h, state="done", detail="torchrun exited 0")
                        reporter.host(step, h, "ok", "torchrun exited 0")
                    else:
                        failed[h] = (
                            f"torchrun exited with status {rc}"
                            if rc is not None
                            else "torchrun ended (no exit status)"
                        )
    finally:
        if running:  # a failure elsewhere, a timeout or Ctrl-C: stop what still runs, by session only
            cluster._nodeop(
                "stop",
                {h: {**rec, "grace_s": 10} for h, rec in running.items()},
                timeout=60,
                step="convert-stop",
            )
        _keep_logs(cluster, list(args), sd)
        tails = _tails(cluster, list(failed), sd) if failed else {}
        # the nodes' conversion directories go (their logs are in the run directory now); each
        # only while it is still this user's private directory (nodeops _remove)
        cluster._nodeop(
            "stop",
            {h: {"pid": None, "purge": [sd[h]], "purge_parent": parent} for h in sd},
            timeout=60,
            step="convert-cleanup",
        )
    if failed:
        for h, why in failed.items():
            outcomes[h] = NodeOutcome(node=h, state="failed", detail=why)
            reporter.host(step, h, "failed", why)
        for h in running:
            if h not in failed:
                outcomes[h] = NodeOutcome(node=h, state="failed", detail="stopped: another node failed")
        detail = "\n".join(
            f"  - {h}: {why}\n      " + "\n      ".join(tails.get(h, [])) for h, why in failed.items()
        )
        raise PrepareError(
            f"the conversion failed on {len(failed)} of {len(nodes)} node(s): {', '.join(failed)}\n{detail}",
            failed,
            "read the named nodes' convert.log in the run directory (hosts/<host>/convert.log); "
            "nothing was marked done, and the partial output is removed before the next try",
        )
    return [outcomes[n.name] for n in nodes]


def _lines(d: dict[str, str]) -> str:
    return ":\n" + "\n".join(f"  - {h}: {why}" for h, why in d.items())


def _exit_status(cluster: RayCluster, host: str, d: str) -> int | None:
    res = cluster._nodeop("tail", {host: {"files": [f"{d}/convert.rc"], "lines": 1}}, timeout=30)
    parsed, _r = res[host]
    try:
        return int((parsed or {}).get(f"{d}/convert.rc", [""])[-1].strip())
    except (ValueError, IndexError):
        return None


def _tails(
    cluster: RayCluster, hosts: list[str], sd: dict[str, str], lines: int = 200
) -> dict[str, list[str]]:
    res = cluster._nodeop(
        "tail", {h: {"files": [f"{sd[h]}/convert.log"], "lines": lines} for h in hosts}, timeout=30
    )
    out = {}
    for h, (parsed, r) in res.items():
        ls = [x for x in (parsed or {}).get(f"{sd[h]}/convert.log", []) if x.strip()]
        # torchrun ends a failure with its own traceback: show the converter's last lines and
        # torchrun's "failed (exitcode ...)" line instead
        cut = next((i for i, x in enumerate(ls) if "failed (exitcode" in x), None)
        ls = ls[:cut][-12:] + [ls[cut]] if cut is not None else ls[-15:]
        out[h] = ls or [f"(no log lines: {r.reason() if parsed is None else 'empty'})"]
    return out


def _keep_logs(cluster: RayCluster, hosts: list[str], sd: dict[str, str]) -> None:
    """Each node's convert.log (its last 2000 lines) into the run directory."""
    if not cluster.run_dir or not hosts:
        return
    res = cluster._nodeop(
        "tail", {h: {"files": [f"{sd[h]}/convert.log"], "lines": 2000} for h in hosts}, timeout=60
    )
    for h, (parsed, r) in res.items():
        text = "\n".join((parsed or {}).get(f"{sd[h]}/convert.log", [])) + "\n"
        cluster.run_dir.host_log(
            h, "convert", "torchrun convert_hf_to_torch_dist.py", text, "", 0, r.error or ""
        )
