"""glmlaunch.hosts: hostfile formats, head selection, Slurm allocations, discover()."""

from __future__ import annotations

import shutil

import pytest

from glmlaunch import hosts
from glmlaunch.errors import HostfileError
from glmlaunch.hosts import (
    Allocation,
    Host,
    choose_head,
    discover,
    from_hosts,
    from_slurm,
    local_allocation,
    parse_hostfile_text,
    placeholder_allocation,
    read_hostfile,
)


def parse(text: str):
    return parse_hostfile_text(text, "hf", hosts.resolve)  # the fake DNS of conftest


def summary(hs):
    return [(h.name, h.address, h.slots) for h in hs]


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "line, expected",
    [
        # OpenMPI
        ("node1 slots=8 max_slots=8", ("node1", "10.0.0.1", 8)),
        ("10.0.0.1 slots=8 max_slots=16", ("10.0.0.1", "10.0.0.1", 8)),
        # DeepSpeed
        ("node2 slots=8", ("node2", "10.0.0.2", 8)),
        # slime / miles (only column 1 was read by the seed; the count is ours too)
        ("10.0.0.1 slot=8", ("10.0.0.1", "10.0.0.1", 8)),
        # MPICH / Hydra
        ("node3:8", ("node3", "10.0.0.3", 8)),
        ("10.0.0.4:4", ("10.0.0.4", "10.0.0.4", 4)),
        ("[::1]:8", ("::1", "::1", 8)),
        ("[fe80::1]:2", ("fe80::1", "fe80::1", 2)),
        # bare hosts: hostname, IPv4, IPv6
        ("node4", ("node4", "10.0.0.4", None)),
        ("192.168.1.20", ("192.168.1.20", "192.168.1.20", None)),
        ("fe80::1", ("fe80::1", "fe80::1", None)),
        ("2001:db8::10 slots=8", ("2001:db8::10", "2001:db8::10", 8)),
        ("[2001:db8::11] slots=8", ("2001:db8::11", "2001:db8::11", 8)),
        ("v6host slots=8", ("v6host", "fe80::1", 8)),
        # MPICH count and slots agreeing
        ("node5:8 slots=8", ("node5", "10.0.0.5", 8)),
        # whitespace: tabs, leading spaces, CRLF, trailing comment
        ("\t  node6\tslots=8   # rack B\r", ("node6", "10.0.0.6", 8)),
    ],
)
def test_formats(line, expected):
    (h,) = parse(line + "\n")
    assert (h.name, h.address, h.slots) == expected
    assert h.source == "hf:1"


def test_ssh_user_and_port():
    hs = parse("root@node1 slots=8 ssh_port=2222\nnode2 slots=8 ssh_user=ubuntu\n")
    assert [(h.ssh_user, h.ssh_port) for h in hs] == [("root", 2222), ("ubuntu", None)]
    assert hs[0].name == "node1"


def test_comments_blank_lines_and_order():
    text = """
# rack A
10.0.0.3 slots=8    # first listed is the head

   # indented comment
10.0.0.1 slots=8
\t
node2 slots=8 # by name
"""
    hs = parse(text)
    assert summary(hs) == [("10.0.0.3", "10.0.0.3", 8), ("10.0.0.1", "10.0.0.1", 8), ("node2", "10.0.0.2", 8)]
    assert [h.source for h in hs] == ["hf:3", "hf:6", "hf:8"]


def test_crlf_file():
    hs = parse("10.0.0.1 slots=8\r\n10.0.0.2 slots=8\r\n")
    assert [h.address for h in hs] == ["10.0.0.1", "10.0.0.2"]


def test_max_slots_zero_is_allowed_and_ignored():
    (h,) = parse("node1 slots=8 max_slots=0\n")
    assert h.slots == 8


