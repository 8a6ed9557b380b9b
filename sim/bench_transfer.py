"""File drop throughput between two real daemons on loopback, against scp and raw TCP.

    python -m sim.bench_transfer [--size-mib 1024] [--files 10000] [--runs 1]

* **one big file**: ``--size-mib`` of random bytes sent with ``transfer.send`` from
  node A to node B (B auto-accepts A), timed from the call to the sender's ``done``
  (the offer's hashing included), then checked byte for byte on B's disk. The
  same file goes, in the same run, over raw TCP (``sendfile`` into a socket, a
  reader writing it to disk: no encryption, no hashing, the ceiling) and by scp
  (chacha20-poly1305) to an sshd this benchmark starts on 127.0.0.1 and stops.
* **many small files**: ``--files`` files of 4 KB in a folder, timed the same way.

Before each measurement the page cache is synced (not timed), and the three methods
take turns going first, so none pays for another's writeback.

Goals (issue 5): >= 1.5 x scp for the big file; >= 2,000 files/s. Needs ``sshd``
(Debian: ``apt-get install openssh-server``). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

from lannode.lab import _stop_all
from lannode.net.api_client import connect
from sim.bench_chat import cpu_seconds, pair_homes, start_pair

SCP_GOAL = 1.5
FILES_GOAL = 2000.0
CIPHER = "chacha20-poly1305@openssh.com"


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n


# -- references ----------------------------------------------------------------------------------


def raw_tcp(src: Path, dest: Path) -> float:
    """Seconds to move ``src`` into ``dest`` over a loopback TCP connection, plain."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def receive() -> None:
        conn, _ = listener.accept()
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        with conn, open(dest, "wb", buffering=0) as out:
            while n := conn.recv_into(buffer):
                out.write(view[:n])

    reader = threading.Thread(target=receive)
    reader.start()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock, open(src, "rb") as f:
        size, offset = os.fstat(f.fileno()).st_size, 0
        while offset < size:
            offset += os.sendfile(sock.fileno(), f.fileno(), offset, size - offset)
    reader.join()
    elapsed = time.perf_counter() - start
    listener.close()
    return elapsed


class Sshd:
    """An sshd on 127.0.0.1 that lets this benchmark's own key in, for as long as it runs."""

    def __init__(self, root: Path) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            raise SystemExit("bench_transfer: sshd is needed for the scp reference (Debian: apt-get install openssh-server)")
        root.mkdir(parents=True)
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        (root / "authorized_keys").write_text((root / "client.pub").read_text())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host'}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"StrictModes no\nUsePAM no\nPermitRootLogin yes\nCiphers {CIPHER}\nCompression no\nSubsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
        self.key = root / "client"
        self.process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("bench_transfer: sshd did not start")

    def scp(self, src: Path, dest: Path) -> float:
        command = [
            "scp", "-q", "-c", CIPHER, "-i", str(self.key), "-P", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            str(src), f"{os.environ.get('USER', 'root')}@127.0.0.1:{dest}",
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True)
        return time.perf_counter() - start

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# -- lannode ------------------------------------------------------------------------------------


PIDS: list[int] = []


async def lannode_send(a: Any, paths: list[Path]) -> tuple[float, dict[str, Any]]:
    await a.subscribe("transfer.state")
    cpu = [cpu_seconds(pid) for pid in PIDS]
    start = time.perf_counter()
    sent = await a.call("transfer.send", peer="b", paths=[str(p) for p in paths])
    offered = time.perf_counter() - start
    async for topic, data in a.events():
        if data["id"] == sent["id"] and data["state"] in ("done", "declined", "cancelled", "failed"):
            elapsed = time.perf_counter() - start
            if data["state"] != "done":
                raise SystemExit(f"bench_transfer: the transfer ended {data['state']}: {data['reason']}")
            used = [cpu_seconds(pid) - before for pid, before in zip(PIDS, cpu)]
            print(f"  (lannode: {offered:.2f} s scanning and hashing, {elapsed - offered:.2f} s offering and sending; CPU s: sender {used[0]:.2f}, receiver {used[1]:.2f})", file=sys.stderr)
            return elapsed, data
    raise SystemExit("bench_transfer: the node closed the connection")


