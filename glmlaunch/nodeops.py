"""Operations that run ON a node: start a process in a session of its own, stop exactly that
session, check ports, inspect a node before launch, tail a log.

This module is standard-library only and self-contained: the launcher sends its source to each
node (``python -c <source> OP JSON``), so nodes need Python but not glmlaunch. Every operation
prints one JSON object on stdout.

Scoped teardown: ``start`` runs the command with ``start_new_session=True`` and records its PID,
its start time (``/proc/PID/stat`` field 22), the host name and the boot id
(``/proc/sys/kernel/random/boot_id``). ``stop`` acts only on a process whose host, boot id, PID
*and* start time match the record (a recycled PID, a rebooted node or another machine is never
touched; a record without a start time is refused), sends it SIGTERM (``ray start --block`` then
stops the daemons it started), waits, and finally SIGKILLs what is left of *that session*
(processes whose session id is the recorded PID). Nothing is ever killed by name.

Trust (``/tmp`` is shared): the run's state directory is made by ``write_secret``, the run's
first operation on a node, with ``os.mkdir(path, 0o700)`` (an existing node directory is refused:
it was not made by this run) and checked with ``os.lstat`` (a directory, not a symlink, owned by
this user, no group/other permission). Every later operation checks the same before it writes
there, and creates its files with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (a planted file or symlink is
refused, never followed). A pid file is read only when it passes the same checks. The token
comes on stdin, never in argv. ``start`` gives its command an environment built from
:data:`ENV_ALLOW` (plus the plan's variables), never the caller's secrets.

Inside a Slurm job every process of a step dies when the step's task exits (proctrack/cgroup), so
the srun transport runs ``start`` with ``hold``: the node op stays alive as the step's task,
prints :data:`DETACH` after its answer, and stops its session when Slurm signals the step.
"""

import json
import os
import signal
import socket
import stat
import sys
import time


class Refused(Exception):
    """A path or a record this run cannot trust: nothing was done with it (the message names it)."""


# ----------------------------------------------------------------------------- environment

ENV_ALLOW = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "TZ",
    "TMPDIR",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_HOME",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST",
)
"""Variables of the node's (or the transport's) environment that a started command keeps; every
other one is dropped, except those of :data:`ENV_ALLOW_PREFIXES` (and ``SLURM_*`` inside a Slurm
step). The plan's own variables are added on top. The one place this list lives: ``start``, the
local transport and the srun transport all use it."""

ENV_ALLOW_PREFIXES = ("LC_", "NVIDIA_", "NCCL_", "NVSHMEM_")
"""Prefixes kept as well: locale, and the GPU and fabric settings a site sets in the nodes'
environment (``NCCL_SOCKET_IFNAME``, ``NCCL_IB_HCA``, and the NVLink multicast switches
``NCCL_NVLS_ENABLE``/``NVSHMEM_DISABLE_NVLS``/``TORCH_SYMM_MEM_DISABLE_MULTICAST`` that shared GPU
hosts set to keep multicast off). The plan's own values still win over them."""
ENV_SETUP = ("MODULEPATH", "MODULESHOME", "LOADEDMODULES", "_LMFILES_", "MODULEPATH_ROOT")
ENV_SETUP_PREFIXES = ("LMOD_", "MODULES_")
"""Kept for the node operations only (so that ``cluster.setup`` lines such as ``module load``
work), not passed on to a started command."""
SLURM_PREFIX = "SLURM_"
ENV_DROP = ("RAY_AUTH_TOKEN",)
"""Never passed on, even from the plan: the run's token file (``RAY_AUTH_TOKEN_PATH``) wins."""


def secret_name(name):
    """Whether a variable's name says it holds a secret (``*_TOKEN``, ``*_KEY``, ``*SECRET*``,
    ``*PASSWORD*``, ...): such a variable is never inherited, whatever the allowlist says."""
    u = name.upper()
    return (
        "TOKEN" in u
        or "SECRET" in u
        or "PASSWORD" in u
        or "PASSWD" in u
        or "CREDENTIAL" in u
        or u.endswith("_KEY")
        or u == "KEY"
    )


