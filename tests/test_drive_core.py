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


# -- the fragments a node holds (lannode/drive/fragments.py) -------------------------------------------

from pathlib import Path  # noqa: E402

from lannode.drive.fragments import FragmentError, FragmentStore  # noqa: E402


def test_a_holder_stores_checked_fragments_and_catches_rot_and_hostile_ids(tmp_path: Path) -> None:
    plaintext = os.urandom(40000)
    layout, cap, fragments, hashes = put(plaintext, 4, 2, 8192)
    shape = (layout.size, layout.k, layout.m, layout.segment)
    store = FragmentStore(tmp_path / "fragments", quota=10**6)
    for f in (1, 5):
        writer = store.writer(layout.file_id, f, *shape)
        stream = b"".join(fragments[f])
        for start in range(0, len(stream), 777):  # pieces that cut blocks anywhere
            writer.write(stream[start : start + 777])
        writer.commit(layout.roots[f])
    assert [(h.index, h.size) for h in store.held()] == [(1, layout.fragment_length()), (5, layout.fragment_length())]
    assert store.usage() == 2 * layout.fragment_length()
    assert store.info(layout.file_id, 5).hashes == tuple(hashes[5])
    with store.open(layout.file_id, 5) as reader:
        assert reader.block(3) == fragments[5][3]
    assert store.verify(layout.file_id, 1)
    # rot on disk: caught on read and by verify
    path = tmp_path / "fragments" / f"{layout.file_id}.5"
    raw = bytearray(path.read_bytes())
    raw[sum(layout.block_lengths()[:3]) + 7] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(FragmentError, match="corrupt on this disk"), store.open(layout.file_id, 5) as reader:
        reader.block(3)
    assert not store.verify(layout.file_id, 5)
    # a peer's lies: blocks that do not hash to the root, too few bytes, too many, no room
    writer = store.writer(layout.file_id, 2, *shape)
    writer.write(b"".join(fragments[3]))
    with pytest.raises(FragmentError, match="do not hash to the root"):
        writer.commit(layout.roots[2])
    writer = store.writer(layout.file_id, 2, *shape)
    writer.write(fragments[2][0])
    with pytest.raises(FragmentError, match="of .* bytes arrived"):
        writer.commit(layout.roots[2])
    writer = store.writer(layout.file_id, 2, *shape)
    with pytest.raises(FragmentError, match="more bytes"):
        writer.write(b"".join(fragments[2]) + b"x")
    assert not store.has(layout.file_id, 2) and not list((tmp_path / "fragments").glob("*.part"))
    assert store.free() == 10**6 - 2 * layout.fragment_length(), "aborted writes give their room back"
    small = FragmentStore(tmp_path / "small", quota=100)
    with pytest.raises(FragmentError, match="no room"):
        small.writer(layout.file_id, 0, *shape)
    for bad_id, bad_index in (("../../etc/passwd", 0), ("A" * 32, 0), (layout.file_id, -1), (layout.file_id, 255), ("0" * 31, 1)):
        with pytest.raises(FragmentError):
            store.has(bad_id, bad_index)
    for bad_shape in ((-1, 4, 2, 8192), (100, 0, 2, 8192), (100, 4, 2, 0), (100, 200, 100, 8192), (100, True, 2, 8192)):
        with pytest.raises(FragmentError):
            store.writer(layout.file_id, 0, *bad_shape)
    assert store.delete(layout.file_id, 1) and not store.delete(layout.file_id, 1)
    assert [h.index for h in store.held()] == [5]
    # a write cut short by a crash leaves nothing behind after a restart
    (tmp_path / "fragments" / f"{layout.file_id}.3.part").write_bytes(b"half")
    assert not list(FragmentStore(tmp_path / "fragments", quota=10**6).root.glob("*.part"))


from nacl.signing import SigningKey  # noqa: E402

from lannode.core.drive import Manifest, PlacementError, open_share, place, seal_share  # noqa: E402

NODES = [f"{c}" * 24 for c in "abcdefg"]


def test_placement_spreads_by_free_space_and_says_what_is_short() -> None:
    free = {NODES[0]: 500, NODES[1]: 900, NODES[2]: 700, NODES[3]: 100, NODES[4]: 800}
    assert place(3, free, 200) == [NODES[1], NODES[4], NODES[2]], "the roomiest nodes, one fragment each"
    with pytest.raises(PlacementError, match="4 fragments need 4 distinct nodes with 200 bytes free each; 3 nodes have room"):
        place(4, {n: f for n, f in free.items() if n != NODES[0]}, 200)
    doubled = place(6, free, 200, allow_fewer=True)
    assert len(doubled) == 6 and set(doubled) == {NODES[0], NODES[1], NODES[2], NODES[4]}
    assert all(doubled.count(n) <= 2 for n in doubled), "a second fragment only when every node has one"
    # repair: nodes that hold a fragment of the file already come last
    assert place(1, free, 200, holding={NODES[1]: 1, NODES[4]: 1}) == [NODES[2]]
    with pytest.raises(PlacementError, match="no node has"):
        place(1, free, 10_000, allow_fewer=True)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(NODES), st.integers(0, 10_000), min_size=1), st.integers(1, 8), st.integers(1, 3000))
