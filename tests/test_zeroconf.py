"""zeroconf: nodes are visible to DNS-SD browsers and find each other where multicast gossip does not reach."""

from __future__ import annotations

import time

from zeroconf import IPVersion, ServiceBrowser, Zeroconf

from conftest import NodeFactory, RunningNode, private_gossip, run_cli, write_config
from lannode import __version__
from lannode.home import Home
from lannode.net.dnssd import SERVICE_TYPE


def start_in_group(nodes: NodeFactory, name: str, group: str, port: int) -> RunningNode:
    home = Home(nodes.root / name)
    write_config(home.path, name, gossip=(group, port))
    return nodes.start_on(home, name=name)


def test_nodes_whose_multicast_gossip_cannot_meet_find_each_other_through_zeroconf(nodes: NodeFactory) -> None:
    _, port = nodes.gossip
    # two different multicast groups: gossip multicast from one never reaches the other
    a = start_in_group(nodes, "east", "239.255.1.1", port)
    b = start_in_group(nodes, "west", "239.255.2.2", port)
    b_id = b.status()["node_id"]
    a.wait_until(lambda: {p["node_id"]: p["state"] for p in a.call("peer.list")}.get(b_id) == "alive", timeout=30, what="west found through zeroconf")
    assert a.status()["zeroconf"]["found"] + b.status()["zeroconf"]["found"] >= 1
    assert a.status()["gossip"]["members"]["alive"] == 1
    # and from then on it is an ordinary member: links work
    assert run_cli("ping", "west", "--home", str(a.home.path)).returncode == 0


def test_a_dns_sd_browser_sees_the_node_with_its_id_name_and_version(nodes: NodeFactory) -> None:
    node = nodes.start("visible")
    node_id = node.status()["node_id"]
    node.wait_until(lambda: node.status()["zeroconf"]["advertised"], what="zeroconf registration")
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    seen: dict[str, dict[bytes, bytes | None]] = {}

    def changed(zeroconf: Zeroconf, service_type: str, name: str, state_change: object) -> None:
        info = zeroconf.get_service_info(service_type, name, timeout=1500)
        if info is not None:
            seen[name] = dict(info.properties)

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[changed])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(p.get(b"id") == node_id.encode() for p in seen.values()):
            time.sleep(0.1)
    finally:
        browser.cancel()
        zc.close()
    (name, props), *_ = [(n, p) for n, p in seen.items() if p.get(b"id") == node_id.encode()]
    assert name == f"visible [{node_id}].{SERVICE_TYPE}"
    assert props[b"name"] == b"visible" and props[b"version"] == __version__.encode()


def test_nodes_of_another_network_are_left_alone(nodes: NodeFactory) -> None:
    _, port = nodes.gossip
    a = start_in_group(nodes, "ours", "239.255.3.3", port)
    other_group, other_port = private_gossip()
    home = Home(nodes.root / "theirs")
    write_config(home.path, "theirs", gossip=(other_group, other_port))
    run_cli("network-key", "new", "--home", str(home.path))
    nodes.start_on(home, name="theirs")
    a.wait_until(lambda: a.status()["zeroconf"]["ignored"] >= 1, timeout=30, what="the other network's node seen and ignored")
    assert a.call("peer.list") == []
