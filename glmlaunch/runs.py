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

Trust: a run directory is made with mode 700 and its files with mode 600 (the token with
``O_EXCL|O_NOFOLLOW``). ``status``/``down``/``logs`` use a run directory only when it and its
``manifest.json``, ``plan.json`` and ``auth_token`` are owned by the current user, are not
symlinks and are not writable by group or others (the token: not readable either)
(:meth:`RunDir.verify`): ``plan.json``'s ``setup`` lines are shell commands run on every node,
and the token opens the cluster.
"""

from __future__ import annotations

import os
import re
import stat
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
    host: str | None = None  # the node's hostname and boot id at start: down acts only where both match
    boot_id: str | None = None
    created: list[str] = Field(default_factory=list)  # directories this run created there (down --purge)


class HostRecord(_Record):
    """A host as the manifest keeps it (a node, or a spare: ``spares``); ``source``: the
    hostfile line it came from."""

    name: str
    address: str
    gpus: int = 0
    ssh_user: str | None = None
    ssh_port: int | None = None
    source: str = ""


class JobRecord(_Record):
    """How the last job ended: Ray's status, the driver's exit code, Ray's message, seconds."""

    status: str
    exit_code: int | None = None
    message: str = ""
    seconds: float = 0.0


class Attempt(_Record):
    """One attempt of a supervised run (``manifest.json``'s ``attempts``): its number (1 = the
    first launch), when it started and ended (Unix time, seconds), its nodes, the checkpoint
    iteration it resumed from (``None``: none yet / not known), the job's submission id and
    status, and why it ended: ``cause`` (:class:`glmlaunch.recovery.CauseKind`: ``cluster``,
    ``trainer``, ``stopped``, ``none``), ``detail`` and the hosts it names; ``bundle``: its
    crash bundle's directory; ``restarted``: whether another attempt followed; ``replaced``:
    bad node -> the spare that took its place for this attempt (:func:`glmlaunch.recovery.replace_nodes`)."""

    number: int
    started: float = Field(default_factory=time.time)
    ended: float | None = None
    nodes: list[str] = Field(default_factory=list)
    resumed_from: int | None = None
    resume_note: str = ""
    submission_id: str = ""
    status: str = ""
    exit_code: int | None = None
    cause: str = ""
    detail: str = ""
    hosts: dict[str, str] = Field(default_factory=dict)
    bundle: str = ""
    restarted: bool = False
    replaced: dict[str, str] = Field(default_factory=dict)


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
    job_states: dict[str, JobRecord] = Field(
        default_factory=dict
    )  # submission id -> how it ended (kept at down)
    slurm: dict[str, Any] | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    spares: list[HostRecord] = Field(default_factory=list)  # hosts kept out of the cluster, for replacements
    excluded: dict[str, str] = Field(default_factory=dict)  # host -> why it is out for the rest of the run


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


TRUST_HINT = (
    "glmlaunch uses a run directory only if you own it and its files and nobody else can change them "
    "(its plan's setup lines run on every node, its token opens the cluster): check who made it "
    "(ls -la), or pass another --run"
)


def check_trusted(path: Path, *, directory: bool = False, secret: bool = False) -> None:
    """Raise :class:`UsageError` naming ``path`` unless it is owned by the current user, is not a
    symlink and is not writable by group/others (``secret``: no group/other permission at all)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"{path}: cannot check it ({e.strerror})", TRUST_HINT) from None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{path} is a symlink: not trusted", TRUST_HINT)
    if directory != stat.S_ISDIR(st.st_mode):
        raise UsageError(
            f"{path} is not a {'directory' if directory else 'regular file'}: not trusted", TRUST_HINT
        )
    if st.st_uid != os.geteuid():
        raise UsageError(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}): not trusted", TRUST_HINT
        )
    bad = 0o077 if secret else 0o022
    if st.st_mode & bad:
        who = "readable or writable" if secret else "writable"
        raise UsageError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):o}: {who} by group/others, not trusted", TRUST_HINT
        )


def _write_private(path: Path, text: str, *, append: bool = False) -> None:
    """Write a file of the run directory with mode 600 (whatever the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "a" if append else "w", closefd=False) as f:
            f.write(text)
    finally:
        os.close(fd)


