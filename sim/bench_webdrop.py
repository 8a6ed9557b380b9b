"""File drop through the web front, against Chromium's own data channel in the same run.

    python -m sim.bench_webdrop [--size-mib 200] [--rounds 3]

* **lannode**: two daemons on loopback, each with its web UI, and a page of each in
  headless Chromium (Debian's, through Playwright). Page A picks the file, hands it
  to node A over its API connection, node A offers it to node B over the encrypted
  link, page B accepts (a click), node B stores it. Timed from the pick to page B
  showing the transfer done; then checked byte for byte on B's disk.
* **reference**: two RTCPeerConnections in one page of the same Chromium, one ordered
  data channel, the same number of bytes in 256 KiB messages with bufferedAmount
  backpressure (the fallback path's own recipe); timed from the first send to the
  last byte received.

Each round runs both, taking turns going first. Goal (issue 7): lannode >= 4 x the
data channel. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
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

DATA_CHANNEL = """async (total) => {
  const a = new RTCPeerConnection(), b = new RTCPeerConnection();
  a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
  const send = a.createDataChannel("bench", { ordered: true });
  const received = new Promise((resolve) => {
    b.ondatachannel = (e) => {
      let got = 0;
      e.channel.binaryType = "arraybuffer";
      e.channel.onmessage = (m) => { got += m.data.byteLength; if (got >= total) resolve(performance.now()); };
    };
  });
  await a.setLocalDescription(); await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(); await a.setRemoteDescription(b.localDescription);
  await new Promise((resolve) => { send.onopen = resolve; });
  const chunk = new Uint8Array(256 * 1024);
  crypto.getRandomValues(chunk.subarray(0, 65536));
  send.bufferedAmountLowThreshold = 2 * 1024 * 1024;
  const start = performance.now();
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (send.bufferedAmount > 8 * 1024 * 1024) await new Promise((r) => { send.onbufferedamountlow = r; });
    send.send(chunk.subarray(0, Math.min(chunk.length, total - sent)));
  }
  const end = await received;
  a.close(); b.close();
  return (end - start) / 1000;
}"""


def start_node(root: Path, name: str, port: int) -> tuple[Home, subprocess.Popen[bytes]]:
    home = write_home(root / name, name, port, webui=True)
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


def ui_of(home: Home) -> str:
    status = api_client.call(home, "node.status")
    return next((p["url"] for p in status["plugins"] if p["name"] == "webui" and p.get("url")), "")


def lannode_round(page_a: Any, page_b: Any, source: Path, received: Path, n: int) -> float:
    received.unlink(missing_ok=True)
    page_b.evaluate("() => { document.getElementById('transfers').replaceChildren(); window.lannode.files.rows.clear(); }")
    start = time.perf_counter()
    page_a.set_input_files("#file-input", str(source))
    page_b.click(".transfer[data-direction=in][data-state=pending] .accept", timeout=120000)
    page_b.wait_for_selector(".transfer[data-direction=in][data-state=done]", timeout=600000)
    seconds = time.perf_counter() - start
    if received.stat().st_size != source.stat().st_size or not same(received, source):
        raise RuntimeError(f"round {n}: the received file differs from the source")
    return seconds


def same(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 22), fb.read(1 << 22)
            if x != y:
                return False
            if not x:
                return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="lannode-bench-webdrop-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        (home_a, pa), (home_b, pb) = start_node(root, "a", port), start_node(root, "b", port)
        processes += [pa, pb]
        urls = [wait_for("the web UIs", lambda h=h: ui_of(h)) for h in (home_a, home_b)]
        wait_for("b alive at a", lambda: any(p["state"] == "alive" for p in api_client.call(home_a, "peer.list")))
        b_id = api_client.call(home_b, "node.status")["node_id"]
        source = root / "film.bin"
        with open(source, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        size = source.stat().st_size
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
            reference = browser.new_page()
            for n in range(args.rounds):
                order = ["lannode", "data channel"] if n % 2 == 0 else ["data channel", "lannode"]
                for method in order:
                    os.sync()
                    if method == "lannode":
                        seconds = lannode_round(page_a, page_b, source, received, n)
                    else:
                        seconds = float(reference.evaluate(DATA_CHANNEL, size))
                    results[method].append(seconds)
                    print(f"round {n + 1}: {method:12s} {size / seconds / 1e6:7.1f} MB/s  ({seconds:.2f} s)", flush=True)
            browser.close()
        best = {m: size / min(s) / 1e6 for m, s in results.items()}
        ratios = [results["data channel"][i] / results["lannode"][i] for i in range(args.rounds)]
        print(f"\n{args.size_mib} MiB, best of {args.rounds}: lannode {best['lannode']:.1f} MB/s, Chromium data channel {best['data channel']:.1f} MB/s")
        print(f"ratio (best): {best['lannode'] / best['data channel']:.2f} x  per round: {', '.join(f'{r:.2f}' for r in ratios)}  goal >= {GOAL:g} x")
        return 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
