"""--network / --interface pick each node's address on the test hosts (one round over SSH)."""

from __future__ import annotations

import pytest

from glmlaunch.errors import HostfileError
from glmlaunch.options import SSHOptions
from glmlaunch.run import launch


@pytest.fixture
def ssh(testcluster):
    return SSHOptions(
        ssh_config=str(testcluster.ssh_config),
        key=str(testcluster.ssh_key),
        known_hosts=str(testcluster.known_hosts),
        connect_timeout=5,
    )


@pytest.fixture
def hostfile(tmp_path, testcluster):
    p = tmp_path / "hosts"
    p.write_text("".join(f"{h} slots=8\n" for h in testcluster.hosts))
    return str(p)


def test_network_cidr_picks_each_nodes_address(testcluster, ssh, hostfile):
    res = launch("local-probe", hostfile, dry_run=True, ssh=ssh, network="10.79.0.0/24")
    assert [n.address for n in res.plan.nodes] == [testcluster.host_ips[h] for h in testcluster.hosts]
    assert res.plan.head_address == testcluster.host_ips["h1"]
    assert "--node-ip-address" in res.plan.nodes[1].ray_start


def test_interface_sets_socket_ifname(testcluster, ssh, hostfile):
    res = launch("local-probe", hostfile, dry_run=True, ssh=ssh, interface="eth0")
    assert res.plan.nodes[2].address == testcluster.host_ips["h3"]
    assert res.plan.env_vars["GLOO_SOCKET_IFNAME"] == "eth0"


def test_network_without_a_match_names_the_host(ssh, hostfile):
    with pytest.raises(HostfileError, match=r"hosts:1: no address on network 10\.99\.0\.0/16"):
        launch("local-probe", hostfile, dry_run=True, ssh=ssh, network="10.99.0.0/16")