def test_is_loopback():
    assert Host("a", "127.0.0.1").is_loopback
    assert Host("a", "::1").is_loopback
    assert not Host("a", "10.0.0.1").is_loopback
    assert not Host("node-0", "node-0").is_loopback


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "hf: no hosts"),
        ("# only a comment\n\n   \n", "hf: no hosts"),
        ("10.0.0.1 slots=8\n10.0.0.1 slots=8\n", "hf:2: host '10.0.0.1' is listed twice; first at hf:1"),
        (
            "localhost\n127.0.0.1\n",
            "hf:2: host '127.0.0.1' is listed twice ('localhost' and '127.0.0.1' are the same address 127.0.0.1)",
        ),
        (
            "node1 slots=8\n10.0.0.1 slots=8\n",
            "('node1' and '10.0.0.1' are the same address 10.0.0.1); first at hf:1",
        ),
        ("::1\n[::1]:8\n", "hf:2: host '::1' is listed twice"),
        ("10.0.0.1 slots=8 junk\n", "hf:1: cannot read 'junk' after the host name"),
        ("10.0.0.1 gpus=8\n", "hf:1: unknown key 'gpus'"),
        ("10.0.0.1 slots=0\n", "hf:1: slots=0 is not a positive whole number"),
        ("node1:abc\n", "hf:1: cannot read 'node1:abc'"),
        ("node1:8 slots=4\n", "hf:1: the GPU count is given twice (8 and 4)"),
        ("bad!host\n", "hf:1: 'bad!host' is not a hostname or IP address"),
        ("10.0.0.1\nunknown-host\n", "hf:2: cannot resolve host 'unknown-host'"),
        ("10.0.0.1 slots=8\n10.0.0.2 slots=4\n", "hf:2: '10.0.0.2' has slots=4 but hf:1 has slots=8"),
        ("10.0.0.1 slots=8\n10.0.0.2\n", "hf:2: '10.0.0.2' has no slot count while other lines do"),
    ],
)
def test_bad_hostfiles(text, message):
    with pytest.raises(HostfileError) as ei:
        parse(text)
    assert message in ei.value.message
    assert ei.value.hint  # every error says what to do next


# ----------------------------------------------------------------------------- read_hostfile / head


def test_read_hostfile_default_head_is_first(write_hostfile):
    p = write_hostfile("10.0.0.1 slots=8\n10.0.0.2 slots=8\n10.0.0.3 slots=8\n")
    a = read_hostfile(p)
    assert isinstance(a, Allocation)
    assert a.head.address == "10.0.0.1" and a.num_nodes == 3 and a.gpus_per_node == 8
    assert [w.address for w in a.workers] == ["10.0.0.2", "10.0.0.3"]
    assert a.origin == str(p)
    assert a.hosts[1].source == f"{p}:2"


