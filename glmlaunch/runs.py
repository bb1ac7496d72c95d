"""Run directories: each launch keeps its plan, the exact commands run on each host, a manifest
and per-host logs under ``runs/<run-id>/``, so that ``status``, ``logs`` and ``down`` work later
from any shell.

Layout::

    runs/<run-id>/plan.json        the launch plan (render_json)
    runs/<run-id>/commands.sh      the plan as a bash script (render_bash)
    runs/<run-id>/manifest.json    hosts, ports, pids, submission id, times, state
    runs/<run-id>/hosts/<host>/<step>.log   what each step printed on each host
    runs/<run-id>/job.log          the trainer's log as followed

The runs folder is ``./runs`` unless ``GLMLAUNCH_RUNS_DIR`` or ``runs_dir=`` says otherwise. The
latest run's path is also written to ``~/.local/state/glmlaunch/current`` (platformdirs), which
is how another shell finds it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import GlmlaunchError, UsageError
from .options import Defaults


class RunState(StrEnum):
    """Where a run stands (``manifest.json``'s ``state``)."""

    CREATED = "created"  # run directory made; nothing started on any node
    STARTING = "starting"  # ray start sent to nodes
    UP = "up"  # every node and GPU joined
    RUNNING = "running"  # a trainer job was submitted
    FINISHED = "finished"  # the last job ended; the cluster is still up
    DOWN = "down"  # every Ray process of the run stopped
    DOWN_INCOMPLETE = "down-incomplete"  # a node could not be reached to stop its processes
    REQUEUED = "requeued"  # Slurm preemption/time limit: stopped, to be requeued
    REQUEUE_LIMIT = "requeue-limit"  # stopped, not requeued (max_requeues reached)

    @property
    def cluster_up(self) -> bool:
        """The cluster is (meant to be) up: a job may be submitted or followed."""
        return self in (RunState.UP, RunState.RUNNING, RunState.FINISHED)


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)


class NodeRecord(_Record):
    """One node's ``ray start`` session as recorded on start: ``pid`` (the session id) and its
    ``starttime`` (clock ticks since boot, from ``/proc/<pid>/stat``), so a recycled PID is never
    taken for ours."""

    address: str = ""
    role: str = ""
    pid: int | None = None
    starttime: int | None = None


class HostRecord(_Record):
    name: str
    address: str
    gpus: int = 0


class JobRecord(_Record):
    """How the last job ended: Ray's status, the driver's exit code, Ray's message, seconds."""

    status: str
    exit_code: int | None = None
    message: str = ""
    seconds: float = 0.0


class TransportRecord(_Record):
    """How to reach the nodes again from another shell (``kind``: ssh, srun or local)."""

    kind: str = "ssh"
    ssh_config: str | None = None
    user: str | None = None
    key: str | None = None
    port: int | None = None
    known_hosts: str | None = None
    connect_timeout: float = Defaults.connect_timeout_s
    job_id: str | None = None


class Event(BaseModel):
    """A timestamped event (``t``: Unix time, seconds); other keys are the event's details."""

    model_config = ConfigDict(extra="allow")

    t: float
    event: str


class Manifest(_Record):
    """``manifest.json``: everything a later ``status``/``logs``/``down`` needs, typed."""

    run_id: str
    created: float = Field(default_factory=time.time)
    state: RunState = RunState.CREATED
    events: list[Event] = Field(default_factory=list)
    recipe: str = ""
    recipe_source: str = ""
    submission_id: str = ""
    submissions: list[str] = Field(default_factory=list)
    hosts: list[HostRecord] = Field(default_factory=list)
    ports: dict[str, int] = Field(default_factory=dict)
    dashboard_url: str = ""
    state_dir: str = ""
    transport: TransportRecord = Field(default_factory=TransportRecord)
    nodes: dict[str, NodeRecord] = Field(default_factory=dict)
    preflight: list[dict[str, Any]] = Field(default_factory=list)
    job: JobRecord | None = None
    slurm: dict[str, Any] | None = None


def default_runs_dir() -> Path:
    return Path(os.environ.get("GLMLAUNCH_RUNS_DIR", "runs")).absolute()


def _state_dir() -> Path:
    from platformdirs import user_state_dir

    return Path(os.environ.get("GLMLAUNCH_STATE_DIR", user_state_dir("glmlaunch")))


def check_state_dir() -> Path:
    """Create the state directory (the current-run pointer) or say why it cannot be used."""
    d = _state_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".probe.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GlmlaunchError(
            f"cannot write glmlaunch's state directory {d}: {e.strerror}",
            "set GLMLAUNCH_STATE_DIR to a writable directory",
        ) from None
    return d


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