def allowed(name, slurm=False, setup=False):
    """Whether a variable of the caller's environment is passed on (:data:`ENV_ALLOW`; ``slurm``:
    also ``SLURM_*``; ``setup``: also :data:`ENV_SETUP`, for the node operations themselves)."""
    if secret_name(name) or name in ENV_DROP:
        return False
    return (
        name in ENV_ALLOW
        or name.startswith(ENV_ALLOW_PREFIXES)
        or (slurm and name.startswith(SLURM_PREFIX))
        or (setup and (name in ENV_SETUP or name.startswith(ENV_SETUP_PREFIXES)))
    )


def ops_env(environ, slurm=False):
    """The environment a transport gives the node operations (and ``cluster.setup``): the allowed
    part of ``environ``, with :data:`ENV_SETUP`."""
    return {k: v for k, v in environ.items() if allowed(k, slurm, setup=True)}


def child_env(environ, plan_env=None, slurm=False):
    """The explicit environment of a started command: the allowed part of ``environ``, then the
    plan's variables (``plan_env``), without :data:`ENV_DROP`."""
    env = {k: v for k, v in environ.items() if allowed(k, slurm)}
    env.update({k: str(v) for k, v in (plan_env or {}).items()})
    for k in ENV_DROP:
        env.pop(k, None)
    return env


def _shell_keep(slurm=False, setup=True):
    """The ``case`` pattern of the variables :func:`allowed` keeps."""
    return "|".join(
        [*ENV_ALLOW, *(ENV_SETUP if setup else ())]
        + [
            x + "*"
            for x in ENV_ALLOW_PREFIXES
            + (ENV_SETUP_PREFIXES if setup else ())
            + ((SLURM_PREFIX,) if slurm else ())
        ]
    )


_SHELL_SECRET = "*TOKEN*|*SECRET*|*PASSWORD*|*PASSWD*|*CREDENTIAL*|*_KEY|KEY"


def shell_env_args():
    """A POSIX sh snippet that sets the positional parameters to ``NAME=value`` for every exported
    variable :func:`child_env` keeps (no secrets, no :data:`ENV_DROP`), so that
    ``env -i "$@" K=V cmd`` starts ``cmd`` with exactly that environment plus the plan's. Used by
    the rendered ``commands.sh``, whose commands start in each node's SSH login environment."""
    drop = "|".join(ENV_DROP)
    return (
        "set --; for __v in $(env | sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p'); do case $__v in "
        f"{_SHELL_SECRET}|{drop}) ;; {_shell_keep(setup=False)}) "
        'eval "[ -z \\"\\${$__v+x}\\" ] || set -- \\"\\$@\\" \\"$__v=\\$$__v\\"";; esac; done; unset __v'
    )


def shell_env_filter(slurm=False):
    """A bash prefix that unsets every exported variable :func:`ops_env` would drop (for a
    transport whose commands start in an environment it does not choose: a Slurm step)."""
    keep = _shell_keep(slurm)
    return (
        "for __v in $(compgen -e); do case $__v in "
        f"{_SHELL_SECRET}) unset $__v 2>/dev/null;; "
        f"{keep}) ;; *) unset $__v 2>/dev/null;; esac; done; unset __v; "
    )


# ----------------------------------------------------------------------------- trusted paths