@pytest.mark.parametrize("head", ["10.0.0.3", "node3"])
def test_head_by_ip_or_name_matches_resolved_address(write_hostfile, head):
    # the file names node3 by IP; --head may give its name (compared by resolved address, not string)
    p = write_hostfile("10.0.0.1 slots=8\n10.0.0.2 slots=8\n10.0.0.3 slots=8\n")
    a = read_hostfile(p, head=head)
    assert [h.address for h in a.hosts] == ["10.0.0.3", "10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize("head", ["node2", "10.0.0.2"])
def test_head_when_file_uses_names(write_hostfile, head):
    p = write_hostfile("node1 slots=8\nnode2 slots=8\nnode3 slots=8\n")
    a = read_hostfile(p, head=head)
    assert [h.name for h in a.hosts] == ["node2", "node1", "node3"]


def test_head_not_in_file(write_hostfile):
    p = write_hostfile("10.0.0.1\n10.0.0.2\n")
    with pytest.raises(
        HostfileError, match=r"(?s)--head 10\.0\.0\.9: not a host of .*pick one of: 10\.0\.0\.1, 10\.0\.0\.2"
    ):
        read_hostfile(p, head="10.0.0.9")


def test_explicit_resolver_wins(write_hostfile):
    p = write_hostfile("alpha slots=8\nbeta slots=8\n")
    dns = {"alpha": "192.168.0.1", "beta": "192.168.0.2"}
    a = read_hostfile(p, head="192.168.0.2", resolver=lambda n: dns.get(n, n))
    assert [h.name for h in a.hosts] == ["beta", "alpha"]


def test_choose_head_none_keeps_order():
    hs = parse("10.0.0.1\n10.0.0.2\n")
    assert choose_head(hs, None, "hf") == hs


def test_read_hostfile_missing(tmp_path):
    with pytest.raises(HostfileError, match="hostfile not found") as ei:
        read_hostfile(tmp_path / "nope")
    assert "--hostfile" in ei.value.hint


def test_read_hostfile_directory(tmp_path):
    with pytest.raises(HostfileError, match="the hostfile is a directory, not a regular file"):
        read_hostfile(tmp_path)


def test_real_resolve_literals(real_resolve):
    assert real_resolve("10.1.2.3") == "10.1.2.3"
    assert real_resolve("[::1]") == "::1"
    assert real_resolve("fe80::1") == "fe80::1"  # literals never reach DNS


def test_fake_dns_reaches_default_arguments(write_hostfile):
    # parse/read/choose_head look glmlaunch.hosts.resolve up when called, so a replaced resolver
    # is used without passing resolver= (what the CLI tests rely on)
    a = read_hostfile(write_hostfile("node1 slots=8\nnode2 slots=8\n"), head="10.0.0.2")
    assert [h.address for h in a.hosts] == ["10.0.0.2", "10.0.0.1"]


def test_from_hosts_and_gpus():
    a = from_hosts(["node2", "10.0.0.1"], gpus_per_node=4)
    assert [h.address for h in a.hosts] == ["10.0.0.2", "10.0.0.1"]
    assert a.gpus_per_node == 4 and all(h.slots == 4 for h in a.hosts)


def test_with_gpus_per_node():
    a = local_allocation(None).with_gpus_per_node(2)
    assert a.gpus_per_node == 2 and a.head.slots == 2 and a.head.address == "127.0.0.1"


def test_placeholder_allocation():
    a = placeholder_allocation(3, 4)
    assert [h.address for h in a.hosts] == ["node-0", "node-1", "node-2"]
    assert a.gpus_per_node == 4 and a.placeholder
    with pytest.raises(HostfileError, match="--nodes 0: need at least 1 node"):
        placeholder_allocation(0, 8)
    assert placeholder_allocation(2, 0).gpus_per_node == 0  # CPU-only nodes
    a = placeholder_allocation(2)
    assert a.gpus_per_node is None and all(h.slots is None for h in a.hosts)
    with pytest.raises(
        HostfileError, match="--gpus-per-node -1: the GPUs per node must be a whole number, 0 or more"
    ):
        placeholder_allocation(2, -1)


@pytest.mark.parametrize("kw", [{"nodes": 2}, {"local": True}, {"hostfile": "HF"}])
def test_negative_gpus_per_node(kw, hostfile8):
    kw = {k: str(hostfile8) if v == "HF" else v for k, v in kw.items()}
    with pytest.raises(HostfileError, match="--gpus-per-node -1") as ei:
        discover(gpus_per_node=-1, env={}, **kw)
    assert "--gpus-per-node 8" in ei.value.hint
    with pytest.raises(HostfileError, match="--gpus-per-node -2"):
        local_allocation(-2)
    with pytest.raises(HostfileError, match="--gpus-per-node -1"):
        from_hosts(["node1"], gpus_per_node=-1)


@pytest.mark.parametrize(
    "line, message, hint",
    [
        ("10.0.0.1 ssh_port=abc", "ssh_port=abc is not a positive whole number", "write ssh_port=22"),
        ("10.0.0.1 ssh_port=0", "ssh_port=0 is not a positive whole number", "write ssh_port=22"),
        ("10.0.0.1 ssh_port=70000", "ssh_port=70000 is not a TCP port (1-65535)", "write ssh_port=22"),
        ("10.0.0.1 slots=8 max_slots=4", "max_slots=4 is less than slots=8", "write max_slots=8 or more"),
        ("10.0.0.1 max_slots=4 slot=8", "max_slots=4 is less than slots=8", "write max_slots=8 or more"),
        ("node1:8 max_slots=2", "max_slots=2 is less than slots=8", "drop max_slots"),
    ],
)
def test_bad_hostfile_values(line, message, hint, write_hostfile):
    p = write_hostfile(line + "\n")
    with pytest.raises(HostfileError) as ei:
        read_hostfile(p)
    assert f"{p}:1: {message}" in ei.value.message
    assert hint in ei.value.hint


def test_good_max_slots_and_port(write_hostfile):
    a = read_hostfile(write_hostfile("10.0.0.1 slots=4 max_slots=8 ssh_port=65535\n"))
    assert a.gpus_per_node == 4 and a.head.ssh_port == 65535


# ----------------------------------------------------------------------------- Slurm


@pytest.mark.parametrize(
    "nodelist, names",
    [
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("gpu-a[1-2],cpu[9-11]", ["gpu-a1", "gpu-a2", "cpu9", "cpu10", "cpu11"]),
        ("node[09-11]", ["node09", "node10", "node11"]),
        ("node05", ["node05"]),
    ],
)
def test_from_slurm_hostlist_fallback(no_scontrol, fake_resolve, nodelist, names):
    env = {
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": str(len(names)),
        "SLURM_JOB_ID": "42",
        "SLURM_GPUS_ON_NODE": "8",
    }
    a = from_slurm(env)
    assert [h.name for h in a.hosts] == names
    assert [h.address for h in a.hosts] == [fake_resolve(n) for n in names]
    assert a.gpus_per_node == 8 and all(h.slots == 8 for h in a.hosts)
    assert a.origin == "slurm:42" and a.job_id == "42"
    assert [h.source for h in a.hosts] == [f"slurm:42[{i}]" for i in range(len(names))]


def test_from_slurm_uses_scontrol_when_present(monkeypatch):
    import subprocess

    calls = []

    def fake_run(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="node01\nnode02\n", stderr="")

    monkeypatch.setattr(
        shutil, "which", lambda cmd, *a, **k: "/usr/bin/scontrol" if cmd == "scontrol" else None
    )
    monkeypatch.setattr(subprocess, "run", fake_run)
    a = from_slurm({"SLURM_JOB_NODELIST": "node[01-02]", "SLURM_GPUS_ON_NODE": "8"})
    assert calls == [["scontrol", "show", "hostnames", "node[01-02]"]]
    assert [h.name for h in a.hosts] == ["node01", "node02"]


@pytest.mark.parametrize("head", ["node03", "10.0.1.3"])
def test_from_slurm_head(no_scontrol, head):
    a = from_slurm({"SLURM_JOB_NODELIST": "node[01-03]", "SLURM_GPUS_ON_NODE": "8"}, head=head)
    assert [h.name for h in a.hosts] == ["node03", "node01", "node02"]


@pytest.mark.parametrize(
    "extra, gpus",
    [
        ({"SLURM_GPUS_ON_NODE": "4"}, 4),
        ({"SLURM_GPUS_PER_NODE": "gpu:h100:8"}, 8),
        ({"SLURM_GPUS_PER_NODE": "8"}, 8),
        ({"SLURM_JOB_GPUS": "0,1,2,3"}, 4),
        ({}, None),
    ],
)
def test_from_slurm_gpus(no_scontrol, extra, gpus):
    a = from_slurm({"SLURM_NODELIST": "node[01-02]", **extra})
    assert a.gpus_per_node == gpus


def test_from_slurm_resolver_argument(no_scontrol):
    a = from_slurm(
        {"SLURM_JOB_NODELIST": "x[1-2]"}, resolver=lambda n: {"x1": "172.16.0.1", "x2": "172.16.0.2"}[n]
    )
    assert [h.address for h in a.hosts] == ["172.16.0.1", "172.16.0.2"]


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "not inside a Slurm allocation (SLURM_JOB_NODELIST is not set)"),
        (
            {"SLURM_JOB_NODELIST": "node[01-03]", "SLURM_JOB_NUM_NODES": "4"},
            "SLURM_JOB_NODELIST=node[01-03] expands to 3 nodes but SLURM_JOB_NUM_NODES=4",
        ),
        ({"SLURM_JOB_NODELIST": "node[01-"}, "SLURM_JOB_NODELIST=node[01-: cannot expand"),
        ({"SLURM_JOB_NODELIST": "ghost[1-2]", "SLURM_JOB_ID": "7"}, "slurm:7: cannot resolve node 'ghost1'"),
        ({"SLURM_JOB_NODELIST": "node[01-02]"}, "--head node09: not a host of slurm:?"),
    ],
)
def test_from_slurm_errors(no_scontrol, env, message):
    with pytest.raises(HostfileError) as ei:
        from_slurm(env, head="node09" if "head" in message else None)
    assert message in ei.value.message


