"""The web UI in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)."""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import Browser, Page

from conftest import (  # (the browser fixture comes from conftest)
    NodeFactory,
    RunningNode,
)


def ui_url(node: RunningNode) -> str:
    return node.wait_until(lambda: node.plugin("webui").get("url"), what="the web UI")  # type: ignore[no-any-return]


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#connection[data-state=up]", timeout=15000)
    return page


def test_each_nodes_page_shows_its_own_name_and_id_live(nodes: NodeFactory, browser: Browser) -> None:
    alice = nodes.start("alice", webui=True)
    bob = nodes.start("bob", webui=True)
    for node in (alice, bob):
        status = node.status()
        page = open_page(browser, ui_url(node))
        page.wait_for_function("() => document.getElementById('node-id').textContent.length === 24")
        assert page.text_content("#node-name") == status["name"]
        assert page.text_content("#node-id") == status["node_id"]
        assert status["name"] in page.title()
        assert page.text_content("#interface") == "127.0.0.1"
        rows = page.locator("#plugins tr")
        assert rows.count() == 1 and "running" in rows.first.inner_text()
        first = page.text_content("#uptime")
        page.wait_for_function("(first) => document.getElementById('uptime').textContent !== first", arg=first, timeout=5000)
        page.close()


def test_the_page_says_when_its_node_is_gone(nodes: NodeFactory, browser: Browser) -> None:
    node = nodes.start("fleeting", webui=True)
    page = open_page(browser, ui_url(node))
    node.call("node.stop")
    page.wait_for_selector("#connection[data-state=down]", timeout=10000)
    assert "does not answer" in page.text_content("#connection")  # type: ignore[operator]
    page.close()


class _EvilHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_page_from_another_origin_cannot_use_the_api_even_with_a_stolen_token(nodes: NodeFactory, browser: Browser) -> None:
    node = nodes.start("target", webui=True)
    url = ui_url(node)
    with urllib.request.urlopen(url + "config.json", timeout=10) as response:
        ticket = response.read().decode()
    server = http.server.HTTPServer(("127.0.0.1", 0), _EvilHandler)
    _EvilHandler.body = f"""<!doctype html><script>
      const ticket = {ticket};
      const ws = new WebSocket(ticket.api_url, ["lannode.v1", "lannode.token." + ticket.token]);
      ws.onopen = () => {{ document.title = "opened"; }};
      ws.onclose = () => {{ if (document.title !== "opened") document.title = "refused"; }};
    </script>""".encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        before = node.status()["api"]["rejected"].get("403", 0)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("() => document.title === 'refused' || document.title === 'opened'", timeout=10000)
        assert page.title() == "refused"
        assert node.status()["api"]["rejected"].get("403", 0) == before + 1
        # Nor can that page read the ticket itself: no CORS, so fetch fails.
        outcome = page.evaluate("(url) => fetch(url).then(() => 'read', () => 'blocked')", url + "config.json")
        assert outcome == "blocked"
        page.close()
    finally:
        server.shutdown()


def test_a_foreign_host_header_gets_no_ticket(nodes: NodeFactory) -> None:
    node = nodes.start("rebind", webui=True)
    request = urllib.request.Request(ui_url(node) + "config.json", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 421
