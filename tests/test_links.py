"""Peer links: the handshake and records sans-IO, then real TCP between link managers and daemons."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from conftest import NodeFactory, RunningNode, run_cli
from lannode.core.ids import node_id_for
from lannode.core.link import (
    LinkClosed,
    LinkConnection,
    LinkEstablished,
    LinkState,
    MessageReceived,
    Role,
)
from lannode.net.links import LinkError, LinkManager
from lannode.peers.trust import safety_code


def node_id(key: SigningKey) -> str:
    return node_id_for(bytes(key.verify_key))


def pair(network_keys: tuple[bytes | None, bytes | None] = (None, None), aes: tuple[bool, bool] = (True, True), expected: str | None = None) -> tuple[LinkConnection, LinkConnection, SigningKey, SigningKey]:
    a, b = SigningKey.generate(), SigningKey.generate()
    dialer = LinkConnection(a, Role.DIALER, network_key=network_keys[0], expected_node_id=expected or node_id(b), aes_gcm=aes[0])
    listener = LinkConnection(b, Role.LISTENER, network_key=network_keys[1], aes_gcm=aes[1])
    return dialer, listener, a, b


def shuttle(x: LinkConnection, y: LinkConnection) -> None:
    for _ in range(6):
        if data := x.data_to_send():
            y.receive_data(data)
        if data := y.data_to_send():
            x.receive_data(data)


@pytest.mark.parametrize("aes", [(True, True), (True, False), (False, False)])
def test_both_ends_agree_on_who_they_talk_to_and_the_cipher(aes: tuple[bool, bool]) -> None:
    dialer, listener, a, b = pair(aes=aes)
    shuttle(dialer, listener)
    (d_event,), (l_event,) = dialer.events(), listener.events()
    assert isinstance(d_event, LinkEstablished) and isinstance(l_event, LinkEstablished)
    assert d_event.node_id == node_id(b) and l_event.node_id == node_id(a)
    expected = "aes-256-gcm" if all(aes) else "xchacha20-poly1305"
    assert d_event.cipher == l_event.cipher == expected
    # messages of any size arrive whole, in order, on their channel
    for size in (0, 1, 65536, 65537, 300_000):
        dialer.send_message(7, bytes([size % 256]) * size)
    shuttle(dialer, listener)
    got = listener.events()
    assert [(e.channel, len(e.data)) for e in got if isinstance(e, MessageReceived)] == [(7, s) for s in (0, 1, 65536, 65537, 300_000)]


def test_a_peer_holding_another_key_than_expected_is_refused() -> None:
    dialer, listener, _, _ = pair(expected=node_id(SigningKey.generate()))
    shuttle(dialer, listener)
    closed = [e for e in dialer.events() if isinstance(e, LinkClosed)]
    assert closed and closed[0].reason == "identity"
    assert dialer.state is LinkState.CLOSED


def test_without_the_network_key_no_link_completes() -> None:
    dialer, listener, _, _ = pair(network_keys=(b"k" * 32, b"j" * 32))
    shuttle(dialer, listener)
    reasons = {e.reason for e in dialer.events() + listener.events() if isinstance(e, LinkClosed)}
    assert reasons == {"decrypt"}
    dialer, listener, _, _ = pair(network_keys=(b"k" * 32, b"k" * 32))
    shuttle(dialer, listener)
    assert all(isinstance(e, LinkEstablished) for e in dialer.events() + listener.events())


def test_a_tampered_or_replayed_record_ends_the_link() -> None:
    for tamper in ("flip", "replay"):
        dialer, listener, _, _ = pair()
        shuttle(dialer, listener)
        listener.events()
        dialer.send_message(1, b"hello")
        record = bytearray(dialer.data_to_send())
        if tamper == "flip":
            record[-3] ^= 0x40
            listener.receive_data(bytes(record))
        else:
            listener.receive_data(bytes(record))
            listener.receive_data(bytes(record))
        events = listener.events()
        assert isinstance(events[-1], LinkClosed) and events[-1].reason == "decrypt", tamper


def test_a_signature_by_another_key_is_refused() -> None:
    # a man in the middle relays the real node's hello but cannot sign for it
    real, mallory = SigningKey.generate(), SigningKey.generate()
    dialer = LinkConnection(SigningKey.generate(), Role.DIALER, expected_node_id=node_id(real))
    impostor = LinkConnection(mallory, Role.LISTENER)
    honest_hello = LinkConnection(real, Role.LISTENER).data_to_send()
    impostor_hello = impostor.data_to_send()
    forged_hello = impostor_hello[:5] + honest_hello[5:37] + impostor_hello[37:]
    impostor.receive_data(dialer.data_to_send())
    dialer.receive_data(forged_hello + impostor.data_to_send())
    closed = [e for e in dialer.events() if isinstance(e, LinkClosed)]
    assert closed and closed[0].reason in ("signature", "decrypt")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_from_a_stranger_end_in_a_clean_refusal_or_a_wait(data: bytes) -> None:
    listener = LinkConnection(SigningKey(b"\x05" * 32), Role.LISTENER)
    listener.receive_data(data)
    for event in listener.events():
        assert isinstance(event, LinkClosed)


def test_an_oversized_record_length_is_refused_before_allocation() -> None:
    dialer, listener, _, _ = pair()
    shuttle(dialer, listener)
    listener.events()
    listener.receive_data(b"\xff\xff\xff\xff")
    (event,) = listener.events()
    assert isinstance(event, LinkClosed) and event.reason == "oversized"


# -- real TCP, in process ------------------------------------------------------------------------


async def two_managers(nursery: trio.Nursery) -> tuple[LinkManager, LinkManager]:
    keys = [SigningKey.generate(), SigningKey.generate()]
    ids = [node_id(k) for k in keys]
    ports: dict[str, int] = {}
    managers = [LinkManager(k, i, lambda peer: ("127.0.0.1", ports[peer]) if peer in ports else None) for k, i in zip(keys, ids)]
    for manager, i in zip(managers, ids):
        ports[i] = await nursery.start(manager.serve, "127.0.0.1", 0)
    return managers[0], managers[1]


def test_chat_is_not_held_up_behind_a_bulk_transfer_on_the_same_link() -> None:
    arrivals: list[tuple[int, int]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            a, b = await two_managers(nursery)
            done = trio.Event()

            async def on_message(link: Any, data: bytes, channel: int = 0) -> None:
                arrivals.append((channel, len(data)))
                if len(arrivals) == 2:
                    done.set()

            b.handle(1, lambda link, data: on_message(link, data, 1))
            b.handle(200, lambda link, data: on_message(link, data, 200))
            link = await a.link_to(b.node_id)
            await link.send(200, b"\0" * (8 << 20))
            await link.send(1, b"hello")
            with trio.fail_after(30):
                await done.wait()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert arrivals == [(1, 5), (200, 8 << 20)]


def test_simultaneous_dials_settle_on_one_link_and_a_closed_link_redials() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            a, b = await two_managers(nursery)
            got = trio.Event()

            async def on_message(link: Any, data: bytes) -> None:
                got.set()

            b.handle(1, on_message)
            async with trio.open_nursery() as dials:
                dials.start_soon(a.link_to, b.node_id)
                dials.start_soon(b.link_to, a.node_id)
            with trio.fail_after(5):
                while not (len(a.links) == len(b.links) == 1 and a.links[b.node_id].dialed_by == b.links[a.node_id].dialed_by):
                    await trio.sleep(0.01)
            first = a.links[b.node_id]
            first.close("test")
            with trio.fail_after(5):
                while b.links.get(a.node_id) is not None:
                    await trio.sleep(0.01)
            await a.send(b.node_id, 1, b"again")  # dials a fresh link
            with trio.fail_after(5):
                await got.wait()
            assert a.links[b.node_id] is not first
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_an_unreachable_peer_is_reported_and_not_hammered() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]
        key = SigningKey.generate()
        manager = LinkManager(key, node_id(key), lambda peer: ("127.0.0.1", dead_port))
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.serve, "127.0.0.1", 0)
            with pytest.raises(LinkError, match="cannot connect"):
                await manager.link_to("x" * 24)
            with pytest.raises(LinkError, match="next try in"):
                await manager.link_to("x" * 24)
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- real daemons --------------------------------------------------------------------------------


def wait_alive(node: RunningNode, name: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((p for p in node.call("peer.list") if p["name"] == name and p["state"] == "alive"), None)

    found: dict[str, Any] = node.wait_until(find, what=f"{name} alive")
    return found


def test_ping_over_a_link_pins_both_and_trust_compares_safety_codes(nodes: NodeFactory) -> None:
    alice, bob = nodes.start("alice"), nodes.start("bob")
    bob_peer = wait_alive(alice, "bob")
    assert bob_peer["trust"] == "new", "a link the node opened by itself (a view exchange, anti-entropy) pins nobody"
    result = run_cli("ping", "bob", "--json", "--home", str(alice.home.path))
    assert result.returncode == 0, result.stderr
    (pong,) = json.loads(result.stdout)
    assert pong["node_id"] == bob_peer["node_id"] and pong["rtt_ms"] > 0 and pong["cipher"] in ("aes-256-gcm", "xchacha20-poly1305")
    assert wait_alive(alice, "bob")["trust"] == "pinned"
    assert json.loads((alice.home.path / "peers.json").read_text())["peers"].keys() == {bob_peer["node_id"]}
    assert wait_alive(bob, "alice")["trust"] == "new", "being pinged is not dealing with someone"

    wrong = run_cli("trust", "bob", "--code", "12345 67890 12345 67890", "--home", str(alice.home.path))
    assert wrong.returncode == 1 and "differ" in wrong.stderr
    assert wait_alive(alice, "bob")["trust"] == "pinned"
    shown = json.loads(run_cli("trust", "alice", "--json", "--home", str(bob.home.path)).stdout)
    ok = run_cli("trust", "bob", "--code", shown["safety_code"], "--json", "--home", str(alice.home.path))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["safety_code"] == shown["safety_code"]
    assert shown["safety_code"] == safety_code(alice.home.identity().public_key, bob.home.identity().public_key)
    assert wait_alive(alice, "bob")["trust"] == "verified"


ROGUE = textwrap.dedent(
    """
    import socket, sys
    from nacl.signing import SigningKey
    from lannode.core.link import LinkConnection, Role
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(sys.argv[1])))
    server.listen()
    print("ready", flush=True)
    conn, _ = server.accept()
    link = LinkConnection(SigningKey.generate(), Role.LISTENER)
    conn.sendall(link.data_to_send())
    link.receive_data(conn.recv(65536))
    conn.sendall(link.data_to_send())
    conn.recv(65536)
    """
)


def test_a_link_claiming_another_nodes_id_is_refused_and_counted(nodes: NodeFactory) -> None:
    alice, bob = nodes.start("alice"), nodes.start("bob")
    bob_peer = wait_alive(alice, "bob")
    link_port = int(bob_peer["addresses"]["link"].rsplit(":", 1)[1])
    bob.stop(signal.SIGKILL)
    rogue = subprocess.Popen([sys.executable, "-c", ROGUE, str(link_port)], stdout=subprocess.PIPE, text=True)
    try:
        assert rogue.stdout is not None and rogue.stdout.readline().strip() == "ready"
        result = run_cli("ping", bob_peer["node_id"][:8], "--home", str(alice.home.path))
        assert result.returncode == 1
        assert "identity" in result.stderr
        assert alice.status()["links"]["refused"].get("identity") == 1
        assert bob_peer["node_id"] not in json.loads((alice.home.path / "peers.json").read_text() if (alice.home.path / "peers.json").exists() else '{"peers": {}}')["peers"]
    finally:
        rogue.kill()
        rogue.wait()


def test_a_known_name_under_a_new_identity_raises_a_warning(nodes: NodeFactory) -> None:
    alice, bob = nodes.start("alice"), nodes.start("bob")
    wait_alive(alice, "bob")
    assert run_cli("ping", "bob", "--home", str(alice.home.path)).returncode == 0
    old_id = wait_alive(alice, "bob")["node_id"]
    bob.stop()
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        from lannode.net.api_client import connect

        async with connect(alice.home) as client:
            await client.subscribe("peer.identity_warning")
            await trio.to_thread.run_sync(lambda: nodes.start("bob"))  # a new home: a new key, the same name
            with trio.fail_after(20):
                async for topic, data in client.events():
                    events.append(data)
                    return

    trio.run(watch)
    assert events[0]["name"] == "bob" and events[0]["pinned_node_id"] == old_id and events[0]["node_id"] != old_id
    listed = {p["node_id"]: p for p in alice.call("peer.list")}
    assert listed[events[0]["node_id"]]["trust"] == "new"
    assert "new identity" in listed[events[0]["node_id"]]["warning"]
    assert listed[old_id]["trust"] == "pinned", "never merged with the pinned peer"
    text = run_cli("peers", "--home", str(alice.home.path))
    assert "warning" in text.stderr


def test_a_message_sent_in_the_same_write_as_the_handshake_is_not_lost(nodes: NodeFactory) -> None:
    """A dialer's signature and its first message often arrive in one read; the listener
    must dispatch the message, not drop it with the handshake's other events."""
    alice, _bob = nodes.start("alice"), nodes.start("bob")
    bob_peer = wait_alive(alice, "bob")
    host, port = bob_peer["addresses"]["link"].rsplit(":", 1)
    conn = LinkConnection(alice.home.identity().signing_key, Role.DIALER, expected_node_id=bob_peer["node_id"])
    alice.stop()  # its daemon's own link would otherwise replace ours
    request = {"t": "sig", "rid": 7, "kind": "offer", "data": {}, "to_front": None, "from_front": None, "from_name": "alice"}
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(conn.data_to_send())
        while conn.state is not LinkState.OPEN:
            conn.receive_data(sock.recv(65536))
        conn.send_message(4, json.dumps(request).encode())  # the signaling channel
        sock.sendall(conn.data_to_send())  # signature and message in one write
        sock.settimeout(10)
        replies = []
        while not replies:
            conn.receive_data(sock.recv(65536))
            replies = [json.loads(e.data) for e in conn.events() if isinstance(e, MessageReceived) and e.channel == 4]
    assert replies[0]["rid"] == 7 and "nobody has lannode open" in replies[0]["error"]


def test_bulk_connections_with_a_bad_token_or_garbage_are_refused_and_counted(nodes: NodeFactory) -> None:
    alice, bob = nodes.start("alice"), nodes.start("bob")
    bob_peer = wait_alive(alice, "bob")
    host, port = bob_peer["addresses"]["link"].rsplit(":", 1)
    from lannode.core.bulk import bulk_hello

    for first in (bulk_hello(bytes(16)), b"LNB\x07" + bytes(16), b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl\r\nAccept: */*\r\nConnection: close\r\n\r\n"):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(first)
            sock.settimeout(10)
            heard = b""
            try:
                while chunk := sock.recv(100):
                    heard += chunk
            except ConnectionResetError:
                pass
            # a bulk hello gets no answer at all; anything else meets a link's hello, then the door
            assert heard == b"" if first.startswith(b"LNB") else heard.startswith(b"LNL")
    status = bob.status()
    assert status["links"]["refused"] == {"bulk_token": 1, "bulk_hello": 1, "magic": 1}
    assert alice.call("peer.ping", peer="bob")["rtt_ms"] > 0, "the link port still works"
