"""File drop between real daemons on loopback: offers, decisions, resume after kill -9,
hostile names, a full disk, cancel, the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import NodeFactory, RunningNode, raw_link, run_cli, write_config
from lannode.core.link import CHANNEL_TRANSFER
from lannode.core.transfer import CHUNK_SIZE, hash_chunk
from lannode.home import Home
from lannode.net.api_client import RemoteError

EMPTY_CHUNK = base64.b64encode(hash_chunk(b"")).decode()  # an empty file's one chunk hash, as an offer carries it


def pair(nodes: NodeFactory, *, trusting: bool = False, downloads: Path | None = None, max_bytes: int | None = None) -> tuple[RunningNode, RunningNode]:
    """Ann and Ben, alive to each other; Ben auto-accepts Ann's files if ``trusting``."""
    a = nodes.start("ann")
    b = start_receiver(nodes, a if trusting else None, downloads, max_bytes)
    for node in (a, b):
        node.wait_until(lambda node=node: any(p["state"] == "alive" for p in node.call("peer.list")), what="the other node alive")
    return a, b


def start_receiver(nodes: NodeFactory, trusts: RunningNode | None = None, downloads: Path | None = None, max_bytes: int | None = None) -> RunningNode:
    """Ben, who auto-accepts files from ``trusts``, keeps them in ``downloads`` and takes at
    most ``max_bytes`` at once."""
    home = Home(nodes.root / f"ben-{len(nodes.nodes)}")
    write_config(home.path, "ben", gossip=nodes.gossip)
    text = home.config_path.read_text()
    if trusts is not None:
        text = text.replace("auto_accept = []", f'auto_accept = ["{trusts.api()["node_id"]}"]')
    if downloads is not None:
        text = text.replace('downloads = ""', f'downloads = "{downloads}"')
    if max_bytes is not None:
        text = text.replace("max_bytes = 100000000000", f"max_bytes = {max_bytes}")
    home.config_path.write_text(text)
    return nodes.start_on(home, name="ben")


def node_id(node: RunningNode) -> str:
    return str(node.api()["node_id"])


def write_random(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file() and ".lannode-partial" not in p.parts}


def transfer(node: RunningNode, transfer_id: str) -> dict[str, Any]:
    """A transfer's record; an empty one while the offer is on its way."""
    found = [t for t in node.call("transfer.list") if t["id"] == transfer_id]
    return dict(found[0]) if found else {"id": transfer_id, "state": None, "bytes": 0, "total": 1, "reason": ""}


def downloads(node: RunningNode) -> Path:
    return node.home.path / "downloads"