@dataclass
class RunDir:
    """A run's directory and its typed :class:`Manifest`, saved with :meth:`save` (atomically)."""

    path: Path
    manifest: Manifest
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def create(cls, run_id: str, runs_dir: str | os.PathLike | None = None, current: bool = True) -> RunDir:
        """Make ``runs/<run_id>/``; with ``current`` it becomes the run other shells find."""
        root = Path(runs_dir).absolute() if runs_dir else default_runs_dir()
        p = root / run_id
        try:
            p.mkdir(parents=True, exist_ok=False)
            (p / "hosts").mkdir()
        except OSError as e:
            raise GlmlaunchError(
                f"cannot create the run directory {p}: {e.strerror}",
                "pass a writable --runs-dir (or set GLMLAUNCH_RUNS_DIR)",
            ) from None
        check_state_dir()
        rd = cls(p, Manifest(run_id=run_id))
        rd.save()
        if current:
            rd.make_current()
        return rd

    @classmethod
    def open(cls, ref: str | os.PathLike | None = None, runs_dir: str | os.PathLike | None = None) -> RunDir:
        """Open a run by id or path; ``None``: the current run (the last one started)."""
        if ref is None:
            cur = _state_dir() / "current"
            if not cur.exists():
                raise UsageError(
                    "no current run: nothing was launched from this account yet",
                    "start one with `glmlaunch up` or `glmlaunch launch`, or pass --run PATH",
                )
            p = Path(cur.read_text().strip())
        else:
            p = Path(ref)
            if not p.is_dir():
                roots = [Path(runs_dir).absolute() if runs_dir else default_runs_dir()]
                cur = _state_dir() / "current"
                if cur.exists():  # runs of the same runs folder as the current one
                    roots.append(Path(cur.read_text().strip()).parent)
                p = next(
                    (r / str(ref) for r in roots if (r / str(ref) / "manifest.json").exists()),
                    roots[0] / str(ref),
                )
        mf = p / "manifest.json"
        if not mf.exists():
            raise UsageError(
                f"{p}: not a glmlaunch run directory (no manifest.json)",
                "pass --run RUN_ID or a run directory",
            )
        try:
            return cls(p, Manifest.model_validate_json(mf.read_text()))
        except ValidationError as e:
            raise GlmlaunchError(
                f"{mf}: not a manifest glmlaunch can read ({e.error_count()} problem(s): "
                f"{e.errors()[0]['msg']})",
                "pass another --run",
            ) from None

    def make_current(self) -> None:
        """Point ``current`` (in GLMLAUNCH_STATE_DIR) at this run, so other shells find it."""
        d = check_state_dir()
        tmp = d / f"current.{os.getpid()}"
        tmp.write_text(str(self.path) + "\n")
        tmp.replace(d / "current")

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        tmp = self.path / f"manifest.json.{os.getpid()}.tmp"
        tmp.write_text(self.manifest.model_dump_json(indent=2) + "\n")
        tmp.replace(self.path / "manifest.json")

    def reload(self) -> Manifest:
        """Re-read ``manifest.json``: another handle of the same run (another shell, a notebook)
        may have changed it."""
        try:
            self.manifest = Manifest.model_validate_json((self.path / "manifest.json").read_text())
        except (OSError, ValidationError):
            pass  # keep what this handle has
        return self.manifest

    def event(self, what: str, **kw) -> None:
        """Record a timestamped event in the manifest (read, changed and saved in one step)."""
        with self._lock:
            self.reload()
            self.manifest.events.append(Event(t=round(time.time(), 3), event=what, **kw))
            self._save()

    def update(self, **kw) -> None:
        """Set manifest fields (validated), on the manifest as saved now, and save."""
        with self._lock:
            self.reload()
            for k, v in kw.items():
                setattr(self.manifest, k, v)
            self._save()

    def write(self, name: str, text: str) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def host_log(
        self, host: str, step: str, command: str, stdout: str, stderr: str, exit_code, error: str = ""
    ) -> None:
        """Keep what a step printed on a host: ``hosts/<host>/<step>.log``."""
        d = self.path / "hosts" / _safe(host)
        d.mkdir(parents=True, exist_ok=True)
        body = f"$ {command}\n# exit code: {exit_code}{'  error: ' + error if error else ''}\n"
        body += ("--- stdout\n" + stdout if stdout else "") + ("--- stderr\n" + stderr if stderr else "")
        with open(d / f"{_safe(step)}.log", "a") as f:
            f.write(body + "\n")