# ----------------------------------------------------------------------------- discover()


def test_discover_hostfile(hostfile8):
    a = discover(str(hostfile8), env={})
    assert a.num_nodes == 8 and a.gpus_per_node == 8 and a.origin == str(hostfile8)


def test_discover_hostfile_head(hostfile8):
    assert discover(str(hostfile8), head="10.0.0.5", env={}).head.address == "10.0.0.5"


def test_discover_gpus_fill_in_missing_slots(write_hostfile):
    p = write_hostfile("10.0.0.1\n10.0.0.2\n")
    a = discover(str(p), gpus_per_node=4, env={})
    assert a.gpus_per_node == 4 and all(h.slots == 4 for h in a.hosts)


def test_discover_gpus_disagree_with_slots(hostfile8):
    with pytest.raises(HostfileError, match=r"says 8 GPUs per node but --gpus-per-node 4"):
        discover(str(hostfile8), gpus_per_node=4, env={})


def test_discover_nodes_placeholder():
    a = discover(nodes=3, gpus_per_node=4, env={})
    assert a.placeholder and a.num_nodes == 3 and a.gpus_per_node == 4
    # no --gpus-per-node: the count is left to the recipe (glmlaunch.resolve.gpus_per_node)
    a = discover(nodes=2, env={})
    assert a.gpus_per_node is None and all(h.slots is None for h in a.hosts)
    assert discover(nodes=2, gpus_per_node=0, env={}).gpus_per_node == 0


