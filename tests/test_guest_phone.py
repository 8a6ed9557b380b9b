"""A phone joins as a guest, as a person meets it: Chromium with a phone's viewport, touch
and user agent, on another host of the network lab (sim/netlab.py: hosts in network
namespaces on one bridge, 10.77.0.x; nothing leaves the machine), opens the host's guest
door over HTTPS on its LAN address and passes the certificate warning (Playwright's
ignore_https_errors is the person's "proceed": the page then runs as it would).

h1 hosts the guest door and shows its own page ("Invite a phone"); h2 is a node whose
person chats with the guest from h2's page. The phone's browser runs inside h2's
namespace: another machine on the LAN, as far as h1 can tell."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from conftest import screenshot, wait_decoding
from lannode.config import render_default, set_option
from sim.browser import chromium_args
from sim.netlab import NetLab


class Lab:
    def __init__(self, lab: NetLab, browsers: dict[int, Browser], playwright: Any) -> None:
        self.lab = lab
        self.browsers = browsers
        self.playwright = playwright

    def node_page(self, host: int) -> Page:
        url = next(p["url"] for p in self.lab.call(host, "node.status")["plugins"] if p["name"] == "webui")
        page = self.browsers[host].new_page(viewport={"width": 1100, "height": 800})
        page.goto(url)
        page.wait_for_selector("#connection[data-state=up]", timeout=15000)
        return page

    def phone(self) -> BrowserContext:
        """A phone on the LAN: h2's Chromium with a Pixel's screen, touch and user agent,
        notifications granted; ``window.__notes`` records the notifications it shows, and
        ``window.__hidden`` stands for the person looking at another app."""
        context = self.browsers[2].new_context(**self.playwright.devices["Pixel 7"], ignore_https_errors=True, permissions=["notifications"])
        context.add_init_script(NOTES)
        return context


NOTES = """
window.__notes = [];
window.__hidden = false;
Object.defineProperty(document, "hidden", { get: () => window.__hidden });
const Real = window.Notification;
window.Notification = class extends Real { constructor(title, options) { super(title, options); window.__notes.push(title); } };
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("lab")
    with NetLab(hosts=2, directory=directory) as lab:
        config = directory / "h1" / "config.toml"
        config.parent.mkdir()
        config.write_text(render_default("h1"))
        set_option(config, "guests.enabled", True)
        lab.start(1, webui=True)
        lab.start(2, webui=True)
        lab.wait_until(lambda: all(sum(s == "alive" for s in lab.peers(h).values()) == 1 for h in (1, 2)), 30, "both hosts alive")
        with sync_playwright() as p:
            browsers = {host: p.chromium.launch(executable_path=str(lab.wrapper(host, "/usr/bin/chromium", directory / f"chromium-h{host}")), args=chromium_args()) for host in (1, 2)}
            try:
                yield Lab(lab, browsers, p)
            finally:
                for browser in browsers.values():
                    browser.close()