def check_private_dir(path):
    """Raise :class:`Refused` unless ``path`` is a directory (not a symlink) owned by this user
    with no permission for group or others; returns its ``lstat``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise Refused(f"{path} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"{path} is a symlink: not this run's directory")
    if not stat.S_ISDIR(st.st_mode):
        raise Refused(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise Refused(f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}: not this run's directory")
    if st.st_mode & 0o077:
        raise Refused(
            f"{path} has mode {stat.S_IMODE(st.st_mode):o}: group/others may use it; not this run's directory"
        )
    return st


def make_private_dir(path, shared=False):
    """Create ``path`` with ``os.mkdir(path, 0o700)`` (mkdir never follows a symlink) and check it
    (:func:`check_private_dir`). An existing directory is refused (not made by this run), unless
    ``shared``: the run's directory, which nodes of one machine share, is accepted when it passes
    the check. Returns whether this call created it."""
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        if not shared:
            raise Refused(f"{path} exists already: not created by this run") from None
        created = False
    check_private_dir(path)
    if created:  # the umask may have taken more than group/other bits
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    return created


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_new(path, mode=0o600):
    """A new file of this run in a private directory: ``O_CREAT|O_EXCL|O_NOFOLLOW`` with ``mode``
    (an existing file or symlink there is refused, never followed). Returns the fd."""
    check_private_dir(os.path.dirname(path) or ".")
    try:
        fd = os.open(path, _NEW, mode)
    except FileExistsError:
        raise Refused(f"{path} exists already: not written by this run") from None
    os.fchmod(fd, mode)
    return fd


def read_trusted(path, limit=1 << 16):
    """The text of a file this run wrote: in a private directory, a regular file (not a symlink:
    ``O_NOFOLLOW``) owned by this user and not writable by group/others; else :class:`Refused`."""
    check_private_dir(os.path.dirname(path) or ".")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == 40:  # ELOOP: a symlink
            raise Refused(f"{path} is a symlink: not this run's file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise Refused(
                f"{path} is not a file of this run (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})"
            )
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def write_secret(path, text, mode=0o600, dirs=()):
    """Create ``dirs`` (``(path, shared)`` pairs, :func:`make_private_dir`), then write ``text``
    to the new file ``path`` (:func:`open_new`, ``mode`` 600). Returns the directories created.
    On a refusal the directories this call created (still empty) are removed again."""
    created = []
    try:
        for d, shared in dirs:
            if make_private_dir(d, shared):
                created.append(d)
        fd = open_new(path, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except BaseException:
        for d in reversed(created):
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise
    return {"path": path, "created": created}


def op_write_secret(a):
    """The run's first operation on a node: make its state directory and write the token, which
    comes on stdin (never in argv)."""
    return write_secret(
        a["path"], sys.stdin.read(), int(a.get("mode", 0o600)), [tuple(d) for d in a.get("dirs", [])]
    )


def boot_id():
    """This node's boot id (a new one after every reboot), or None."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def mismatch(starttime, host, boot):
    """Why a record (start time, host, boot id) cannot be this node's process, or None. A record
    without a start time is refused; the host and boot id are compared where recorded (``start``
    records both; a record from an older glmlaunch may lack them)."""
    if starttime is None:
        return "no start time was recorded"
    if boot and boot != boot_id():
        return f"recorded in another boot of the node (boot id {boot}, now {boot_id()})"
    if host and host != socket.gethostname():
        return f"recorded on host {host}, this is {socket.gethostname()}"
    return None