def test_placement_never_overfills_and_keeps_nodes_distinct_when_it_can(free: dict[str, int], count: int, size: int) -> None:
    try:
        chosen = place(count, free, size)
    except PlacementError:
        assert sum(f >= size for f in free.values()) < count
        return
    assert len(chosen) == len(set(chosen)) == count
    assert all(free[n] >= size for n in chosen)


def test_manifests_round_trip_and_shares_open_only_for_their_node() -> None:
    layout, cap, _, _ = put(b"x" * 5000, 4, 2, 1024)
    manifest = Manifest(layout, tuple(NODES[:6]), 1, NODES[0], 1700000000.0)
    assert Manifest.from_json(manifest.to_json()) == manifest
    moved = manifest.moved(2, NODES[6])
    assert moved.holders[2] == NODES[6] and moved.version == 2
    for bad in ({}, {**manifest.to_json(), "holders": NODES[:5]}, {**manifest.to_json(), "holders": ["../x"] * 6}, {**manifest.to_json(), "layout": {"id": 1}}):
        with pytest.raises(DriveError):
            Manifest.from_json(bad)
    me, other = SigningKey.generate(), SigningKey.generate()
    sealed = seal_share(bytes(me.verify_key), {"name": "plans.pdf", "cap": str(cap)})
    assert open_share(me, sealed) == {"name": "plans.pdf", "cap": str(cap)}
    assert "plans" not in sealed
    with pytest.raises(DriveError, match="does not open"):
        open_share(other, sealed)
    with pytest.raises(DriveError):
        open_share(me, "not base64 at all!")


from lannode.core.drive import (  # noqa: E402
    HASH_BYTES,
    Unrepairable,
    plan_repair,
    repairer_of,
    why_drop,
)


def _manifest(holders: list[str], k: int = 4) -> Manifest:
    layout = Layout("f" * 26, 1000, k, len(holders) - k, 1 << 20, tuple(bytes(HASH_BYTES) for _ in holders))
    return Manifest(layout, tuple(holders), 1, holders[0], 0.0)


def test_repair_plans_what_the_node_itself_should_rebuild() -> None:
    nodes = [c * 24 for c in "abcdefgh"]
    manifest = _manifest(nodes[:6])
    alive = set(nodes[:5]) | {nodes[6]}  # f gone, g a node without a fragment
    repairer = repairer_of(manifest.file_id, alive)
    other = next(n for n in alive if n != repairer)
    gone_for = lambda node: 0.0 if node in alive else 100.0  # noqa: E731
    assert plan_repair(manifest, me=repairer, alive=alive, gone_for=gone_for, grace=60) == [5]
    assert plan_repair(manifest, me=repairer, alive=alive, gone_for=gone_for, grace=600) == [], "within the grace"
    assert plan_repair(manifest, me=other, alive=alive, gone_for=gone_for, grace=60) == [], "someone else's to repair"
    assert plan_repair(manifest, me=nodes[1], alive=alive, gone_for=gone_for, grace=600, mine={1}) == [1], "its own lost fragment"
    # two fragments on one node, placed so when few nodes were up: one moves once a node is free
    doubled = _manifest([nodes[0], nodes[1], nodes[2], nodes[3], nodes[4], nodes[0]])
    alive = set(nodes[:5]) | {nodes[6]}
    me = repairer_of(doubled.file_id, alive)
    assert plan_repair(doubled, me=me, alive=alive, gone_for=gone_for, grace=60) == [5]
    assert plan_repair(doubled, me=me, alive=set(nodes[:5]), gone_for=gone_for, grace=60) == [], "nowhere better to go"
    with pytest.raises(Unrepairable):
        dead = set(nodes[:3])
        plan_repair(manifest, me=repairer_of(manifest.file_id, dead), alive=dead, gone_for=lambda n: 0.0 if n in dead else 100.0, grace=60)


def test_a_fragment_is_dropped_only_when_its_file_is_gone_or_it_is_an_old_orphan() -> None:
    a, b = "a" * 24, "b" * 24
    manifest = _manifest([a, b, a, b, a, b], k=2)
    facts = dict(me=a, age=1000.0, orphan_grace=60.0, busy=False)
    assert why_drop(manifest, removed=False, index=0, **facts) is None  # type: ignore[arg-type]
    assert why_drop(manifest, removed=False, index=1, **facts) == "no manifest names it here"  # type: ignore[arg-type]
    assert why_drop(None, removed=True, index=0, **facts) == "its file was removed"  # type: ignore[arg-type]
    assert why_drop(manifest, removed=False, index=1, me=a, age=10.0, orphan_grace=60.0, busy=False) is None, "young"
    assert why_drop(None, removed=False, index=1, me=a, age=1000.0, orphan_grace=60.0, busy=True) is None, "busy, or no store news yet"
