"""Slurm transport: inside an allocation, each node's command runs as a job step,
``srun --jobid J --overlap --nodes 1 --ntasks 1 --nodelist NODE bash -c CMD``, all nodes in parallel.

- ``--overlap``: the job may already run steps on the nodes (the batch script's ``srun``, a
  submitit task per node); our steps share their CPUs, memory and GPUs instead of waiting for them.
  A step gets all of the job's GPUs on its node (Slurm's default), so ``ray start`` sees them.
- Slurm ends every process of a step when the step's task exits (proctrack/cgroup; the test
  harness's proctrack/linuxproc only tracks the process tree). So ``ray start --block`` cannot
  outlive a short step: :attr:`start_options` asks ``nodeops start`` to *hold* its step, printing
  :data:`~glmlaunch.nodeops.DETACH` after its answer. ``run_many`` returns on that line and leaves
  the step running: one long-lived step per node, whose task exits when its Ray session is
  stopped (``glmlaunch down``), and which stops that session when Slurm signals it (scancel, the
  end of the job, a requeue). Slurm's preemption signal (USR2 for submitit) is ignored by those
  steps, so the trainer can checkpoint before the cluster goes.
- ``put_text`` sends the text on the step's stdin (srun forwards it): never in argv.
- A step that cannot be created (node not in the job, job gone) is a failure that names the node;
  a held step whose task has ended shows in :meth:`ended_steps`.

srun gets the launcher's environment without the ``SLURM_*`` variables of the launcher's own
step (they would set ntasks/cpus for our steps; ``SLURM_CONF`` is kept) and without any secret
(:func:`glmlaunch.nodeops.secret_name`, ``RAY_AUTH_TOKEN``). On the node every command first
drops what :func:`glmlaunch.nodeops.ops_env` does not allow (the step's own ``SLURM_*`` stay), so
the node operations and ``ray start`` run with an explicit environment.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import nodeops
from ..errors import TransportError
from ..nodeops import DETACH
from . import RemoteResult, Target, put_text_command, run_parallel

_STEP_ERRORS = (
    "Unable to create step",
    "Invalid job id",
    "Invalid node name",
    "Job/step already completing",
    "not in the allocation",
    "Requested node configuration is not available",
)


def _clean_env(environ: dict | None = None) -> dict[str, str]:
    """srun's own environment: the launcher's, without its step's ``SLURM_*`` and its secrets."""
    env = dict(os.environ if environ is None else environ)
    return {
        k: v
        for k, v in env.items()
        if (not k.startswith("SLURM_") or k == "SLURM_CONF")
        and not nodeops.secret_name(k)
        and k not in nodeops.ENV_DROP
    }


