"""Supervision's pure decisions: why an attempt failed, whether to restart, how long to wait,
which nodes the next attempt uses, and where it resumes (issue 14).

- :func:`classify`: a **cluster** cause (a node lost, a raylet or the GCS dead, the job's driver
  gone, the head's job API gone, the hang watchdog) or a **trainer** failure (the trainer exited
  non-zero by itself while every node was healthy). Only cluster causes are restarted by default,
  since restarting a deterministic bug burns GPUs (``restart_on="any"`` restarts both).
- :func:`backoff_s`: exponential back-off between attempts (tenacity's ``wait_exponential``).
- :func:`replace_nodes`: the next attempt's nodes: each bad node replaced by a spare, keeping the
  world size; none left is :class:`~glmlaunch.errors.ClusterError` naming the bad node.
- :func:`resume_args`: the trainer argv for a resume from the newest complete checkpoint that
  :func:`glmlaunch.nodeops.latest_complete` found (``--ckpt-step N`` when the tracker's iteration
  is torn).

Nothing here touches a node; :meth:`glmlaunch.run.Run.supervise` carries the decisions out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import ClusterError, GlmlaunchError, JobError

# Ray's words for a job that failed because of the cluster, not the trainer's own code
# (ray/_private/... messages as Ray 2.60 prints them in JobInfo.message / the driver's log)
_CLUSTER_PATTERNS = (
    r"node .{0,80}(has )?died",
    r"raylet .{0,80}(died|dead|exited|crashed)",
    r"the actor died because its node has died",
    r"NodeDiedError",
    r"ActorDiedError.{0,200}node",
    r"GCS .{0,80}(failed|unavailable|dead|died|not respond)",
    r"failed to connect to GCS",
    r"job supervisor actor .{0,80}died",
    r"Job supervisor actor could not be scheduled",
    r"driver .{0,40}(was killed|exited unexpectedly|died)",
    r"The node with node id: .{0,80} has been marked dead",
)
_CLUSTER_RE = re.compile("|".join(_CLUSTER_PATTERNS), re.IGNORECASE)


class CauseKind(StrEnum):
    NONE = "none"  # the job succeeded
    CLUSTER = "cluster"  # restarted by default
    TRAINER = "trainer"  # restarted only with restart_on="any"
    STOPPED = "stopped"  # stopped on purpose (Ctrl-C, `glmlaunch down`): never restarted


@dataclass
class Cause:
    """Why an attempt ended: ``kind``, a one-line ``detail`` and the ``hosts`` it names."""

    kind: CauseKind
    detail: str = ""
    hosts: dict[str, str] = field(default_factory=dict)


def classify(
    result=None,
    error: BaseException | None = None,
    *,
    dead_nodes: dict[str, str] | None = None,
    log_tail: str = "",
) -> Cause:
    """Why the trainer's attempt ended.

    ``result``: the :class:`~glmlaunch.jobs.JobResult` when the job was followed to its end;
    ``error``: what ``Run.submit`` raised instead (a :class:`ClusterError` from the watchdog or
    the head gone, a :class:`JobError`); ``dead_nodes``: host -> why, nodes the cluster reports
    dead or unreachable right after the failure; ``log_tail``: the job log's last lines.

    Rules, in order: an error naming hosts, or any dead node, is a cluster cause (node lost; the
    hang watchdog raises a ClusterError too); a FAILED job whose Ray message or log tail matches
    Ray's words for a lost node, raylet, GCS or driver is a cluster cause; a job that was
    STOPPED is ``stopped``; any other failure with every node healthy is the trainer's own."""
    dead_nodes = dict(dead_nodes or {})
    if isinstance(error, ClusterError):
        hosts = {**dict(error.missing or {}), **dead_nodes}
        return Cause(CauseKind.CLUSTER, error.message.splitlines()[0], hosts)
    if isinstance(error, KeyboardInterrupt):
        return Cause(CauseKind.STOPPED, "interrupted")
    if dead_nodes:
        return Cause(
            CauseKind.CLUSTER,
            f"{len(dead_nodes)} node(s) lost: " + "; ".join(f"{h}: {w}" for h, w in dead_nodes.items()),
            dead_nodes,
        )
    if error is not None:
        msg = error.message if isinstance(error, GlmlaunchError) else str(error)
        if isinstance(error, JobError | OSError) and _CLUSTER_RE.search(msg):
            return Cause(CauseKind.CLUSTER, msg.splitlines()[0] if msg else error.__class__.__name__)
        return Cause(CauseKind.TRAINER, msg.splitlines()[0] if msg else error.__class__.__name__)
    if result is None:
        return Cause(CauseKind.TRAINER, "no result")
    if result.status == "SUCCEEDED":
        return Cause(CauseKind.NONE)
    if result.status == "STOPPED":
        return Cause(CauseKind.STOPPED, result.message.splitlines()[0] if result.message else "stopped")
    text = f"{result.message}\n{log_tail}"
    m = _CLUSTER_RE.search(text)
    if m:
        return Cause(CauseKind.CLUSTER, f"Ray: {m.group(0)}")
    code = "" if result.exit_code is None else f" with exit code {result.exit_code}"
    return Cause(CauseKind.TRAINER, f"the trainer failed{code}, every node healthy")


