"""The drive's erasure code against zfec, in one run.

    python -m sim.bench_erasure [--mib 64] [--k 4] [--m 2]

Encodes ``--mib`` MiB as k data stripes plus m parity stripes with
``lannode.core.erasure`` (reedsolo's code, vectorized) and with zfec, then decodes
with the first m data stripes lost. Prints MB/s of data and the ratio to zfec (best
of 3 each). Goal (issue 6): >= 0.6 x zfec. zfec is GPL: ``pip install '.[bench]'``.
The codec runs on ISA-L when the machine has it (Debian: ``libisal2``);
``LANNODE_ERASURE=numpy`` measures the numpy backend instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from lannode.core.erasure import BACKEND, Codec

GOAL = 0.6


def best(fn: Callable[[], Any], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--m", type=int, default=2)
    args = parser.parse_args()
    try:
        import zfec  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise SystemExit("bench_erasure: zfec is the reference: pip install '.[bench]'") from None
    k, m = args.k, args.m
    stripe = (args.mib << 20) // k
    size = stripe * k
    data = os.urandom(size)
    blocks = [data[i * stripe : (i + 1) * stripe] for i in range(k)]
    stripes = [np.frombuffer(b, dtype=np.uint8) for b in blocks]
    codec = Codec(k, m)
    parity = codec.encode(stripes)
    lost = min(m, k)
    kept = {i: stripes[i] for i in range(lost, k)} | {k + j: parity[j] for j in range(m)}
    assert [r.tobytes() for r in codec.decode(kept)] == blocks
    encoder, decoder = zfec.Encoder(k, k + m), zfec.Decoder(k, k + m)
    z_parity = encoder.encode(blocks, list(range(k, k + m)))
    z_indexes = list(range(lost, k)) + list(range(k, k + lost))
    z_blocks = blocks[lost:k] + list(z_parity[:lost])
    ours_encode = best(lambda: codec.encode(stripes))
    ours_decode = best(lambda: codec.decode(kept))
    z_encode = best(lambda: encoder.encode(blocks, list(range(k, k + m))))
    z_decode = best(lambda: decoder.decode(z_blocks, z_indexes))
    mb = size / 1e6
    print(f"{args.mib} MiB, k={k}, m={m}, {lost} data stripes lost for decoding, best of 3, {os.cpu_count()} cores, backend {BACKEND}:")
    print(f"  encode  lannode {mb / ours_encode:6.0f} MB/s   zfec {mb / z_encode:6.0f} MB/s   {z_encode / ours_encode:.2f} x zfec (goal >= {GOAL})")
    print(f"  decode  lannode {mb / ours_decode:6.0f} MB/s   zfec {mb / z_decode:6.0f} MB/s   {z_decode / ours_decode:.2f} x zfec (goal >= {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
