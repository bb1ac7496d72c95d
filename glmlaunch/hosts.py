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

import errno
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from .errors import HostfileError, UsageError, safe_text

DEFAULT_HOSTFILE = "/root/mpi_rack_hostfile"

MAX_INPUT_BYTES = 1 << 20
"""The largest hostfile or recipe file read (1 MiB); a bigger one is refused, not read."""

_NAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.\-]*[A-Za-z0-9_])?")
_USER_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_ZONE_RE = re.compile(r"[A-Za-z0-9._-]+")
_KV_RE = re.compile(r"([A-Za-z_]+)=(.*)")
_DIGITS_RE = re.compile(r"[0-9]{1,18}")


def whole_number(text: object) -> int | None:
    """``text`` as an int when it is 1-18 ASCII digits, else ``None``. ``str.isdigit`` is not used:
    it accepts ``²`` (which ``int`` refuses) and ``٣`` (which ``int`` reads as 3)."""
    return int(text) if isinstance(text, str) and _DIGITS_RE.fullmatch(text) else None


def shown(value: object, limit: int = 200) -> str:
    """A user value for a message: control characters escaped (:func:`safe_text`), cut at
    ``limit`` characters."""
    s = safe_text(value, keep_newlines=False)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} characters)"


def is_hostname(name: str) -> bool:
    """A DNS-style host name (letters, digits, ``-``, ``_``, ``.``; at most 253 characters,
    labels of at most 63), as a hostfile or Slurm writes it."""
    return (
        isinstance(name, str)
        and len(name) <= 253
        and _NAME_RE.fullmatch(name) is not None
        and all(len(label) <= 63 for label in name.split("."))
    )


def is_ip(name: str) -> bool:
    """An IPv4 or IPv6 literal; an IPv6 zone id (``fe80::1%eth0``) must be a plain interface name."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    _, pct, zone = name.partition("%")
    return not pct or _ZONE_RE.fullmatch(zone) is not None


def is_ifname(name: str) -> bool:
    """A Linux network interface name: 1-15 characters, printable, no ``/``, ``:`` or whitespace,
    not ``.`` or ``..`` (the kernel's ``dev_valid_name``, net/core/dev.c; IFNAMSIZ is 16)."""
    return (
        isinstance(name, str)
        and 0 < len(name) < 16
        and name.isprintable()
        and name not in (".", "..")
        and not any(c in name for c in "/: \t")
    )


def plain_option(option: str, value: str | None, hint: str) -> None:
    """Refuse an option value that is empty or holds control or format characters (a newline, ESC,
    a bidi override): such a value is never a path, a name or a CIDR. Raises
    :class:`~glmlaunch.errors.UsageError` naming ``option``, with ``hint`` as the fix."""
    if value is None:
        return
    if not isinstance(value, str) or not value or not value.isprintable():
        raise UsageError(f"{option} '{shown(value)}': empty or holds a control character", hint)


def is_user(name: str) -> bool:
    """A login name that can follow ``ssh -l`` safely: ``[A-Za-z0-9._-]``, not starting with ``-``."""
    return isinstance(name, str) and len(name) <= 64 and _USER_RE.fullmatch(name) is not None


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_OPEN_ERRORS = {
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?)",
    errno.ENAMETOOLONG: "the path is too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "it is a directory",
}