def test_discover_local(monkeypatch):
    monkeypatch.setattr(hosts, "detect_local_gpus", lambda: 2)
    a = discover(local=True, env={})
    assert a.origin == "local" and a.head.address == "127.0.0.1" and a.gpus_per_node == 2
    assert discover(local=True, gpus_per_node=8, env={}).gpus_per_node == 8


def test_discover_slurm_from_env(no_scontrol):
    env = {
        "SLURM_JOB_NODELIST": "node[01-02]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_JOB_ID": "9",
    }
    a = discover(env=env)
    assert a.origin == "slurm:9" and [h.name for h in a.hosts] == ["node01", "node02"]
    assert discover(env=env, head="node02").head.name == "node02"


def test_discover_hostfile_beats_slurm(no_scontrol, hostfile8):
    a = discover(str(hostfile8), env={"SLURM_JOB_NODELIST": "node[01-02]"})
    assert a.origin == str(hostfile8)


def test_discover_default_hostfile(monkeypatch, tmp_path, write_hostfile):
    monkeypatch.setattr(hosts, "DEFAULT_HOSTFILE", str(tmp_path / "missing"))
    with pytest.raises(HostfileError, match="missing: hostfile not found"):
        discover(env={})
    p = write_hostfile("10.0.0.1 slots=8\n", "rack")
    monkeypatch.setattr(hosts, "DEFAULT_HOSTFILE", str(p))
    assert discover(env={}).origin == str(p)


def test_discover_slurm_forced_outside_allocation():
    with pytest.raises(HostfileError, match="not inside a Slurm allocation"):
        discover(slurm=True, env={})


# ----------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("text", ["", "8", "08", "18446744073709551616"])
def test_whole_number_ascii_digits(text):
    assert hosts.whole_number(text) == (int(text) if text and len(text) <= 18 else None)


@pytest.mark.parametrize("text", ["²", "٣", "８", "+8", " 8", "8\n", "-1", "1_0", "0x10"])
def test_whole_number_refuses_other_digits(text):
    assert hosts.whole_number(text) is None


def test_crlf_bom_and_tabs_read_from_a_file(tmp_path):
    p = tmp_path / "hf"
    p.write_bytes(b"\xef\xbb\xbf10.0.0.1\tslots=8\r\n# comment\r\n10.0.0.2 slots=8\r\n")
    a = read_hostfile(p)
    assert [h.source for h in a.hosts] == [f"{p}:1", f"{p}:3"] and a.gpus_per_node == 8


