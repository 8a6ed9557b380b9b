"""Guests through real daemons: a browser's protocol spoken by sim/guest_client.py (the
phone's own page is driven by Chromium in tests/test_guest_phone.py), over loopback:
the door is opened on 127.0.0.1 with guests.allow_loopback, which is what that option is for."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from lannode.core.chat import ChatMessage
from lannode.home import Home
from lannode.net.api_client import RemoteError
from sim.guest_client import GuestClient, GuestRefused
from tests.conftest import NodeFactory, RunningNode, run_cli, set_options, write_config


def host_node(nodes: NodeFactory, name: str) -> RunningNode:
    home = Home(nodes.root / name)
    write_config(home.path, name, gossip=nodes.gossip)
    set_options(home.path, guests__enabled="true", guests__port=0, guests__allow_loopback="true")
    return nodes.start_on(home, name=name)


def guest_of(host: RunningNode, name: str) -> GuestClient:
    invite = host.call("guests.invite")
    guest = GuestClient(invite["door"], invite["fingerprint"])
    guest.join(host=host.status()["node_id"], name=name, token=invite["url"].split("#invite=", 1)[1])
    guest.open_session()
    return guest


def test_a_guest_joins_by_invite_and_chats_with_another_node_both_ways_in_its_own_name(nodes: NodeFactory) -> None:
    host = host_node(nodes, "ann")
    bob = nodes.start("bob")
    status = host.call("guests.status")
    assert status["enabled"] and status["url"].startswith("https://127.0.0.1:") and len(status["fingerprint"]) == 95
    phone = guest_of(host, "Ann's phone")
    assert phone.hello["host_name"] == "ann" and phone.hello["node_id"] == phone.guest_id

    # every node lists the guest, marked as reachable through its host
    def listed() -> dict[str, object] | None:
        return next((p for p in bob.call("peer.list") if p["node_id"] == phone.guest_id), None)

    door = bob.wait_until(lambda: next((p for p in bob.call("peer.list") if p["name"] == "ann"), {}).get("guest_door"), timeout=30, what="bob to learn ann's door")
    assert door == {"url": status["url"], "fingerprint": status["fingerprint"]}  # what the phone should see, signed by ann, on every node
    record = bob.wait_until(listed, timeout=30, what="bob to list the guest")
    assert record["name"] == "Ann's phone" and record["guest_via"] == host.status()["node_id"] and record["guest_via_name"] == "ann"
    people = {p["name"]: p for p in phone.call("peer.list")}
    assert people["ann"].get("host") and "bob" in people and "Ann's phone" not in people
    bob.wait_until(lambda: any(p["name"] == "ann" and p["state"] == "alive" for p in phone.call("peer.list")), what="ann alive")

    phone.send_chat(peer="bob", texts=["hello from the phone"])
    got = bob.wait_until(lambda: [m for m in bob.call("chat.log", peer="Ann's phone") if m["direction"] == "in"], timeout=30, what="bob to get the guest's message")
    assert got[0]["text"] == "hello from the phone" and got[0]["sender"] == phone.guest_id
    bob.call("chat.send", peer="Ann's phone", text="hi phone")
    deadline = time.time() + 30
    while time.time() < deadline:
        history = phone.call("chat.log", peer="bob")
        if any(m["text"] == "hi phone" for m in history):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the guest never got bob's answer: {history}")
    for message in history:  # what the phone shows carries each author's own signature
        assert ChatMessage.from_json(json.loads(message["body"]), verify=True).text == message["text"]
    assert [m["direction"] for m in history] == ["out", "in"]
    assert [(c["name"], c["peer"]) for c in phone.call("chat.conversations")] == [("bob", bob.status()["node_id"])]
    bob.wait_until(lambda: bob.call("chat.log", peer="Ann's phone")[-1]["direction"] == "out", what="bob's own copy")
    mine = [m for m in bob.call("chat.log", peer="Ann's phone") if m["direction"] == "out"]
    assert mine
    bob.wait_until(lambda: phone.call("chat.log", peer="bob")[0]["delivered_at"], what="the guest's message to show as delivered to bob")


def test_wrong_codes_spent_or_stale_invites_replays_and_reaches_beyond_the_guest_are_refused_and_counted(nodes: NodeFactory) -> None:
    host = host_node(nodes, "ann")
    host_id = host.status()["node_id"]
    invite = host.call("guests.invite")
    stranger = GuestClient(invite["door"], invite["fingerprint"])
    wrong = f"{(int(invite['code']) + 1) % 1_000_000:06d}"
    for attempt in range(5):
        with pytest.raises(GuestRefused) as refused:
            stranger.join(host=host_id, name="guesser", code=wrong)
        assert refused.value.reason == "wrong_code"
    with pytest.raises(GuestRefused):
        stranger.join(host=host_id, name="guesser", code=invite["code"])  # void now, even with the right code
    assert host.call("guests.list")["invites"] == []

    short = host.call("guests.invite", minutes=0.02)
    time.sleep(1.5)
    with pytest.raises(GuestRefused) as expired:
        stranger.join(host=host_id, name="late", token=short["url"].split("#invite=")[1])
    assert expired.value.reason == "unknown_token"

    phone = guest_of(host, "phone")
    token_used = host.call("guests.invite")
    GuestClient(token_used["door"], token_used["fingerprint"]).join(host=host_id, name="tablet", token=token_used["url"].split("#invite=")[1])
    with pytest.raises(GuestRefused) as spent:
        stranger.join(host=host_id, name="copycat", token=token_used["url"].split("#invite=")[1])
    assert spent.value.reason == "unknown_token"

    # a signed request sent again is a replay; one signed by another key is a forgery
    body = json.dumps({"method": "peer.list", "params": {}}).encode()
    headers = phone.signed_headers(body)
    assert phone.request("POST", "/guest/api", body, headers)[0] == 200
    status, answer = phone.request("POST", "/guest/api", body, headers)
    assert status == 403 and json.loads(answer)["reason"] == "replayed"
    forged = {**phone.signed_headers(body)}
    forged["X-Lannode-Signature"] = stranger.signed_headers(body)["X-Lannode-Signature"] if stranger.session else forged["X-Lannode-Signature"][::-1]
    assert phone.request("POST", "/guest/api", body, forged)[0] in (400, 403)
    assert phone.request("POST", "/guest/api", body, {})[0] == 401  # no session at all

    # a guest reaches what a node of its own would see, and nothing of the host's
    for method, params in (("guests.invite", {}), ("node.status", {}), ("store.put", {"key": "x", "value": 1}), ("drive.rm", {"file": "x"}), ("node.stop", {})):
        with pytest.raises(GuestRefused, match="not for guests"):
            phone.call(method, **params)
    with pytest.raises(GuestRefused, match='missing parameter "upload"'):
        phone.call("drive.put", path="/etc/passwd")  # a guest puts what it uploaded, never a path on its host
    tablet_id = next(g["guest"] for g in host.call("guests.list")["guests"] if g["name"] == "tablet")
    with pytest.raises(GuestRefused, match="no conversation"):
        phone.call("chat.log", conversation=f"dm/{tablet_id}/{host_id}" if tablet_id < host_id else f"dm/{host_id}/{tablet_id}")
    refused = host.status()["guests"]
    assert refused["invite_counters"]["voided"] == 1 and refused["invite_counters"]["wrong_code"] == 6  # the right code, once void, is wrong too
    assert refused["session_counters"]["replayed"] == 1 and refused["refused"]["refused_method"] >= 5


def test_guests_of_two_hosts_chat_and_a_removed_guest_is_gone_everywhere(nodes: NodeFactory) -> None:
    ann, cat = host_node(nodes, "ann"), host_node(nodes, "cat")
    bob = nodes.start("bob")
    phone, tablet, laptop = guest_of(ann, "phone"), guest_of(ann, "tablet"), guest_of(cat, "laptop")
    bob.wait_until(lambda: {"phone", "tablet", "laptop"} <= {p["name"] for p in bob.call("peer.list")}, timeout=30, what="bob to list the three guests")
    cat.wait_until(lambda: "phone" in {p["name"] for p in laptop.call("peer.list")}, timeout=30, what="the laptop to see the phone")
    phone.send_chat(peer="tablet", texts=["same host"])
    phone.send_chat(peer="laptop", texts=["other host"])
    laptop.send_chat(peer="phone", texts=["back across"])

    def texts(guest: GuestClient, peer: str) -> list[str]:
        return sorted(m["text"] for m in guest.call("chat.log", peer=peer))  # written at once on both sides: in either order

    ann.wait_until(lambda: texts(tablet, "phone") == ["same host"], timeout=30, what="the tablet to get the phone's message")
    ann.wait_until(lambda: texts(laptop, "phone") == ["back across", "other host"], timeout=30, what="the laptop to get the phone's message")
    ann.wait_until(lambda: texts(phone, "laptop") == ["back across", "other host"], timeout=30, what="the phone to get the laptop's answer")

    ann.call("guests.remove", guest="tablet")
    for node in (bob, cat):
        node.wait_until(lambda n=node: "tablet" not in {p["name"] for p in n.call("peer.list")}, timeout=30, what="every node to see the tablet go")
    with pytest.raises(GuestRefused) as gone:
        tablet.call("peer.list")
    assert gone.value.status == 401
    with pytest.raises(GuestRefused):
        tablet.open_session()


def test_a_guest_is_here_while_its_page_is_open_and_what_came_meanwhile_waits_on_its_host(nodes: NodeFactory) -> None:
    import threading

    host = host_node(nodes, "ann")
    bob = nodes.start("bob")
    phone = guest_of(host, "phone")
    bob.wait_until(lambda: any(p["name"] == "phone" for p in bob.call("peer.list")), timeout=30, what="bob to list the phone")
    assert next(p for p in bob.call("peer.list") if p["name"] == "phone")["state"] == "away"  # no page open yet
    seen: list[dict[str, object]] = []
    stream = phone.events(timeout=20)
    first = next(stream)
    assert first["event"] == "hello" and first["data"]["node_id"] == phone.guest_id

    def read() -> None:
        for event in stream:
            seen.append(event)
            if event["event"] == "chat.message":
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    bob.wait_until(lambda: next(p for p in bob.call("peer.list") if p["name"] == "phone")["state"] == "alive", timeout=30, what="the phone to be here")
    bob.call("chat.send", peer="phone", text="are you there?")
    reader.join(timeout=30)
    message = next(e for e in seen if e["event"] == "chat.message")["data"]
    assert message["text"] == "are you there?" and ChatMessage.from_json(json.loads(message["body"]), verify=True)
    stream.close()
    bob.wait_until(lambda: next(p for p in bob.call("peer.list") if p["name"] == "phone")["state"] == "away", timeout=60, what="the phone to be away once its page closed")
    bob.call("chat.send", peer="phone", text="while you were away")
    phone.open_session()  # the phone comes back later, without a new invite
    host.wait_until(lambda: [m["text"] for m in phone.call("chat.log", peer="bob")] == ["are you there?", "while you were away"], timeout=30, what="what waited")


def test_the_cli_invites_with_a_qr_code_lists_revokes_and_closes_and_opens_the_door(nodes: NodeFactory) -> None:
    host = host_node(nodes, "ann")
    home = str(host.home.path)
    shown = run_cli("guests", "invite", "--minutes", "5", "--home", home)
    assert shown.returncode == 0, shown.stderr
    assert "▄" in shown.stdout or "█" in shown.stdout  # the QR code, drawn in the terminal
    code = re.search(r"type the code (\d{3}) (\d{3})", shown.stdout)
    assert code and "good for 5 minutes" in shown.stdout and host.call("guests.status")["fingerprint"] in shown.stdout
    listing = json.loads(run_cli("guests", "ls", "--json", "--home", home).stdout)
    invite = listing["invites"][0]
    assert invite["code"] == code.group(1) + code.group(2) and listing["guests"] == []
    assert run_cli("guests", "revoke", invite["id"], "--home", home).returncode == 0
    assert json.loads(run_cli("guests", "ls", "--json", "--home", home).stdout)["invites"] == []
    fingerprint = host.call("guests.status")["fingerprint"]

    closed = run_cli("guests", "off", "--home", home)
    assert closed.returncode == 0 and "closed" in closed.stdout
    assert host.call("guests.status")["url"] == "" and "enabled = false" in (host.home.path / "config.toml").read_text()
    assert run_cli("guests", "invite", "--home", home).returncode != 0  # no door, no invitation
    opened = json.loads(run_cli("guests", "on", "--json", "--home", home).stdout)
    assert opened["url"].startswith("https://127.0.0.1:") and opened["fingerprint"] == fingerprint  # the same certificate
    bad = run_cli("guests", "invite", "--minutes", "-1", "--home", home)
    assert bad.returncode == 1 and "invite lasts" in bad.stderr


def test_a_guest_makes_a_group_with_nodes_and_guests_and_its_operations_carry_its_own_signature(nodes: NodeFactory) -> None:
    ann = host_node(nodes, "ann")
    bob = nodes.start("bob")
    phone, tablet = guest_of(ann, "phone"), guest_of(ann, "tablet")
    bob.wait_until(lambda: {"phone", "tablet"} <= {p["name"] for p in bob.call("peer.list")}, timeout=30, what="bob to list both guests")
    group = phone.group_op("create", name="family", members=["bob", "ann"])
    assert group["name"] == "family" and group["creator"] == phone.guest_id
    bob.wait_until(lambda: [g["name"] for g in bob.call("group.list")] == ["family"], timeout=30, what="bob to get the group")
    phone.group_op("invite", group="family", members=["tablet"])
    ann.wait_until(lambda: [g["name"] for g in tablet.call("group.list")] == ["family"], timeout=30, what="the tablet to be invited")
    phone.send_chat(group="family", texts=["dinner at 8"])
    bob.call("chat.send", group="family", text="I'll bring bread")
    tablet.send_chat(group="family", texts=["ok!"])
    everyone = {"bob": lambda: bob.call("chat.log", group="family"), "ann": lambda: ann.call("chat.log", group="family"), "phone": lambda: phone.call("chat.log", group="family")}
    for name, log in everyone.items():
        ann.wait_until(lambda log=log: {m["text"] for m in log() if m["kind"] == "text"} == {"dinner at 8", "I'll bring bread", "ok!"}, timeout=30, what=f"{name} to have all three messages")
    operations = [m for m in bob.call("chat.log", group="family") if m["kind"] == "group"]
    assert [m["op"]["op"] for m in operations] == ["create", "invite"] and all(m["sender"] == phone.guest_id for m in operations)
    phone.group_op("rename", group="family", name="the family")
    bob.wait_until(lambda: [g["name"] for g in bob.call("group.list")] == ["the family"], timeout=30, what="the rename to reach bob")
    with pytest.raises(GuestRefused, match="only the group's creator"):
        tablet.group_op("remove", group="the family", members=["phone"])


def test_a_guest_in_a_meeting_room_is_listed_on_every_node_while_its_page_is_open(nodes: NodeFactory) -> None:
    import threading

    host = host_node(nodes, "ann")
    bob = nodes.start("bob")
    phone = guest_of(host, "phone")
    stream = phone.events(timeout=30)
    assert next(stream)["event"] == "hello"
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()  # the page stays open
    front = phone.call("rtc.register")["front"]
    phone.call("room.join", room="standup")

    def listed() -> list[dict[str, object]]:
        return [m for m in bob.call("room.members", room="standup")["members"] if m["node_id"] == phone.guest_id]

    member = bob.wait_until(listed, timeout=30, what="bob to see the phone in the room")[0]
    assert member["name"] == "phone" and member["fronts"] == [front]  # written by its host, taken by bob's store
    phone.call("room.leave", room="standup")
    bob.wait_until(lambda: not listed(), timeout=30, what="the phone to leave the room")


def test_a_guest_sends_a_file_to_a_node_and_receives_one_from_it_byte_identical(nodes: NodeFactory, tmp_path: Path) -> None:
    host = host_node(nodes, "ann")
    bob = nodes.start("bob")
    phone = guest_of(host, "phone")
    bob.wait_until(lambda: any(p["name"] == "phone" for p in bob.call("peer.list")), timeout=30, what="bob to list the phone")
    photo = os.urandom(3 * 1024 * 1024 + 17)
    upload = phone.upload(photo, "holiday.jpg", piece=1 << 20)
    sent = phone.call("transfer.send", peer="bob", uploads=[upload])
    offer = bob.wait_until(lambda: next((t for t in bob.call("transfer.list") if t["direction"] == "in"), None), timeout=30, what="bob to get the offer")
    assert offer["peer"] == phone.guest_id and offer["peer_name"] == "phone" and offer["names"] == ["holiday.jpg"]
    bob.call("transfer.accept", id=offer["id"])
    bob.wait_until(lambda: bob.call("transfer.get", id=offer["id"])["state"] == "done", timeout=60, what="the photo to arrive")
    downloads = Path(bob.status()["transfers"]["downloads"])
    assert (downloads / "holiday.jpg").read_bytes() == photo
    host.wait_until(lambda: phone.call("transfer.get", id=sent["id"])["state"] == "done", what="the phone to see it done")

    document = tmp_path / "notes.txt"
    document.write_bytes(os.urandom(2 * 1024 * 1024))
    bob.call("transfer.send", peer="phone", paths=[str(document)])
    incoming = host.wait_until(lambda: next((t for t in phone.call("transfer.list") if t["direction"] == "in"), None), timeout=30, what="the phone to get bob's offer")
    assert incoming["state"] == "pending" and incoming["peer_name"] == "bob"
    phone.call("transfer.accept", id=incoming["id"])
    host.wait_until(lambda: phone.call("transfer.get", id=incoming["id"])["state"] == "done", timeout=60, what="bob's file to reach the phone's host")
    assert phone.download(incoming["id"], 0) == document.read_bytes()

    # a piece whose bytes are not the ones signed is refused before a byte is written; nothing else is served
    path = f"/guest/uploads/{phone.call('upload.begin', name='x.bin', size=10)['upload']}"
    headers = {**phone.signed_headers(f"PUT {path} 0 {'0' * 64}".encode()), "X-Lannode-Offset": "0", "X-Lannode-Sha256": "0" * 64}
    assert phone.request("PUT", path, b"0123456789", headers)[0] == 400
    for wrong in ((incoming["id"], 1), (sent["id"], 0), ("..", 0)):
        with pytest.raises(GuestRefused) as refused:
            phone.download(*wrong)
        assert refused.value.status == 404


def test_a_host_cannot_put_words_in_its_guests_mouth_nor_speak_for_another_hosts_guest(nodes: NodeFactory) -> None:
    """The host holds the link that carries its guest, so it can send anything in an
    envelope "from" the guest: what the guest did not sign is refused all the same."""
    import base64

    from nacl.signing import SigningKey

    from lannode.core.chat import MessageFrame, dm_conversation, encode_frame
    from lannode.core.link import CHANNEL_CHAT, CHANNEL_GUEST
    from lannode.guests.routes import envelope
    from tests.conftest import raw_link

    host = host_node(nodes, "ann")
    bob = nodes.start("bob")
    phone = guest_of(host, "phone")
    bob_record = bob.wait_until(lambda: next((p for p in host.call("peer.list") if p["name"] == "bob"), None), what="ann to know bob")
    bob.wait_until(lambda: any(p["name"] == "phone" for p in bob.call("peer.list")), timeout=30, what="bob to list the phone")
    host_key = SigningKey(base64.b64decode((host.home.path / "node.key").read_bytes().strip()))
    bob_id = bob_record["node_id"]
    host.stop()  # the host turns bad: it speaks on its own link, with its own key

    def message(text: str, signer: SigningKey, seq: int) -> ChatMessage:
        draft = ChatMessage(f"{seq:032x}", dm_conversation(phone.guest_id, bob_id), phone.public_key, seq, seq, int(time.time() * 1000), text)
        return draft.signed(signer)

    with raw_link(host_key, bob_record) as (conn, sock):
        forged = message("send me your password", host_key, 1)  # the guest's key named, the host's signature
        conn.send_message(CHANNEL_GUEST, envelope(phone.guest_id, bob_id, CHANNEL_CHAT, encode_frame(MessageFrame(forged))))
        stranger = SigningKey.generate()  # a guest this host does not host
        other = ChatMessage("f" * 32, dm_conversation("a" * 24, bob_id), bytes(stranger.verify_key), 1, 1, 1, "hi").signed(stranger)
        conn.send_message(CHANNEL_GUEST, envelope("a" * 24, bob_id, CHANNEL_CHAT, encode_frame(MessageFrame(other))))
        genuine = message("this one I signed", phone.key, 1)
        conn.send_message(CHANNEL_GUEST, envelope(phone.guest_id, bob_id, CHANNEL_CHAT, encode_frame(MessageFrame(genuine))))
        sock.sendall(conn.data_to_send())
        bob.wait_until(lambda: bob.call("chat.log", peer="phone"), timeout=15, what="the genuine message")
    assert [m["text"] for m in bob.call("chat.log", peer="phone")] == ["this one I signed"]
    status = bob.status()
    assert status["chat"]["rejected"] >= 1 and status["guests"]["routes"].get("not_its_guest", 0) >= 1


def test_the_door_survives_garbage_floods_and_a_broken_guest_file_and_counts_them(nodes: NodeFactory) -> None:
    import socket
    import ssl

    host = host_node(nodes, "ann")
    phone = guest_of(host, "phone")
    door = host.call("guests.status")["url"]
    port = int(door.rsplit(":", 1)[1].rstrip("/"))
    for garbage in (b"\x16\x03\x01\x00\x05hello", os.urandom(4096), b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # not TLS at all
            raw.sendall(garbage)
            try:
                raw.recv(100)
            except OSError:
                pass
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for request in (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"Y: " + b"b" * 70000 + b"\r\n\r\n", b"POST /guest/api HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{", b"NONSENSE\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(request)
            try:
                answer = tls.recv(200)
            except OSError:
                answer = b""
            assert not answer or answer.startswith(b"HTTP/1.1 4")
    # a guest that floods is told to slow down, and the others go on
    statuses = set()
    for _ in range(260):
        body = json.dumps({"method": "guest.hello", "params": {}}).encode()
        statuses.add(phone.request("POST", "/guest/api", body, phone.signed_headers(body))[0])
    assert statuses == {200, 429}
    assert host.status()["guests"]["refused"]["rate"] >= 1 and host.status()["guests"]["door"]["tls_failed"] >= 1
    tablet = guest_of(host, "tablet")
    assert tablet.call("guest.hello")["name"] == "tablet"

    # a broken guests.json never stops the node: it starts without its guests, and says so
    host.stop()
    (host.home.path / "guests" / "guests.json").write_text('{"guests": [{"record": {"name": "forged"}}, 7, {"record": null, "added": "x"}]}')
    again = nodes.start_on(host.home, name="ann")
    refused = again.status()["guests"]["refused"]
    assert again.call("guests.list")["guests"] == [] and refused.get("bad_guest_record", 0) >= 1


def test_a_guest_puts_on_the_drive_through_its_host_and_reads_what_is_shared_with_it_with_its_own_key(nodes: NodeFactory, tmp_path: Path) -> None:
    host = host_node(nodes, "ann")
    bob = nodes.start("bob")
    phone = guest_of(host, "phone")
    bob.wait_until(lambda: any(p["name"] == "phone" for p in bob.call("peer.list")), timeout=30, what="bob to list the phone")
    plan = os.urandom(300_000)
    upload = phone.upload(plan, "plan.pdf")
    put = phone.call("drive.put", upload=upload, name="plan.pdf", share=["bob"], allow_fewer=True)
    assert "read_cap" not in put
    bob.wait_until(lambda: any(f["name"] == "plan.pdf" for f in bob.call("drive.ls")), timeout=30, what="bob to see the phone's file")
    got = bob.call("drive.get", file="plan.pdf", to="downloads")
    assert Path(got["path"]).read_bytes() == plan

    [mine] = phone.call("drive.ls")
    share = phone.open_share(mine["sealed"])  # sealed to the phone's own key: its host cannot open it
    assert share["name"] == "plan.pdf" and mine["id"] == put["id"]
    fetched = phone.call("drive.get", cap=share["cap"], name=share["name"])
    assert phone.drive_download(fetched["download"]) == plan
    with pytest.raises(GuestRefused) as once:
        phone.drive_download(fetched["download"])
    assert once.value.status == 404

    notes = tmp_path / "minutes.txt"
    notes.write_bytes(os.urandom(50_000))
    bob.call("transfer.list")  # (warm)
    done = run_cli("drive", "put", str(notes), "--k", "1", "--m", "1", "--share", "phone", "--home", str(bob.home.path))
    assert done.returncode == 0, done.stderr
    theirs = host.wait_until(lambda: [f for f in phone.call("drive.ls") if f["id"] != put["id"]], timeout=30, what="the phone to see bob's file")
    opened = phone.open_share(theirs[0]["sealed"])
    assert opened["name"] == "minutes.txt"
    assert phone.drive_download(phone.call("drive.get", cap=opened["cap"], name=opened["name"])["download"]) == notes.read_bytes()
    with pytest.raises(RemoteError, match="no read capability"):
        host.call("drive.get", file=theirs[0]["id"], to="downloads")  # the host carries it, and cannot read it
    cat = nodes.start("cat")
    host.wait_until(lambda: any(p["name"] == "cat" for p in phone.call("peer.list")), timeout=30, what="the phone to see cat")
    shared = phone.call("drive.share", **{"cap": opened["cap"], "name": "minutes.txt", "with": ["cat"]})
    assert [n["name"] for n in shared["shared_with"]] == ["cat"]
    cat.wait_until(lambda: any(f["name"] == "minutes.txt" for f in cat.call("drive.ls")), timeout=30, what="cat to get the phone's share")
