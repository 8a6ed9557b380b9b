"""Start-to-READY, idle RSS and stop time of ``lannode up``, against a bare interpreter.

    python sim/bench_startup.py [--runs 5] [--webui]

Each run starts a fresh node (new home, 127.0.0.1) with a real sd_notify socket,
times spawn to READY=1, samples the daemon's RSS after it idles for two seconds,
then times SIGTERM to exit. The reference, measured in the same run, is a bare
``python -c pass`` for time and a bare interpreter blocked on stdin for memory.
Goals (issue 2): READY <= 1.5 s, idle RSS <= 60 MB.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def reference() -> tuple[float, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    elapsed = time.perf_counter() - start
    idle = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    time.sleep(0.5)
    memory = rss_mb(idle.pid)
    idle.communicate(b"")
    return elapsed, memory


def one_run(root: Path, webui: bool) -> dict[str, float]:
    home = root / f"home-{time.monotonic_ns()}"
    home.mkdir()
    if not webui:
        (home / "config.toml").write_text("[plugins.webui]\nenabled = false\n")
    sock_path = root / "notify.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
    start = time.perf_counter()
    node = subprocess.Popen(
        [sys.executable, "-m", "lannode", "up", "--home", str(home), "--interface", "127.0.0.1", "--log-level", "warning"],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        while b"READY=1" not in sock.recv(4096).split(b"\n"):
            pass
        ready = time.perf_counter() - start
        time.sleep(2)
        memory = rss_mb(node.pid)
        stop_start = time.perf_counter()
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
        stop = time.perf_counter() - stop_start
    finally:
        if node.poll() is None:
            node.kill()
        sock.close()
    return {"ready": ready, "rss": memory, "stop": stop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--webui", action="store_true", help="with the web UI plugin enabled (its process is not counted in RSS)")
    args = parser.parse_args()
    ref_time, ref_rss = reference()
    with tempfile.TemporaryDirectory(prefix="lannode-bench-") as tmp:
        runs = [one_run(Path(tmp), args.webui) for _ in range(args.runs)]
    ready = statistics.median(r["ready"] for r in runs)
    rss = statistics.median(r["rss"] for r in runs)
    stop = max(r["stop"] for r in runs)
    print(f"runs {args.runs}, web UI {'on' if args.webui else 'off'}, python {sys.version.split()[0]}")
    print(f"start to READY  p50 {ready:.3f} s   bare python {ref_time:.3f} s   ratio {ready / ref_time:.1f}x   goal <= 1.5 s: {'met' if ready <= 1.5 else 'MISSED'}")
    print(f"idle RSS        p50 {rss:.1f} MB   bare python {ref_rss:.1f} MB   ratio {rss / ref_rss:.1f}x   goal <= 60 MB: {'met' if rss <= 60 else 'MISSED'}")
    print(f"SIGTERM to exit max {stop:.3f} s   goal <= 2 s: {'met' if stop <= 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
