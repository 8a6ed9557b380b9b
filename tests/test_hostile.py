"""Attacks on running nodes, made as an attacker on the LAN would make them: a throwaway key,
hand-made datagrams and link frames, a doctored home. The victim stays up, serves its API,
and counts what it refused (issue 25's list, one test per attack)."""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import stat
import time
from typing import Any

from nacl.signing import SigningKey

from lannode.chat.service import new_message_id
from lannode.core import messages as m
from lannode.core.chat import (
    ChatMessage,
    MessageFrame,
    dm_conversation,
    encode_frame,
)
from lannode.core.ids import node_id_for
from lannode.core.link import CHANNEL_CHAT
from lannode.core.store import MAX_CLOCK_SKEW_MS, Entry
from lannode.core.wire import DatagramCodec
from lannode.home import Home
from tests.conftest import (
    NodeFactory,
    RunningNode,
    raw_link,
    run_cli,
    set_options,
    write_config,
)

U64_MAX = (1 << 64) - 1


def pair(nodes: NodeFactory, *names: str) -> list[RunningNode]:
    started = [nodes.start(n) for n in names]
    for node in started:
        node.wait_until(lambda node=node: sum(p["state"] == "alive" for p in node.call("peer.list")) == len(started) - 1, what="everyone alive")
    return started


def gossip_address(node: RunningNode) -> tuple[str, int]:
    host, port = node.status()["gossip"]["address"].rsplit(":", 1)
    return host, int(port)


_codecs: dict[bytes, DatagramCodec] = {}


