"""File drop through the web front, against Chromium's own data channel in the same run.

    python -m sim.bench_webdrop [--size-mib 200] [--rounds 3]

* **lannode**: two daemons on loopback, each with its web UI, and a page of each in
  headless Chromium (Debian's, through Playwright). Page A picks the file, hands it
  to node A (an HTTP PUT to its API port), node A offers it to node B over the
  encrypted link, node B takes it (B auto-accepts A, as a person sets for their own
  devices: a click's latency is the person's, not the system's), node B stores it.
  Timed from the pick to page B showing the transfer done; then checked byte for
  byte on B's disk. ``--click`` has page B click Accept instead.
* **reference**: two pages of the same Chromium, an RTCPeerConnection each, one
  ordered data channel between them, the same number of bytes in 256 KiB messages
  with bufferedAmount backpressure (the fallback path's own recipe); timed from the
  first send to the last byte received (wall clock in both pages).

Each round runs both, taking turns going first. Goal (issue 7): lannode >= 4 x the
data channel. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lannode.home import Home
from lannode.net import api_client
from sim.bench_chat import write_home
from sim.browser import CHROMIUM, chromium_args

GOAL = 4.0

OFFER = """async () => {
  window.pc = new RTCPeerConnection();
  window.channel = pc.createDataChannel("bench", { ordered: true });
  channel.binaryType = "arraybuffer";
  await pc.setLocalDescription();
  await new Promise((r) => { if (pc.iceGatheringState === "complete") r(); else pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r(); });
  return pc.localDescription.toJSON();
}"""

ANSWER = """async ([offer, total]) => {
  window.pc = new RTCPeerConnection();
  window.doneAt = null;
  pc.ondatachannel = (e) => {
    let got = 0;
    e.channel.binaryType = "arraybuffer";
    e.channel.onmessage = (m) => { got += m.data.byteLength; if (got >= total) window.doneAt = Date.now(); };
  };
  await pc.setRemoteDescription(offer);
  await pc.setLocalDescription();
  await new Promise((r) => { if (pc.iceGatheringState === "complete") r(); else pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r(); });
  return pc.localDescription.toJSON();
}"""

SEND = """async ([answer, total]) => {
  await pc.setRemoteDescription(answer);
  if (channel.readyState !== "open") await new Promise((r) => { channel.onopen = r; });
  const chunk = new Uint8Array(256 * 1024);
  crypto.getRandomValues(chunk.subarray(0, 65536));
  channel.bufferedAmountLowThreshold = 2 * 1024 * 1024;
  const start = Date.now();
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (channel.bufferedAmount > 8 * 1024 * 1024) await new Promise((r) => { channel.onbufferedamountlow = r; });
    channel.send(chunk.subarray(0, Math.min(chunk.length, total - sent)));
  }
  return start;
}"""


def data_channel_round(sender: Any, receiver: Any, total: int) -> float:
    """Chromium's own data channel between two pages (two renderer processes), the
    offer and answer handed over by this script: seconds for ``total`` bytes."""
    offer = sender.evaluate(OFFER)
    answer = receiver.evaluate(ANSWER, [offer, total])
    started = float(sender.evaluate(SEND, [answer, total]))
    receiver.wait_for_function("() => window.doneAt !== null", timeout=600000, polling=50)
    done = float(receiver.evaluate("() => window.doneAt"))
    sender.evaluate("() => pc.close()")
    receiver.evaluate("() => pc.close()")
    return (done - started) / 1000


def start_node(root: Path, name: str, port: int, auto_accept: str | None = None) -> tuple[Home, subprocess.Popen[bytes]]:
    home = write_home(root / name, name, port, webui=True)
    if auto_accept:
        home.config_path.write_text(home.config_path.read_text().replace("auto_accept = []", f'auto_accept = ["{auto_accept}"]'))
    command = [sys.executable, "-m", "lannode", "up", "--home", str(home.path), "--interface", "127.0.0.1", "--name", name, "--log-level", "warning"]
    return home, subprocess.Popen(command, stdin=subprocess.DEVNULL)


def wait_for(what: str, predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (api_client.NodeNotRunning, OSError):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def free_gossip_port() -> int:
    """A UDP port of our own for the nodes' gossip, so other runs stay out of earshot."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def random_file(path: Path, mib: int) -> int:
    """``mib`` MiB of random bytes at ``path``; its size."""
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return path.stat().st_size


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def ui_of(home: Home) -> str:
    status = api_client.call(home, "node.status")
    return next((p["url"] for p in status["plugins"] if p["name"] == "webui" and p.get("url")), "")


