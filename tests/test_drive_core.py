"""A drive file's bytes: encrypted segments, erasure-coded fragments, capabilities."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lannode.core.drive import (
    Decoder,
    DriveError,
    Encoder,
    Layout,
    ReadCap,
    VerifyCap,
    check_block,
    check_block_hashes,
    check_layout,
    new_key,
    parse_cap,
    storage_index,
)


def put(plaintext: bytes, k: int, m: int, segment: int) -> tuple[Layout, ReadCap, list[list[bytes]], list[list[bytes]]]:
    """Encode a file: its layout, read cap, and per fragment its blocks and block hashes."""
    encoder = Encoder(new_key(), len(plaintext), k, m, segment)
    fragments: list[list[bytes]] = [[] for _ in range(k + m)]
    for i in range(encoder.shape.segments):
        for f, block in enumerate(encoder.segment(i, plaintext[i * segment : (i + 1) * segment])):
            fragments[f].append(block)
    layout, cap = encoder.finish()
    return layout, cap, fragments, encoder.hashes


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 6), st.integers(1, 3), st.sampled_from([64, 1000, 4096]), st.data())
def test_any_k_fragments_read_the_file_back(size: int, k: int, m: int, segment: int, data: st.DataObject) -> None:
    plaintext = os.urandom(size)
    layout, cap, fragments, hashes = put(plaintext, k, m, segment)
    lost = data.draw(st.lists(st.integers(0, k + m - 1), max_size=m, unique=True))
    check_layout(layout, cap)
    check_layout(layout, cap.verify_cap())
    decoder = Decoder(layout, cap.key)
    out = b""
    for i in range(layout.segments):
        blocks = {}
        for f in range(k + m):
            if f in lost:
                continue
            check_block_hashes(layout, f, hashes[f])
            check_block(hashes[f], f, i, fragments[f][i])
            blocks[f] = fragments[f][i]
        out += decoder.segment(i, blocks)
    assert out == plaintext
    assert len(b"".join(fragments[0])) == layout.fragment_length()


def test_a_verify_cap_checks_and_repairs_but_cannot_read() -> None:
    plaintext = b"the minutes of the meeting, " * 3000
    layout, cap, fragments, hashes = put(plaintext, 4, 2, 16384)
    verify = parse_cap(str(cap.verify_cap()))
    assert isinstance(verify, VerifyCap) and verify.file_id == layout.file_id == storage_index(cap.key)
    check_layout(layout, verify)
    repairer = Decoder(layout)  # no key
    for i in range(layout.segments):
        survivors = {f: fragments[f][i] for f in (1, 3, 4, 5)}  # fragments 0 and 2 are gone
        rebuilt = repairer.rebuild(i, survivors)
        assert rebuilt == [fragments[f][i] for f in range(6)], "repair rebuilds the exact lost blocks"
    with pytest.raises(DriveError, match="read capability"):
        repairer.segment(0, {f: fragments[f][0] for f in range(4)})
    # no fragment holds a readable run of the plaintext (encrypted before it is coded)
    for fragment in fragments:
        blob = b"".join(fragment)
        assert not any(plaintext[i : i + 64] in blob for i in range(0, 20000, 97))


def test_corruption_lies_and_wrong_keys_are_caught() -> None:
    plaintext = os.urandom(50000)
    layout, cap, fragments, hashes = put(plaintext, 3, 2, 8192)
    bad = bytearray(fragments[1][2])
    bad[5] ^= 1
    with pytest.raises(DriveError, match="fragment 1, segment 2: a corrupt block"):
        check_block(hashes[1], 1, 2, bytes(bad))
    with pytest.raises(DriveError, match="block hashes do not match"):
        check_block_hashes(layout, 1, hashes[2])
    # a corrupt block that slipped past the hash check still cannot decrypt into anything
    decoder = Decoder(layout, cap.key)
    with pytest.raises(DriveError, match="does not decrypt"):
        decoder.segment(2, {0: fragments[0][2], 1: bytes(bad), 2: fragments[2][2]})
    # a segment's blocks offered as another segment's do not decrypt (its number is bound in)
    assert layout.block_length(1) == layout.block_length(2)
    with pytest.raises(DriveError, match="does not decrypt"):
        decoder.segment(1, {f: fragments[f][2] for f in range(3)})
    with pytest.raises(DriveError, match="not the file's"):
        Decoder(layout, new_key())
    other, other_cap, _, _ = put(plaintext, 3, 2, 8192)
    with pytest.raises(DriveError, match="not the one this capability names"):
        check_layout(other, cap)
    with pytest.raises(DriveError, match="any 3 are needed"):
        decoder.segment(0, {0: fragments[0][0], 4: fragments[4][0]})


def test_capabilities_and_layouts_round_trip_and_refuse_garbage() -> None:
    layout, cap, _, _ = put(b"hello", 4, 2, 4096)
    assert parse_cap(str(cap)) == cap and str(cap).startswith("lnd-r:")
    assert Layout.from_json(layout.to_json()) == layout and Layout.from_json(layout.to_json()).digest() == cap.layout_hash
    for text in ("", "lnd-r:abc", "lnd-x:a:b", "lnd-r:!!!:abcd", f"lnd-v:{'g' * 32}:{str(cap).split(':')[2]}", "lnd-r:aaaa:bbbb"):
        with pytest.raises(DriveError):
            parse_cap(text)
    broken = layout.to_json()
    for key, value in (("k", 0), ("roots", ["00"]), ("size", -1), ("segment", 0), ("k", 300)):
        with pytest.raises((DriveError, ValueError)):
            Layout.from_json({**broken, key: value})
    with pytest.raises(DriveError):
        Layout.from_json({"id": "x"})
    encoder = Encoder(new_key(), 10000, 2, 1, 4096)
    with pytest.raises(DriveError, match="out of order"):
        encoder.segment(1, bytes(4096))
    with pytest.raises(DriveError, match="not 4096"):
        encoder.segment(0, bytes(10))
    with pytest.raises(DriveError, match="segments fed"):
        encoder.finish()
    assert storage_index(bytes(32)) != storage_index(b"\x01" + bytes(31))


# -- the fragments a node holds (lannode/fragments.py) -------------------------------------------

from pathlib import Path  # noqa: E402

from lannode.fragments import FragmentError, FragmentStore  # noqa: E402


def test_a_holder_stores_checked_fragments_and_catches_rot_and_hostile_ids(tmp_path: Path) -> None:
    plaintext = os.urandom(40000)
    layout, cap, fragments, hashes = put(plaintext, 4, 2, 8192)
    lengths = [layout.block_length(i) for i in range(layout.segments)]
    store = FragmentStore(tmp_path / "fragments", quota=10**6)
    for f in (1, 5):
        writer = store.writer(layout.file_id, f, layout.roots[f], hashes[f], lengths)
        for block in fragments[f]:
            writer.write(block)
        writer.commit()
    assert [(h.index, h.size) for h in store.held()] == [(1, layout.fragment_length()), (5, layout.fragment_length())]
    assert store.usage() == 2 * layout.fragment_length()
    offset = sum(lengths[:3])
    assert store.read_block(layout.file_id, 5, 3, offset, lengths[3]) == fragments[5][3]
    assert store.verify(layout.file_id, 1, lengths)
    # rot on disk: caught on read and by verify
    path = tmp_path / "fragments" / f"{layout.file_id}.5"
    raw = bytearray(path.read_bytes())
    raw[offset + 7] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(FragmentError, match="corrupt on this disk"):
        store.read_block(layout.file_id, 5, 3, offset, lengths[3])
    assert not store.verify(layout.file_id, 5, lengths)
    # a peer's lies: wrong hashes for the root, a bad block, too few blocks, no room
    with pytest.raises(FragmentError, match="do not match the fragment's root"):
        store.writer(layout.file_id, 2, layout.roots[2], hashes[3], lengths)
    writer = store.writer(layout.file_id, 2, layout.roots[2], hashes[2], lengths)
    with pytest.raises(FragmentError, match="block 0 does not match"):
        writer.write(fragments[3][0])
    writer = store.writer(layout.file_id, 2, layout.roots[2], hashes[2], lengths)
    writer.write(fragments[2][0])
    with pytest.raises(FragmentError, match="1 of 5 blocks"):
        writer.commit()
    assert not store.has(layout.file_id, 2) and not list((tmp_path / "fragments").glob("*.part"))
    small = FragmentStore(tmp_path / "small", quota=100)
    with pytest.raises(FragmentError, match="no room"):
        small.writer(layout.file_id, 0, layout.roots[0], hashes[0], lengths)
    for bad_id, bad_index in (("../../etc/passwd", 0), ("A" * 32, 0), (layout.file_id, -1), (layout.file_id, 255), ("0" * 31, 1)):
        with pytest.raises(FragmentError):
            store.has(bad_id, bad_index)
    assert store.delete(layout.file_id, 1) and not store.delete(layout.file_id, 1)
    assert [h.index for h in store.held()] == [5]
    # a write cut short by a crash leaves nothing behind after a restart
    (tmp_path / "fragments" / f"{layout.file_id}.3.part").write_bytes(b"half")
    assert not list(FragmentStore(tmp_path / "fragments", quota=10**6).root.glob("*.part"))