def _mkdir_private(path: Path) -> None:
    """Make a new directory with mode 700 (whatever the umask); an existing one is an error."""
    os.mkdir(path, 0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _pointer(cur: Path) -> Path:
    """The run directory the ``current`` pointer names; a pointer that cannot be read is bad input."""
    try:
        p = Path(cur.read_text().strip())
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(
            f"{cur}: the current-run pointer cannot be read ({e.__class__.__name__})",
            f"remove {cur} and pass --run RUN_ID, or start a run with `glmlaunch up`",
        ) from None
    if not p.is_dir():
        raise UsageError(
            f"{cur} points at {p}, which no longer exists",
            f"remove {cur} and pass --run RUN_ID, or start a run with `glmlaunch up`",
        )
    return p


@dataclass
class RunDir:
    """A run's directory and its typed :class:`Manifest`, saved with :meth:`save` (atomically)."""

    path: Path
    manifest: Manifest
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def create(cls, run_id: str, runs_dir: str | os.PathLike | None = None, current: bool = True) -> RunDir:
        """Make ``runs/<run_id>/`` (new, mode 700); with ``current`` it becomes the run other
        shells find."""
        root = Path(runs_dir).absolute() if runs_dir else default_runs_dir()
        p = root / run_id
        try:
            root.mkdir(parents=True, exist_ok=True)
            _mkdir_private(p)
            _mkdir_private(p / "hosts")
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
            check_trusted(cur)
            p = _pointer(cur)
        else:
            p = Path(ref)
            if not p.is_dir():
                roots = [Path(runs_dir).absolute() if runs_dir else default_runs_dir()]
                cur = _state_dir() / "current"
                if cur.exists():  # runs of the same runs folder as the current one
                    roots.append(_pointer(cur).parent)
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
        verify_run_dir(p)
        try:
            return cls(p, Manifest.model_validate_json(mf.read_text()))
        except ValidationError as e:
            raise GlmlaunchError(
                f"{mf}: not a manifest glmlaunch can read ({e.error_count()} problem(s): "
                f"{e.errors()[0]['msg']})",
                "pass another --run",
            ) from None

    def verify(self) -> None:
        """The trust check of :func:`verify_run_dir` (raises :class:`UsageError` naming the file)."""
        verify_run_dir(self.path)

    def make_current(self) -> None:
        """Point ``current`` (in GLMLAUNCH_STATE_DIR) at this run, so other shells find it."""
        d = check_state_dir()
        tmp = d / f"current.{os.getpid()}"
        _write_private(tmp, str(self.path) + "\n")
        tmp.replace(d / "current")

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        tmp = self.path / f"manifest.json.{os.getpid()}.tmp"
        _write_private(tmp, self.manifest.model_dump_json(indent=2) + "\n")
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
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(p, text)
        return p

    def write_token(self, token: str) -> Path:
        """The run's token file: new, mode 600, ``O_EXCL|O_NOFOLLOW`` (an old one of this run is
        replaced: removed first, never written through)."""
        p = self.path / "auth_token"
        verify_run_dir(self.path)
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(token + "\n")
        return p

    def host_log(
        self, host: str, step: str, command: str, stdout: str, stderr: str, exit_code, error: str = ""
    ) -> None:
        """Keep what a step printed on a host: ``hosts/<host>/<step>.log``."""
        d = self.path / "hosts" / _safe(host)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = f"$ {command}\n# exit code: {exit_code}{'  error: ' + error if error else ''}\n"
        body += ("--- stdout\n" + stdout if stdout else "") + ("--- stderr\n" + stderr if stderr else "")
        _write_private(d / f"{_safe(step)}.log", body + "\n", append=True)


def verify_run_dir(path: Path) -> None:
    """Raise :class:`UsageError` naming the file unless the run directory ``path`` and its
    ``manifest.json``, ``plan.json`` and ``auth_token`` are the current user's, not symlinks, and
    not writable by group/others (``auth_token``: no group/other permission at all)."""
    check_trusted(path, directory=True)
    for name in ("manifest.json", "plan.json"):
        check_trusted(path / name)
    check_trusted(path / "auth_token", secret=True)