def lannode_round(page_a: Any, page_b: Any, source: Path, received: Path, n: int, click: bool) -> float:
    received.unlink(missing_ok=True)
    page_b.evaluate("() => { document.getElementById('transfers').replaceChildren(); window.lannode.files.rows.clear(); }")
    start = time.perf_counter()
    page_a.set_input_files("#file-input", str(source))
    if click:
        page_b.click(".transfer[data-direction=in][data-state=pending] .accept", timeout=120000)
    else:
        page_b.wait_for_selector(".transfer[data-direction=in]", timeout=120000)
    accepted = time.perf_counter() - start
    page_b.wait_for_selector(".transfer[data-direction=in][data-state=done]", timeout=600000)
    seconds = time.perf_counter() - start
    print(f"    (page B saw the offer after {accepted:.2f} s: the page's upload and the offer's hashing; then {seconds - accepted:.2f} s to done)", flush=True)
    if not filecmp.cmp(received, source, shallow=False):
        raise RuntimeError(f"round {n}: the received file differs from the source")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--click", action="store_true", help="page B clicks Accept (B does not auto-accept A)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="lannode-bench-webdrop-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        port = free_gossip_port()
        home_a, pa = start_node(root, "a", port)
        processes.append(pa)
        a_id = wait_for("node a", lambda: api_client.call(home_a, "node.status")["node_id"])
        home_b, pb = start_node(root, "b", port, auto_accept=None if args.click else a_id)
        processes.append(pb)
        urls = [wait_for("the web UIs", lambda h=h: ui_of(h)) for h in (home_a, home_b)]
        wait_for("b alive at a", lambda: any(p["state"] == "alive" for p in api_client.call(home_a, "peer.list")))
        b_id = api_client.call(home_b, "node.status")["node_id"]
        source = root / "film.bin"
        size = random_file(source, args.size_mib)
        received = home_b.path / "downloads" / source.name
        results: dict[str, list[float]] = {"lannode": [], "data channel": []}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args())
            page_a, page_b = browser.new_page(), browser.new_page()
            page_a.goto(urls[0] + "#files")
            page_b.goto(urls[1] + "#files")
            for page in (page_a, page_b):
                page.wait_for_selector("#connection[data-state=up]", timeout=15000)
            page_a.wait_for_function(f"() => [...document.querySelectorAll('#drop-peer option')].some(o => o.value === '{b_id}')", timeout=15000)
            page_a.select_option("#drop-peer", b_id)
            reference = browser.new_page(), browser.new_page()
            for n in range(args.rounds):
                order = ["lannode", "data channel"] if n % 2 == 0 else ["data channel", "lannode"]
                for method in order:
                    os.sync()
                    if method == "lannode":
                        seconds = lannode_round(page_a, page_b, source, received, n, args.click)
                    else:
                        seconds = data_channel_round(reference[0], reference[1], size)
                    results[method].append(seconds)
                    print(f"round {n + 1}: {method:12s} {size / seconds / 1e6:7.1f} MB/s  ({seconds:.2f} s)", flush=True)
            browser.close()
        best = {m: size / min(s) / 1e6 for m, s in results.items()}
        ratios = [results["data channel"][i] / results["lannode"][i] for i in range(args.rounds)]
        print(f"\n{args.size_mib} MiB, best of {args.rounds}: lannode {best['lannode']:.1f} MB/s, Chromium data channel {best['data channel']:.1f} MB/s")
        print(f"ratio (best): {best['lannode'] / best['data channel']:.2f} x  per round: {', '.join(f'{r:.2f}' for r in ratios)}  goal >= {GOAL:g} x")
        return 0
    finally:
        stop_all(processes)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
