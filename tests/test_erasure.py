"""The drive's erasure code is reedsolo's code: column by column, and through any loss of up to m fragments."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import reedsolo
from hypothesis import given, settings
from hypothesis import strategies as st

from lannode.core import erasure
from lannode.core.erasure import FCR, GENERATOR, PRIM, Codec, ErasureError, gf_mul

BACKENDS = ["isa-l", "numpy"]


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the codec on one backend: ISA-L for stripes of any length, or numpy alone."""
    saved = erasure._ISAL, erasure.ISAL_MIN_BYTES
    if name == "numpy":
        erasure._ISAL = None
    else:
        assert saved[0] is not None, "ISA-L is missing (Debian: apt-get install libisal2; tests/system-deps.sh installs it)"
        erasure.ISAL_MIN_BYTES = 1
    try:
        yield
    finally:
        erasure._ISAL, erasure.ISAL_MIN_BYTES = saved


@st.composite
def coded(draw: st.DrawFn) -> tuple[int, int, list[bytes], list[int]]:
    k = draw(st.integers(1, 12))
    m = draw(st.integers(1, 6))
    length = draw(st.integers(1, 100))
    stripes = [draw(st.binary(min_size=length, max_size=length)) for _ in range(k)]
    lost = draw(st.lists(st.integers(0, k + m - 1), max_size=m, unique=True))
    return k, m, stripes, lost


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=150, deadline=None)
@given(case=coded())
def test_every_column_is_a_reedsolo_codeword_and_any_k_fragments_rebuild_the_data(name: str, case: tuple[int, int, list[bytes], list[int]]) -> None:
    with backend(name):
        check_codewords(*case)


def check_codewords(k: int, m: int, stripes: list[bytes], lost: list[int]) -> None:
    codec = Codec(k, m)
    parity = codec.encode(stripes)
    fragments = [np.frombuffer(s, dtype=np.uint8) for s in stripes] + parity
    rs = reedsolo.RSCodec(m, nsize=255, fcr=FCR, prim=PRIM, generator=GENERATOR)
    for column in range(len(stripes[0])):
        word = bytes(int(f[column]) for f in fragments)
        assert bytes(rs.encode(word[:k])) == word, f"column {column} is not reedsolo's codeword"
    survivors = {i: fragments[i].tobytes() for i in range(k + m) if i not in lost}
    rebuilt = codec.decode(survivors)
    assert [r.tobytes() for r in rebuilt] == stripes
    # reedsolo's own decoder, told which fragments are gone, agrees column by column
    for column in range(len(stripes[0])):
        damaged = bytearray(int(f[column]) for f in fragments)
        for i in lost:
            damaged[i] = 0
        message = bytes(rs.decode(damaged, erase_pos=lost, only_erasures=True)[0])
        assert message == bytes(r[column] for r in rebuilt)


def test_bad_parameters_and_too_few_fragments_are_clear_errors() -> None:
    for k, m in ((0, 2), (4, -1), (200, 56)):
        with pytest.raises(ErasureError, match="k \\+ m <= 255"):
            Codec(k, m)
    codec = Codec(4, 2)
    data = [os.urandom(100) for _ in range(4)]
    parity = codec.encode(data)
    with pytest.raises(ErasureError, match="3 fragments of 6; any 4"):
        codec.decode({0: data[0], 4: parity[0], 5: parity[1]})
    with pytest.raises(ErasureError, match="same length"):
        codec.encode([b"ab", b"abc", b"ab", b"ab"])
    with pytest.raises(ErasureError, match="expected 4 stripes"):
        codec.encode(data[:3])
    assert Codec(255, 0).encode([b"x"] * 255) == []
    assert gf_mul(2, 128) == 0x1D, "x * x^7 wraps through the polynomial 0x11d"


@pytest.mark.parametrize("name", BACKENDS)
def test_a_megabyte_round_trips_through_every_pair_of_losses(name: str) -> None:
    codec = Codec(4, 2)
    data = [os.urandom(1 << 18) for _ in range(4)]
    with backend(name):
        fragments = [np.frombuffer(d, dtype=np.uint8) for d in data] + codec.encode(data)
        for a in range(6):
            for b in range(a + 1, 6):
                kept = {i: fragments[i] for i in range(6) if i not in (a, b)}
                assert [r.tobytes() for r in codec.decode(kept)] == data


def test_the_two_backends_give_the_same_bytes() -> None:
    """Long, odd-length stripes (ISA-L's SIMD blocks and its tail), wide codes, every
    loss pattern of a small one: ISA-L and numpy agree byte for byte."""
    assert erasure.BACKEND == "isa-l", "ISA-L is missing (Debian: apt-get install libisal2)"
    for k, m, n in ((4, 2, (1 << 20) + 13), (10, 4, 4099), (1, 3, 77), (17, 16, 1000)):
        data = [os.urandom(n) for _ in range(k)]
        with backend("isa-l"):
            fast = [p.tobytes() for p in Codec(k, m).encode(data)]
        with backend("numpy"):
            slow = [p.tobytes() for p in Codec(k, m).encode(data)]
        assert fast == slow, (k, m, n)
        fragments = dict(enumerate([*data, *fast]))
        for lost in ([], list(range(min(m, k))), list(range(k, k + m))[:1] + [0]):
            kept = {i: f for i, f in fragments.items() if i not in lost}
            for name in BACKENDS:
                with backend(name):
                    assert [r.tobytes() for r in Codec(k, m).decode(kept)] == data, (name, k, m, lost)