def send_gossip(node: RunningNode, *messages: m.Message, key: SigningKey | None = None) -> None:
    """One datagram to the node's unicast gossip port, signed by a throwaway key (each key
    counts its datagrams, as a real sender does, so none is dropped as a replay)."""
    key = key or SigningKey.generate()
    codec = _codecs.setdefault(bytes(key), DatagramCodec(key, epoch=1))
    data = codec.encode(m.encode_payload([m.encode_message(x) for x in messages]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, gossip_address(node))


def dropped(node: RunningNode, reason: str) -> int:
    count: int = node.status()["gossip"]["dropped"].get(reason, 0)
    return count


def test_a_claim_at_the_last_incarnation_neither_kills_the_victim_nor_outlives_its_refutation(nodes: NodeFactory) -> None:
    victim, witness = pair(nodes, "victim", "witness")
    victim_id = victim.status()["node_id"]
    for claim in (m.Dead(victim_id, U64_MAX), m.Suspect(victim_id, U64_MAX)):
        send_gossip(victim, claim)  # at the victim: it would refute at 2**64
        send_gossip(witness, claim)  # at a witness: it would hold the victim dead for good
    victim.wait_until(lambda: dropped(victim, "implausible") >= 2, what="the claims about itself refused")
    witness.wait_until(lambda: dropped(witness, "implausible") >= 2, what="the claims about the victim refused")
    assert victim.process.poll() is None
    seen = {p["node_id"]: p for p in witness.call("peer.list")}[victim_id]
    assert seen["state"] == "alive" and seen["incarnation"] < 1 << 40
    assert victim.call("store.put", key="still/up", value=1)["key"] == "still/up"


def test_a_store_entry_stamped_in_the_far_future_is_refused_and_the_store_keeps_working(nodes: NodeFactory) -> None:
    a, b = pair(nodes, "ann", "ben")
    outsider = SigningKey.generate()
    origin = bytes(outsider.verify_key)
    far = Entry("drive/poison", b"1", origin, 1, (1 << 63) - 1).signed(outsider)  # a valid u64: SQLite's INTEGER holds it, the next tick does not
    past = Entry("drive/poison2", b"1", origin, 1, 1 << 63).signed(outsider)  # out of range on the wire
    send_gossip(a, m.StoreEntry(far.encode()), m.StoreEntry(past.encode()), key=outsider)
    a.wait_until(lambda: a.status()["store"]["ahead"] >= 1 and a.status()["store"]["rejected"] >= 1, what="both refused")
    a.call("store.put", key="after", value="fine")
    b.wait_until(lambda: b.call("store.list", prefix="after") != [], what="later writes replicate")
    assert a.call("store.list", prefix="drive/poison") == []


def test_a_store_that_holds_a_poisoned_entry_starts_and_sets_it_aside(nodes: NodeFactory) -> None:
    node = nodes.start("ann")
    node.call("store.put", key="mine", value="kept")
    node.stop()
    outsider = SigningKey.generate()
    poison = Entry("poison", b"1", bytes(outsider.verify_key), 1, (1 << 63) - 1).signed(outsider)
    with sqlite3.connect(node.home.path / "store.sqlite") as db:  # as an older lannode merged it
        db.execute("INSERT INTO entries (key, data) VALUES (?, ?)", ("poison", poison.encode()))
        db.execute("INSERT INTO entries (key, data) VALUES (?, ?)", ("garbage", b"\x00\x01"))
        db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('clock', ?)", ((1 << 63) - 1,))
    again = nodes.start_on(node.home, name="ann")
    assert again.status()["store"]["set_aside"] == 2
    assert again.call("store.get", key="mine")["value"] == "kept"
    written = again.call("store.put", key="new", value=1)
    assert written["timestamp"] < (1 << 63) - MAX_CLOCK_SKEW_MS


def test_a_huge_lamport_clock_in_a_direct_message_leaves_the_conversation_working(nodes: NodeFactory) -> None:
    a, b = pair(nodes, "ann", "ben")
    ben = {p["name"]: p for p in a.call("peer.list")}["ben"]
    ann_id = a.status()["node_id"]
    # a stranger's link to ann: it may message ann, with any clock it likes
    stranger = SigningKey.generate()
    stranger_id = node_id_for(bytes(stranger.verify_key))
    conversation = dm_conversation(stranger_id, ann_id)
    presence = m.Presence(bytes(stranger.verify_key), 1 << 32, "mallory", "127.0.0.1", 9, 0, m.capability_bits(("chat",))).signed(stranger)
    send_gossip(a, presence, key=stranger)
    a.wait_until(lambda: any(p["name"] == "mallory" for p in a.call("peer.list")), what="mallory known to ann")
    ann = {p["name"]: p for p in b.call("peer.list")}["ann"]
    for lamport in ((1 << 63) - 1, (1 << 53) - 1):
        hostile = ChatMessage(new_message_id(), conversation, bytes(stranger.verify_key), 1, lamport, 1000, "hi").signed(stranger)
        with raw_link(stranger, ann) as (conn, sock):
            conn.send_message(CHANNEL_CHAT, encode_frame(MessageFrame(hostile)))
            sock.sendall(conn.data_to_send())
            a.wait_until(lambda: a.call("chat.conversations") != [] or a.status()["chat"]["rejected"] >= 1, what="the message taken or refused")
    assert a.status()["chat"]["rejected"] >= 1  # the clock past 2**53 - 1
    [saturated] = a.call("chat.log", peer="mallory")
    assert saturated["lamport"] == (1 << 53) - 1
    reply = a.call("chat.send", peer="mallory", text="and a reply")
    assert reply["lamport"] == (1 << 53) - 1  # held at the bound, not past it
    # and conversations with real peers go on
    a.call("chat.send", peer="ben", text="still fine")
    b.wait_until(lambda: [x["text"] for x in b.call("chat.log", peer="ann")] == ["still fine"], what="ben's message")
    assert ben["state"] == "alive"


def test_a_token_that_is_not_ascii_gets_an_answer_not_a_traceback(nodes: NodeFactory) -> None:
    import h11

    node = nodes.start("ann")
    host, port = node.api()["url"].removeprefix("ws://").split("/", 1)[0].rsplit(":", 1)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target="/v1",
        headers=[("Host", host), ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Authorization", "Bearer t\xf6ken".encode("latin-1"))],
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(conn.send(request))
        while True:
            conn.receive_data(sock.recv(65536))
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                break
    assert isinstance(event, h11.Response) and event.status_code == 401
    assert "Traceback" not in node.log.read_text()
    assert node.status()["api"]["rejected"].get("401", 0) >= 1


def test_the_databases_of_a_home_are_readable_by_their_owner_only(nodes: NodeFactory) -> None:
    node = nodes.start("ann")
    node.home.path.chmod(0o755)  # a person opened the home up
    node.stop()
    for name in ("store.sqlite", "chat.sqlite"):
        (node.home.path / name).chmod(0o644)  # as lannode made them before
    nodes.start_on(node.home, name="ann")
    for path in node.home.path.glob("*.sqlite*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_the_replay_guard_keeps_a_bounded_table_of_senders(nodes: NodeFactory) -> None:
    node = nodes.start("ann")
    status = node.status()
    before = status["gossip"]["replay_senders"]
    keys = [SigningKey.generate() for _ in range(64)]
    for key in keys:
        send_gossip(node, m.Ack(1), key=key)
    node.wait_until(lambda: node.status()["gossip"]["replay_senders"] >= before + 64, what="the senders are tracked")
    assert node.status()["gossip"]["replay_senders_max"] == 8192
    assert node.status()["gossip"]["replay_evicted"] == 0


def test_a_full_replay_guard_forgets_the_sender_heard_from_longest_ago() -> None:
    from lannode.core.wire import ReplayGuard

    guard = ReplayGuard(max_senders=3)
    for sender in (b"a", b"b", b"c"):
        guard.accept(sender, guard.check(sender, 1, 1))
    guard.accept(b"a", guard.check(b"a", 1, 2))  # a is heard again: b is now the oldest
    guard.accept(b"d", guard.check(b"d", 1, 1))
    assert list(guard.senders) == [b"c", b"a", b"d"] and guard.evicted == 1


def test_neither_a_stranger_nor_another_member_can_delete_a_drive_file(nodes: NodeFactory, tmp_path: Any) -> None:
    from tests.test_drive import cluster, fragment_files

    a, b, c = cluster(nodes, 3)
    src = tmp_path / "notes.txt"
    src.write_bytes(b"mine to delete" * 1000)
    put = a.call("drive.put", path=str(src), k=2, m=1)
    key = f"drive/m/{put['id']}"
    c.wait_until(lambda: c.call("store.list", prefix=key) != [], what="the manifest everywhere")
    # a member the file was never shared with, through the store's own CLI
    refused = run_cli("store", "rm", key, "--home", str(b.home.path))
    assert refused.returncode == 1 and "owner" in refused.stderr
    # an outsider's tombstone in one datagram, stamped after the manifest
    outsider = SigningKey.generate()
    manifest = c.call("store.get", key=key)
    tombstone = Entry(key, None, bytes(outsider.verify_key), 1, manifest["timestamp"] + 1).signed(outsider)
    for node in (a, b, c):
        send_gossip(node, m.StoreEntry(tombstone.encode()), key=outsider)
    # and a room entry or drive record in another node's name
    squatter = Entry(f"drive/n/{a.status()['node_id']}", b'{"quota": 0}', bytes(outsider.verify_key), 2, manifest["timestamp"] + 600_000).signed(outsider)
    send_gossip(c, m.StoreEntry(squatter.encode()), key=outsider)
    c.wait_until(lambda: c.status()["store"]["refused"] >= 2, what="the writes refused")
    for node in (a, b, c):
        node.wait_until(lambda node=node: node.status()["store"]["refused"] >= 1, what="the tombstone refused")
        assert node.call("store.get", key=key)["deleted"] is False
    assert sum(len(fragment_files(n)) for n in (a, b, c)) == 3
    out = tmp_path / "out"
    out.mkdir()
    b_get = a.call("drive.get", file=put["id"], out=str(out))
    assert b_get and (out / "notes.txt").read_bytes() == src.read_bytes()
    # the owner still can
    assert a.call("drive.rm", file=put["id"])["removed"]


def test_a_received_file_is_never_written_through_a_symlinked_folder(nodes: NodeFactory, tmp_path: Any) -> None:
    from tests.test_transfer import downloads, wait_state
    from tests.test_transfer import pair as transfer_pair

    a, b = transfer_pair(nodes, trusting=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    landing = downloads(b)
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "linkdir").symlink_to(outside, target_is_directory=True)  # as people keep links in ~/Downloads
    (landing / "photos").mkdir()
    (landing / "photos" / "deeper").symlink_to(outside, target_is_directory=True)
    src = tmp_path / "src"
    (src / "linkdir").mkdir(parents=True)
    (src / "linkdir" / "pwned.txt").write_text("x")
    (src / "photos" / "deeper").mkdir(parents=True)
    (src / "photos" / "deeper" / "a.jpg").write_text("y")
    sent = a.call("transfer.send", peer="ben", paths=[str(src / "linkdir"), str(src / "photos")])
    wait_state(b, sent["id"], "done")
    assert list(outside.iterdir()) == []
    assert (landing / "linkdir (1)" / "pwned.txt").read_text() == "x"
    assert (landing / "photos" / "deeper (1)" / "a.jpg").read_text() == "y"
    assert (landing / "linkdir").is_symlink()  # left as the person made it


def test_a_flood_of_fake_members_from_one_host_leaves_room_for_a_real_joiner(nodes: NodeFactory) -> None:
    victim, witness = pair(nodes, "victim", "witness")
    address = gossip_address(victim)
    flood = []
    for i in range(4095):  # each a throwaway key announcing itself, as fast as one machine makes them
        key = SigningKey.generate()
        presence = m.Presence(bytes(key.verify_key), 1 << 32, f"fake{i}", "127.0.0.1", 9, 0, 0).signed(key)
        flood.append(DatagramCodec(key, epoch=1).encode(m.encode_payload([m.encode_message(presence)])))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i, data in enumerate(flood):
            sock.sendto(data, address)
            if i % 32 == 31:
                time.sleep(0.01)  # about 1.3 s in all, so the socket's buffer does not drop them first
    victim.wait_until(lambda: dropped(victim, "admission") >= 3000, what="the flood past the budget refused")
    started = victim.status()["gossip"]["members"]
    assert sum(started.values()) < 400  # the burst and a few seconds' rate, not 4,095
    carol = nodes.start("carol")
    victim.wait_until(lambda: any(p["name"] == "carol" and p["state"] == "alive" for p in victim.call("peer.list")), what="the real joiner admitted")
    assert victim.call("store.put", key="still/up", value=1)["key"] == "still/up"
    assert carol.process.poll() is None and witness.process.poll() is None


def rss_peak_mb(node: RunningNode) -> float:
    """The most memory the node's process ever held resident (VmHWM), in MB."""
    for line in open(f"/proc/{node.process.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_peer_that_starts_messages_on_64_channels_and_finishes_none_is_cut_off_within_budget(nodes: NodeFactory) -> None:
    from lannode.core.link import DEFAULT_MAX_BUFFERED, MAX_RECORD_DATA

    a, b = pair(nodes, "ann", "ben")
    ann = {p["name"]: p for p in b.call("peer.list")}["ann"]
    before = rss_peak_mb(a)
    chunk = b"x" * MAX_RECORD_DATA
    sent = 0
    with raw_link(SigningKey.generate(), ann) as (conn, sock):
        try:
            for _ in range(16 * 1024 * 1024 // MAX_RECORD_DATA - 1):  # just under 16 MiB on each channel
                for channel in range(1, 65):
                    conn.send_record(channel, chunk, more=True)
                    sock.sendall(conn.data_to_send())
                    sent += len(chunk)
        except OSError:
            pass  # cut off
    assert sent < 64 * 16 * 1024 * 1024
    a.wait_until(lambda: a.status()["links"]["refused"].get("budget", 0) >= 1, what="the link refused for its budget")
    assert rss_peak_mb(a) - before < 2 * DEFAULT_MAX_BUFFERED / 1e6 + 50  # not 1 GB
    assert a.status()["links"]["buffered"] == 0
    a.call("chat.send", peer="ben", text="still here")
    b.wait_until(lambda: [x["text"] for x in b.call("chat.log", peer="ann")] == ["still here"], what="chat goes on")


def test_a_peer_that_pings_and_reads_nothing_is_cut_off_when_it_stalls(nodes: NodeFactory) -> None:
    home = Home(nodes.root / "victim")
    write_config(home.path, "victim", gossip=nodes.gossip)
    set_options(home.path, links__stall_timeout=2.0)
    victim = nodes.start_on(home, name="victim")
    witness = nodes.start("witness")
    target = witness.wait_until(lambda: {p["name"]: p for p in witness.call("peer.list")}.get("victim"), what="the victim known")
    with raw_link(SigningKey.generate(), target) as (conn, sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
        sock.settimeout(1.0)
        try:
            for _ in range(200):
                for _ in range(500):
                    conn.send_ping(b"\x00" * 64)
                sock.sendall(conn.data_to_send())
                if victim.status()["links"]["refused"].get("stalled", 0):
                    break
        except OSError:
            pass  # cut off
        victim.wait_until(lambda: victim.status()["links"]["refused"].get("stalled", 0) >= 1, what="the stalled link cut")
    assert victim.call("store.put", key="still/up", value=1)["key"] == "still/up"


def test_offers_of_100000_files_each_from_one_peer_wait_within_its_budget(nodes: NodeFactory) -> None:
    from lannode.core.link import CHANNEL_TRANSFER, MessageReceived
    from lannode.core.transfer import CHUNK_SIZE, hash_chunk
    from lannode.transfer.service import MAX_PENDING_FILES_PER_PEER

    a, b = pair(nodes, "ann", "ben")
    ann = {p["name"]: p for p in b.call("peer.list")}["ann"]
    empty = base64.b64encode(hash_chunk(b"")).decode()
    files = [{"path": f"f{i}.txt", "size": 0, "mode": 420, "chunks": empty} for i in range(MAX_PENDING_FILES_PER_PEER)]
    before = rss_peak_mb(a)
    declines = []
    with raw_link(SigningKey.generate(), ann) as (conn, sock):
        for i in range(5):
            offer = {"id": f"{i:032x}", "chunk_size": CHUNK_SIZE, "files": files}
            conn.send_message(CHANNEL_TRANSFER, json.dumps({"t": "offer", "offer": offer}).encode())
            sock.sendall(conn.data_to_send())
        sock.settimeout(30)
        while len(declines) < 4:
            conn.receive_data(sock.recv(65536))
            for event in conn.events():
                if isinstance(event, MessageReceived) and json.loads(event.data)["t"] == "decline":
                    declines.append(json.loads(event.data))
    assert all("wait for a decision" in d["reason"] for d in declines), declines
    pending = [t for t in a.call("transfer.list") if t["state"] == "pending"]
    assert len(pending) == 1 and pending[0]["files"] == MAX_PENDING_FILES_PER_PEER
    assert a.status()["transfers"]["refused"]["budget"] == 4
    assert len(list((a.home.path / "transfers").glob("*.offer"))) == 1
    print(f"peak RSS grew by {rss_peak_mb(a) - before:.0f} MB")
    assert rss_peak_mb(a) - before < 400  # not 1 GB
    assert a.call("store.put", key="still/up", value=1)["key"] == "still/up"


def test_a_stranger_holding_48_drive_grants_open_gets_its_share_and_the_api_goes_on(nodes: NodeFactory) -> None:
    from lannode.core.bulk import bulk_hello
    from tests.test_drive import request

    a, b = pair(nodes, "ann", "ben")
    ann = {p["name"]: p for p in b.call("peer.list")}["ann"]
    host, port = ann["addresses"]["link"].rsplit(":", 1)
    grants, refusals, trickles = [], [], []
    with raw_link(SigningKey.generate(), ann) as (conn, sock):
        for i in range(48):
            reply = request(conn, sock, {"t": "put", "rid": str(i), "id": f"{i:032x}", "index": 0, "size": 5000, "k": 2, "m": 1, "segment": 1 << 20})
            (grants if "token" in reply else refusals).append(reply)
        assert len(grants) == 8 and all("busy" in r["error"] for r in refusals), refusals[:1]
        try:
            for grant in grants:  # each connection comes, and trickles
                bulk = socket.create_connection((host, int(port)))
                bulk.sendall(bulk_hello(bytes.fromhex(grant["token"])) + b"\x00")
                trickles.append(bulk)
            a.wait_until(lambda: a.status()["links"]["bulk"]["running"] == 8, what="the connections served")
            bulk_status = a.wait_until(lambda: (s := a.status()["links"]["bulk"])["waited"] == 4 and s, what="four of them waiting for the peer's share")
            assert bulk_status["threads"] == 4 and bulk_status["threads_per_peer"] == 4
            for bulk in trickles:
                bulk.send(b"\x00")
            # the API's own work takes none of the peer's threads, and the peer's none of its
            assert a.call("store.put", key="still/up", value=1)["key"] == "still/up"
            assert a.call("chat.log", peer="ben") == []
            assert a.status()["links"]["refused"]["bulk_budget"] == 40
        finally:
            for bulk in trickles:
                bulk.close()


def test_a_removed_member_cannot_bring_in_a_node_of_its_own_with_a_backdated_invite(nodes: NodeFactory) -> None:
    from lannode.core.groups import group_conversation, op_text
    from lannode.identity import Identity

    a, b, mal = pair(nodes, "ann", "ben", "mal")
    mal_id = mal.status()["node_id"]
    gid = a.call("group.create", name="team", members=["ben", "mal"])["id"]
    mal.wait_until(lambda: mal.call("group.list") != [], what="mal in the group")
    said = mal.call("chat.send", group=gid, text="hello from mal")
    a.wait_until(lambda: any(x["text"] == "hello from mal" for x in a.call("chat.log", group=gid)), what="mal's message at ann")
    a.call("group.remove", group=gid, members=["mal"])
    b.wait_until(lambda: mal_id not in b.call("group.info", group=gid)["members"], what="ben sees mal removed")
    mal.stop()
    key = Identity.load_or_create(mal.home.path).signing_key
    sock = node_id_for(bytes(SigningKey.generate().verify_key))
    conversation = group_conversation(gid)
    backdated = [
        ChatMessage(new_message_id(), conversation, bytes(key.verify_key), said["seq"] + 1, 2, 1000, op_text("invite", members=[sock]), "group").signed(key),
        ChatMessage(new_message_id(), conversation, bytes(key.verify_key), said["seq"] + 2, 2, 1000, "still here, dated early").signed(key),
    ]
    rejected = a.status()["chat"]["rejected"]
    for node, seen_by, name in ((a, b, "ann"), (b, a, "ben")):
        target = {p["name"]: p for p in seen_by.call("peer.list")}[name]
        with raw_link(key, target) as (conn, stream):
            for message in backdated:
                conn.send_message(CHANNEL_CHAT, encode_frame(MessageFrame(message)))
            stream.sendall(conn.data_to_send())
            node.wait_until(lambda node=node: any(x["id"] == backdated[0].id for x in node.call("chat.log", group=gid)), what="the invitation stored")
    for node in (a, b):
        members = node.call("group.info", group=gid)["members"]
        assert sock not in members and mal_id not in members
        assert "still here, dated early" not in [x["text"] for x in node.call("chat.log", group=gid)]
    a.wait_until(lambda: a.status()["chat"]["rejected"] > rejected, what="the backdated text refused")


def test_a_drive_get_into_the_downloads_folder_never_writes_through_a_planted_link(nodes: NodeFactory, tmp_path: Any) -> None:
    from tests.test_drive import cluster

    a, b, c = cluster(nodes, 3)
    src = tmp_path / "notes.txt"
    src.write_bytes(b"shared notes" * 1000)
    put = b.call("drive.put", path=str(src), k=2, m=1, share=["a"])
    a.wait_until(lambda: any(f["id"] == put["id"] and f["readable"] for f in a.call("drive.ls")), what="the share at a")
    outside = tmp_path / "outside"
    outside.mkdir()
    landing = a.home.path / "downloads"
    landing.mkdir(exist_ok=True)
    (landing / "notes.txt").symlink_to(outside / "notes.txt")  # dangling: the name looks free
    (landing / ".notes (1).txt.lannode-part").symlink_to(outside / "part")  # and so does the next one's part
    got = a.call("drive.get", file=put["id"], to="downloads")
    assert got["path"] == str(landing / "notes (2).txt")
    assert (landing / "notes (2).txt").read_bytes() == src.read_bytes()
    assert list(outside.iterdir()) == []
    assert (landing / "notes.txt").is_symlink() and (landing / ".notes (1).txt.lannode-part").is_symlink()


def test_a_broken_transfer_record_is_set_aside_and_the_node_starts(nodes: NodeFactory) -> None:
    node = nodes.start("ann")
    node.stop()
    records = node.home.path / "transfers"
    (records / ("ab" * 16 + ".json")).write_text("{not json")
    again = nodes.start_on(node.home, name="ann")
    assert again.status()["transfers"]["set_aside"] == 1
    assert (records / ("ab" * 16 + ".bad")).exists() and not (records / ("ab" * 16 + ".json")).exists()
    assert again.call("transfer.list") == []
