"""A guest's file drop through its host, against the host's own page sending the same file.

    python -m sim.bench_guestdrop [--size-mib 200] [--rounds 3]

Two daemons on loopback, each with its web UI; node A also opens its guest door (on
127.0.0.1: guests.allow_loopback). Three pages in Debian's headless Chromium:

* **the guest**: a phone's page, in a browser context of its own that passed the
  certificate warning, joined as a guest of A. It picks the file, hands it to A over
  HTTPS in signed pieces of 4 MiB (each hashed with WebCrypto's SHA-256 and signed
  with its Ed25519 key), and A offers it to B as the guest, over A's link to B.
* **the reference**: A's own page picks the same file, hands it to A in one HTTP PUT
  to its API port, and A offers it to B.

B's page accepts each offer with a click; a round is timed from the pick to B's
page showing the transfer done, then the file is checked byte for byte on B's disk.
Rounds alternate which goes first. Goal (issue 27): the guest >= 0.8 x the host's
own page. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lannode.config import set_option
from lannode.net import api_client
from sim.bench_chat import write_home
from sim.bench_webdrop import free_gossip_port, lannode_round, random_file, start_node, stop_all, ui_of, wait_for
from sim.browser import CHROMIUM, chromium_args

GOAL = 0.8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="lannode-bench-guestdrop-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        port = free_gossip_port()
        home_a = write_home(root / "a", "a", port, webui=True)
        for option, value in (("guests.enabled", True), ("guests.allow_loopback", True), ("guests.port", 0)):
            set_option(home_a.config_path, option, value)
        command = [sys.executable, "-m", "lannode", "up", "--home", str(home_a.path), "--interface", "127.0.0.1", "--name", "a", "--log-level", "warning"]
        processes.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
        home_b, pb = start_node(root, "b", port)
        processes.append(pb)
        urls = [wait_for("the web UIs", lambda h=h: ui_of(h)) for h in (home_a, home_b)]
        wait_for("b alive at a", lambda: any(p["state"] == "alive" for p in api_client.call(home_a, "peer.list")))
        b_id = api_client.call(home_b, "node.status")["node_id"]
        invite = api_client.call(home_a, "guests.invite")
        source = root / "film.bin"
        size = random_file(source, args.size_mib)
        received = home_b.path / "downloads" / source.name
        results: dict[str, list[float]] = {"guest": [], "host's page": []}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args())
            page_a, page_b = browser.new_page(), browser.new_page()
            phone = browser.new_context(ignore_https_errors=True).new_page()
            phone.goto(invite["url"])
            phone.fill("#sign-in-name", "bench phone")
            phone.click("#sign-in-form button[type=submit]")
            page_a.goto(urls[0] + "#files")
            page_b.goto(urls[1] + "#files")
            for page in (page_a, page_b, phone):
                page.wait_for_selector("#connection[data-state=up]", timeout=15000)
            phone.goto(invite["door"] + "#files")
            for page in (page_a, phone):
                page.wait_for_function(f"() => [...document.querySelectorAll('#drop-peer option')].some(o => o.value === '{b_id}')", timeout=15000)
                page.select_option("#drop-peer", b_id)
            for n in range(args.rounds):
                order = ["guest", "host's page"] if n % 2 == 0 else ["host's page", "guest"]
                for who in order:
                    os.sync()
                    seconds = lannode_round(phone if who == "guest" else page_a, page_b, source, received, n, click=True)
                    results[who].append(seconds)
                    print(f"round {n + 1}: {who:12s} {size / seconds / 1e6:7.1f} MB/s  ({seconds:.2f} s)", flush=True)
            browser.close()
        guest, own = size / min(results["guest"]) / 1e6, size / min(results["host's page"]) / 1e6
        ratios = [results["host's page"][i] / results["guest"][i] for i in range(args.rounds)]
        print(f"\n{args.size_mib} MiB, best of {args.rounds}: the guest {guest:.1f} MB/s, the host's own page {own:.1f} MB/s")
        print(f"ratio (best): {guest / own:.2f} x  per round: {', '.join(f'{r:.2f}' for r in ratios)}  goal >= {GOAL:g} x")
        return 0
    finally:
        stop_all(processes)


if __name__ == "__main__":
    raise SystemExit(main())
