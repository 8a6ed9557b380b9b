"""The drive's put and get of one big file across six real daemons on loopback, against
scp of the same file to one node.

    python -m sim.bench_drive [--size-mib 1024] [--k 4] [--m 2] [--runs 1]

Node A puts ``--size-mib`` of random bytes (``drive.put``: read, encrypt, erasure-code,
hash, and stream k + m fragments to six nodes, A among them, each fsynced before the
manifest is written) and gets it back (``drive.get``: k fragments read at once,
checked, decoded, decrypted, written), checked byte for byte. In the same run scp
(chacha20-poly1305) copies the file to an sshd this benchmark starts on 127.0.0.1.
The page cache is synced before each measurement (not timed), and scp takes
turns going first, between put and get, and last.

Goal (issue 6): put and get each >= 1.0 x scp. Needs ``sshd`` (Debian: ``apt-get
install openssh-server``). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from lannode.lab import _stop_all
from lannode.net.api_client import connect
from sim.bench_chat import cpu_seconds, node_homes, start_nodes
from sim.bench_transfer import CIPHER, Sshd, digest, make_file

GOAL = 1.0
NAMES = ["a", "b", "c", "d", "e", "f"]


async def bench(size: int, k: int, m: int, runs: int, root: Path) -> dict[str, list[float]]:
    homes = node_homes(root / "nodes", NAMES)
    src = root / "big.bin"
    make_file(src, size)
    expected = digest(src)
    processes: list[Any] = []
    sshd = Sshd(root / "ssh")
    results: dict[str, list[float]] = {"put": [], "get": [], "scp": []}
    try:
        await start_nodes(homes, processes)
        pids = [p.pid for p in processes]
        async with connect(homes[0]) as a:
            with trio.fail_after(30):
                while len(await a.call("drive.status")) < len(NAMES):
                    await trio.sleep(0.1)
            for run in range(runs):

                async def scp() -> None:
                    await trio.to_thread.run_sync(os.sync)
                    elapsed = await trio.to_thread.run_sync(sshd.scp, src, root / "scp.bin")
                    assert digest(root / "scp.bin") == expected, "scp: the file differs"
                    (root / "scp.bin").unlink()
                    results["scp"].append(elapsed)

                # scp goes first, between put and get, or last: whatever runs last in a
                # round here is often slow (the machine's fresh memory), so all take turns
                if run % 3 == 0:
                    await scp()
                await trio.to_thread.run_sync(os.sync)
                cpu = [cpu_seconds(pid) for pid in pids]
                start = time.perf_counter()
                put = await a.call("drive.put", path=str(src), k=k, m=m)
                results["put"].append(time.perf_counter() - start)
                put_cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu)]
                if run % 3 == 1:
                    await scp()

                await trio.to_thread.run_sync(os.sync)
                out = root / "got.bin"
                cpu = [cpu_seconds(pid) for pid in pids]
                start = time.perf_counter()
                got = await a.call("drive.get", file=put["id"], out=str(out))
                results["get"].append(time.perf_counter() - start)
                get_cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu)]
                assert digest(out) == expected, "drive: the file differs"
                out.unlink()
                if run % 3 == 2:
                    await scp()
                sources = ", ".join(f"{x['index']}@{x['name']}" for x in got["from"])
                print(
                    f"  run {run + 1}: scp {results['scp'][-1]:.2f} s, put {results['put'][-1]:.2f} s, get {results['get'][-1]:.2f} s"
                    f" (from {sources});"
                    f" CPU s put: {' '.join(f'{n}={c:.1f}' for n, c in zip(NAMES, put_cpu))}; get: {' '.join(f'{n}={c:.1f}' for n, c in zip(NAMES, get_cpu))}",
                    file=sys.stderr,
                )
                await a.call("drive.rm", file=put["id"])
    finally:
        sshd.stop()
        with trio.CancelScope(shield=True):
            await _stop_all(processes)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="repeat and keep each method's best (default 1)")
    parser.add_argument("--dir", help="where the files go (default: a temporary directory on /tmp's disk)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lannode-bench-drive-", dir=args.dir))
    size = args.size_mib << 20
    try:
        r = trio.run(bench, size, args.k, args.m, args.runs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mb = size / 1e6
    best = {key: min(values) for key, values in r.items()}
    scp = mb / best["scp"]
    print(f"{args.size_mib} MiB, k={args.k} m={args.m} on 6 nodes, best of {args.runs}, {os.cpu_count()} cores:")
    for key in ("put", "get"):
        rate = mb / best[key]
        print(f"  drive {key}  {best[key]:6.2f} s  {rate:7.0f} MB/s   {rate / scp:.2f} x scp (goal >= {GOAL})")
    print(f"  scp        {best['scp']:6.2f} s  {scp:7.0f} MB/s   ({CIPHER}, to one node)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