def _stat(pid):
    """(state, sid, starttime) of a PID from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    # rest[0] = state (field 3), rest[3] = session (field 6), rest[19] = starttime (field 22)
    return rest[0], int(rest[3]), int(rest[19])


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _session_members(sid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st and st[1] == sid and st[0] != "Z":
                out.append(int(name))
    return out


def _alive(pid, starttime):
    st = _stat(pid)
    return bool(st) and st[0] != "Z" and starttime is not None and st[2] == starttime


def op_start(a):
    """Start ``argv`` in a new session, in the run's private directory ``cwd``, with an explicit
    environment (:func:`child_env` of this process's environment and the plan's ``env``;
    ``slurm_env``: keep ``SLURM_*``); stdout+stderr to the new file ``log``; the record (pid,
    start time, host, boot id) to the new file ``pidfile``. Returns the record."""
    import subprocess

    check_private_dir(a["cwd"])  # made by write_secret: never created (or trusted) here
    env = child_env(os.environ, a.get("env", {}), slurm=bool(a.get("slurm_env")))
    logfd = open_new(a["log"], 0o600)
    pidfd = open_new(a["pidfile"], 0o600) if a.get("pidfile") else None
    for name in a.get("ignore_signals", []):  # inherited by the command (e.g. Slurm's USR2 to every step)
        signal.signal(getattr(signal, "SIG" + name), signal.SIG_IGN)
    if a.get("hold"):  # caught from now on (handlers, unlike SIG_IGN, are not inherited)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, lambda signum, frame: _ASKED.append(signum))
    with os.fdopen(logfd, "ab") as log, open(os.devnull, "rb") as devnull:
        p = subprocess.Popen(
            a["argv"],
            cwd=a["cwd"],
            env=env,
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    st = _stat(p.pid)
    rec = {
        "pid": p.pid,
        "starttime": st[2] if st else None,
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "started": time.time(),
    }
    if pidfd is not None:
        with os.fdopen(pidfd, "w") as f:
            json.dump(rec, f)
    # a command that fails at once (bad flag, busy port) is reported now, not after the timeout
    deadline = time.time() + float(a.get("settle_s", 0))
    while time.time() < deadline:
        rc = p.poll()
        if rc is not None:
            rec["exited"] = rc
            break
        time.sleep(0.1)
    if a.get("hold") and "exited" not in rec:
        _hold(p, rec, float(a.get("hold_grace_s", 3)))
    return rec


DETACH = "GLMLAUNCH_DETACH"
_ASKED: list = []


def _hold(p, rec, grace):
    """Keep this process alive as long as the started session (``hold``: the caller is a Slurm
    step, which ends, and takes every process of the step with it, when its task exits).

    Prints the record and the :data:`DETACH` line (the srun transport returns on it and leaves the
    step running), then waits for the command. SIGTERM/SIGINT/SIGHUP (scancel, the job's end, a
    requeue) stop the session as ``stop`` does, within ``grace`` seconds (less than Slurm's
    KillWait), so nothing of it outlives the step. Never returns."""
    print(json.dumps(rec), flush=True)
    print(DETACH, flush=True)
    fd = os.open(os.devnull, os.O_RDWR)  # the launcher stops reading the step's output
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    asked = _ASKED
    rc = None
    while not asked and rc is None:
        rc = p.poll()
        time.sleep(0.2)
    # `stop` (glmlaunch down) ended the command: let the rest of its session leave, bounded
    deadline = time.time() + 30
    while not asked and time.time() < deadline and _session_members(p.pid):
        time.sleep(0.2)
    op_stop(
        {
            "pid": p.pid,
            "starttime": rec["starttime"],
            "host": rec["host"],
            "boot_id": rec["boot_id"],
            "grace_s": grace if asked else 0,
        }
    )
    os._exit(0)  # `ray start --block` exits non-zero when stopped; its log says how it ended


def op_alive(a):
    """Whether each recorded process is alive here: {pid: bool} (false for a record of another
    host or boot, or without a start time)."""
    return {
        str(r["pid"]): mismatch(r.get("starttime"), r.get("host"), r.get("boot_id")) is None
        and _alive(r["pid"], r.get("starttime"))
        for r in a["procs"]
    }


def op_stop(a):
    """Stop the recorded session: SIGTERM the leader, wait ``grace_s``, SIGKILL what is left of it.
    Then remove the run's files ``remove`` and (``down --purge``) its directories ``purge`` and
    ``purge_parent`` (each only while it still passes :func:`check_private_dir`).

    The record (``pid``, ``starttime``, ``host``, ``boot_id``; or, when the launcher never read
    start's answer, the node's trusted ``pidfile``) must match this node: a record without a start
    time, of another host or of another boot is refused (reported, nothing touched, nothing
    purged). Linux never reuses a PID while a session of that id still has members, so processes
    whose session id is the recorded PID are ours; a live process with that PID but another start
    time is someone else's, and nothing is touched then."""
    pid, starttime, grace = a.get("pid"), a.get("starttime"), float(a.get("grace_s", 20))
    host, boot = a.get("host"), a.get("boot_id")
    if not pid and a.get(
        "pidfile"
    ):  # the launcher never read start's answer (interrupted): the node's record
        try:
            rec = json.loads(read_trusted(a["pidfile"]))
            pid, starttime, host, boot = rec["pid"], rec.get("starttime"), rec.get("host"), rec.get("boot_id")
        except Refused as e:
            res = {
                "pid": None,
                "was_alive": False,
                "killed": [],
                "left": [],
                "note": f"pid file not trusted: {e}",
            }
            res.update(_remove(a.get("remove", []), [], None))
            return res
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if not pid:
        res = {"pid": None, "was_alive": False, "killed": [], "left": [], "note": "nothing was started here"}
        res.update(_remove(a.get("remove", []), a.get("purge", []), a.get("purge_parent")))
        return res
    res = {"pid": pid, "was_alive": False, "killed": [], "left": []}
    why = mismatch(starttime, host, boot)
    if why:
        res["note"] = f"not touched: {why}"
        res.update(_remove(a.get("remove", []), [], None))
        return res
    res["was_alive"] = _alive(pid, starttime)
    st = _stat(pid)
    if st and st[2] != starttime:
        res["note"] = "PID was reused by another process: not touched"
        res.update(_remove(a.get("remove", []), [], None))
        return res
    if res["was_alive"]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and _session_members(pid):
        time.sleep(0.2)
    for m in _session_members(pid):
        try:
            os.kill(m, signal.SIGKILL)
            res["killed"].append({"pid": m, "cmd": _cmdline(m)[:120]})
        except ProcessLookupError:
            pass
    for _ in range(25):
        res["left"] = _session_members(pid)
        if not res["left"]:
            break
        time.sleep(0.2)
    res.update(
        _remove(a.get("remove", []), a.get("purge", []) if not res["left"] else [], a.get("purge_parent"))
    )
    return res