def test_line_numbers_count_newlines_only():
    """A form feed is not a line break (str.splitlines would make it one and shift the numbers)."""
    with pytest.raises(HostfileError, match=r"hf:2: '10.0.0.2\\x0cslots=8' is not a hostname"):
        parse("10.0.0.1 slots=8\n10.0.0.2\x0cslots=8\n")


def test_ipv6_zone_id_is_an_interface_name():
    (h,) = parse("[fe80::1%eth0]:8\n")
    assert (h.name, h.slots) == ("fe80::1%eth0", 8)
    with pytest.raises(HostfileError, match="'fe80::1%eth0;rm' is not an IPv6 address with a zone id"):
        parse("fe80::1%eth0;rm slots=8\n")


def test_host_label_too_long_is_refused_before_dns():
    with pytest.raises(HostfileError, match="is not a hostname or IP address"):
        parse("a" * 64 + ".example slots=8\n")


def test_resolve_never_raises(real_resolve):
    assert real_resolve("a" * 64 + ".invalid") is None
    assert real_resolve("x\0y") is None


@pytest.mark.parametrize("head", ["-oProxyCommand=x", "bad host", "node1\n"])
def test_head_must_be_a_host_name(head):
    with pytest.raises(HostfileError, match="not a hostname or IP address"):
        choose_head(parse("node1\nnode2\n"), head, "hf")


def test_from_hosts_one_name_per_host():
    with pytest.raises(HostfileError, match="is not one host name"):
        from_hosts(["node1\nnode2"])


def test_read_hostfile_refuses_fifo_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(HostfileError, match=r"the hostfile is a named pipe \(FIFO\), not a regular file"):
        read_hostfile(tmp_path / "fifo")


def test_read_input_file_refuses_big_file(tmp_path):
    p = tmp_path / "big"
    p.write_text("10.0.0.1 slots=8\n" * 100)
    with pytest.raises(HostfileError, match="the hostfile is larger than 1000 bytes; it is not read"):
        hosts.read_input_file(p, "hostfile", HostfileError, "x", max_bytes=1000)
    assert hosts.read_input_file(p, "hostfile", HostfileError, "x", max_bytes=1700).count("\n") == 100


def test_het_job_component_chosen(no_scontrol):
    env = {
        "SLURM_JOB_NODELIST": "node[01-02]",
        "SLURM_HET_SIZE": "2",
        "SLURM_JOB_NODELIST_HET_GROUP_0": "cpu[9-10]",
        "SLURM_JOB_NODELIST_HET_GROUP_1": "node[01-02]",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_JOB_NUM_NODES_HET_GROUP_1": "2",
        "SLURM_GPUS_ON_NODE": "0",
        "SLURM_GPUS_ON_NODE_HET_GROUP_1": "8",
    }
    a = from_slurm(env)
    assert [h.name for h in a.hosts] == ["node01", "node02"] and a.gpus_per_node == 8


def test_het_job_without_a_component(no_scontrol):
    env = {
        "SLURM_JOB_NODELIST": "cpu[9-10],node[01-02]",
        "SLURM_HET_SIZE": "2",
        "SLURM_JOB_NODELIST_HET_GROUP_0": "cpu[9-10]",
        "SLURM_JOB_NODELIST_HET_GROUP_1": "node[01-02]",
    }
    with pytest.raises(HostfileError, match="SLURM_HET_SIZE=2: this is a heterogeneous Slurm job") as ei:
        from_slurm(env)
    assert "component 1: node[01-02]" in ei.value.message and "--het-group" in ei.value.hint


@pytest.mark.parametrize("text", ["gpu:٣", "gpu:h100:٨", "gpu:h1 00:8", "gpu:a:b:8"])
def test_parse_gres_unreadable(text):
    with pytest.raises(ValueError, match="cannot read the GPU count"):
        hosts.parse_gres(text)


def test_zero_gpus_per_node_is_a_count_not_missing():
    from glmlaunch.hosts import placeholder_allocation
    from glmlaunch.recipe import load_recipe
    from glmlaunch.resolve import gpus_per_node

    r = load_recipe("glm45-355b-a32b-gspo")
    assert gpus_per_node(r, placeholder_allocation(8, 0)) == (0, "slots")  # --gpus-per-node 0
    assert gpus_per_node(r, placeholder_allocation(8)) == (8, "cluster.gpus_per_node")
