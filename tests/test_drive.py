"""The shared drive between real daemons on loopback: put, get with nodes killed,
corruption found and repaired, a node gone for good, a putter killed mid-put,
orphans, hostile requests, and the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey

from conftest import (
    NodeFactory,
    RunningNode,
    raw_link,
    run_cli,
    set_options,
    write_config,
)
from lannode.core.bulk import bulk_hello
from lannode.core.drive import block_hash, block_lengths, fragment_root
from lannode.core.link import CHANNEL_DRIVE, MessageReceived
from lannode.drive.fragment_io import Wire
from lannode.home import Home
from lannode.net.api_client import RemoteError

MB = 1_000_000


def cluster(nodes: NodeFactory, count: int, **drive: float) -> list[RunningNode]:
    """``count`` nodes that all see each other alive and know each other's drive storage;
    ``drive`` overrides [drive] settings (short grace periods for the tests)."""
    started = []
    for i in range(count):
        name = "abcdefgh"[i]
        home = Home(nodes.root / f"{name}-{i}")
        write_config(home.path, name, gossip=nodes.gossip)
        set_options(home.path, **{f"drive__{key}": value for key, value in drive.items()})
        started.append(nodes.start_on(home, name=name))
    for node in started:
        node.wait_until(lambda node=node: sum(p["state"] == "alive" for p in node.call("peer.list")) == count - 1 and len(node.call("drive.status")) == count, what="every node alive, with its storage known")
    return started


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def fragment_files(node: RunningNode) -> list[Path]:
    root = node.home.path / "fragments"
    return sorted(p for p in root.iterdir() if re.fullmatch(r"[0-9a-f]{32}\.\d+", p.name)) if root.exists() else []


def listing(node: RunningNode, file_id: str) -> dict[str, Any] | None:
    return next((f for f in node.call("drive.ls") if f["id"] == file_id), None)


def holds_plaintext_run(plaintext: bytes, blob: bytes, run: int = 64) -> bool:
    """Whether ``blob`` holds any ``run``-byte run of ``plaintext``, checked in full but fast.

    Such a run covers a whole 8-byte word of the plaintext at a multiple of 56 (the words
    at 0, 56, 112, ... leave no gap of ``run`` bytes without one). So: every 8 bytes of the
    blob, at every offset, are looked up among those words (a bit table first, then an
    exact search), and each hit is widened to see whether a whole run matches."""
    stride = run - 8
    words = np.frombuffer(plaintext[: len(plaintext) // 8 * 8], dtype=np.uint64)[:: stride // 8]
    keys = np.sort(words)
    mask = (1 << 26) - 1
    table = np.zeros(mask + 1, dtype=bool)
    table[(keys & mask).astype(np.intp)] = True
    for shift in range(8):
        usable = (len(blob) - shift) // 8 * 8
        if usable <= 0:
            continue
        values = np.frombuffer(blob, dtype=np.uint64, count=usable // 8, offset=shift)
        candidates = np.flatnonzero(table[(values & mask).astype(np.intp)])
        near = values[candidates]
        slots = np.minimum(np.searchsorted(keys, near), len(keys) - 1)
        found = candidates[keys[slots] == near]
        for i in found:
            at = shift + 8 * int(i)
            word = blob[at : at + 8]
            q = plaintext.find(word)
            while q >= 0:
                for back in range(stride + 1):
                    if at - back >= 0 and q - back >= 0 and blob[at - back : at - back + run] == plaintext[q - back : q - back + run] and len(blob[at - back : at - back + run]) == run:
                        return True
                q = plaintext.find(word, q + 1)
    return False


def test_the_run_detector_finds_a_run_anywhere() -> None:
    plaintext = os.urandom(100_000)
    for offset in (0, 5, 31, 777):
        blob = os.urandom(offset) + plaintext[40_003 : 40_003 + 64] + os.urandom(50)
        assert holds_plaintext_run(plaintext, blob)
    assert not holds_plaintext_run(plaintext, os.urandom(5000) + plaintext[10:60] + os.urandom(10))


def test_six_nodes_put_get_two_killed_corruption_repaired_and_no_plaintext_on_disk(nodes: NodeFactory, tmp_path: Path) -> None:
    a, b, c, d, e, f = cluster(nodes, 6)
    src = tmp_path / "report.bin"
    plaintext = write_random(src, 100 * MB)
    put = run_cli("drive", "put", str(src), "--k", "4", "--m", "2", "--share", "c", "--json", "--home", str(a.home.path), timeout=120)
    assert put.returncode == 0, put.stderr
    lines = [json.loads(line) for line in put.stdout.splitlines()]
    assert lines[-1]["event"] == "result" and any(x["event"] == "drive.progress" for x in lines[:-1]), "progress events, then the result"
    result = lines[-1]["data"]
    file_id = result["id"]
    assert result["health"] == "6/6" and len({h["node"] for h in result["holders"]}) == 6, "six fragments on six distinct nodes"
    assert result["read_cap"].startswith("lnd-r:") and result["verify_cap"].startswith("lnd-v:" + file_id)
    assert a.status()["drive"]["erasure"] == "isa-l", "the daemon codes with ISA-L (make test installs libisal2)"

    # every node lists it within seconds; the name only where it was shared
    for node in (a, b, c, d, e, f):
        name = "report.bin" if node in (a, c) else None
        row = node.wait_until(lambda node=node, name=name: (r := listing(node, file_id)) and r["name"] == name and r, timeout=10, what="the manifest and shares replicated")
        assert (row["size"], row["k"], row["m"], row["health"]) == (100 * MB, 4, 2, "6/6")
    # a node that stores a fragment learns nothing of it
    fragments = [p for node in (a, b, c, d, e, f) for p in fragment_files(node)]
    assert len(fragments) == 6
    for path in fragments:
        assert not holds_plaintext_run(plaintext, path.read_bytes()), f"{path} holds a run of the plaintext"
    # a node without the read capability cannot get it
    try:
        d.call("drive.get", file=file_id, out=str(tmp_path / "d.bin"))
        raise AssertionError("d read a file not shared with it")
    except RemoteError as exc:
        assert exc.code == "forbidden" and "no read capability" in str(exc)
    assert not (tmp_path / "d.bin").exists()

    # rot on one holder's disk: verify finds it, repair rebuilds it in place
    victim_index = next(h["index"] for h in result["holders"] if h["name"] == "b")
    victim = b.home.path / "fragments" / f"{file_id}.{victim_index}"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    verified = a.call("drive.verify", file=file_id)[0]
    states = {x["name"]: x["state"] for x in verified["fragments"]}
    assert states["b"] == "corrupt" and verified["health"] == "5/6", states
    repaired = run_cli("drive", "repair", file_id, "--json", "--home", str(a.home.path), timeout=60)
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)[0]["repaired"] == [{"index": victim_index, "node": result["holders"][victim_index]["node"], "name": "b"}]
    assert a.call("drive.verify", file=file_id)[0]["health"] == "6/6"
    assert victim.read_bytes() != bytes(raw)

    # any two nodes killed, one of them while the get reads from it: the file still comes
    # back whole, by name, on a node it was shared with
    by_name = {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}
    data_holders = [h["name"] for h in result["holders"] if h["index"] < 4 and h["name"] not in ("a", "c")]
    first, second = by_name[data_holders[0]], by_name[data_holders[1]]
    first.process.kill()
    first.process.wait()
    getting = subprocess.Popen(
        [sys.executable, "-m", "lannode", "drive", "get", "report.bin", str(tmp_path / "out"), "--json", "--home", str(c.home.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    second.process.kill()
    second.process.wait()
    stdout, stderr = getting.communicate(timeout=120)
    assert getting.returncode == 0, stderr
    out = json.loads(stdout.splitlines()[-1])["data"]
    assert Path(out["path"]).read_bytes() == plaintext
    served_by = {x["name"] for x in out["from"]}
    assert data_holders[0] not in served_by and len(out["from"]) >= 4


def test_a_node_gone_for_good_is_replaced_after_the_grace_period_and_rot_is_found_in_the_background(nodes: NodeFactory, tmp_path: Path) -> None:
    a, b, c, d, e, f = cluster(nodes, 6, grace=3, repair_interval=0.5, verify_interval=0.3)
    src = tmp_path / "photos.tar"
    plaintext = write_random(src, 12 * MB)
    first = a.call("drive.put", path=str(src))
    second = a.call("drive.put", path=str(src), name="copy.tar", k=3, m=2)
    f.stop()  # a clean leave: it is gone, and stays gone
    f_id = next(h["node"] for h in first["holders"] if h["name"] == "f")

    def healed(file_id: str) -> bool:
        row = listing(a, file_id)
        return row is not None and row["health"] == f"{row['k'] + row['m']}/{row['k'] + row['m']}" and f_id not in {h["node"] for h in row["holders"]}

    for put in (first, second):
        a.wait_until(lambda put=put: healed(put["id"]), timeout=60, what="the file back at k+m healthy fragments")
    for node in (a, b, c, d, e):
        assert all(r["health"].split("/")[0] == r["health"].split("/")[1] for r in node.call("drive.ls"))
    assert a.call("drive.verify", file=first["id"])[0]["health"] == "6/6"
    (tmp_path / "x").mkdir()
    a.call("drive.get", file=first["id"], out=str(tmp_path / "x"))
    assert (tmp_path / "x" / "photos.tar").read_bytes() == plaintext

    # rot found by the background verifier, no one asking: the holder rebuilds its fragment
    holder = next(n for n in (b, c, d, e) if fragment_files(n))
    path = fragment_files(holder)[0]
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    holder.wait_until(lambda: holder.status()["drive"]["counters"].get("corrupt_found", 0) >= 1, timeout=30, what="the verifier finding the rot")
    holder.wait_until(lambda: path.exists() and path.read_bytes() != bytes(raw), timeout=30, what="the fragment rebuilt")
    assert all(r["health"] == "5/5" or r["health"] == "6/6" for r in a.call("drive.verify"))


def test_a_putter_killed_mid_put_leaves_no_manifest_and_orphans_are_collected(nodes: NodeFactory, tmp_path: Path) -> None:
    a, b, c = cluster(nodes, 3, orphan_grace=3, stall_timeout=3)
    src = tmp_path / "big.bin"
    write_random(src, 300 * MB)
    putter = subprocess.Popen(
        [sys.executable, "-m", "lannode", "drive", "put", str(src), "--k", "2", "--m", "1", "--json", "--home", str(a.home.path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert putter.stdout is not None
    for line in putter.stdout:
        event = json.loads(line)
        if event["event"] == "drive.progress" and event["data"]["bytes"] > 60 * MB:
            a.process.send_signal(signal.SIGKILL)
            break
    a.process.wait()
    putter.wait(timeout=30)
    time.sleep(1)
    for node in (b, c):
        assert node.call("drive.ls") == [], "no manifest for a put that did not finish"
        node.wait_until(lambda node=node: not list((node.home.path / "fragments").glob("*.part")), timeout=10, what="partial fragments dropped")

    # a fragment stored for a put whose putter died before it wrote the manifest: an orphan
    peer = next(p for p in b.call("peer.list") if p["name"] == "c")
    size, k, m, segment = 5000, 2, 1, 1 << 20
    file_id = "ab" * 16
    lengths = block_lengths(size, k, segment)
    fragment = os.urandom(sum(lengths))
    with raw_link(SigningKey.generate(), peer) as (conn, sock):
        reply = request(conn, sock, {"t": "put", "rid": "1", "id": file_id, "index": 0, "size": size, "k": k, "m": m, "segment": segment})
        assert "token" in reply, reply
        host, port = peer["addresses"]["link"].rsplit(":", 1)
        bulk = socket.create_connection((host, int(port)))
        bulk.sendall(bulk_hello(bytes.fromhex(reply["token"])))
        wire = Wire(bulk, bytes.fromhex(reply["secret"]), bool(reply["aes"]), dialer=True)
        wire.send_data(fragment)
        wire.send_control({"root": fragment_root([block_hash(fragment)]).hex()})
        assert wire.receive()[1] == {"stored": True}
        wire.close()
        orphan = c.home.path / "fragments" / f"{file_id}.0"
        assert orphan.exists()
        # a putter that goes quiet mid-fragment (asleep, unplugged: its connection stays
        # open): after drive.stall_timeout the holder drops the part and hangs up
        frozen_id = "ef" * 16
        reply = request(conn, sock, {"t": "put", "rid": "9", "id": frozen_id, "index": 0, "size": size, "k": k, "m": m, "segment": segment})
        assert "token" in reply, reply
        bulk = socket.create_connection((host, int(port)))
        bulk.sendall(bulk_hello(bytes.fromhex(reply["token"])))
        quiet = Wire(bulk, bytes.fromhex(reply["secret"]), bool(reply["aes"]), dialer=True)
        quiet.send_data(fragment[: len(fragment) // 2])
        part = c.home.path / "fragments" / f"{frozen_id}.0.part"
        assert part.exists()
        c.wait_until(lambda: not part.exists(), timeout=20, what="the quiet putter's partial fragment dropped")
        bulk.settimeout(10)
        try:
            assert bulk.recv(1) == b"", "the holder hung up"
        except ConnectionResetError:
            pass
        quiet.close()
        # hostile requests: answered with an error, nothing written outside the store
        for bad in (
            {"t": "put", "rid": "2", "id": "../../../etc/x", "index": 0, "size": 10, "k": 1, "m": 1, "segment": 1024},
            {"t": "put", "rid": "3", "id": file_id, "index": 300, "size": 10, "k": 1, "m": 1, "segment": 1024},
            {"t": "put", "rid": "4", "id": file_id, "index": 1, "size": 10**15, "k": 1, "m": 1, "segment": 1024},
            {"t": "put", "rid": "5", "id": file_id, "index": 1, "size": 10, "k": 0, "m": 1, "segment": 1024},
            {"t": "get", "rid": "6", "id": "cd" * 16, "index": 0, "start": 0},
            {"t": "get", "rid": "7", "id": file_id, "index": 0, "start": "x"},
            {"t": "check", "rid": "8", "id": "nope", "index": 0},
            {"t": "put", "rid": "9"},
        ):
            answer = request(conn, sock, bad)
            assert answer.get("error"), (bad, answer)
        for garbage in (b"not json", b"[1,2]", json.dumps({"t": "put"}).encode(), b"{" * 70000):
            conn.send_message(CHANNEL_DRIVE, garbage)
        sock.sendall(conn.data_to_send())
    c.wait_until(lambda: not orphan.exists(), timeout=30, what="the orphan collected")
    counters = c.status()["drive"]["counters"]
    assert counters["dropped"] >= 1 and counters["malformed"] >= 3, counters
    assert not list(c.home.path.parent.glob("x")) and not Path("/etc/x").exists()
    assert c.call("drive.status"), "the node still answers"


def request(conn: Any, sock: socket.socket, message: dict[str, Any]) -> dict[str, Any]:
    conn.send_message(CHANNEL_DRIVE, json.dumps(message).encode())
    sock.sendall(conn.data_to_send())
    sock.settimeout(10)
    while True:
        for event in conn.events():
            if isinstance(event, MessageReceived) and event.channel == CHANNEL_DRIVE:
                reply = json.loads(event.data)
                if reply.get("rid") == message.get("rid") or "rid" not in message:
                    return dict(reply)
        conn.receive_data(sock.recv(65536))
        sock.sendall(conn.data_to_send())


def test_the_drive_cli_lists_shares_and_removes(nodes: NodeFactory, tmp_path: Path) -> None:
    a, b, c = cluster(nodes, 3)
    home = ["--home", str(a.home.path)]
    src = tmp_path / "notes.txt"
    src.write_text("minutes of the meeting\n" * 1000)
    few = run_cli("drive", "put", str(src), *home)
    assert few.returncode == 1 and "6 fragments need 6 distinct nodes" in few.stderr and "3 nodes have room" in few.stderr, few.stderr
    put = run_cli("drive", "put", str(src), "--k", "2", "--m", "1", *home)
    assert put.returncode == 0 and "put notes.txt" in put.stdout, put.stderr
    ls = run_cli("drive", "ls", *home)
    assert "notes.txt" in ls.stdout and "2+1" in ls.stdout and "3/3" in ls.stdout, ls.stdout
    file_id = a.call("drive.ls")[0]["id"]
    b.wait_until(lambda: listing(b, file_id), what="the manifest on b")
    assert listing(b, file_id)["name"] is None
    shared = run_cli("drive", "share", "notes.txt", "b", *home)
    assert shared.returncode == 0 and "shared notes.txt with b" in shared.stdout, shared.stderr
    b.wait_until(lambda: (listing(b, file_id) or {}).get("name") == "notes.txt", what="the share reaching b")
    # a data fragment rots: the get notices on the first bad block, reads a parity fragment instead, and says so
    holder_name = a.call("drive.info", file=file_id)["holders"][0]["name"]
    holder = {"a": a, "b": b, "c": c}[holder_name]
    rotten = holder.home.path / "fragments" / f"{file_id}.0"
    raw = bytearray(rotten.read_bytes())
    raw[10] ^= 0x55
    rotten.write_bytes(bytes(raw))
    got = run_cli("drive", "get", "notes.txt", str(tmp_path / "back.txt"), "--home", str(b.home.path))
    assert got.returncode == 0 and (tmp_path / "back.txt").read_text() == src.read_text(), got.stderr
    assert f"fragment 0 on {holder_name} failed" in got.stderr and "corrupt" in got.stderr, got.stderr
    holder.wait_until(lambda: holder.status()["drive"]["counters"].get("corrupt_found", 0) == 1, what="the holder told of its rot")
    repaired = run_cli("drive", "repair", *home)
    assert repaired.returncode == 0 and f"{file_id[:8]}  rebuilt 0 to {holder_name}" in repaired.stdout, repaired.stdout + repaired.stderr
    a.call("group.create", name="crew", members=["c"])
    crew = run_cli("drive", "put", str(src), "--name", "crew.txt", "--k", "2", "--m", "1", "--share", "#crew", "--json", *home)
    assert crew.returncode == 0, crew.stderr
    crew_id = json.loads(crew.stdout.splitlines()[-1])["data"]["id"]
    c.wait_until(lambda: (listing(c, crew_id) or {}).get("name") == "crew.txt", what="the group's member reading the name")
    assert b.wait_until(lambda: listing(b, crew_id), what="the manifest on b")["name"] is None, "b is not in the group"
    assert a.call("drive.rm", file="crew.txt")["removed"]
    doubled = run_cli("drive", "put", str(src), "--name", "four.txt", "--k", "3", "--m", "1", "--allow-fewer", "--json", *home)
    assert doubled.returncode == 0, doubled.stderr
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    put_empty = a.call("drive.put", path=str(empty), k=2, m=1)
    a.call("drive.get", file=put_empty["id"], out=str(tmp_path / "empty-back.txt"))
    assert (tmp_path / "empty-back.txt").read_bytes() == b""
    a.call("drive.rm", file=put_empty["id"])
    status = json.loads(run_cli("drive", "status", "--json", *home).stdout)
    assert sorted(s["name"] for s in status) == ["a", "b", "c"]
    a.wait_until(lambda: sum(s["fragments"] for s in a.call("drive.status")) == 7, what="every node's count published")
    info = run_cli("drive", "info", "notes.txt", *home)
    assert "read cap:   lnd-r:" in info.stdout and "verify cap: lnd-v:" in info.stdout
    removed = run_cli("drive", "rm", "notes.txt", *home)
    assert removed.returncode == 0 and "removed notes.txt" in removed.stdout
    for node in (a, b, c):
        node.wait_until(lambda node=node: all(not p.name.startswith(file_id) for p in fragment_files(node)), timeout=15, what="fragments of the removed file dropped")
        node.wait_until(lambda node=node: [r["name"] for r in node.call("drive.ls")] in (["four.txt"], [None]), timeout=10, what="the listing without it")
    missing = run_cli("drive", "get", "notes.txt", str(tmp_path / "again.txt"), *home)
    assert missing.returncode == 1 and "no file 'notes.txt'" in missing.stderr


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_holder_lost_mid_put_is_left_out_and_the_put_goes_through(nodes: NodeFactory, tmp_path: Path, how: str) -> None:
    """Killed: its connection breaks. Frozen (SIGSTOP: a laptop shut, a cable pulled):
    nothing breaks, it just takes no more bytes, and after drive.stall_timeout the put
    goes on without it."""
    everyone = cluster(nodes, 7, **({"stall_timeout": 3} if how == "frozen" else {}))
    a = everyone[0]
    ids = {node: node.api()["node_id"] for node in everyone}
    # every node has the same room, so placement takes the six lowest node ids
    chosen = sorted(everyone, key=lambda node: ids[node])[:6]
    victim = next(node for node in chosen if node is not a)
    src = tmp_path / "video.bin"
    plaintext = write_random(src, 300 * MB)
    putter = subprocess.Popen(
        [sys.executable, "-m", "lannode", "drive", "put", str(src), "--json", "--home", str(a.home.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert putter.stdout is not None
    lines = []
    lost: list[RunningNode] = []
    for line in putter.stdout:
        lines.append(json.loads(line))
        if lines[-1]["event"] == "drive.progress" and lines[-1]["data"]["bytes"] > 60 * MB and victim.process.poll() is None and not lost:
            if how == "killed":
                victim.process.kill()
            else:
                victim.process.send_signal(signal.SIGSTOP)
            lost.append(victim)
    try:
        assert putter.wait(timeout=60) == 0, putter.stderr.read() if putter.stderr else ""
    finally:
        if how == "frozen":
            victim.process.send_signal(signal.SIGCONT)
    assert lost, "the victim was lost during the put"
    result = lines[-1]["data"]
    assert ids[victim] not in {h["node"] for h in result["holders"]} and result["health"] == "6/6"
    assert a.status()["drive"]["counters"]["put_retried"] == 1
    a.call("drive.get", file=result["id"], out=str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == plaintext


def test_a_repair_whose_new_holder_freezes_gives_up_on_it_and_heals_elsewhere(nodes: NodeFactory, tmp_path: Path) -> None:
    """The node a repair streams a rebuilt fragment to stops mid-stream (SIGSTOP): the
    repair gives up on it after drive.stall_timeout instead of hanging the repairer,
    and a later pass puts the fragment elsewhere."""
    everyone = cluster(nodes, 7, grace=2, repair_interval=0.5, stall_timeout=3)
    a = everyone[0]
    ids = {node: node.api()["node_id"] for node in everyone}
    chosen = sorted(everyone, key=lambda node: ids[node])[:6]  # equal room: placement takes the lowest ids
    spare = next(node for node in everyone if node not in chosen)
    src = tmp_path / "archive.bin"
    plaintext = write_random(src, 400 * MB)
    put = a.call("drive.put", path=str(src))
    assert ids[spare] not in {h["node"] for h in put["holders"]}
    gone = next(node for node in chosen if node is not a)
    gone.stop()  # for good: after the grace period its fragment is rebuilt, on the spare (the one node without one)
    part = spare.home.path / "fragments"
    frozen = False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not frozen:
            if part.exists() and any(p.name.endswith(".part") for p in part.iterdir()):
                spare.process.send_signal(signal.SIGSTOP)
                frozen = True
            time.sleep(0.005)
        assert frozen, "the repair never streamed to the spare"
        watcher = next(node for node in everyone if node not in (gone, spare))

        def healed() -> bool:
            row = listing(watcher, put["id"])
            return row is not None and row["health"] == "6/6" and not {ids[gone], ids[spare]} & {h["node"] for h in row["holders"]}

        watcher.wait_until(healed, timeout=90, what="the fragment rebuilt on a node that did not freeze")
    finally:
        if frozen:
            spare.process.send_signal(signal.SIGCONT)
    a.call("drive.get", file=put["id"], out=str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == plaintext