def _own_file(path):
    """Whether ``path`` is a regular file (not a symlink) owned by this user."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def _remove(files, dirs, parent):
    """Remove the run's ``files`` (each in a private directory, a file of this user), its
    directories ``dirs`` (``down --purge``: each only while it is still a private directory of
    this user) and then ``parent`` (the run's directory) once it is empty. Returns
    ``{"removed": [...], "kept": {path: why}}``."""
    import shutil

    out = {"removed": [], "kept": {}}
    for f in files:
        try:
            check_private_dir(os.path.dirname(f) or ".")
            if not _own_file(f):
                continue
            os.unlink(f)
            out["removed"].append(f)
        except Refused as e:
            if "does not exist" not in str(e):
                out["kept"][f] = str(e)
        except OSError:
            pass
    for d in [*dirs, *([parent] if parent else [])]:
        d = d.rstrip("/")
        try:
            check_private_dir(d)
            if d == parent:
                os.rmdir(d)  # only once no node directory is left in it
            else:
                shutil.rmtree(d)  # never follows a symlink inside (fd-based on Linux)
            out["removed"].append(d)
        except Refused as e:
            if "does not exist" not in str(e):
                out["kept"][d] = str(e)
        except OSError:
            pass
    return out


def _port_owner(port):
    """(pid, cmdline) of a process listening on ``port`` (tcp/tcp6), best effort."""
    inodes = set()
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except (OSError, StopIteration):
            pass
    if not inodes:
        return None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{name}/fd"):
                link = os.readlink(f"/proc/{name}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(name), _cmdline(int(name))[:160]
        except OSError:
            continue
    return -1, ""


def op_ports(a):
    """Which of ``ports`` cannot be bound on ``addr``: {port: owner description}."""
    busy = {}
    for port in a["ports"]:
        s = socket.socket(socket.AF_INET6 if ":" in a["addr"] else socket.AF_INET)
        # as servers do: a port whose old connections linger in TIME_WAIT is free to listen on
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((a["addr"], port))
        except OSError as e:
            owner = _port_owner(port)
            desc = f"in use ({e.strerror})"
            if owner:
                desc += f" by pid {owner[0]}: {owner[1]}" if owner[0] > 0 else " (owner not visible)"
            busy[str(port)] = desc
        finally:
            s.close()
    return {"busy": busy}


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _git_head(path):
    try:
        head = open(os.path.join(path, ".git", "HEAD")).read().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            p = os.path.join(path, ".git", ref)
            if os.path.exists(p):
                return open(p).read().strip()[:12]
            for line in open(os.path.join(path, ".git", "packed-refs")):
                if line.strip().endswith(ref):
                    return line.split()[0][:12]
        return head[:12]
    except OSError:
        return None


NVLINK_TIMEOUT_S = 20


def nvlink_count(topo):
    """How many NVLink connections ``nvidia-smi topo -m`` prints: its ``NV<n>`` cells (``n``
    bonded links between two GPUs), counted as miles' ``check_has_nvlink`` counts them
    (``grep -o 'NV[0-9][0-9]*' | wc -l``, miles/utils/external_utils/command_utils.py:248-250
    (miles@31f1ca961a94)). The legend's ``NV#`` is not a count and is not matched."""
    import re

    return len(re.findall(r"NV[0-9]+", topo or ""))


def nvlink_probe(run=None, which=None):
    """The node's NVLink answer: ``{"nvlink": <connections>, "nvlink_why": <text>}``. No
    ``nvidia-smi``, a failed one or one that takes more than :data:`NVLINK_TIMEOUT_S` seconds
    count as no NVLink (0), as in miles, where the probe's errors go to ``/dev/null`` and an empty
    output counts 0; ``nvlink_why`` says which. ``run``/``which``: ``subprocess.run`` /
    ``shutil.which`` (replaceable for tests)."""
    import shutil
    import subprocess

    run = run or subprocess.run
    which = which or shutil.which
    if not which("nvidia-smi"):
        return {"nvlink": 0, "nvlink_why": "no nvidia-smi"}
    try:
        r = run(
            ["nvidia-smi", "topo", "-m"],
            capture_output=True,
            text=True,
            timeout=NVLINK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"nvlink": 0, "nvlink_why": f"nvidia-smi topo -m took more than {NVLINK_TIMEOUT_S} s"}
    except (OSError, subprocess.SubprocessError) as e:
        return {"nvlink": 0, "nvlink_why": f"nvidia-smi topo -m failed: {e}"}
    n = nvlink_count(r.stdout)
    if r.returncode != 0 and not n:
        return {"nvlink": 0, "nvlink_why": f"nvidia-smi topo -m exited {r.returncode}"}
    return {"nvlink": n, "nvlink_why": f"nvidia-smi topo -m shows {n} NVLink connection(s)"}


def op_inspect(a):
    """What a node looks like before launch: versions, GPUs, stray GPU/Ray processes, NVLink
    (:func:`nvlink_probe`), files, free space, interface, clock."""
    import shutil
    import subprocess

    info = {
        "hostname": socket.gethostname(),
        "time": time.time(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "ray": _version("ray"),
        "torch": _version("torch"),
        "sglang": _version("sglang"),
        "megatron_core": _version("megatron-core"),
        "gpus": 0,
        "gpu_models": [],
        "strays": [],
        "files": {},
        "writable": {},
        "free_gib": {},
        "interface": None,
        "repos": {},
    }
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            names = [x.strip() for x in out.splitlines() if x.strip()]
            info["gpus"], info["gpu_models"] = len(names), sorted(set(names))
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,process_name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            info["gpu_processes"] = [x.strip() for x in out.splitlines() if x.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    info.update(nvlink_probe())
    names = ("raylet", "gcs_server", "sglang", "sglang::scheduler", "sglang-router")
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                comm = open(f"/proc/{name}/comm").read().strip()
            except OSError:
                continue
            if comm in names or comm.startswith("sglang"):
                info["strays"].append({"pid": int(name), "comm": comm, "cmd": _cmdline(int(name))[:120]})
    for p in a.get("files", []):
        info["files"][p] = (
            "readable" if os.access(p, os.R_OK) else ("missing" if not os.path.exists(p) else "not readable")
        )
    sentinel = a.get("sentinel", "")  # a random nonce of this preflight (never the token)
    for p in a.get("writable", []):
        try:
            os.makedirs(p, exist_ok=True)
            probe = os.path.join(p, sentinel_name(sentinel))
            fd = os.open(probe, _NEW, 0o644)  # a random nonce, not a secret: other nodes read it
            with os.fdopen(fd, "w") as f:
                f.write(sentinel)
            info["writable"][p] = "ok"
        except OSError as e:
            info["writable"][p] = f"not writable ({e.strerror})"
    for p in a.get("shared_read", []):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd) as f:
                info.setdefault("shared", {})[p] = f.read(256)
        except OSError:
            info.setdefault("shared", {})[p] = None
    for p in a.get("space", []):
        try:
            st = os.statvfs(p if os.path.exists(p) else os.path.dirname(p) or "/")
            info["free_gib"][p] = round(st.f_bavail * st.f_frsize / 2**30, 2)
        except OSError:
            info["free_gib"][p] = None
    if a.get("interface"):
        info["interface"] = os.path.exists(f"/sys/class/net/{a['interface']}")
    for p in a.get("repos", []):
        info["repos"][p] = _git_head(p)
    return info


def sentinel_name(sentinel, host=None):
    """The file each node writes in ``--save`` to show that it is one shared filesystem."""
    return f".glmlaunch-probe-{host or socket.gethostname()}-{sentinel}"


def op_tail(a):
    """The last ``lines`` lines of each file that exists."""
    out = {}
    for p in a["files"]:
        try:
            with open(p, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                out[p] = f.read().decode(errors="replace").splitlines()[-int(a.get("lines", 20)) :]
        except OSError:
            pass
    return out


def op_addresses(a):
    """This node's IPv4 addresses by interface (from ``ip -o -4 addr``), for --network/--interface."""
    import subprocess

    out = {}
    try:
        text = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
        for line in text.splitlines():
            parts = line.split()
            out.setdefault(parts[1], []).append(parts[3].split("/")[0])
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def op_preflight(a):
    """``ports`` and ``inspect`` in one round trip."""
    return {"ports": op_ports(a), "inspect": op_inspect(a)}


def op_remove(a):
    """Remove ``files`` (the preflight's sentinels in ``--save``): regular files of this user only."""
    out = []
    for f in a.get("files", []):
        if _own_file(f):
            try:
                os.unlink(f)
                out.append(f)
            except OSError:
                pass
    return {"removed": out}


COPY_STAMP = ".glmlaunch-copy.json"


def _copy_current(dst, files):
    try:
        with open(os.path.join(dst, COPY_STAMP)) as f:
            if json.load(f) != files:
                return False
    except (OSError, ValueError):
        return False
    for rel, size in files.items():
        try:
            if os.stat(os.path.join(dst, rel)).st_size != size:
                return False
        except OSError:
            return False
    return True


def _free(path):
    while not os.path.exists(path) and path not in ("", "/"):
        path = os.path.dirname(path)
    st = os.statvfs(path or "/")
    return st.f_bavail * st.f_frsize


def op_copy_tree(a):
    """Node-local copies (``glmlaunch prepare``): each of ``copies`` (``src``, ``dst``, ``files``:
    relative name -> size, the source as verified) is skipped when ``dst`` holds a copy of exactly
    those files (its stamp and every size), else copied into ``dst.partial`` (files already there
    with the right size are kept: an interrupted copy resumes), checked by size, stamped and
    renamed to ``dst`` (a ``dst`` that is not an earlier copy of ours is refused). Space is checked
    first, for everything still to copy. Returns ``{dst: {"state", "bytes", "why"}}``."""
    import shutil

    out = {}
    todo = []
    for c in a["copies"]:
        dst, files = c["dst"].rstrip("/"), c["files"]
        if _copy_current(dst, files):
            out[dst] = {"state": "current", "bytes": 0, "why": ""}
        elif os.path.lexists(dst) and not os.path.isfile(os.path.join(dst, COPY_STAMP)):
            out[dst] = {
                "state": "failed",
                "bytes": 0,
                "why": f"{dst} exists and is not a copy made by glmlaunch",
            }
        else:
            todo.append(c)
    need = {}
    for c in todo:
        part = c["dst"].rstrip("/") + ".partial"
        left = 0
        for rel, size in c["files"].items():
            try:
                have = os.stat(os.path.join(part, rel)).st_size
            except OSError:
                have = -1
            left += 0 if have == size else size
        need[c["dst"].rstrip("/")] = left
    total = sum(need.values())
    if todo:
        free = _free(os.path.dirname(todo[0]["dst"].rstrip("/")))
        if total > free:
            for c in todo:
                d = c["dst"].rstrip("/")
                out[d] = {
                    "state": "failed",
                    "bytes": 0,
                    "why": f"not enough space in {os.path.dirname(d)}: {total} bytes ({total / 2**30:.2f} GiB) "
                    f"to copy, {free} bytes ({free / 2**30:.2f} GiB) free",
                }
            return out
    for c in todo:
        src, dst, files = c["src"].rstrip("/"), c["dst"].rstrip("/"), c["files"]
        part = dst + ".partial"
        copied = 0
        try:
            os.makedirs(part, exist_ok=True)
            for rel, size in files.items():
                target = os.path.join(part, rel)
                try:
                    if os.stat(target).st_size == size:
                        continue
                except OSError:
                    pass
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(src, rel), target)
                copied += size
            bad = [rel for rel, size in files.items() if os.stat(os.path.join(part, rel)).st_size != size]
            if bad:
                out[dst] = {
                    "state": "failed",
                    "bytes": copied,
                    "why": f"size differs after the copy: {bad[:3]}",
                }
                continue
            with open(os.path.join(part, COPY_STAMP), "w") as f:
                json.dump(files, f)
            if os.path.lexists(dst):  # an earlier copy of ours (checked above): replaced
                old = f"{dst}.old-{os.getpid()}"
                os.rename(dst, old)
                os.rename(part, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(part, dst)
            out[dst] = {"state": "copied", "bytes": copied, "why": ""}
        except OSError as e:
            out[dst] = {"state": "failed", "bytes": copied, "why": f"{e.filename or ''}: {e.strerror or e}"}
    return out


# ----------------------------------------------------------------------------- checkpoints

TRACKER = "latest_checkpointed_iteration.txt"


def _iteration_dir(save, it):
    return os.path.join(save, f"iter_{it:07d}")


def checkpoint_complete(path):
    """Why the Megatron ``torch_dist`` iteration directory ``path`` is not complete, or ``""``.

    Complete: ``metadata.json`` (Megatron's dist-checkpointing config), ``common.pt`` and the
    torch distributed-checkpoint ``.metadata`` are there, and every shard file that ``.metadata``
    names (``*.distcp``) is there and not empty. Where torch is importable its own reader names
    the shards (``FileSystemReader.read_metadata().storage_data``: ``relative_path``); without
    torch at least one non-empty ``*.distcp``. Sources: Megatron-LM
    megatron/core/dist_checkpointing/serialization.py (``metadata.json``, ``common.pt``) and
    torch/distributed/checkpoint/filesystem.py (``.metadata``, ``__<rank>_<n>.distcp``)."""
    if not os.path.isdir(path):
        return "no iteration directory"
    for f in ("metadata.json", "common.pt", ".metadata"):
        if not os.path.isfile(os.path.join(path, f)):
            return "no " + f
    names = None
    try:
        from torch.distributed.checkpoint import FileSystemReader

        md = FileSystemReader(path).read_metadata()
        names = sorted({getattr(v, "relative_path", "") for v in (md.storage_data or {}).values()} - {""})
    except ImportError:
        names = None
    except Exception as e:  # a torn .metadata
        return f".metadata unreadable ({e.__class__.__name__})"
    if names is None:
        names = [f for f in os.listdir(path) if f.endswith(".distcp")]
        if not names:
            return "no *.distcp shard"
    for f in names:
        fp = os.path.join(path, f)
        if not os.path.isfile(fp) or os.path.getsize(fp) == 0:
            return f"shard {f} missing or empty"
    return ""


def latest_complete(save):
    """The run's newest complete checkpoint under ``save``: ``{"tracker": N|None, "iteration":
    M|None, "torn": {iteration: why}}``. ``tracker``: what ``latest_checkpointed_iteration.txt``
    says (an integer; ``release`` and anything else count as none); ``iteration``: the newest
    ``iter_NNNNNNN`` not newer than the tracker that :func:`checkpoint_complete` accepts
    (``None``: none). Megatron names them so: megatron/training/checkpointing.py
    ``get_checkpoint_tracker_filename``, ``get_checkpoint_name`` (``iter_{:07d}``) (Megatron-LM)."""
    out = {"tracker": None, "iteration": None, "torn": {}}
    try:
        with open(os.path.join(save, TRACKER)) as f:
            text = f.read().strip()
        out["tracker"] = int(text) if text.isdigit() else None
    except OSError:
        pass
    its = []
    try:
        for name in os.listdir(save):
            if name.startswith("iter_") and name[5:].isdigit():
                its.append(int(name[5:]))
    except OSError:
        return out
    if out["tracker"] is not None:
        its = [i for i in its if i <= out["tracker"]]
        if out["tracker"] not in its:
            out["torn"][str(out["tracker"])] = "no iteration directory"
    for it in sorted(its, reverse=True):
        why = checkpoint_complete(_iteration_dir(save, it))
        if not why:
            out["iteration"] = it
            break
        out["torn"][str(it)] = why
    return out


def op_checkpoint(a):
    return latest_complete(a["save"])


OPS = {
    "copy_tree": op_copy_tree,
    "checkpoint": op_checkpoint,
    "write_secret": op_write_secret,
    "remove": op_remove,
    "preflight": op_preflight,
    "start": op_start,
    "alive": op_alive,
    "stop": op_stop,
    "ports": op_ports,
    "inspect": op_inspect,
    "tail": op_tail,
    "addresses": op_addresses,
}


def main(argv):
    """Run one op on this node: its JSON answer on stdout and 0; a refusal (3) or an OS error (4)
    as one line on stderr. Returns the exit status (the node-side script's, see below)."""
    op, args = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    try:
        out = OPS[op](args)
    except Refused as e:  # one line the launcher shows as the host's reason
        print(f"glmlaunch nodeops {op}: refused: {e}", file=sys.stderr)
        return 3
    except OSError as e:
        print(f"glmlaunch nodeops {op}: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 4
    print(json.dumps(out))
    return 0


if __name__ == "__main__":  # only as ``python -c <this source> OP JSON`` on a node, never imported
    raise SystemExit(main(sys.argv[1:]))