def read_input_file(
    path: str | os.PathLike,
    what: str,
    error: type[UsageError],
    hint: str,
    not_found_hint: str | None = None,
    max_bytes: int = MAX_INPUT_BYTES,
) -> str:
    """The text of a small input file (a hostfile, a recipe): a regular file of at most
    ``max_bytes``, UTF-8 (a BOM is dropped). Opened without blocking, so that a FIFO never hangs;
    a directory, device, FIFO or socket, a symlink loop, a path too long or with a NUL, a file
    too big and text that is not UTF-8 each raise ``error`` (naming the path) with ``hint``."""
    name = os.fspath(path)
    if not isinstance(name, str):
        name = os.fsdecode(name)
    where = shown(name) or "''"
    if "\0" in name:
        raise error(f"{where}: a {what} path cannot contain a NUL byte", hint)
    if safe_text(name, keep_newlines=False) != name:
        raise error(f"{where}: a {what} path cannot contain control characters", hint)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise error(f"{where}: {what} not found", not_found_hint or hint) from None
    except OSError as e:
        why = _OPEN_ERRORS.get(e.errno or 0, e.strerror or e.__class__.__name__)
        raise error(f"{where}: cannot read the {what}: {why}", hint) from None
    try:
        st = os.fstat(fd)
        for test, kind in _FILE_KINDS:
            if test(st.st_mode):
                raise error(f"{where}: the {what} is {kind}, not a regular file", hint)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{where}: the {what} is not a regular file", hint)
        limit = f"{max_bytes >> 20} MiB" if max_bytes % (1 << 20) == 0 else f"{max_bytes} bytes"
        too_big = f"{where}: the {what} is larger than {limit}; it is not read"
        if st.st_size > max_bytes:
            raise error(too_big, hint)
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            try:
                chunk = os.read(fd, max_bytes + 1 - size)
            except BlockingIOError:  # not for a regular file; never wait
                break
            except OSError as e:
                raise error(f"{where}: cannot read the {what}: {e.strerror or e}", hint) from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # it grew while being read
            raise error(too_big, hint)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(
            f"{where}:{line}: the {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
            hint,
        ) from None
    return text.removeprefix("\ufeff")


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
    Slurm job of a ``SLURM`` allocation. ``spares``: hosts kept out of the cluster (never
    started, never in a plan) to replace a node that fails during a supervised run (hostfile
    mode only: :func:`discover`); same GPUs per node as ``hosts``.
    """

    hosts: tuple[Host, ...]
    gpus_per_node: int | None
    kind: AllocationKind = AllocationKind.HOSTFILE
    origin: str = ""
    job_id: str | None = None
    spares: tuple[Host, ...] = ()

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
        return replace(
            self,
            gpus_per_node=gpus,
            hosts=tuple(replace(h, slots=gpus) for h in self.hosts),
            spares=tuple(replace(h, slots=gpus) for h in self.spares),
        )


def resolve(name: str) -> str | None:
    """Resolve a hostname or IP literal to one IP string (IPv4 preferred); ``None`` if it fails."""
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):  # not found; a label over 63 characters; a NUL
        return None
    v4 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET]
    v6 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET6]
    found = v4 or v6
    return found[0] if found else None


def _check_user(user: str, where: str, written: str) -> None:
    if not is_user(user):
        raise HostfileError(
            f"{where}: '{shown(written)}': '{shown(user)}' is not a login name "
            "(letters, digits, '.', '_' and '-', not starting with '-')",
            "write user@host or ssh_user=NAME with a plain login name, or leave the user out",
        )


def _parse_line(text: str, where: str) -> tuple[str, int | None, str | None, int | None]:
    """Parse one hostfile line (comment already removed) into (name, slots, user, port)."""
    tokens = re.split(r"[ \t]+", text.strip(" \t"))
    first, rest = tokens[0], tokens[1:]
    user = None
    if "@" in first:
        user, first = first.split("@", 1)
        if not user or not first:
            raise HostfileError(f"{where}: cannot read host '{shown(tokens[0])}'", "write it as user@host")
        _check_user(user, where, tokens[0])
    slots: int | None = None
    # MPICH "host:8" or "[v6addr]:8"; a bare IPv6 address also contains ':'.
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+(?:%[A-Za-z0-9._-]+)?)\]:([0-9]+)", first)
    if m:
        first, slots = m.group(1), whole_number(m.group(2))
        if slots is None:
            raise HostfileError(
                f"{where}: cannot read '{shown(tokens[0])}': the count after ':' is too long",
                "write [addr]:8",
            )
    elif first.count(":") == 1:
        host, _, n = first.partition(":")
        slots = whole_number(n)
        if slots is None:
            raise HostfileError(
                f"{where}: cannot read '{shown(first)}': the count after ':' must be a whole number (digits 0-9)",
                "write host:8 (MPICH) or host slots=8 (OpenMPI)",
            )
        first = host
    elif first.startswith("["):
        first = first.strip("[]")
    if "%" in first and not is_ip(first):
        raise HostfileError(
            f"{where}: '{shown(first)}' is not an IPv6 address with a zone id (after '%' only an interface name: "
            "letters, digits, '.', '_', '-')",
            "write the address as fe80::1%eth0, or fix or remove this line",
        )
    if not is_ip(first) and not is_hostname(first):
        raise HostfileError(
            f"{where}: '{shown(first)}' is not a hostname or IP address", "fix or remove this line"
        )
    port = None
    max_slots = None
    for tok in rest:
        kv = _KV_RE.fullmatch(tok)
        if not kv:
            raise HostfileError(
                f"{where}: cannot read '{shown(tok)}' after the host name",
                "use key=value: slots=8 (OpenMPI/DeepSpeed), slot=8 (miles), max_slots=8, ssh_user=NAME, ssh_port=22",
            )
        key, val = kv.group(1), kv.group(2)
        num = whole_number(val)
        if key in ("slots", "slot", "max_slots", "ssh_port"):
            example = f"{key}=22" if key == "ssh_port" else f"{key}=8"
            if num is None or num < (0 if key == "max_slots" else 1):
                raise HostfileError(
                    f"{where}: {key}={shown(val)} is not a positive whole number",
                    f"write {example} (digits 0-9)",
                )
            assert num is not None
        if key in ("slots", "slot"):
            if slots is not None and slots != num:
                raise HostfileError(f"{where}: the GPU count is given twice ({slots} and {val})", "keep one")
            slots = num
        elif key == "max_slots":
            max_slots = num  # OpenMPI's oversubscription cap; the GPU count is slots
        elif key == "ssh_port":
            port = num
            if port is not None and port > 65535:
                raise HostfileError(
                    f"{where}: ssh_port={val} is not a TCP port (1-65535)", "write ssh_port=22"
                )
        elif key == "ssh_user":
            _check_user(val, where, tok)
            user = val
        else:
            raise HostfileError(
                f"{where}: unknown key '{shown(key)}'",
                "known keys: slots, slot, max_slots, ssh_user, ssh_port",
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
    # lines end at "\n" only (as editors count them), with a Windows "\r" dropped; other
    # separators (form feed, "\x85", "\u2028") stay in the line and make it unreadable
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r").split("#", 1)[0].strip(" \t")
        if not line:
            continue
        where = f"{path}:{lineno}"
        name, slots, user, port = _parse_line(line, where)
        address = resolver(name)
        if address is None:
            raise HostfileError(
                f"{where}: cannot resolve host '{shown(name)}'",
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
    text = read_input_file(
        path,
        "hostfile",
        HostfileError,
        "pass --hostfile PATH of a readable text file (one node per line, e.g. '10.0.0.1 slots=8'), "
        "at most 1 MiB",
        not_found_hint="pass --hostfile PATH (one node per line, e.g. '10.0.0.1 slots=8'), or run inside a "
        "Slurm allocation",
    )
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
    if not isinstance(head, str) or not (is_ip(head.strip("[]")) or is_hostname(head)):
        raise HostfileError(
            f"--head {shown(head)}: not a hostname or IP address",
            f"pick one of: {', '.join(h.name for h in hosts)}",
        )
    addr = (resolver or resolve)(head)
    for i, h in enumerate(hosts):
        if h.address == addr or h.name == head:
            return [h] + hosts[:i] + hosts[i + 1 :]
    raise HostfileError(
        f"--head {shown(head)}: not a host of {origin}",
        f"pick one of: {', '.join(h.name for h in hosts)}",
    )


def from_hosts(names: Iterable[str], gpus_per_node: int | None = None, origin: str = "hosts") -> Allocation:
    """Build an :class:`Allocation` from host names/IPs (first = head), resolving each."""
    check_gpus_per_node(gpus_per_node)
    names = list(names)
    for i, n in enumerate(names, 1):
        if not isinstance(n, str) or "\n" in n or "\r" in n:
            raise HostfileError(f"{origin}:{i}: '{shown(n)}' is not one host name", "pass one name per host")
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


def _expand_nodelist(nodelist: str, var: str = "SLURM_JOB_NODELIST") -> list[str]:
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
        except (subprocess.SubprocessError, OSError, ValueError):
            pass
    import hostlist

    try:
        return hostlist.expand_hostlist(nodelist)
    except (hostlist.BadHostlist, ValueError) as e:
        raise HostfileError(
            f"{var}={shown(nodelist)}: cannot expand ({e})", "check the Slurm allocation"
        ) from None


_GRES_TYPE_RE = re.compile(r"[A-Za-z0-9_.\-]+")


def parse_gres(text: str) -> int | None:
    """GPUs in a Slurm GRES/TRES string, or ``None`` when it names no GPU.

    Accepts ``8``-less and typed forms and several entries: ``gpu:8``, ``gpu:h100:8``,
    ``gpu:h100:8(IDX:0-7)``, ``gres:gpu:8`` (TresPerNode), ``gres/gpu=8`` / ``gres/gpu:h100=8``
    (TRES), ``gpu`` or ``gpu:h100`` (one GPU), ``gpu:a100:4,gpu:v100:4`` (summed); other GRES
    (``nic:1``) are ignored; ``(null)`` and ``N/A`` give ``None``. A GPU entry that cannot be
    read (a count that is not ASCII digits, ``gpu:٣``; a type with other characters) raises
    :class:`ValueError` naming it."""
    total = None
    for part in re.split(r",(?![^()]*\))", text or ""):
        part = re.sub(r"\(.*\)$", "", part.strip())
        for prefix in ("gres/", "gres:"):
            part = part.removeprefix(prefix)
        tokens = re.split(r"[:=]", part)
        if tokens[0] != "gpu":
            continue
        rest = tokens[1:]
        count = whole_number(rest[-1]) if rest else 1
        kind = rest[:-1] if rest and count is not None else rest
        if count is None:
            count = 1  # gpu:h100 is one GPU
        if len(kind) > 1 or not all(_GRES_TYPE_RE.fullmatch(k) for k in kind):
            raise ValueError(f"cannot read the GPU count of '{shown(part)}'")
        total = (total or 0) + count
    return total


_GPU_KEYS = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
_GPU_HINT = "check the allocation's GPUs (--gpus-per-node=8 or --gres=gpu:8), or unset the variable"


def _slurm_gpus(env: dict) -> int | None:
    """GPUs per node from SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE (``8`` or ``gpu:h100:8``),
    SLURM_JOB_GPUS / SLURM_STEP_GPUS (a list of ids), else the job's GRES as ``scontrol show job``
    reports it (``--gres=gpu:8`` jobs). A value that cannot be read raises :class:`HostfileError`
    naming the variable."""
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        v = env.get(key, "").strip()
        if v:
            n = whole_number(v)
            if n is None:
                try:
                    n = parse_gres(v if v.startswith(("gpu", "gres")) else f"gpu:{v}")  # h100:8
                except ValueError:
                    raise HostfileError(
                        f"{key}={shown(v)}: not a GPU count (digits 0-9, or type:count such as h100:8)",
                        _GPU_HINT,
                    ) from None
            if n:
                return n
    for key in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        v = env.get(key, "").strip()
        if v:
            ids = [x for x in v.split(",") if x]
            bad = [x for x in ids if not _GRES_TYPE_RE.fullmatch(x)]
            if bad:
                raise HostfileError(
                    f"{key}={shown(v)}: '{shown(bad[0])}' is not a GPU id (a list such as 0,1,2,3)", _GPU_HINT
                )
            return len(ids)
    return _gres_of_job(env.get("SLURM_JOB_ID", ""))


def _gres_of_job(job_id: str) -> int | None:
    """GPUs per node of job ``job_id`` from ``scontrol show job -d`` (TresPerNode, GRES)."""
    import shutil
    import subprocess

    if whole_number(job_id) is None or not shutil.which("scontrol"):
        return None
    try:
        text = subprocess.run(
            ["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True, timeout=20
        ).stdout
    except (subprocess.SubprocessError, OSError, ValueError):
        return None
    for key in ("TresPerNode", "GRES", "JOB_GRES"):
        m = re.search(rf"\b{key}=(\S+)", text)
        if m:
            try:
                n = parse_gres(m.group(1).replace("gres:gpu", "gpu").replace("gres/gpu", "gpu"))
            except ValueError:
                continue
            if n:
                return n
    return None


_HET_GROUP_RE = re.compile(r"SLURM_JOB_NODELIST_HET_GROUP_([0-9]+)")


def _het_suffix(env: dict, var: str, nodelist: str) -> str:
    """``""`` for an ordinary job; for a heterogeneous one, ``_HET_GROUP_N`` when ``var`` holds
    exactly component N's node list (``srun --het-group=N``, or set so by the user); else
    :class:`HostfileError`: the nodes of all components are not one cluster of equal nodes."""
    groups = {int(m.group(1)): v for k, v in env.items() if (m := _HET_GROUP_RE.fullmatch(k))}
    size = (env.get("SLURM_HET_SIZE") or "").strip()
    if not size and not groups:
        return ""
    chosen = [g for g, v in groups.items() if v == nodelist]
    if len(chosen) == 1:
        return f"_HET_GROUP_{chosen[0]}"
    comps = (
        ", ".join(f"component {g}: {shown(v, 60)}" for g, v in sorted(groups.items())) or "no component lists"
    )
    what = f"SLURM_HET_SIZE={shown(size)}" if size else f"SLURM_JOB_NODELIST_HET_GROUP_{min(groups)}"
    raise HostfileError(
        f"{what}: this is a heterogeneous Slurm job ({comps}); glmlaunch runs on the nodes of one component",
        "choose the GPU component: run glmlaunch inside `srun --het-group=N ...`, or set "
        f"{var} to that component's SLURM_JOB_NODELIST_HET_GROUP_N (and SLURM_JOB_NUM_NODES to its node count)",
    )


def from_slurm(
    env: dict | None = None, head: str | None = None, resolver: Callable[[str], str | None] | None = None
) -> Allocation:
    """Read the current Slurm allocation: ``SLURM_JOB_NODELIST`` expanded (``scontrol show
    hostnames`` where it exists), checked against ``SLURM_JOB_NUM_NODES``; GPUs per node from
    ``SLURM_GPUS_ON_NODE`` and friends. Raises :class:`HostfileError` outside an allocation, for a
    heterogeneous job whose component is not chosen, and for a variable that cannot be read
    (named)."""
    resolver = resolver or resolve
    env = dict(os.environ if env is None else env)
    var = "SLURM_JOB_NODELIST" if env.get("SLURM_JOB_NODELIST") else "SLURM_NODELIST"
    nodelist = env.get(var)
    if not nodelist:
        raise HostfileError(
            "not inside a Slurm allocation (SLURM_JOB_NODELIST is not set)",
            "run inside salloc/sbatch, or pass --hostfile PATH",
        )
    job = env.get("SLURM_JOB_ID") or "?"
    if job != "?" and whole_number(job) is None:
        raise HostfileError(
            f"SLURM_JOB_ID={shown(job)}: not a Slurm job id (digits 0-9)",
            "run inside salloc/sbatch (Slurm sets SLURM_JOB_ID), or unset it",
        )
    het = _het_suffix(env, var, nodelist)
    if het:  # the chosen component's counts, where Slurm gives them
        env.update({k: env[k + het] for k in ("SLURM_JOB_NUM_NODES", *_GPU_KEYS) if k + het in env})
    names = _expand_nodelist(nodelist, var)
    if not names:
        raise HostfileError(f"{var}={shown(nodelist)}: names no nodes", "check the Slurm allocation")
    for name in names:
        if not (is_hostname(name) or is_ip(name)):
            raise HostfileError(
                f"{var}={shown(nodelist)}: node '{shown(name)}' is not a hostname",
                f'check the allocation: scontrol show hostnames "${var}"',
            )
    count_var = "SLURM_JOB_NUM_NODES" if env.get("SLURM_JOB_NUM_NODES") else "SLURM_NNODES"
    want = (env.get(count_var) or "").strip()
    if want and whole_number(want) is None:
        raise HostfileError(
            f"{count_var}={shown(want)}: not a node count (digits 0-9)",
            "run inside salloc/sbatch (Slurm sets it), or unset it",
        )
    if want and int(want) != len(names):
        raise HostfileError(
            f"{var}={shown(nodelist)} expands to {len(names)} nodes but {count_var}={want}",
            "check the allocation (for a heterogeneous job, choose one component)",
        )
    gpus = _slurm_gpus(env)
    origin = f"slurm:{job}"
    hosts: list[Host] = []
    seen: dict[str, Host] = {}
    for i, name in enumerate(names):
        addr = resolver(name)
        if addr is None:
            raise HostfileError(
                f"{origin}: cannot resolve node '{name}'", "check DNS or /etc/hosts on the nodes"
            )
        if addr in seen:
            raise HostfileError(
                f"{var}={shown(nodelist)}: node '{name}' is listed twice (first as '{seen[addr].name}', {addr})",
                "check the Slurm allocation",
            )
        h = Host(name=name, address=addr, slots=gpus, source=f"{origin}[{i}]")
        seen[addr] = h
        hosts.append(h)
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


def _with_spares(alloc: Allocation, want_nodes: int | None, spares: str | os.PathLike | None) -> Allocation:
    """``alloc`` with the hosts beyond ``want_nodes`` and those of the ``spares`` hostfile as its
    spares (:func:`discover`). Raises :class:`HostfileError` for a spare that is also a node (or
    listed twice) and for a spare whose slots differ from the nodes'."""
    hosts, extra = list(alloc.hosts), []
    if want_nodes is not None and want_nodes >= 1 and len(hosts) > want_nodes:
        hosts, extra = hosts[:want_nodes], hosts[want_nodes:]
    if spares is not None:
        seen = {h.address: h for h in (*hosts, *extra)}
        try:
            spare_hosts = read_hostfile(spares).hosts
        except HostfileError as err:  # the same reader: say which option the file came from
            raise HostfileError(
                f"--spares: {err.message}",
                "pass --spares PATH of a readable hostfile of spare hosts (one per line, e.g. '10.0.0.9 slots=8')",
            ) from None
        for s in spare_hosts:
            if s.address in seen:
                prev = seen[s.address]
                same = "" if prev.name == s.name else f" (the same address {s.address} as '{prev.name}')"
                raise HostfileError(
                    f"{s.source}: spare '{s.name}' is already listed{same} at {prev.source}",
                    "list each host once: as a node in the hostfile or as a spare in --spares",
                )
            seen[s.address] = s
            extra.append(s)
    if not extra:
        return alloc
    gpus = alloc.gpus_per_node
    for s in extra:
        if s.slots is not None and s.slots != gpus:
            nodes = f"slots={gpus}" if gpus is not None else "no slot count"
            raise HostfileError(
                f"{s.source}: spare '{s.name}' has slots={s.slots} but the nodes have {nodes}",
                "a spare replaces a node one for one: give it the nodes' GPU count, or remove it",
            )
    spare_hosts = tuple(replace(s, slots=gpus) if gpus is not None else s for s in extra)
    return replace(alloc, hosts=tuple(hosts), spares=spare_hosts)


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
    want_nodes: int | None = None,
    spares: str | os.PathLike | None = None,
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
    (``cluster.gpus_per_node`` or its hardware).

    Spares (hostfile mode, 2. and 5.; issue 14): with ``want_nodes`` (the recipe's
    ``cluster.nodes``), hosts listed beyond the first ``want_nodes`` (after the head is moved to
    the front) are the allocation's ``spares``; without it every host is a node. ``spares``: a
    hostfile of more spares, read like the hostfile (:func:`read_hostfile`). A spare that is also
    a node is a :class:`HostfileError` naming its line; so is a spare whose slots differ from the
    nodes'. ``spares`` with any other source of nodes is a :class:`UsageError`.

    Raises :class:`UsageError` for options that exclude each other, :class:`HostfileError` for
    nodes that cannot be read.
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
    if spares is not None and (local or nodes is not None or (hostfile is None and in_slurm)):
        src = "--local" if local else "--nodes" if nodes is not None else "a Slurm allocation"
        raise UsageError(
            f"--spares {shown(os.fspath(spares))}: spare hosts are for a hostfile, not {src}",
            "pass --hostfile PATH with the cluster's nodes, or drop --spares",
        )
    if local:
        return local_allocation(gpus_per_node if gpus_per_node is not None else detect_local_gpus())
    if nodes is not None:
        return placeholder_allocation(nodes, gpus_per_node, origin)
    if hostfile is not None:
        alloc = _with_spares(read_hostfile(hostfile, head=head), want_nodes, spares)
    elif in_slurm:
        alloc = from_slurm(env, head=head)
    else:
        alloc = _with_spares(read_hostfile(DEFAULT_HOSTFILE, head=head), want_nodes, spares)
    if gpus_per_node is not None:
        if alloc.gpus_per_node and alloc.gpus_per_node != gpus_per_node:
            raise HostfileError(
                f"{alloc.origin} says {alloc.gpus_per_node} GPUs per node but --gpus-per-node {gpus_per_node}",
                "drop --gpus-per-node or fix the slots",
            )
        alloc = alloc.with_gpus_per_node(gpus_per_node)
    return alloc
