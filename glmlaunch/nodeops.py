"""Operations that run ON a node: start a process in a session of its own, stop exactly that
session, check ports, inspect a node before launch, tail a log.

This module is standard-library only and self-contained: the launcher sends its source to each
node (``python -c <source> OP JSON``), so nodes need Python but not glmlaunch. Every operation
prints one JSON object on stdout.

Scoped teardown: ``start`` runs the command with ``start_new_session=True`` and records its PID
and its start time (``/proc/PID/stat`` field 22). ``stop`` acts only on a process whose PID *and*
start time match the record (a recycled PID is never touched), sends it SIGTERM (``ray start
--block`` then stops the daemons it started), waits, and finally SIGKILLs what is left of *that
session* (processes whose session id is the recorded PID). Nothing is ever killed by name.

Inside a Slurm job every process of a step dies when the step's task exits (proctrack/cgroup), so
the srun transport runs ``start`` with ``hold``: the node op stays alive as the step's task,
prints :data:`DETACH` after its answer, and stops its session when Slurm signals the step.
"""

import json
import os
import signal
import socket
import sys
import time


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
    return bool(st) and st[0] != "Z" and (starttime is None or st[2] == starttime)


def op_start(a):
    """Start ``argv`` with ``env`` in a new session; stdout+stderr to ``log``; return pid+starttime."""
    import subprocess

    os.makedirs(a["cwd"], exist_ok=True)
    env = dict(os.environ)
    env.update(a.get("env", {}))
    for name in a.get("ignore_signals", []):  # inherited by the command (e.g. Slurm's USR2 to every step)
        signal.signal(getattr(signal, "SIG" + name), signal.SIG_IGN)
    if a.get("hold"):  # caught from now on (handlers, unlike SIG_IGN, are not inherited)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, lambda signum, frame: _ASKED.append(signum))
    with open(a["log"], "ab") as log, open(os.devnull, "rb") as devnull:
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
        "started": time.time(),
    }
    if a.get("pidfile"):
        with open(a["pidfile"], "w") as f:
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
    op_stop({"pid": p.pid, "starttime": rec["starttime"], "grace_s": grace if asked else 0})
    os._exit(0)  # `ray start --block` exits non-zero when stopped; its log says how it ended


def op_alive(a):
    """Whether each recorded process is alive: {pid: bool}."""
    return {str(r["pid"]): _alive(r["pid"], r.get("starttime")) for r in a["procs"]}


def op_stop(a):
    """Stop the recorded session: SIGTERM the leader, wait ``grace_s``, SIGKILL what is left of it.

    Linux never reuses a PID while a session of that id still has members, so processes whose
    session id is the recorded PID are ours; a live process with that PID but another start time
    is someone else's, and nothing is touched then."""
    pid, starttime, grace = a.get("pid"), a.get("starttime"), float(a.get("grace_s", 20))
    if not pid and a.get(
        "pidfile"
    ):  # the launcher never read start's answer (interrupted): the node's record
        try:
            with open(a["pidfile"]) as f:
                rec = json.load(f)
            pid, starttime = rec["pid"], rec.get("starttime")
        except (OSError, ValueError, KeyError):
            pass
    if not pid:
        _remove(a.get("remove", []))
        return {"pid": None, "was_alive": False, "killed": [], "left": [], "note": "nothing was started here"}
    res = {"pid": pid, "was_alive": _alive(pid, starttime), "killed": [], "left": []}
    st = _stat(pid)
    if st and starttime is not None and st[2] != starttime:
        res["note"] = "PID was reused by another process: not touched"
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
    _remove(a.get("remove", []))
    return res


def _remove(files):
    """Remove files, and whole directories given with a trailing ``/`` (``down --purge``)."""
    import shutil

    for f in files:
        try:
            if f.endswith("/"):
                shutil.rmtree(f)
                os.rmdir(os.path.dirname(f.rstrip("/")))  # the run's dir, once no node dir is left in it
            else:
                os.unlink(f)
        except OSError:
            pass


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


def op_inspect(a):
    """What a node looks like before launch: versions, GPUs, stray GPU/Ray processes, files,
    free space, interface, clock."""
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
    for p in a.get("writable", []):
        try:
            os.makedirs(p, exist_ok=True)
            probe = os.path.join(p, f".glmlaunch-probe-{socket.gethostname()}")
            with open(probe, "w") as f:
                f.write(a.get("token", ""))
            info["writable"][p] = "ok"
        except OSError as e:
            info["writable"][p] = f"not writable ({e.strerror})"
    for p in a.get("shared_read", []):
        try:
            info.setdefault("shared", {})[p] = open(p).read()
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
    """Remove ``files`` (e.g. the preflight's sentinels in ``--save``)."""
    _remove(a.get("files", []))
    return {}


OPS = {
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
    op, args = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    print(json.dumps(OPS[op](args)))


if __name__ == "__main__":
    main(sys.argv[1:])
