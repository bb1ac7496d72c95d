"""Pick each node's address on the chosen network (multi-NIC hosts).

The hostfile's address may be a management NIC; Ray's ``--node-ip-address``, NCCL/Gloo and
``MASTER_ADDR`` must all use the fabric. ``--network CIDR`` picks, on every node, the one IPv4
address inside that network; ``--interface NAME`` picks the address of that interface (and the
recipe's ``env.interface`` then names it for GLOO/TP/NCCL_SOCKET_IFNAME). One round over the
nodes (``ip -o -4 addr``), before the plan is built. A node with no matching address, or more than
one, is an error that names it.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import shlex
from dataclasses import replace

from . import nodeops
from .errors import HostfileError, TransportError
from .hosts import Allocation
from .transport import Target, Transport


def select_addresses(
    alloc: Allocation,
    transport: Transport,
    *,
    python: str,
    network: str | None = None,
    interface: str | None = None,
    setup: list[str] | None = None,
    timeout: float = 60.0,
) -> Allocation:
    """Return ``alloc`` with each host's ``address`` (its spares' too: a spare must answer at
    launch) replaced by its address on ``network`` (CIDR) or ``interface``. Raises :class:`HostfileError` (no or several matches, bad CIDR) and
    :class:`TransportError` (unreachable nodes)."""
    if not network and not interface:
        return alloc
    net = None
    if network:
        try:
            net = ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise HostfileError(
                f"--network {network}: not a network", "write it as CIDR, e.g. 10.4.0.0/16"
            ) from None
    src = inspect.getsource(nodeops)
    prefix = "".join(f"{s} && " for s in setup or [])
    cmd = f"{prefix}{shlex.quote(python)} -c {shlex.quote(src)} addresses '{{}}'"
    every = (*alloc.hosts, *alloc.spares)
    targets = {h.name: Target(h.name, h.address, h.ssh_user, h.ssh_port) for h in every}
    res = transport.run_many({t: cmd for t in targets.values()}, timeout=timeout)
    bad = {t.name: r.reason() for t, r in res.items() if not r.ok}
    if bad:
        raise TransportError(
            "cannot read the nodes' addresses: " + "; ".join(f"{h}: {w}" for h, w in bad.items()),
            failures=bad,
            hint="check ssh access to the named hosts",
        )
    hosts = []
    for h in every:
        by_if = json.loads(res[targets[h.name]].stdout.strip().splitlines()[-1])
        if interface:
            cands = by_if.get(interface, [])
            what = f"interface {interface}"
        else:
            assert net is not None
            cands = [a for addrs in by_if.values() for a in addrs if ipaddress.ip_address(a) in net]
            what = f"network {network}"
        cands = list(dict.fromkeys(cands))
        if len(cands) != 1:
            have = ", ".join(f"{k}={'/'.join(v)}" for k, v in by_if.items())
            raise HostfileError(
                f"{h.source or h.name}: {'no' if not cands else 'more than one'} address on {what} ({have})",
                "pick the network the nodes share with --network CIDR or --interface NAME",
            )
        hosts.append(replace(h, address=cands[0]))
    n = len(alloc.hosts)
    return replace(alloc, hosts=tuple(hosts[:n]), spares=tuple(hosts[n:]))