def should_restart(cause: Cause, restart_on: str, attempts_left: int) -> bool:
    """Whether to start another attempt: some left, and a cluster cause (or any failure with
    ``restart_on="any"``); never after a success or a deliberate stop."""
    if attempts_left <= 0 or cause.kind in (CauseKind.NONE, CauseKind.STOPPED):
        return False
    return cause.kind is CauseKind.CLUSTER or restart_on == "any"


def backoff_s(attempt: int, *, base_s: float = 30.0, max_s: float = 600.0) -> float:
    """Seconds to wait before restart number ``attempt`` (1, 2, ...): ``base_s * 2**(attempt-1)``,
    at most ``max_s`` (tenacity's ``wait_exponential(multiplier=base_s, max=max_s)``)."""
    from types import SimpleNamespace

    from tenacity import wait_exponential

    w = wait_exponential(multiplier=base_s, exp_base=2, min=0, max=max_s)
    return float(w(SimpleNamespace(attempt_number=attempt)))  # type: ignore[arg-type]


def replace_nodes(
    active: list[str], spares: list[str], bad: dict[str, str]
) -> tuple[list[str], list[str], dict[str, str]]:
    """The next attempt's nodes: each node of ``active`` named in ``bad`` (host -> why) is
    replaced, in place, by the first remaining spare, so the world size (and the order, hence
    the head when it is healthy) stays. Returns (new active, spares left, host -> replacement).
    Raises :class:`ClusterError` naming the bad nodes that no spare is left for: never a silently
    smaller world (TP·PP·CP fixes the GPU count)."""
    pool = [s for s in spares if s not in bad and s not in active]
    out, swapped, short = [], {}, {}
    for h in active:
        if h not in bad:
            out.append(h)
        elif pool:
            swapped[h] = pool.pop(0)
            out.append(swapped[h])
        else:
            short[h] = bad[h]
    if short:
        raise ClusterError(
            f"no spare node left to replace {', '.join(short)}: "
            + "; ".join(f"{h}: {why}" for h, why in short.items()),
            missing=short,
            hint="add spare hosts to the hostfile (beyond cluster.nodes) or with --spares FILE, "
            "or fix the named node and launch again (training resumes from the last checkpoint)",
        )
    return out, pool, swapped


def resume_args(argv: list[str], found: dict | None) -> tuple[list[str], str]:
    """The trainer argv for the next attempt, and a note. ``found``: what
    :func:`glmlaunch.nodeops.latest_complete` answered for the run's ``--save`` (``None``: not
    known). The trainer resumes from ``--load`` by itself (Megatron reads the tracker file), so
    the argv changes only when the tracker's iteration is torn: then ``--ckpt-step N`` names the
    newest complete one (Megatron-LM megatron/training/arguments.py ``--ckpt-step``). An old
    ``--ckpt-step`` is replaced."""
    out = list(argv)
    while "--ckpt-step" in out:
        i = out.index("--ckpt-step")
        del out[i : i + 2]
    if not found:
        return out, "no checkpoint information: the trainer resumes from --load as it finds it"
    tracker, it = found.get("tracker"), found.get("iteration")
    torn = found.get("torn") or {}
    if it is None:
        if tracker is None:
            return out, "no checkpoint yet: the trainer starts from --ref-load"
        return out, f"no complete checkpoint (torn: {torn}): the trainer starts from --ref-load"
    if tracker == it:
        return out, f"resuming from iteration {it}"
    out += ["--ckpt-step", str(it)]
    why = torn.get(str(tracker), "incomplete") if tracker is not None else "no tracker file"
    return out, f"iteration {tracker} is torn ({why}): resuming from iteration {it} (--ckpt-step {it})"
