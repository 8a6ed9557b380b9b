"""The drive's erasure code is reedsolo's code: column by column, and through any loss of up to m fragments."""

from __future__ import annotations

import os

import numpy as np
import pytest
import reedsolo
from hypothesis import given, settings
from hypothesis import strategies as st

from lannode.core.erasure import FCR, GENERATOR, PRIM, Codec, ErasureError, gf_mul


@st.composite
def coded(draw: st.DrawFn) -> tuple[int, int, list[bytes], list[int]]:
    k = draw(st.integers(1, 12))
    m = draw(st.integers(1, 6))
    length = draw(st.integers(1, 64))
    stripes = [draw(st.binary(min_size=length, max_size=length)) for _ in range(k)]
    lost = draw(st.lists(st.integers(0, k + m - 1), max_size=m, unique=True))
    return k, m, stripes, lost


@settings(max_examples=150, deadline=None)
@given(coded())
def test_every_column_is_a_reedsolo_codeword_and_any_k_fragments_rebuild_the_data(case: tuple[int, int, list[bytes], list[int]]) -> None:
    k, m, stripes, lost = case
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


def test_a_megabyte_round_trips_through_every_pair_of_losses() -> None:
    codec = Codec(4, 2)
    data = [os.urandom(1 << 18) for _ in range(4)]
    fragments = [np.frombuffer(d, dtype=np.uint8) for d in data] + codec.encode(data)
    for a in range(6):
        for b in range(a + 1, 6):
            kept = {i: fragments[i] for i in range(6) if i not in (a, b)}
            assert [r.tobytes() for r in codec.decode(kept)] == data