def wait_state(node: RunningNode, transfer_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
    return dict(node.wait_until(lambda: (t := transfer(node, transfer_id))["state"] == state and t, timeout=timeout, what=f"transfer {state}"))


def test_a_big_file_and_a_folder_of_1000_files_arrive_byte_identical(nodes: NodeFactory, tmp_path: Path) -> None:
    a, b = pair(nodes, trusting=True)
    big = write_random(tmp_path / "src" / "big.bin", 200_000_000)
    folder = tmp_path / "src" / "photos"
    for i in range(1000):
        write_random(folder / f"d{i % 10}" / f"img {i}.jpg", (i * 37) % 9000)
    (folder / "empty.txt").write_bytes(b"")
    sent = a.call("transfer.send", peer="ben", paths=[str(big), str(folder)])
    assert sent["files"] == 1002 and sent["state"] == "offered"
    done = wait_state(a, sent["id"], "done", timeout=120)
    assert done["bytes"] == done["total"] == 200_000_000 + sum((i * 37) % 9000 for i in range(1000))
    wait_state(b, sent["id"], "done")
    assert digest(downloads(b) / "big.bin") == digest(big)
    assert tree(downloads(b) / "photos") == tree(folder)
    assert not (downloads(b) / ".lannode-partial" / sent["id"]).exists()


def test_an_offer_waits_for_a_decision_and_a_decline_says_why(nodes: NodeFactory, tmp_path: Path) -> None:
    a, b = pair(nodes)
    src = write_random(tmp_path / "notes.txt", 5000)
    first = a.call("transfer.send", peer="ben", paths=[str(src)])
    offered = b.wait_until(lambda: [t for t in b.call("transfer.list") if t["id"] == first["id"]], what="the offer at ben")[0]
    assert offered["state"] == "pending" and offered["direction"] == "in" and offered["names"] == ["notes.txt"]
    a.wait_until(lambda: transfer(a, first["id"])["state"] == "pending", what="the sender sees it waiting")
    b.call("transfer.decline", id=first["id"][:8], reason="not now")
    declined = wait_state(a, first["id"], "declined")
    assert declined["reason"] == "not now"
    second = a.call("transfer.send", peer="ben", paths=[str(src)])
    b.wait_until(lambda: transfer(b, second["id"])["state"] == "pending", what="the second offer")
    b.call("transfer.accept", id=second["id"])
    wait_state(a, second["id"], "done")
    assert (downloads(b) / "notes.txt").read_bytes() == src.read_bytes()
    third = a.call("transfer.send", peer="ben", paths=[str(src)])
    b.wait_until(lambda: transfer(b, third["id"])["state"] == "pending", what="the third offer")
    b.call("transfer.accept", id=third["id"])
    wait_state(b, third["id"], "done")
    assert (downloads(b) / "notes (1).txt").read_bytes() == src.read_bytes(), "a name already taken gets a number"
    with pytest.raises(RemoteError, match="not waiting"):
        b.call("transfer.accept", id=third["id"])
    with pytest.raises(RemoteError, match="no transfer"):
        b.call("transfer.cancel", id="ffffffff")


def socket_bytes_sent(pid: int) -> int:
    """Bytes the kernel sent on the process's TCP connections (``ss``: framing included)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout
    total, mine = 0, False
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            mine = f"pid={pid}," in line
        elif mine and "bytes_sent:" in line:
            total += int(line.split("bytes_sent:")[1].split()[0])
    return total


@pytest.mark.parametrize("victim", ["sender", "receiver"])
def test_kill_9_mid_transfer_resumes_with_less_than_two_chunks_sent_again(nodes: NodeFactory, tmp_path: Path, victim: str) -> None:
    a, b = pair(nodes, trusting=True)
    size = 120_000_000
    src = write_random(tmp_path / "video.bin", size)
    sent = a.call("transfer.send", peer="ben", paths=[str(src)])
    watcher, killed = (b, a) if victim == "sender" else (a, b)
    watcher.wait_until(lambda: (t := transfer(watcher, sent["id"]))["bytes"] > 0.3 * t["total"], timeout=60, what="part of the transfer")
    if victim == "sender":
        killed.process.send_signal(signal.SIGSTOP)  # frozen first, so the kernel's count is its last
        first_life = socket_bytes_sent(killed.process.pid)
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait(timeout=10)
    if victim == "sender":
        assert 0.3 * size < first_life < size
        a = nodes.start_on(a.home, name="ann")
    else:
        b = nodes.start_on(b.home, name="ben")
    wait_state(a, sent["id"], "done", timeout=120)
    wait_state(b, sent["id"], "done")
    assert digest(downloads(b) / "video.bin") == digest(src)
    written = a.status()["transfers"]["bytes_sent"] + (first_life if victim == "sender" else 0)
    again = written - size
    print(f"{victim} killed: {again} bytes sent again ({again / CHUNK_SIZE:.2f} chunks)")
    assert 0 <= again < 2 * CHUNK_SIZE, f"{again} bytes sent again ({again / CHUNK_SIZE:.2f} chunks)"


def test_hostile_names_are_refused_before_anything_is_written(nodes: NodeFactory) -> None:
    a, b = pair(nodes)
    peer = next(p for p in a.call("peer.list") if p["name"] == "ben")
    key = a.home.identity().signing_key
    a.stop()
    hostile = ["../escape.txt", "/etc/passwd", "a/../../b", "nul\x00byte", "CON", "x" * 300]
    with raw_link(key, peer) as (conn, sock):
        for i, name in enumerate(hostile):
            offer = {"id": f"{i:032x}", "chunk_size": CHUNK_SIZE, "files": [{"path": name, "size": 0, "mode": 420, "chunks": EMPTY_CHUNK}]}
            conn.send_message(CHANNEL_TRANSFER, json.dumps({"t": "offer", "offer": offer}).encode())
        sock.sendall(conn.data_to_send())
        b.wait_until(lambda: len(b.call("transfer.list")) == len(hostile), what="every offer recorded")
    states = {t["names"][0]: (t["state"], t["reason"]) for t in b.call("transfer.list")}
    assert states["CON"][0] == "pending", "a Windows device name is renamed, not refused"
    for name in hostile[:-2] + hostile[-1:]:
        state, reason = states[name]
        assert state == "declined" and reason.startswith("refused"), (name, state, reason)
    assert not (b.home.path / "escape.txt").exists() and not (b.home.path.parent / "escape.txt").exists()
    assert sorted(p.name for p in downloads(b).iterdir()) == []
    b.call("transfer.accept", id=f"{4:032x}")
    assert b.status()["transfers"]["transfers"]["declined"] == 5


def test_a_receiver_without_room_declines_with_a_clear_reason(nodes: NodeFactory, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    try:
        a, b = pair(nodes, trusting=True, downloads=small)
        src = write_random(tmp_path / "too-big.bin", 40_000_000)
        sent = a.call("transfer.send", peer="ben", paths=[str(src)])
        declined = wait_state(a, sent["id"], "declined")
        assert "not enough free space" in declined["reason"] and "16.8 MB free" in declined["reason"]
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_an_offer_over_the_configured_limit_is_declined(nodes: NodeFactory, tmp_path: Path) -> None:
    a, b = pair(nodes, trusting=True, max_bytes=1_000_000)
    src = write_random(tmp_path / "over.bin", 1_000_001)
    sent = a.call("transfer.send", peer="ben", paths=[str(src)])
    declined = wait_state(a, sent["id"], "declined")
    assert "over this node's limit of 1.0 MB per transfer" in declined["reason"]
    assert not (downloads(b) / "over.bin").exists()


def test_a_cancel_leaves_no_partial_file(nodes: NodeFactory, tmp_path: Path) -> None:
    a, b = pair(nodes, trusting=True)
    src = write_random(tmp_path / "long.bin", 300_000_000)
    sent = a.call("transfer.send", peer="ben", paths=[str(src)])
    b.wait_until(lambda: transfer(b, sent["id"])["bytes"] > 0, what="bytes flowing")
    b.call("transfer.cancel", id=sent["id"])
    cancelled = wait_state(a, sent["id"], "cancelled")
    assert "receiver" in cancelled["reason"]
    b.wait_until(lambda: not any(downloads(b).rglob("*")) or all(p.is_dir() for p in downloads(b).rglob("*")), what="no partial file")
    time.sleep(0.5)
    assert [p for p in downloads(b).rglob("*") if p.is_file()] == []


def test_the_cli_sends_with_progress_and_decides_offers(nodes: NodeFactory, tmp_path: Path) -> None:
    a, b = pair(nodes, trusting=True)
    ahome = ("--home", str(a.home.path))
    big = write_random(tmp_path / "clip.bin", 60_000_000)
    small = write_random(tmp_path / "dir" / "a.txt", 100)
    sent = run_cli("send", str(big), str(small.parent), "ben", "--json", *ahome, timeout=120)
    assert sent.returncode == 0, sent.stderr
    events = [json.loads(line) for line in sent.stdout.splitlines()]
    assert events[0]["data"]["state"] == "offered" and events[-1]["data"]["state"] == "done"
    progress = [e["data"] for e in events if e["event"] == "transfer.progress"]
    assert progress and progress[-1]["bytes"] == 60_000_100 and progress[-1]["rate"] > 0, "the last progress: all of it, the average rate"
    assert all(0 <= p["bytes"] <= p["total"] == 60_000_100 for p in progress)
    assert all(p["current"]["name"] in ("clip.bin", "dir/a.txt") and p["eta"] is not None for p in progress[:-1]), json.dumps(progress[:-1])
    assert digest(downloads(b) / "clip.bin") == digest(big) and (downloads(b) / "dir" / "a.txt").read_bytes() == small.read_bytes()

    # a node that does not trust the sender: the offer waits; the CLI lists, accepts, declines
    c = nodes.start("cat")
    c.wait_until(lambda: any(p["name"] == "ann" and p["state"] == "alive" for p in c.call("peer.list")), what="cat sees ann")
    a.wait_until(lambda: any(p["name"] == "cat" and p["state"] == "alive" for p in a.call("peer.list")), what="ann sees cat")
    chome = ("--home", str(c.home.path))
    offered = run_cli("send", str(small), "cat", "--no-wait", *ahome)
    assert offered.returncode == 0 and "offered" in offered.stdout, offered.stderr
    c.wait_until(lambda: any(t["state"] == "pending" for t in c.call("transfer.list")), what="the offer at cat")
    listed = run_cli("transfers", *chome)
    assert "pending" in listed.stdout and "lannode accept" in listed.stderr
    tid = c.call("transfer.list")[0]["id"]
    accepted = run_cli("accept", tid[:8], *chome)
    assert accepted.returncode == 0 and accepted.stdout.startswith("accepted"), accepted.stderr
    wait_state(a, tid, "done")
    run_cli("send", str(small), "cat", "--no-wait", *ahome)
    c.wait_until(lambda: sum(t["state"] == "pending" for t in c.call("transfer.list")) == 1, what="a second offer")
    second = next(t for t in c.call("transfer.list") if t["state"] == "pending")
    declined = run_cli("decline", second["id"][:8], "--reason", "enough for today", *chome)
    assert declined.returncode == 0, declined.stderr
    assert wait_state(a, second["id"], "declined")["reason"] == "enough for today"
    # a waiting `send` ends when the receiver decides, with the exit code saying how
    waiting = subprocess.Popen([sys.executable, "-m", "lannode", "send", str(small), "cat", *ahome], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c.wait_until(lambda: sum(t["state"] == "pending" for t in c.call("transfer.list")) == 1, what="a third offer")
        shown = json.loads(run_cli("transfers", "--json", *ahome).stdout)
        assert sorted(t["state"] for t in shown) == ["declined", "done", "done", "pending"]
        third = next(t for t in c.call("transfer.list") if t["state"] == "pending")
        run_cli("decline", third["id"], *chome)
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 1 and "declined" in err, (out, err)
    missing = run_cli("send", str(tmp_path / "nope"), "cat", *ahome)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    nobody = run_cli("send", str(small), "nobody", *ahome)
    assert nobody.returncode == 1 and "no peer named 'nobody'" in nobody.stderr
    usage = run_cli("send", "onlyone", *ahome)
    assert usage.returncode == 2


@pytest.mark.parametrize("disguised", [False, True])
def test_a_source_changed_while_the_sender_was_down_is_sent_again_whole(nodes: NodeFactory, tmp_path: Path, disguised: bool) -> None:
    """Changed with a new mtime, the sender notices before sending; changed with its size and
    mtime put back, the receiver's chunk check notices. Either way the file starts over and
    what lands is the new version, never a mix."""
    a, b = pair(nodes, trusting=True)
    size = 80_000_000
    src = write_random(tmp_path / "draft.bin", size)
    sent = a.call("transfer.send", peer="ben", paths=[str(src)])
    b.wait_until(lambda: 0.2 * size < transfer(b, sent["id"])["bytes"] < 0.7 * size, timeout=60, what="part of the transfer")
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(timeout=10)
    before = os.stat(src)
    with open(src, "r+b") as f:
        f.seek(size - 5000)
        f.write(b"edited" * 100)
    if disguised:
        os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
    a = nodes.start_on(a.home, name="ann")
    wait_state(a, sent["id"], "done", timeout=120)
    wait_state(b, sent["id"], "done")
    assert digest(downloads(b) / "draft.bin") == digest(src)
    assert "changed since it was offered; sending it again" in a.log.read_text()
    assert ("changed at the sender" in b.log.read_text()) == disguised, "who noticed: the receiver's chunk check, or the sender's stat"


def test_chat_and_pings_get_through_while_a_transfer_runs(nodes: NodeFactory, tmp_path: Path) -> None:
    """File data has a connection of its own: a chat message sent mid-transfer is delivered
    (receipt and all) while the file is still on its way, not after it."""
    a, b = pair(nodes, trusting=True)
    src = write_random(tmp_path / "long.bin", 400_000_000)
    sent = a.call("transfer.send", peer="ben", paths=[str(src)])
    a.wait_until(lambda: transfer(a, sent["id"])["bytes"] > 0, what="bytes flowing")
    message = a.call("chat.send", peer="ben", text="is it there yet?")
    assert a.call("peer.ping", peer="ben")["rtt_ms"] > 0
    a.wait_until(lambda: a.call("chat.log", peer="ben")[-1]["delivered_at"] is not None, what="the delivery receipt")
    during = transfer(a, sent["id"])
    assert during["state"] == "active" and during["bytes"] < during["total"], "the message did not wait for the file"
    assert [m["text"] for m in b.call("chat.log", peer="ann")] == ["is it there yet?"] and message["text"] == "is it there yet?"
    wait_state(a, sent["id"], "done", timeout=120)