async def bench(size: int, files: int, runs: int, root: Path) -> dict[str, Any]:
    homes = pair_homes(root)
    a_id = homes[0].identity().node_id
    text = homes[1].config_path.read_text().replace("auto_accept = []", f'auto_accept = ["{a_id}"]')  # B trusts A
    homes[1].config_path.write_text(text)
    big = root / "src" / "big.bin"
    big.parent.mkdir()
    make_file(big, size)
    small = root / "src" / "small"
    small.mkdir()
    for i in range(files):
        (small / f"{i:05d}.txt").write_bytes(os.urandom(4096))
    expected = digest(big)
    processes: list[Any] = []
    sshd = Sshd(root / "ssh")
    results: dict[str, list[float]] = {"lannode": [], "scp": [], "raw_tcp": [], "small": []}
    try:
        await start_pair(homes, processes)
        PIDS[:] = [p.pid for p in processes]
        async with connect(homes[0]) as a, connect(homes[1]) as b:
            b_downloads = Path((await b.call("node.status"))["transfers"]["downloads"])
            for run in range(runs):
                for target in (b_downloads / "big.bin", root / "scp.bin", root / "tcp.bin"):
                    target.unlink(missing_ok=True)
                methods = ["lannode", "scp", "raw_tcp"]
                for method in methods[run % 3 :] + methods[: run % 3]:  # each goes first once in 3 runs
                    await trio.to_thread.run_sync(os.sync)  # earlier runs' writeback does not land on this one
                    if method == "lannode":
                        elapsed, _ = await lannode_send(a, [big])
                        assert digest(b_downloads / "big.bin") == expected, "lannode: the file differs"
                    elif method == "scp":
                        elapsed = await trio.to_thread.run_sync(sshd.scp, big, root / "scp.bin")
                        assert digest(root / "scp.bin") == expected, "scp: the file differs"
                    else:
                        elapsed = await trio.to_thread.run_sync(raw_tcp, big, root / "tcp.bin")
                        assert digest(root / "tcp.bin") == expected, "raw TCP: the file differs"
                    results[method].append(elapsed)
                print(
                    f"  run {run + 1}: lannode {results['lannode'][-1]:.2f} s, scp {results['scp'][-1]:.2f} s, raw TCP {results['raw_tcp'][-1]:.2f} s:"
                    f" {results['scp'][-1] / results['lannode'][-1]:.2f} x scp in this round",
                    file=sys.stderr,
                )
                shutil.rmtree(b_downloads / "small", ignore_errors=True)
                await trio.to_thread.run_sync(os.sync)
                elapsed, _ = await lannode_send(a, [small])
                assert sorted(p.name for p in (b_downloads / "small").iterdir()) == sorted(p.name for p in small.iterdir())
                results["small"].append(elapsed)
    finally:
        sshd.stop()
        with trio.CancelScope(shield=True):
            await _stop_all(processes)
    return {k: min(v) for k, v in results.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=1, help="repeat and keep each method's best (default 1)")
    parser.add_argument("--dir", help="where the files go (default: a temporary directory on /tmp's disk)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lannode-bench-transfer-", dir=args.dir))
    size = args.size_mib << 20
    try:
        r = trio.run(bench, size, args.files, args.runs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mb = size / 1e6
    lan, scp, tcp = (mb / r[k] for k in ("lannode", "scp", "raw_tcp"))
    print(f"{args.size_mib} MiB, best of {args.runs}, {os.cpu_count()} cores:")
    print(f"  lannode  {r['lannode']:6.2f} s  {lan:7.0f} MB/s   {lan / scp:.2f} x scp (goal >= {SCP_GOAL})   {lan / tcp:.2f} x raw TCP")
    print(f"  scp      {r['scp']:6.2f} s  {scp:7.0f} MB/s   ({CIPHER})")
    print(f"  raw TCP  {r['raw_tcp']:6.2f} s  {tcp:7.0f} MB/s")
    rate = args.files / r["small"]
    print(f"{args.files} files of 4 KB: {r['small']:.2f} s, {rate:.0f} files/s   {rate / FILES_GOAL:.2f} x goal ({FILES_GOAL:.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
