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

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GlmlaunchError


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
        raise GlmlaunchError(f"cannot write glmlaunch's state directory {d}: {e.strerror}",
                             "set GLMLAUNCH_STATE_DIR to a writable directory") from None
    return d


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


@dataclass
class RunDir:
    """A run's directory and manifest. ``manifest`` is saved with :meth:`save` (atomically)."""

    path: Path
    manifest: dict = field(default_factory=dict)
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
            raise GlmlaunchError(f"cannot create the run directory {p}: {e.strerror}",
                                 "pass a writable --runs-dir (or set GLMLAUNCH_RUNS_DIR)") from None
        check_state_dir()
        rd = cls(p, {"run_id": run_id, "created": time.time(), "state": "created", "events": []})
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
                raise GlmlaunchError("no current run: nothing was launched from this account yet",
                                     "start one with `glmlaunch up` or `glmlaunch launch`, or pass --run PATH")
            p = Path(cur.read_text().strip())
        else:
            p = Path(ref)
            if not p.is_dir():
                roots = [Path(runs_dir).absolute() if runs_dir else default_runs_dir()]
                cur = _state_dir() / "current"
                if cur.exists():  # runs of the same runs folder as the current one
                    roots.append(Path(cur.read_text().strip()).parent)
                p = next((r / str(ref) for r in roots if (r / str(ref) / "manifest.json").exists()), roots[0] / str(ref))
        mf = p / "manifest.json"
        if not mf.exists():
            raise GlmlaunchError(f"{p}: not a glmlaunch run directory (no manifest.json)", "pass --run RUN_ID or a run directory")
        return cls(p, json.loads(mf.read_text()))

    def make_current(self) -> None:
        """Point ``current`` (in GLMLAUNCH_STATE_DIR) at this run, so other shells find it."""
        d = check_state_dir()
        tmp = d / f"current.{os.getpid()}"
        tmp.write_text(str(self.path) + "\n")
        tmp.replace(d / "current")

    def save(self) -> None:
        with self._lock:
            tmp = self.path / "manifest.json.tmp"
            tmp.write_text(json.dumps(self.manifest, indent=2, default=str) + "\n")
            tmp.replace(self.path / "manifest.json")

    def event(self, what: str, **kw) -> None:
        """Record a timestamped event in the manifest (and save it)."""
        self.manifest.setdefault("events", []).append({"t": round(time.time(), 3), "event": what, **kw})
        self.save()

    def update(self, **kw) -> None:
        self.manifest.update(kw)
        self.save()

    def write(self, name: str, text: str) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def host_log(self, host: str, step: str, command: str, stdout: str, stderr: str, exit_code, error: str = "") -> None:
        """Keep what a step printed on a host: ``hosts/<host>/<step>.log``."""
        d = self.path / "hosts" / _safe(host)
        d.mkdir(parents=True, exist_ok=True)
        body = f"$ {command}\n# exit code: {exit_code}{'  error: ' + error if error else ''}\n"
        body += ("--- stdout\n" + stdout if stdout else "") + ("--- stderr\n" + stderr if stderr else "")
        with open(d / f"{_safe(step)}.log", "a") as f:
            f.write(body + "\n")
