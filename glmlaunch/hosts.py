"""Hosts and allocations: read an MPI hostfile, pick the head node, resolve addresses.

Formats accepted (one host per line; ``#`` starts a comment; blank lines are skipped):

=============  ================================  ==========================================
format         example                           who writes it
=============  ================================  ==========================================
OpenMPI        ``node1 slots=8 max_slots=8``     mpirun
DeepSpeed      ``node1 slots=8``                 deepspeed ``_parse_hostfile``
slime / miles  ``10.0.0.1 slot=8``               docs/models/deepseek/deepseek.md:66 (miles@31f1ca961a94); only column 1 read
MPICH / Hydra  ``node1:8``                       mpiexec, Intel MPI
bare           ``node1``                         anything else
=============  ================================  ==========================================

A host may carry ``user@`` in front and ``ssh_port=N`` / ``ssh_user=NAME`` after it. ``slots``
is the GPU count of the node. A node's *address* is the IP the cluster uses for it (Ray's
``--node-ip-address``); names are resolved once, here, so that the head is identified by its
resolved IP, never by comparing strings (the seed script compared strings: docs/rules.md#no-loopback).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from .errors import HostfileError, UsageError

DEFAULT_HOSTFILE = "/root/mpi_rack_hostfile"

_NAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.\-]*[A-Za-z0-9_])?$")
_KV_RE = re.compile(r"^([A-Za-z_]+)=(.*)$")


@dataclass(frozen=True)
class Host:
    """One node of the cluster.

    ``name``: as written (hostname or IP). ``address``: the resolved IP string used for Ray and
    NCCL. ``slots``: GPUs on the node, or ``None`` when the hostfile does not say.
    ``source``: ``"file:line"`` where the host came from, for error messages.
    """

    name: str
    address: str
    slots: int | None = None
    ssh_user: str | None = None
    ssh_port: int | None = None
    source: str = ""

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.address).is_loopback
        except ValueError:
            return False


class AllocationKind(StrEnum):
    """Where an allocation's nodes come from; decides the transport and the wording of errors."""

    HOSTFILE = "hostfile"  # an MPI hostfile: SSH (Fabric)
    SLURM = "slurm"  # the current Slurm allocation: srun job steps
    LOCAL = "local"  # this machine alone, on loopback: local subprocesses
    PLACEHOLDER = "placeholder"  # node-0 .. node-N-1 for a render; nothing can be started on them


@dataclass(frozen=True)
class Allocation:
    """The nodes a launch runs on. ``hosts[0]`` is the head node.

    ``gpus_per_node`` is the same for every node (mixed slot counts are refused); ``None`` when
    the source does not say. ``kind`` is where the nodes came from; ``origin`` names it for
    people (the hostfile's path, ``slurm:<jobid>``, ``local``, ``--nodes N``); ``job_id`` is the
    Slurm job of a ``SLURM`` allocation.
    """

    hosts: tuple[Host, ...]
    gpus_per_node: int | None
    kind: AllocationKind = AllocationKind.HOSTFILE
    origin: str = ""
    job_id: str | None = None

    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def workers(self) -> tuple[Host, ...]:
        return self.hosts[1:]

    @property
    def num_nodes(self) -> int:
        return len(self.hosts)

    @property
    def placeholder(self) -> bool:
        return self.kind is AllocationKind.PLACEHOLDER

    def with_gpus_per_node(self, gpus: int) -> Allocation:
        return replace(self, gpus_per_node=gpus, hosts=tuple(replace(h, slots=gpus) for h in self.hosts))


def resolve(name: str) -> str | None:
    """Resolve a hostname or IP literal to one IP string (IPv4 preferred); ``None`` if it fails."""
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return None
    v4 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET]
    v6 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET6]
    found = v4 or v6
    return found[0] if found else None


