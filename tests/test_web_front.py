"""The web front end to end: real daemons on loopback, each with its web UI, driven in
headless Chromium (Debian's, through Playwright). Screens are saved under
test-artifacts/screens/."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page

from conftest import (  # (the browser fixture comes from conftest)
    NodeFactory,
    RunningNode,
    screenshot,
    wait_decoding,
)

# A page whose data channels cannot open: ICE may use relay servers only, and there are none.
NO_DATA_CHANNEL = """
const Real = window.RTCPeerConnection;
window.RTCPeerConnection = class extends Real {
  constructor(config) { super({ ...(config || {}), iceTransportPolicy: "relay" }); }
};
"""


def ui_url(node: RunningNode) -> str:
    return node.wait_until(lambda: node.plugin("webui").get("url"), what="the web UI")  # type: ignore[no-any-return]


def open_page(browser: Browser, node: RunningNode, *, init_script: str | None = None, hash: str = "") -> Page:
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    if init_script:
        page.add_init_script(init_script)
    page.goto(ui_url(node) + hash)
    page.wait_for_selector("#connection[data-state=up]", timeout=15000)
    page.wait_for_function("() => document.documentElement.dataset.front", timeout=10000)  # registered as a front
    return page


def pair(nodes: NodeFactory) -> tuple[RunningNode, RunningNode]:
    a = nodes.start("ann", webui=True)
    b = nodes.start("ben", webui=True)
    for node in (a, b):
        node.wait_until(lambda node=node: any(p["state"] == "alive" for p in node.call("peer.list")), what="the other node alive")
    return a, b


def type_message(page: Page, text: str) -> None:
    page.fill("#composer-text", text)
    page.keyboard.press("Enter")


def message_in(page: Page, text: str, timeout: float = 15000) -> dict[str, Any]:
    locator = page.locator("#messages .message", has_text=text)
    locator.wait_for(timeout=timeout)
    return {"path": locator.get_attribute("data-path"), "direction": locator.get_attribute("data-direction")}


def test_two_pages_see_each_other_and_chat_over_a_data_channel_then_through_the_nodes(nodes: NodeFactory, browser: Browser) -> None:
    a, b = pair(nodes)
    ben_id = b.status()["node_id"]
    ann_id = a.status()["node_id"]
    page_a = open_page(browser, a)
    page_b = open_page(browser, b)
    # each page lists the other node, alive, with its trust
    for page, other in ((page_a, ben_id), (page_b, ann_id)):
        page.wait_for_selector(f'.peer[data-node="{other}"][data-state=alive]', timeout=15000)
    screenshot(page_a, "people")

    # ann opens the conversation from the people list; her page finds ben's and opens a data channel
    page_b.goto(ui_url(b) + f"#chat/{ann_id}")
    page_b.wait_for_selector("#connection[data-state=up]")
    page_b.wait_for_function("() => document.documentElement.dataset.front", timeout=10000)
    page_a.click(f'.peer[data-node="{ben_id}"] .chat-with')
    page_a.wait_for_selector("#conversation-path[data-path=direct]", timeout=20000)
    type_message(page_a, "hello over the data channel")
    assert message_in(page_b, "hello over the data channel") == {"path": "direct", "direction": "in"}
    assert message_in(page_a, "hello over the data channel") == {"path": "direct", "direction": "out"}
    # ben's node stored it once, and ann's page gets the delivered tick from ben's node
    page_a.wait_for_selector('#messages .message[data-direction=out] .tick[data-state="read"], #messages .message[data-direction=out] .tick[data-state="delivered"]', timeout=15000)
    b.wait_until(lambda: [m["text"] for m in b.call("chat.log", peer="ann")] == ["hello over the data channel"], what="ben's history")
    type_message(page_b, "and back")
    assert message_in(page_a, "and back")["path"] == "direct"
    screenshot(page_a, "chat-direct")
    screenshot(page_b, "chat-direct-receiver")

    # the data channel breaks: the next message goes through the nodes, and the page says so
    page_a.evaluate("() => { for (const s of window.lannode.mesh.sessions.values()) s.channel.close(); }")
    page_a.wait_for_selector("#conversation-path[data-path=relay]", timeout=10000)
    type_message(page_a, "after the channel broke")
    assert message_in(page_b, "after the channel broke")["path"] == "relay"
    assert [m["text"] for m in b.call("chat.log", peer="ann")] == ["hello over the data channel", "and back", "after the channel broke"]
    assert b.status()["chat"]["duplicates"] == 0 or b.status()["chat"]["received"] == 2
    page_a.close()
    page_b.close()


def test_a_page_whose_data_channel_cannot_open_chats_through_the_nodes(nodes: NodeFactory, browser: Browser) -> None:
    a, b = pair(nodes)
    ann_id, ben_id = a.status()["node_id"], b.status()["node_id"]
    page_b = open_page(browser, b, hash=f"#chat/{ann_id}")
    page_a = open_page(browser, a, init_script=NO_DATA_CHANNEL, hash=f"#chat/{ben_id}")
    page_a.wait_for_selector("#conversation")
    page_a.wait_for_timeout(1500)  # the attempt is under way and cannot succeed
    assert page_a.get_attribute("#conversation-path", "data-path") == "relay"
    type_message(page_a, "no channel, still here")
    assert message_in(page_b, "no channel, still here")["path"] == "relay"
    type_message(page_b, "got it")
    assert message_in(page_a, "got it")["path"] == "relay"
    screenshot(page_a, "chat-relay")
    # ben's page read it: ann's tick turns to read
    page_a.wait_for_selector('#messages .message[data-direction=out] .tick[data-state="read"]', timeout=15000)
    page_a.close()
    page_b.close()


def test_verifying_a_peer_in_the_page_and_the_layout_at_phone_width(nodes: NodeFactory, browser: Browser) -> None:
    a, b = pair(nodes)
    ben_id = b.status()["node_id"]
    page = open_page(browser, a)
    page.wait_for_selector(f'.peer[data-node="{ben_id}"] .verify', timeout=15000)
    page.click(f'.peer[data-node="{ben_id}"] .verify')
    page.wait_for_selector("#verify-dialog[open]")
    code = page.text_content("#verify-code")
    assert code == a.call("peer.safety_code", peer="ben")["safety_code"] == b.call("peer.safety_code", peer="ann")["safety_code"]
    screenshot(page, "verify-dialog")
    page.click("#verify-match")
    page.wait_for_selector(f'.peer[data-node="{ben_id}"][data-trust=verified]', timeout=10000)
    assert next(p for p in a.call("peer.list") if p["node_id"] == ben_id)["trust"] == "verified"
    # someone else starts a node calling itself ben: the page raises the alarm
    impostor = nodes.start("ben")
    impostor_id = impostor.status()["node_id"]
    page.wait_for_selector("#identity-warning:not([hidden])", timeout=20000)
    assert impostor_id in page.text_content("#identity-warning") and ben_id in page.text_content("#identity-warning")  # type: ignore[operator]
    page.wait_for_selector(f'.peer[data-node="{impostor_id}"][data-trust=new] .warning')
    screenshot(page, "identity-warning")
    # keyboard only: tab to the Chat tab and open it
    page.set_viewport_size({"width": 380, "height": 800})
    page.focus('nav a[data-tab="chat"]')
    page.keyboard.press("Enter")
    page.wait_for_selector("#tab-chat:not([hidden])")
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"), "nothing overflows at phone width"
    screenshot(page, "phone-width")
    page.close()


def test_a_call_between_two_pages_carries_video_both_ways(nodes: NodeFactory, browser: Browser) -> None:
    a, b = pair(nodes)
    ben_id = b.status()["node_id"]
    page_a, page_b = open_page(browser, a), open_page(browser, b)
    page_a.wait_for_selector(f'.peer[data-node="{ben_id}"][data-state=alive] .call', timeout=15000)
    page_a.click(f'.peer[data-node="{ben_id}"] .call')
    page_b.wait_for_selector("#incoming:not([hidden]) #accept-call", timeout=20000)
    assert "ann is calling" in page_b.text_content("#incoming")  # type: ignore[operator]
    page_b.click("#accept-call")
    assert len(wait_decoding(page_a, 1)) == 1 and len(wait_decoding(page_b, 1)) == 1
    # an ICE restart (what a page does when its connection fails) renegotiates and the video goes on
    ufrag = "() => [...window.lannode.mesh.sessions.values()].map((s) => s.pc.localDescription.sdp.match(/a=ice-ufrag:(\\S+)/)[1])"
    before_ufrags, before = page_a.evaluate(ufrag), wait_decoding(page_b, 1)
    page_a.evaluate("() => { for (const s of window.lannode.mesh.sessions.values()) s.pc.restartIce(); }")
    old_ufrags = json.dumps(",".join(before_ufrags))
    page_a.wait_for_function(f"() => ({ufrag})().join() !== {old_ufrags}", timeout=15000)
    page_b.wait_for_timeout(1500)
    after = page_b.evaluate("() => window.lannode.calls.stats()")
    assert all(after[front] > frames for front, frames in before.items()), (before, after)
    # screen share: ann's 16:9 screen replaces her 4:3 camera in ben's tile, and back
    aspect = "(ratio) => { const v = document.querySelector('#tiles .tile:not(.local) video'); return v && v.videoHeight && Math.abs(v.videoWidth / v.videoHeight - ratio) < 0.05; }"
    page_b.wait_for_function(aspect, arg=4 / 3, timeout=15000)
    page_a.click("#call-screen")
    page_b.wait_for_function(aspect, arg=16 / 9, timeout=20000)
    assert page_a.text_content("#call-screen") == "Stop sharing"
    screenshot(page_b, "call-screen-share")
    page_a.click("#call-screen")
    page_b.wait_for_function(aspect, arg=4 / 3, timeout=20000)
    page_a.click("#call-mute")
    assert page_a.get_attribute("#call-mute", "aria-pressed") == "true"
    screenshot(page_a, "call-caller")
    screenshot(page_b, "call-callee")
    page_a.click("#call-leave")
    page_b.wait_for_selector("#call", state="hidden", timeout=10000)
    assert "hung up" in page_b.text_content("#call-status")  # type: ignore[operator]
    page_a.close()
    page_b.close()


def test_three_pages_in_a_meeting_room_each_decode_both_others(nodes: NodeFactory, browser: Browser) -> None:
    started = [nodes.start(name, webui=True) for name in ("ann", "ben", "cat")]
    for node in started:
        node.wait_until(lambda node=node: sum(p["state"] == "alive" for p in node.call("peer.list")) == 2, what="everyone alive")
    pages = [open_page(browser, node, hash="#calls") for node in started]
    for page in pages:
        page.fill("#room-name", "standup")
        page.click("#room-form button[type=submit]")
    for page in pages:
        assert len(wait_decoding(page, 2)) == 2
    assert sorted(m["name"] for m in started[0].call("room.members", room="standup")["members"]) == ["ann", "ben", "cat"]
    screenshot(pages[0], "room")
    # cat closes the tab: the room forgets cat's page and the others drop its tile
    pages[2].close()
    started[0].wait_until(lambda: sorted(m["name"] for m in started[0].call("room.members", room="standup")["members"]) == ["ann", "ben"], what="cat gone")
    pages[0].wait_for_function("() => document.querySelectorAll('#tiles .tile').length === 2", timeout=15000)
    for page in pages[:2]:
        page.close()


def test_a_file_dropped_on_a_peer_in_the_page_arrives_byte_identical(nodes: NodeFactory, browser: Browser, tmp_path: Path) -> None:
    a, b = pair(nodes)
    ben_id = b.status()["node_id"]
    source = tmp_path / "holiday film.bin"
    source.write_bytes(os.urandom(50 * 1024 * 1024))
    page_a, page_b = open_page(browser, a), open_page(browser, b, hash="#files")
    page_a.wait_for_selector(f'.peer[data-node="{ben_id}"] .send-files', timeout=15000)
    page_a.click(f'.peer[data-node="{ben_id}"] .send-files')
    page_a.wait_for_selector("#tab-files:not([hidden])")
    page_a.set_input_files("#file-input", str(source))
    # ben's page is asked, and accepts
    page_b.wait_for_selector(".transfer[data-direction=in][data-state=pending] .accept", timeout=60000)
    assert "holiday film.bin" in page_b.text_content(".transfer[data-direction=in]")  # type: ignore[operator]
    screenshot(page_b, "file-offered")
    page_b.click(".transfer[data-direction=in] .accept")
    page_b.wait_for_selector(".transfer[data-direction=in][data-state=done]", timeout=60000)
    page_a.wait_for_selector(".transfer[data-direction=out][data-state=done]", timeout=30000)
    screenshot(page_a, "file-sent")
    received = b.home.path / "downloads" / "holiday film.bin"
    assert received.read_bytes() == source.read_bytes()
    assert a.status()["uploads"]["bytes"] == source.stat().st_size  # each byte handed over once
    page_a.close()
    page_b.close()


def test_a_file_put_on_the_drive_in_one_page_downloads_byte_identical_in_another(nodes: NodeFactory, browser: Browser, tmp_path: Path) -> None:
    started = [nodes.start(name, webui=True) for name in ("ann", "ben", "cat")]
    for node in started:
        node.wait_until(lambda node=node: sum(p["state"] == "alive" for p in node.call("peer.list")) == 2, what="everyone alive")
    a, b, c = started
    source = tmp_path / "minutes.pdf"
    source.write_bytes(os.urandom(6 * 1024 * 1024 + 12345))
    page_a = open_page(browser, a, hash="#drive")
    page_a.fill("#drive-share", "cat")
    page_a.check("#drive-fewer")  # 6 fragments on 3 nodes: two each
    page_a.set_input_files("#drive-input", str(source))
    page_a.wait_for_function("() => document.getElementById('drive-status').textContent.includes('is on the drive')", timeout=60000)
    row = page_a.locator(".drive-file", has_text="minutes.pdf")
    row.wait_for(timeout=10000)
    assert row.get_attribute("data-health") == "full" and row.locator(".fragment[data-alive='1']").count() == 6
    screenshot(page_a, "drive")
    # cat was given the file: its page downloads it into cat's downloads folder
    page_c = open_page(browser, c, hash="#drive")
    page_c.locator(".drive-file[data-readable='1']", has_text="minutes.pdf").wait_for(timeout=20000)
    page_c.click(".drive-file[data-readable='1'] .download")
    page_c.wait_for_selector("#drive-status[data-saved]", timeout=60000)
    saved = Path(page_c.get_attribute("#drive-status", "data-saved") or "")
    assert saved.parent == c.home.path / "downloads" and saved.read_bytes() == source.read_bytes()
    # ben was not: his page lists the file without a name and cannot download it
    page_b = open_page(browser, b, hash="#drive")
    page_b.locator(".drive-file").first.wait_for(timeout=20000)
    assert page_b.locator(".drive-file[data-readable='1']").count() == 0 and page_b.locator(".drive-file .download").count() == 0
    for page in (page_a, page_b, page_c):
        page.close()


def test_a_file_sent_page_to_page_over_a_data_channel_saves_byte_identical(nodes: NodeFactory, browser: Browser, tmp_path: Path) -> None:
    a, b = pair(nodes)
    ben_id = b.status()["node_id"]
    source = tmp_path / "sketch.png"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 999))  # not a multiple of the chunk
    page_a, page_b = open_page(browser, a, hash="#files"), open_page(browser, b, hash="#files")
    page_a.wait_for_function(f"() => [...document.querySelectorAll('#drop-peer option')].some(o => o.value === '{ben_id}')", timeout=15000)
    page_a.select_option("#drop-peer", ben_id)
    page_a.select_option("#drop-path", "direct")
    page_a.set_input_files("#file-input", str(source))
    page_b.wait_for_selector(".transfer[data-path=direct][data-state=pending] .accept", timeout=30000)
    assert "page to page" in page_b.text_content(".transfer[data-path=direct]")  # type: ignore[operator]
    page_b.click(".transfer[data-path=direct] .accept")
    page_b.wait_for_selector(".transfer[data-path=direct][data-state=done] a.save", timeout=60000)
    with page_b.expect_download() as download:
        page_b.click(".transfer[data-path=direct] a.save")
    saved = tmp_path / "saved.png"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "sketch.png" and saved.read_bytes() == source.read_bytes()
    page_a.wait_for_function("() => document.getElementById('drop-status').textContent.includes('sent page to page')", timeout=10000)
    screenshot(page_b, "file-page-to-page")
    assert b.status()["uploads"]["bytes"] == 0 and a.status()["uploads"]["bytes"] == 0  # the nodes never saw it
    page_a.close()
    page_b.close()


def test_a_group_made_in_one_page_chats_with_the_other_and_unread_counts_show(nodes: NodeFactory, browser: Browser) -> None:
    a, b = pair(nodes)
    ben_id = b.status()["node_id"]
    page_a, page_b = open_page(browser, a, hash="#chat"), open_page(browser, b, hash="#people")
    page_a.wait_for_selector(f'#group-members input[value="{ben_id}"]', state="attached", timeout=15000)
    page_a.click(".new-group summary")
    page_a.fill("#group-name", "garden")
    page_a.check(f'#group-members input[value="{ben_id}"]')
    page_a.click("#group-form button[type=submit]")
    page_a.wait_for_selector("#conversation-name:has-text('# garden')", timeout=15000)
    # the badge is drawn once the conversation's first page has loaded
    page_a.wait_for_selector("#conversation-path[data-path=relay]:has-text('(group)')", timeout=10000)
    for i in range(3):
        type_message(page_a, f"tomatoes {i}")
    # ben, on another tab of his page, sees the group with 3 unread
    page_b.wait_for_selector("#unread-total:not([hidden])", timeout=20000)
    page_b.wait_for_function("() => document.getElementById('unread-total').textContent === '3'", timeout=20000)
    page_b.click('nav a[data-tab="chat"]')
    page_b.click("#conversations button:has-text('garden')")
    for i in range(3):
        message_in(page_b, f"tomatoes {i}")
    page_b.wait_for_selector("#unread-total[hidden]", state="attached", timeout=10000)  # read now
    type_message(page_b, "and basil")
    message_in(page_a, "and basil")
    screenshot(page_a, "chat-group")
    page_a.click('nav a[data-tab="node"]')
    page_a.wait_for_selector("#plugins tr")
    screenshot(page_a, "node")
    page_a.close()
    page_b.close()


def test_a_page_reloaded_mid_upload_resumes_where_its_node_stopped(nodes: NodeFactory, browser: Browser, tmp_path: Path) -> None:
    a, b = pair(nodes)
    ben_id = b.status()["node_id"]
    source = tmp_path / "backup.tar"
    with open(source, "wb") as f:
        for _ in range(300):
            f.write(os.urandom(1 << 20))
    size = source.stat().st_size
    page_a, page_b = open_page(browser, a, hash="#files"), open_page(browser, b, hash="#files")
    for _ in range(2):  # the second time, after the reload
        page_a.wait_for_function(f"() => [...document.querySelectorAll('#drop-peer option')].some(o => o.value === '{ben_id}')", timeout=15000)
        page_a.select_option("#drop-peer", ben_id)
        page_a.set_input_files("#file-input", str(source))
        if _ == 0:
            had = a.wait_until(lambda: a.status()["uploads"]["bytes"] >= 20 << 20 and a.status()["uploads"]["bytes"], what="part of the upload", timeout=60)
            page_a.reload()
            page_a.wait_for_selector("#connection[data-state=up]", timeout=15000)
            assert had < size, "the upload finished before the reload; nothing to resume"
    page_b.click(".transfer[data-direction=in][data-state=pending] .accept", timeout=120000)
    page_b.wait_for_selector(".transfer[data-direction=in][data-state=done]", timeout=120000)
    assert filecmp.cmp(b.home.path / "downloads" / "backup.tar", source, shallow=False)
    assert a.status()["uploads"]["bytes"] == size, "every byte was handed to the node once, not twice"
    page_a.close()
    page_b.close()


def test_a_seventh_person_is_told_the_room_is_full(nodes: NodeFactory, browser: Browser) -> None:
    names = ["ann", "ben", "cat", "dan", "eve", "fay", "gus"]
    started = [nodes.start(name, webui=name == "gus") for name in names]
    gus = started[-1]
    gus.wait_until(lambda: sum(p["state"] == "alive" for p in gus.call("peer.list")) == 6, what="everyone alive at gus", timeout=40)
    for node in started[:6]:  # six people are in the room already (their pages need not be open)
        node.call("room.join", room="all-hands")
    gus.wait_until(lambda: len(gus.call("room.members", room="all-hands")["members"]) == 6, what="the room's members at gus")
    page = open_page(browser, gus, hash="#calls")
    page.fill("#room-name", "all-hands")
    page.click("#room-form button[type=submit]")
    page.wait_for_function("() => document.getElementById('call-status').textContent.includes('full')", timeout=10000)
    assert "at most 6" in page.text_content("#call-status") and page.is_hidden("#call")  # type: ignore[operator]
    assert len(gus.call("room.members", room="all-hands")["members"]) == 6
    screenshot(page, "room-full")
    page.close()


def test_a_folder_picked_in_the_page_arrives_with_its_structure(nodes: NodeFactory, browser: Browser, tmp_path: Path) -> None:
    a, b = pair(nodes)
    ben_id = b.status()["node_id"]
    trip = tmp_path / "trip"
    files = {"notes.txt": b"day one", "photos/a.jpg": os.urandom(200_000), "maps/a.jpg": os.urandom(100_000)}  # two a.jpg
    for name, data in files.items():
        (trip / name).parent.mkdir(parents=True, exist_ok=True)
        (trip / name).write_bytes(data)
    page_a, page_b = open_page(browser, a, hash="#files"), open_page(browser, b, hash="#files")
    page_a.wait_for_function(f"() => [...document.querySelectorAll('#drop-peer option')].some(o => o.value === '{ben_id}')", timeout=15000)
    page_a.select_option("#drop-peer", ben_id)
    page_a.set_input_files("#folder-input", str(trip))
    page_b.click(".transfer[data-direction=in][data-state=pending] .accept", timeout=30000)
    page_b.wait_for_selector(".transfer[data-direction=in][data-state=done]", timeout=30000)
    for name, data in files.items():
        assert (b.home.path / "downloads" / "trip" / name).read_bytes() == data, name
    page_a.close()
    page_b.close()


def test_the_smaller_actions_paging_decline_drag_and_drop_share_and_delete(nodes: NodeFactory, browser: Browser, tmp_path: Path) -> None:
    a, b = pair(nodes)
    ben_id = b.status()["node_id"]
    page_a, page_b = open_page(browser, a), open_page(browser, b, hash="#files")
    for page in (page_a, page_b):
        page.on("dialog", lambda dialog: dialog.accept("ben") if dialog.type == "prompt" else dialog.accept())
    # history pages: 60 messages, 50 shown, the rest on asking
    b.call("chat.send", peer="ann", texts=[f"line {i}" for i in range(60)])
    a.wait_until(lambda: len(a.call("chat.log", peer="ben", limit=100)) == 60, what="60 messages at ann")
    page_a.goto(ui_url(a) + f"#chat/{ben_id}")
    page_a.wait_for_selector("#messages .message >> text=line 59", timeout=15000)
    assert page_a.locator("#messages .message").count() == 50
    page_a.click("#older")
    page_a.wait_for_function("() => document.querySelectorAll('#messages .message').length === 60", timeout=10000)
    assert page_a.locator("#messages .message .text").first.text_content() == "line 0"
    # a file dragged onto the drop zone; ben declines it
    page_a.goto(ui_url(a) + "#files")
    page_a.wait_for_function(f"() => [...document.querySelectorAll('#drop-peer option')].some(o => o.value === '{ben_id}')", timeout=15000)
    page_a.select_option("#drop-peer", ben_id)
    drag = page_a.evaluate_handle("() => { const d = new DataTransfer(); d.items.add(new File(['not wanted'], 'spam.txt')); return d; }")
    page_a.dispatch_event("#drop-zone", "drop", {"dataTransfer": drag})
    page_b.click(".transfer[data-direction=in][data-state=pending] .decline", timeout=30000)
    page_a.wait_for_selector(".transfer[data-direction=out][data-state=declined]", timeout=15000)
    assert not (b.home.path / "downloads" / "spam.txt").exists()
    # the drive: put without sharing, share with ben (a prompt), then delete (a confirm)
    source = tmp_path / "plan.txt"
    source.write_bytes(b"the plan" * 1000)
    page_a.goto(ui_url(a) + "#drive")
    page_a.check("#drive-fewer")
    page_a.set_input_files("#drive-input", str(source))
    page_a.locator(".drive-file[data-readable='1']", has_text="plan.txt").wait_for(timeout=30000)
    file_id = page_a.get_attribute(".drive-file[data-readable='1']", "data-id")
    assert not next(f for f in b.call("drive.ls") if f["id"] == file_id)["readable"]
    page_a.click(".drive-file[data-readable='1'] .share")
    b.wait_until(lambda: next(f for f in b.call("drive.ls") if f["id"] == file_id)["readable"], what="the share at ben")
    page_a.click(".drive-file[data-readable='1'] .remove")
    b.wait_until(lambda: all(f["id"] != file_id for f in b.call("drive.ls")), what="the file gone at ben")
    page_a.close()
    page_b.close()