def test_a_phone_joins_by_the_code_on_the_hosts_page_chats_calls_and_swaps_files_with_a_node_and_finds_what_waited(world: Lab, tmp_path: Path) -> None:
    lab = world.lab
    status = lab.call(1, "guests.status")
    assert status["url"] == f"https://{lab.address(1)}:47680/"

    host_page = world.node_page(1)
    host_page.click("nav a[data-tab=node]")
    host_page.click("#guests-invite")
    host_page.wait_for_selector("#invite:not([hidden])")
    code = host_page.inner_text("#invite-code").replace(" ", "")
    assert len(code) == 6 and host_page.inner_text("#invite-fingerprint") == status["fingerprint"]
    host_page.wait_for_function("() => document.getElementById('invite-qr').naturalWidth > 0")  # the QR code drew
    screenshot(host_page, "guest-invite-host")

    phone = world.phone()
    page = phone.new_page()
    refused: list[str] = []  # the page's own requests are never refused (a signing race would show here)
    page.on("response", lambda r: refused.append(f"{r.status} {r.url} {r.text()}") if r.status >= 400 else None)
    page.goto(status["url"])  # typed from the host's screen: no token, so the code is asked for
    page.wait_for_selector("#sign-in:not([hidden])", timeout=15000)
    assert page.is_visible("#sign-in-code") and page.inner_text("#sign-in-fingerprint") == status["fingerprint"]
    assert page.evaluate("() => document.documentElement.scrollWidth") <= page.viewport_size["width"]  # one column, no sideways scrolling
    screenshot(page, "guest-sign-in-phone")
    page.fill("#sign-in-name", "Ann's phone")
    page.fill("#sign-in-code", f"{code[:3]} {code[3:]}")
    page.tap("#sign-in-form button[type=submit]")
    page.wait_for_selector("#connection[data-state=up]", timeout=15000)
    assert "a guest of h1" in page.inner_text("#node-id")
    page.wait_for_selector(".peer[data-node] >> text=h2", timeout=15000)
    assert not page.is_visible("nav a[data-tab=node]")  # the node's own
    screenshot(page, "guest-people-phone")
    page.set_viewport_size({"width": 360, "height": 740})  # the narrowest phones: one column, nothing sideways
    for tab in ("people", "chat", "calls", "files", "drive", "mail"):
        page.tap(f"nav a[data-tab={tab}]")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 360, tab
    page.set_viewport_size({"width": 412, "height": 839})
    page.tap("nav a[data-tab=people]")

    bob_id = lab.node_id(2)
    page.tap(f".peer[data-node='{bob_id}'] .chat-with")
    page.wait_for_selector("#conversation:not([hidden])")
    page.fill("#composer-text", "hello from a phone")
    page.tap("#composer button[type=submit]")
    page.wait_for_selector(".message[data-direction=out] >> text=hello from a phone")

    bob = world.node_page(2)
    guest = next(p for p in lab.call(2, "peer.list") if p["name"] == "Ann's phone")
    assert guest["guest_via"] == lab.node_id(1) and guest["state"] == "alive"
    bob.wait_for_selector(f".peer[data-node='{guest['node_id']}']", timeout=15000)
    bob.click(f".peer[data-node='{guest['node_id']}'] .chat-with")
    bob.wait_for_selector(".message[data-direction=in] >> text=hello from a phone", timeout=15000)
    page.evaluate("() => { window.__hidden = true; }")  # the person looks at another app
    bob.fill("#composer-text", "hello phone, from bob's page")
    bob.press("#composer-text", "Enter")
    answer = page.wait_for_selector(".message[data-direction=in] >> text=hello phone, from bob's page", timeout=15000)
    page.wait_for_function("() => window.__notes.includes('h2')", timeout=5000)  # a notification of the message
    page.evaluate("() => { window.__hidden = false; document.dispatchEvent(new Event('visibilitychange')); }")
    page.wait_for_selector(".message[data-direction=in][data-verified=yes]", timeout=15000)  # the phone checked bob's signature
    assert answer is not None
    page.wait_for_selector(".message[data-direction=out] .tick[data-state=read]", timeout=15000)  # bob's page read it
    page.wait_for_selector("#conversations button >> text=h2", timeout=10000)
    screenshot(page, "guest-chat-phone")

    # a second guest, a tablet, joins by the QR code's link (the token in its fragment), and the two guests chat
    tablet = world.phone().new_page()
    tablet.goto(lab.call(1, "guests.invite")["url"])
    tablet.wait_for_selector("#sign-in:not([hidden])", timeout=15000)
    assert not tablet.is_visible("#sign-in-code") and "#invite=" not in tablet.url  # the token is spent and gone from the address bar
    tablet.fill("#sign-in-name", "Ben's tablet")
    tablet.tap("#sign-in-form button[type=submit]")
    tablet.wait_for_selector("#connection[data-state=up]", timeout=15000)
    tablet_id = next(p for p in lab.call(1, "peer.list") if p["name"] == "Ben's tablet")["node_id"]
    page.goto(f"{status['url']}#chat/{tablet_id}")
    page.fill("#composer-text", "hello tablet")
    page.tap("#composer button[type=submit]")
    tablet.goto(f"{status['url']}#chat/{guest['node_id']}")
    tablet.wait_for_selector(".message[data-direction=in][data-verified=yes] >> text=hello tablet", timeout=15000)
    tablet.fill("#composer-text", "hello phone")
    tablet.tap("#composer button[type=submit]")
    page.wait_for_selector(".message[data-direction=in][data-verified=yes] >> text=hello phone", timeout=15000)
    tablet.context.close()

    # a call from the phone's page to bob's, WebRTC straight between them, signaling through h1
    page.goto(f"{status['url']}#people")
    page.tap(f".peer[data-node='{bob_id}'][data-state=alive] .call")
    bob.wait_for_selector("#incoming:not([hidden]) #accept-call", timeout=20000)
    assert "Ann's phone is calling" in (bob.text_content("#incoming") or "")
    bob.click("#accept-call")
    assert len(wait_decoding(page, 1)) == 1 and len(wait_decoding(bob, 1)) == 1
    screenshot(page, "guest-call-phone")
    page.tap("#call-leave")
    bob.wait_for_selector("#call", state="hidden", timeout=10000)

    # a file from the phone's page to bob's, and one back: through the hosts' links
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(os.urandom(5 * 1024 * 1024 + 3))
    page.goto(f"{status['url']}#files")
    page.select_option("#drop-peer", bob_id)
    page.set_input_files("#file-input", str(photo))
    bob.click("nav a[data-tab=files]")
    bob.click(".transfer[data-direction=in][data-state=pending] .accept", timeout=30000)
    bob.wait_for_selector(".transfer[data-direction=in][data-state=done]", timeout=60000)
    downloads = Path(lab.call(2, "node.status")["transfers"]["downloads"])
    assert (downloads / "photo.jpg").read_bytes() == photo.read_bytes()
    page.wait_for_selector(".transfer[data-direction=out][data-state=done]", timeout=15000)

    notes = tmp_path / "notes.pdf"
    notes.write_bytes(os.urandom(3 * 1024 * 1024))
    page.evaluate("() => { window.__hidden = true; }")
    lab.call(2, "transfer.send", peer=guest["node_id"], paths=[str(notes)])
    page.wait_for_function("() => window.__notes.includes('h2 offers notes.pdf')", timeout=30000)
    page.evaluate("() => { window.__hidden = false; }")
    page.tap(".transfer[data-direction=in][data-state=pending] .accept", timeout=30000)
    save = page.wait_for_selector(".transfer[data-direction=in][data-state=done] .save", timeout=60000)
    with page.expect_download() as saved:
        save.tap()
    assert Path(saved.value.path()).read_bytes() == notes.read_bytes() and saved.value.suggested_filename == "notes.pdf"
    screenshot(page, "guest-files-phone")

    # the drive: put from the phone through h1, shared with h2; read back with the phone's own key
    plan = tmp_path / "plan.pdf"
    plan.write_bytes(os.urandom(700_000))
    page.goto(f"{status['url']}#drive")
    page.fill("#drive-share", "h2")
    page.check("#drive-fewer")  # two nodes here, and 4 + 2 fragments
    page.set_input_files("#drive-input", str(plan))
    page.wait_for_selector("#drive-status >> text=is on the drive", timeout=60000)
    row = page.wait_for_selector(".drive-file[data-readable='1'] >> text=plan.pdf", timeout=15000)
    assert row is not None
    lab.wait_until(lambda: any(f["name"] == "plan.pdf" for f in lab.call(2, "drive.ls")), 30, "h2 to see the phone's file by name")
    with page.expect_download() as fetched:
        page.tap(".drive-file[data-readable='1'] .download")
    assert Path(fetched.value.path()).read_bytes() == plan.read_bytes() and fetched.value.suggested_filename == "plan.pdf"
    screenshot(page, "guest-drive-phone")
    assert refused == []

    page.close()  # the tab closes: the phone is away; what comes now waits on its host
    lab.wait_until(lambda: next(p for p in lab.call(2, "peer.list") if p["name"] == "Ann's phone")["state"] == "away", 60, "the phone to be away")
    lab.call(2, "chat.send", peer=guest["node_id"], text="while you were away")
    page = phone.new_page()
    page.goto(status["url"])  # later, without a new invitation: the key is still in this browser
    page.wait_for_selector("#connection[data-state=up]", timeout=15000)
    assert not page.is_visible("#sign-in")
    page.goto(f"{status['url']}#chat/{bob_id}")
    page.wait_for_selector(".message[data-direction=in] >> text=while you were away", timeout=15000)
    forged = page.locator(".message[data-verified=no]")
    assert forged.count() == 0
    phone.close()