def _parse_line(text: str, where: str) -> tuple[str, int | None, str | None, int | None]:
    """Parse one hostfile line (comment already removed) into (name, slots, user, port)."""
    tokens = text.split()
    first, rest = tokens[0], tokens[1:]
    user = None
    if "@" in first:
        user, first = first.split("@", 1)
        if not user or not first:
            raise HostfileError(f"{where}: cannot read host '{tokens[0]}'", "write it as user@host")
    slots: int | None = None
    # MPICH "host:8" or "[v6addr]:8"; a bare IPv6 address also contains ':'.
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", first)
    if m:
        first, slots = m.group(1), int(m.group(2))
    elif first.count(":") == 1:
        host, _, n = first.partition(":")
        if not n.isdigit():
            raise HostfileError(
                f"{where}: cannot read '{first}': the count after ':' must be a whole number",
                "write host:8 (MPICH) or host slots=8 (OpenMPI)",
            )
        first, slots = host, int(n)
    elif first.startswith("["):
        first = first.strip("[]")
    is_ip = True
    try:
        ipaddress.ip_address(first)
    except ValueError:
        is_ip = False
    if not is_ip and not _NAME_RE.match(first):
        raise HostfileError(f"{where}: '{first}' is not a hostname or IP address", "fix or remove this line")
    port = None
    max_slots = None
    for tok in rest:
        kv = _KV_RE.match(tok)
        if not kv:
            raise HostfileError(
                f"{where}: cannot read '{tok}' after the host name",
                "use key=value: slots=8 (OpenMPI/DeepSpeed), slot=8 (miles), max_slots=8, ssh_user=NAME, ssh_port=22",
            )
        key, val = kv.group(1), kv.group(2)
        if key in ("slots", "slot", "max_slots", "ssh_port"):
            example = f"{key}=22" if key == "ssh_port" else f"{key}=8"
            if not val.isdigit() or int(val) < (0 if key == "max_slots" else 1):
                raise HostfileError(
                    f"{where}: {key}={val} is not a positive whole number", f"write {example}"
                )
        if key in ("slots", "slot"):
            if slots is not None and slots != int(val):
                raise HostfileError(f"{where}: the GPU count is given twice ({slots} and {val})", "keep one")
            slots = int(val)
        elif key == "max_slots":
            max_slots = int(val)  # OpenMPI's oversubscription cap; the GPU count is slots
        elif key == "ssh_port":
            port = int(val)
            if port > 65535:
                raise HostfileError(
                    f"{where}: ssh_port={val} is not a TCP port (1-65535)", "write ssh_port=22"
                )
        elif key == "ssh_user":
            user = val
        else:
            raise HostfileError(
                f"{where}: unknown key '{key}'", "known keys: slots, slot, max_slots, ssh_user, ssh_port"
            )
    if slots is not None and slots < 1:
        raise HostfileError(f"{where}: slots must be at least 1", "write slots=8")
    if max_slots and slots is not None and max_slots < slots:  # max_slots=0: no cap (OpenMPI)
        raise HostfileError(
            f"{where}: max_slots={max_slots} is less than slots={slots} (OpenMPI refuses a node whose slots exceed max_slots)",
            f"write max_slots={slots} or more, or drop max_slots",
        )
    return first, slots, user, port


def check_gpus_per_node(gpus: int | None) -> None:
    """Refuse a GPU count that is not a whole number >= 0 (0: CPU-only nodes; ``None``: unknown)."""
    if gpus is None:
        return
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise HostfileError(
            f"--gpus-per-node {gpus}: the GPUs per node must be a whole number, 0 or more",
            "pass --gpus-per-node 8 (the GPUs of each node; 0 for CPU-only nodes), or leave it out",
        )


def parse_hostfile_text(
    text: str, path: str = "<hostfile>", resolver: Callable[[str], str | None] | None = None
) -> list[Host]:
    """Parse hostfile text into hosts, in file order.

    Raises :class:`HostfileError` naming ``path:line`` for an unreadable line, an empty file,
    a host that does not resolve, a duplicate host (also one host given by name and by IP) and
    mixed slot counts. ``resolver`` defaults to :func:`resolve` (looked up when called).
    """
    resolver = resolver or resolve
    hosts: list[Host] = []
    seen: dict[str, Host] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        name, slots, user, port = _parse_line(line, where)
        address = resolver(name)
        if address is None:
            raise HostfileError(
                f"{where}: cannot resolve host '{name}'",
                "use an IP address, or add the name to DNS or /etc/hosts on the launching machine",
            )
        if address in seen:
            prev = seen[address]
            same = (
                "" if prev.name == name else f" ('{prev.name}' and '{name}' are the same address {address})"
            )
            raise HostfileError(
                f"{where}: host '{name}' is listed twice{same}; first at {prev.source}",
                "list each node once",
            )
        h = Host(name=name, address=address, slots=slots, ssh_user=user, ssh_port=port, source=where)
        seen[address] = h
        hosts.append(h)
    if not hosts:
        raise HostfileError(
            f"{path}: no hosts (the file is empty or only has comments)",
            "write one node per line, e.g. '10.0.0.1 slots=8'",
        )
    given = {h.slots for h in hosts if h.slots is not None}
    if len(given) > 1:
        detail = ", ".join(f"{h.name}={h.slots}" for h in hosts if h.slots is not None)
        first = next(h for h in hosts if h.slots is not None)
        odd = next(h for h in hosts if h.slots is not None and h.slots != first.slots)
        raise HostfileError(
            f"{odd.source}: '{odd.name}' has slots={odd.slots} but {first.source} has slots={first.slots}: "
            f"nodes have different slot counts ({detail})",
            "every node must have the same number of GPUs; fix the slots or remove the odd node",
        )
    if given and len(given) == 1 and any(h.slots is None for h in hosts):
        missing = next(h for h in hosts if h.slots is None)
        raise HostfileError(
            f"{missing.source}: '{missing.name}' has no slot count while other lines do",
            f"write slots={next(iter(given))} on every line, or on none",
        )
    return hosts