class SrunTransport:
    """Run commands on the nodes of Slurm job ``job_id`` (default: ``$SLURM_JOB_ID``) with srun.

    ``extra_args``: more srun options for every step. ``ignore_signals``: signals the held
    ``ray start`` steps ignore (default: submitit's preemption signal, ``USR2``).
    ``hold_grace_s``: how long a held step lets Ray stop after Slurm's SIGTERM before it kills the
    session (keep it below the cluster's ``KillWait``, 30 s by default).
    """

    kind = "srun"

    def __init__(
        self,
        job_id: str | None = None,
        *,
        srun: str = "srun",
        extra_args: list[str] | tuple[str, ...] = (),
        ignore_signals: tuple[str, ...] | None = None,
        hold_grace_s: float = 3.0,
        log_dir: str | os.PathLike | None = None,
        max_parallel: int = 64,
    ):
        self.job_id = str(job_id or os.environ.get("SLURM_JOB_ID") or "")
        if not self.job_id or self.job_id == "?":
            raise TransportError(
                "the srun transport needs a Slurm job id (SLURM_JOB_ID is not set)",
                hint="run inside salloc/sbatch, or pass --hostfile to use SSH",
            )
        self.srun = shutil.which(srun)
        if not self.srun:
            raise TransportError(
                f"'{srun}' is not on PATH, so the nodes of Slurm job {self.job_id} cannot be reached",
                hint="load the Slurm client (module load slurm), or pass --hostfile to use SSH",
            )
        self.extra_args = list(extra_args)
        sig = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        self.ignore_signals = list(ignore_signals if ignore_signals is not None else (sig,))
        self.start_options = {
            "hold": True,
            "slurm_env": True,  # ray start keeps the step's SLURM_* (and Slurm's CUDA_VISIBLE_DEVICES)
            "ignore_signals": self.ignore_signals,
            "hold_grace_s": hold_grace_s,
        }
        self.max_parallel = max_parallel
        self._log_dir = Path(log_dir) if log_dir else None
        self._own_dir = False
        self._held: dict[str, tuple[subprocess.Popen, Path]] = {}
        self._lock = threading.Lock()
        self._n = 0

    # ------------------------------------------------------------------ helpers

    def _logs(self) -> Path:
        with self._lock:
            if self._log_dir is None:
                self._log_dir = Path(tempfile.mkdtemp(prefix=f"glmlaunch-srun-{self.job_id}-"))
                self._own_dir = True
                atexit.register(self._remove_logs)
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self._n += 1
            return self._log_dir / f"step{self._n}"

    def argv(self, t: Target, command: str) -> list[str]:
        """The srun command line that runs ``command`` on ``t``'s node."""
        return [
            str(self.srun),
            f"--jobid={self.job_id}",
            "--overlap",
            "--nodes=1",
            "--ntasks=1",
            f"--nodelist={t.name}",
            "--kill-on-bad-exit=1",
            "--job-name=glmlaunch",
            *self.extra_args,
            "bash",
            "-c",
            command,
        ]

    def _run_one(
        self, t: Target, command: str, timeout: float, stdin_text: str | None = None
    ) -> RemoteResult:
        t0 = time.monotonic()
        base = self._logs()
        out_p, err_p = base.with_suffix(".out"), base.with_suffix(".err")
        try:
            with open(out_p, "wb") as out_f, open(err_p, "wb") as err_f:
                p = subprocess.Popen(
                    self.argv(t, nodeops.shell_env_filter(slurm=True) + command),
                    stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                    stdout=out_f,
                    stderr=err_f,
                    env=_clean_env(),
                    start_new_session=True,
                )
        except OSError as e:
            return RemoteResult(t.name, None, error=f"{t.name}: cannot run srun: {e.strerror or e}")
        if stdin_text is not None and p.stdin is not None:
            try:
                p.stdin.write(stdin_text.encode())
                p.stdin.close()
            except OSError:
                pass
        deadline = t0 + timeout
        while True:
            rc = p.poll()
            out = out_p.read_text(errors="replace")
            if rc is None and (DETACH + "\n") in out:
                # a held step: the answer is complete, the step keeps running
                with self._lock:
                    self._held[t.name] = (p, err_p)
                return RemoteResult(
                    t.name,
                    0,
                    out.split(DETACH + "\n", 1)[0],
                    err_p.read_text(errors="replace"),
                    "",
                    time.monotonic() - t0,
                )
            if rc is not None:
                break
            if time.monotonic() > deadline:
                self._terminate(p)
                out, err = out_p.read_text(errors="replace"), err_p.read_text(errors="replace")
                self._cleanup(out_p, err_p)
                return RemoteResult(
                    t.name,
                    None,
                    out,
                    err,
                    f"{t.name}: command timed out after {timeout:.0f} s (srun step)",
                    time.monotonic() - t0,
                )
            time.sleep(0.05)
        out, err = out_p.read_text(errors="replace"), err_p.read_text(errors="replace")
        self._cleanup(out_p, err_p)
        error = ""
        if rc != 0 and any(s in err for s in _STEP_ERRORS):
            line = next(
                (x for x in err.splitlines() if any(s in x for s in _STEP_ERRORS)), err.strip()[-300:]
            )
            error = f"{t.name}: srun could not start a step in job {self.job_id}: {line.strip()}"
            rc = None
        return RemoteResult(t.name, rc, out, _strip_srun_noise(err), error, time.monotonic() - t0)

    @staticmethod
    def _terminate(p: subprocess.Popen) -> None:
        """srun forwards SIGTERM to the step's task; a second signal ends srun itself."""
        for sig, wait in ((15, 5.0), (9, 5.0)):
            try:
                p.send_signal(sig)
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
            except OSError:
                return

    @staticmethod
    def _cleanup(*paths: Path) -> None:
        for x in paths:
            try:
                x.unlink()
            except OSError:
                pass

    # ------------------------------------------------------------------ protocol

    def run_many(
        self,
        commands: dict[Target, str],
        *,
        timeout: float = 60.0,
        on_done: Callable[[Target, RemoteResult], None] | None = None,
        stdin: str | None = None,
    ) -> dict[Target, RemoteResult]:
        def one(t: Target, cmd: str, timeout: float) -> RemoteResult:
            return self._run_one(t, cmd, timeout, stdin_text=stdin)

        return run_parallel(one, commands, timeout=timeout, on_done=on_done, max_parallel=self.max_parallel)

    def put_text(self, targets, path, text, *, mode=0o600, timeout=30.0, python="python3"):
        """``nodeops write_secret`` on each node (``python``), the text on the step's stdin."""
        cmd = put_text_command(path, mode, python)
        return self.run_many(dict.fromkeys(targets, cmd), timeout=timeout, stdin=text)

    def ended_steps(self) -> dict[str, str]:
        """Held steps (one per node running ``ray start``) whose srun has ended: host -> why."""
        out = {}
        with self._lock:
            held = dict(self._held)
        for host, (p, err_p) in held.items():
            rc = p.poll()
            if rc is not None:
                try:
                    tail = _strip_srun_noise(err_p.read_text(errors="replace")).strip().splitlines()[-3:]
                except OSError:
                    tail = []
                out[host] = f"its Slurm step ended (srun exit code {rc})" + (
                    ": " + " | ".join(tail) if tail else ""
                )
        return out

    def forget_ended(self) -> None:
        """Drop the records (and srun's log files) of held steps that have ended; remove our log
        directory once it is empty (held steps still running keep theirs)."""
        with self._lock:
            ended = {h: v for h, v in self._held.items() if v[0].poll() is not None}
            self._held = {h: v for h, v in self._held.items() if h not in ended}
            for _p, err_p in ended.values():
                self._cleanup(err_p, err_p.with_suffix(".out"))
            if self._own_dir and self._log_dir is not None and not self._held:
                try:
                    self._log_dir.rmdir()
                except OSError:
                    pass

    def _remove_logs(self) -> None:
        """At exit: nobody reads srun's output any more (held steps that still run keep writing to
        unlinked files)."""
        if self._own_dir and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def close(self) -> None:
        """Held steps are left alone: they end when their Ray session is stopped (``down``)."""
        self.forget_ended()


def _strip_srun_noise(err: str) -> str:
    """Drop srun's own bookkeeping lines (``_step_signal: Terminating StepId=...``)."""
    return "".join(
        x
        for x in err.splitlines(keepends=True)
        if not re.search(r"srun: (launch/slurm: _step_signal|Terminating StepId)", x)
    )
