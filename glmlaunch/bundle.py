"""The crash bundle: what a failed attempt leaves for a person to read, in
``runs/<id>/crash-<attempt>/`` and one ``.tar.gz`` beside it (issue 14).

Contents (each remote read bounded by the transport; a node that does not answer is named in
its file instead):

- ``summary.txt``: the manifest's events in time order and the first failure (cause, hosts);
- ``manifest.json``: the run's manifest at the time;
- ``job-tail.log``: the job log's last lines;
- ``nodes.json`` / ``nodes.txt``: the nodes as Ray's state API and glmlaunch's process check see
  them (``ray status``-like: state, GPUs, whether reachable);
- ``ray-logs/<host>.txt``: each node's Ray log tails (:meth:`RayCluster.tail_logs`);
- ``job.json``: the argv and runtime env submitted, secrets redacted: variables whose name says
  secret (:func:`glmlaunch.nodeops.secret_name`) and the recipe's secret variables are replaced
  by ``<redacted>``, as is the value after an argv flag whose name says secret.

Library code: never raises for a part it cannot collect (the bundle says what is missing).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import time
from pathlib import Path

from .nodeops import secret_name

log = logging.getLogger(__name__)

REDACTED = "<redacted>"


def redact_env(env: dict[str, str], secret_vars: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """``env`` with every secret's value replaced by ``<redacted>`` (by name: ``*_TOKEN``,
    ``*_KEY``, ``*SECRET*`` ... and the names in ``secret_vars``)."""
    return {k: (REDACTED if secret_name(k) or k in secret_vars else v) for k, v in env.items()}


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value after a flag whose name says secret (``--wandb-key X``) and the
    value of ``--flag=X`` of such a flag replaced by ``<redacted>``."""
    out: list[str] = []
    hide = False
    for a in argv:
        if hide:
            out.append(REDACTED)
            hide = False
            continue
        if a.startswith("--"):
            name, eq, _ = a[2:].partition("=")
            if secret_name(name.replace("-", "_")):
                if eq:
                    out.append(f"--{name}={REDACTED}")
                    continue
                hide = True
        out.append(a)
    return out


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def collect(
    run, attempt: int, *, cause=None, lines: int = 200, node_lines: int = 50, name: str | None = None
) -> Path | None:
    """Collect the crash bundle of ``attempt`` of ``run`` (a :class:`glmlaunch.run.Run` with a
    run directory) into ``runs/<id>/<name>/`` and ``<name>.tar.gz`` (``name`` default:
    ``crash-<attempt>``; ``glmlaunch bundle`` passes ``bundle-<time>``); returns the directory
    (``None`` without a run directory). ``cause``: the :class:`glmlaunch.recovery.Cause` of the
    failure, written first in ``summary.txt``. Best effort: what cannot be read (a node down, the
    cluster gone) is listed under "not collected"."""
    rd = run.run_dir
    if rd is None:
        return None
    name = name or f"crash-{attempt}"
    d = rd.path / name
    plan = run.plan
    missing: list[str] = []

    def part(fname: str, text: str) -> None:
        rd.write(f"{name}/{fname}", text)

    m = rd.reload()
    part("manifest.json", m.model_dump_json(indent=2) + "\n")
    part("job-tail.log", _tail(rd.path / "job.log", lines))
    part(
        "job.json",
        json.dumps(
            {
                "submission_id": m.submission_id,
                "argv": redact_argv(list(plan.argv)),
                "env": redact_env(dict(plan.env_vars), list(plan.secret_env)),
                "secret_env": {k: REDACTED for k in plan.secret_env},
            },
            indent=2,
        )
        + "\n",
    )
    c = run.cluster
    rows: dict = {}
    try:
        st = c.status()
        rows = {"nodes": st.nodes, "unreachable": st.unreachable, "problems": st.problems}
    except Exception as e:  # the bundle is best effort: say what is missing
        missing.append(f"node table: {e}")
    try:
        rows["ray_nodes"] = c.ray_nodes()
    except Exception as e:
        missing.append(f"Ray's state API: {e}")
    part("nodes.json", json.dumps(rows, indent=2, default=str) + "\n")
    table = [f"{'host':<20} {'role':<7} {'Ray':<10} {'GPUs':<5} process"]
    for h, v in rows.get("nodes", {}).items():
        proc = {True: "running", False: "exited", None: "-"}[v.get("process")]
        if not v.get("reachable", True):
            proc = "unreachable: " + rows.get("unreachable", {}).get(h, "")
        ray = "ALIVE" if v.get("alive") else "not alive"
        table.append(f"{h:<20} {v.get('role', ''):<7} {ray:<10} {v.get('gpus')!s:<5} {proc}")
    part("nodes.txt", "\n".join(table) + "\n")
    try:
        tails = c.tail_logs([n.name for n in plan.nodes], lines=node_lines)
    except Exception as e:
        tails, missing = {}, [*missing, f"Ray log tails: {e}"]
    for h, text in tails.items():
        part(f"ray-logs/{h.replace('/', '_')}.txt", text + "\n")
    summary = [f"run {m.run_id}, attempt {attempt}, collected {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    if cause is not None:
        hosts = "; ".join(f"{h}: {w}" for h, w in cause.hosts.items())
        summary.append(f"first failure: {cause.kind}: {cause.detail}" + (f" ({hosts})" if hosts else ""))
    summary.append("")
    summary.append("events:")
    for ev in sorted(m.events, key=lambda e: e.t):
        extra = {k: v for k, v in ev.model_dump().items() if k not in ("t", "event")}
        when = time.strftime("%H:%M:%S", time.localtime(ev.t))
        summary.append(f"  {when} {ev.event} {json.dumps(extra, default=str)[:300] if extra else ''}")
    if missing:
        summary += ["", "not collected:", *(f"  {x}" for x in missing)]
    part("summary.txt", "\n".join(summary) + "\n")
    try:
        archive = rd.path / f"{name}.tar.gz"
        fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
            tar.add(d, arcname=name)
    except OSError as e:
        log.warning("could not write the crash bundle's archive: %s", e)
    return d