def read_hostfile(
    path: str | os.PathLike = DEFAULT_HOSTFILE,
    head: str | None = None,
    resolver: Callable[[str], str | None] | None = None,
) -> Allocation:
    """Read an MPI hostfile into an :class:`Allocation`.

    ``head`` names the head node (a hostname or IP from the file, compared by resolved address);
    default: the first host. Raises :class:`HostfileError` (file missing or unreadable, bad line,
    duplicates, mixed slots, unknown head).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise HostfileError(
            f"{p}: hostfile not found",
            "pass --hostfile PATH (one node per line, e.g. '10.0.0.1 slots=8'), or run inside a Slurm allocation",
        ) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise HostfileError(
            f"{p}: cannot read hostfile ({e.__class__.__name__})", "pass a readable text file"
        ) from None
    hosts = parse_hostfile_text(text, str(p), resolver)
    hosts = choose_head(hosts, head, str(p), resolver)
    slots = hosts[0].slots
    return Allocation(hosts=tuple(hosts), gpus_per_node=slots, kind=AllocationKind.HOSTFILE, origin=str(p))


def choose_head(
    hosts: list[Host], head: str | None, origin: str, resolver: Callable[[str], str | None] | None = None
) -> list[Host]:
    """Move the host named ``head`` (matched by resolved address) to the front."""
    if head is None:
        return list(hosts)
    addr = (resolver or resolve)(head)
    for i, h in enumerate(hosts):
        if h.address == addr or h.name == head:
            return [h] + hosts[:i] + hosts[i + 1 :]
    raise HostfileError(
        f"--head {head}: not a host of {origin}",
        f"pick one of: {', '.join(h.name for h in hosts)}",
    )


def from_hosts(names: Iterable[str], gpus_per_node: int | None = None, origin: str = "hosts") -> Allocation:
    """Build an :class:`Allocation` from host names/IPs (first = head), resolving each."""
    check_gpus_per_node(gpus_per_node)
    text = "\n".join(names)
    hosts = parse_hostfile_text(text, origin)
    if gpus_per_node is not None:
        hosts = [replace(h, slots=gpus_per_node) for h in hosts]
    return Allocation(
        hosts=tuple(hosts),
        gpus_per_node=gpus_per_node if gpus_per_node is not None else hosts[0].slots,
        kind=AllocationKind.HOSTFILE,
        origin=origin,
    )


def local_allocation(gpus_per_node: int | None = None) -> Allocation:
    """The launching machine alone, on loopback (the main job's default local cluster)."""
    check_gpus_per_node(gpus_per_node)
    h = Host(name="localhost", address="127.0.0.1", slots=gpus_per_node, source="local")
    return Allocation(hosts=(h,), gpus_per_node=gpus_per_node, kind=AllocationKind.LOCAL, origin="local")


def placeholder_allocation(
    nodes: int, gpus_per_node: int | None = None, origin: str | None = None
) -> Allocation:
    """Hosts ``node-0`` .. ``node-{N-1}`` for a dry render with ``--nodes N`` (no hostfile).

    The addresses are the names themselves: the render shows where each node's IP goes.
    ``gpus_per_node`` ``None`` leaves the count to the recipe (``cluster.gpus_per_node``, else
    its hardware's, :func:`glmlaunch.resolve.resolve`). ``origin`` names where the count came
    from in messages (default ``--nodes N``).
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise HostfileError(f"--nodes {nodes}: need at least 1 node", "pass --nodes 8")
    check_gpus_per_node(gpus_per_node)
    origin = origin or f"--nodes {nodes}"
    hosts = tuple(
        Host(name=f"node-{i}", address=f"node-{i}", slots=gpus_per_node, source=origin) for i in range(nodes)
    )
    return Allocation(
        hosts=hosts, gpus_per_node=gpus_per_node, kind=AllocationKind.PLACEHOLDER, origin=origin
    )


def _expand_nodelist(nodelist: str) -> list[str]:
    """Expand ``node[01-03,07],gpu-a[1-2]`` with ``scontrol show hostnames`` where it exists,
    else with python-hostlist (same results for ranges, lists, zero padding, several groups)."""
    import shutil
    import subprocess

    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.split()
            if out:
                return out
        except (subprocess.SubprocessError, OSError):
            pass
    import hostlist

    try:
        return hostlist.expand_hostlist(nodelist)
    except hostlist.BadHostlist as e:
        raise HostfileError(
            f"SLURM_JOB_NODELIST={nodelist}: cannot expand ({e})", "check the Slurm allocation"
        ) from None


def parse_gres(text: str) -> int | None:
    """GPUs in a Slurm GRES/TRES string, or ``None`` when it names no GPU.

    Accepts ``8``-less and typed forms and several entries: ``gpu:8``, ``gpu:h100:8``,
    ``gpu:h100:8(IDX:0-7)``, ``gres:gpu:8`` (TresPerNode), ``gres/gpu=8`` / ``gres/gpu:h100=8``
    (TRES), ``gpu`` or ``gpu:h100`` (one GPU), ``gpu:a100:4,gpu:v100:4`` (summed); other GRES
    (``nic:1``) are ignored; ``(null)`` and ``N/A`` give ``None``."""
    total = None
    for part in re.split(r",(?![^()]*\))", text or ""):
        part = re.sub(r"\(.*\)$", "", part.strip())
        for prefix in ("gres/", "gres:"):
            part = part.removeprefix(prefix)
        tokens = re.split(r"[:=]", part)
        if tokens[0] != "gpu":
            continue
        n = int(tokens[-1]) if len(tokens) > 1 and tokens[-1].isdigit() else 1
        total = (total or 0) + n
    return total


def _slurm_gpus(env: dict) -> int | None:
    """GPUs per node from SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE (``8`` or ``gpu:h100:8``),
    SLURM_JOB_GPUS / SLURM_STEP_GPUS (a list of ids), else the job's GRES as ``scontrol show job``
    reports it (``--gres=gpu:8`` jobs)."""
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        v = env.get(key, "").strip()
        if v:
            n = (
                int(v) if v.isdigit() else parse_gres(v if v.startswith(("gpu", "gres")) else f"gpu:{v}")
            )  # h100:8
            if n:
                return n
    for key in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        v = env.get(key, "").strip()
        if v:
            return len([x for x in v.split(",") if x])
    return _gres_of_job(env.get("SLURM_JOB_ID", ""))


def _gres_of_job(job_id: str) -> int | None:
    """GPUs per node of job ``job_id`` from ``scontrol show job -d`` (TresPerNode, GRES)."""
    import shutil
    import subprocess

    if not job_id.isdigit() or not shutil.which("scontrol"):
        return None
    try:
        text = subprocess.run(
            ["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True, timeout=20
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    for key in ("TresPerNode", "GRES", "JOB_GRES"):
        m = re.search(rf"\b{key}=(\S+)", text)
        if m:
            n = parse_gres(m.group(1).replace("gres:gpu", "gpu").replace("gres/gpu", "gpu"))
            if n:
                return n
    return None


def from_slurm(
    env: dict | None = None, head: str | None = None, resolver: Callable[[str], str | None] | None = None
) -> Allocation:
    """Read the current Slurm allocation: ``SLURM_JOB_NODELIST`` expanded (``scontrol show
    hostnames`` where it exists), checked against ``SLURM_JOB_NUM_NODES``; GPUs per node from
    ``SLURM_GPUS_ON_NODE`` and friends. Raises :class:`HostfileError` outside an allocation."""
    resolver = resolver or resolve
    env = dict(os.environ if env is None else env)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise HostfileError(
            "not inside a Slurm allocation (SLURM_JOB_NODELIST is not set)",
            "run inside salloc/sbatch, or pass --hostfile PATH",
        )
    names = _expand_nodelist(nodelist)
    want = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    if want and want.isdigit() and int(want) != len(names):
        raise HostfileError(
            f"SLURM_JOB_NODELIST={nodelist} expands to {len(names)} nodes but SLURM_JOB_NUM_NODES={want}",
            "check the allocation (het jobs are not supported)",
        )
    gpus = _slurm_gpus(env)
    job = env.get("SLURM_JOB_ID", "?")
    origin = f"slurm:{job}"
    hosts = []
    for i, name in enumerate(names):
        addr = resolver(name)
        if addr is None:
            raise HostfileError(
                f"{origin}: cannot resolve node '{name}'", "check DNS or /etc/hosts on the nodes"
            )
        hosts.append(Host(name=name, address=addr, slots=gpus, source=f"{origin}[{i}]"))
    hosts = choose_head(hosts, head, origin, resolver)
    return Allocation(
        hosts=tuple(hosts),
        gpus_per_node=gpus,
        kind=AllocationKind.SLURM,
        origin=origin,
        job_id=None if job == "?" else job,
    )


def detect_local_gpus() -> int:
    """GPUs on this machine, from ``nvidia-smi -L`` (0 when there is none)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def discover(
    hostfile: str | os.PathLike | None = None,
    *,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    head: str | None = None,
    local: bool = False,
    slurm: bool | None = None,
    env: dict | None = None,
    fallback_nodes: int | None = None,
    origin: str | None = None,
) -> Allocation:
    """Where the nodes come from: the one policy every entry point (``render``, ``check``,
    ``up``, ``launch``, ``launch --dry-run``, :func:`glmlaunch.slurm.submit`) uses, so the same
    inputs give the same plan. First match wins:

    1. ``local``: this machine alone, on loopback (GPUs: ``gpus_per_node``, else ``nvidia-smi``);
    2. ``hostfile``: that file;
    3. ``nodes``: ``nodes`` placeholder nodes (a render; nothing can start on them; ``origin``
       names them in messages);
    4. inside a Slurm allocation (``SLURM_JOB_NODELIST`` set, or ``slurm=True``): the allocation;
    5. the default hostfile :data:`DEFAULT_HOSTFILE`, if it exists;
    6. ``fallback_nodes`` (the recipe's node count, given by callers that have a recipe): 1 →
       this machine, N > 1 → N placeholders. Without it, the default hostfile is read (and its
       absence is the error).

    ``gpus_per_node`` (0 or more; 0: CPU-only) fills in missing slots and must agree with slots
    that are given; with placeholders and no count, the recipe decides
    (``cluster.gpus_per_node`` or its hardware). Raises :class:`UsageError` for options that
    exclude each other, :class:`HostfileError` for nodes that cannot be read.
    """
    env = dict(os.environ if env is None else env)
    check_gpus_per_node(gpus_per_node)
    given = [
        name
        for name, on in (
            ("--local", local),
            ("--hostfile", hostfile is not None),
            ("--nodes", nodes is not None),
        )
        if on
    ]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} exclude each other", "pass one of them")
    if local and head:
        raise UsageError("--head has no meaning with --local (this machine is the head)", "drop --head")
    in_slurm = bool(slurm or (slurm is None and env.get("SLURM_JOB_NODELIST")))
    if not (local or hostfile is not None or nodes is not None or in_slurm) and not os.path.exists(
        DEFAULT_HOSTFILE
    ):
        if fallback_nodes == 1:
            local = True
        elif fallback_nodes is not None:
            nodes = fallback_nodes
            origin = (
                origin
                or f"{fallback_nodes} placeholder nodes (no hostfile given, {DEFAULT_HOSTFILE} does not exist)"
            )
    if local:
        return local_allocation(gpus_per_node if gpus_per_node is not None else detect_local_gpus())
    if nodes is not None:
        return placeholder_allocation(nodes, gpus_per_node, origin)
    if hostfile is not None:
        alloc = read_hostfile(hostfile, head=head)
    elif in_slurm:
        alloc = from_slurm(env, head=head)
    else:
        alloc = read_hostfile(DEFAULT_HOSTFILE, head=head)
    if gpus_per_node is not None:
        if alloc.gpus_per_node and alloc.gpus_per_node != gpus_per_node:
            raise HostfileError(
                f"{alloc.origin} says {alloc.gpus_per_node} GPUs per node but --gpus-per-node {gpus_per_node}",
                "drop --gpus-per-node or fix the slots",
            )
        alloc = alloc.with_gpus_per_node(gpus_per_node)
    return alloc
