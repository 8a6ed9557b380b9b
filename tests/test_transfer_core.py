"""File drop, sans-IO: hostile names, the offer codec, chunk verification and the file root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lannode.core.bulk import (
    R_ACK,
    R_CONTROL,
    R_DATA,
    TOKEN_BYTES,
    BadBulk,
    bulk_hello,
    bulk_keys,
    parse_bulk_hello,
)
from lannode.core.transfer import (
    BadOffer,
    ChunkMismatch,
    FileProgress,
    Offer,
    OfferedFile,
    OutOfOrder,
    UnsafeName,
    ack_record,
    chunk_count,
    control_record,
    data_header,
    file_root,
    hash_chunk,
    parse_record,
    safe_relative_path,
)

HOSTILE = [
    "../etc/passwd",
    "a/../../b",
    "/etc/passwd",
    "a//b",
    "a/./b",
    "./a",
    "a/",
    "..",
    "nul\x00byte",
    "line\nbreak",
    "esc\x1b[31m",
    "back\\slash",
    "..\\..\\windows",
    "x" * 256,
    "a/" * 2100 + "b",
    "\udcff surrogate",
    "",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeName):
        safe_relative_path(name)


def test_device_names_are_renamed_and_good_names_kept() -> None:
    assert safe_relative_path("CON") == "_CON"
    assert safe_relative_path("docs/nul.txt") == "docs/_nul.txt"
    assert safe_relative_path("com1.tar.gz") == "_com1.tar.gz"
    assert safe_relative_path("console.txt") == "console.txt"
    assert safe_relative_path("Fotos/Ürlaub 2026/🌊 beach.jpg") == "Fotos/Ürlaub 2026/🌊 beach.jpg"
    assert safe_relative_path(".hidden/..dots..") == ".hidden/..dots.."


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(list("ab./\\\x00\n :é") + ["..", "CON", "nul."]), max_size=30).map("".join))
def test_any_name_is_refused_or_stays_inside_the_folder(name: str) -> None:
    try:
        safe = safe_relative_path(name)
    except UnsafeName:
        return
    root = Path("/downloads/here")
    target = Path(os.path.normpath(root / safe))
    assert target.is_relative_to(root) and target != root
    assert ".." not in Path(safe).parts and not Path(safe).is_absolute()


def offered(path: str, data: bytes, chunk_size: int = 4096) -> OfferedFile:
    chunks = tuple(hash_chunk(data[i : i + chunk_size]) for i in range(0, max(len(data), 1), chunk_size))
    return OfferedFile(path, len(data), chunks)


def test_an_offer_survives_its_encoding_and_bad_offers_are_refused() -> None:
    files = (offered("a.txt", b"x" * 10000), offered("empty", b""), offered("dir/b.bin", os.urandom(4096)))
    offer = Offer("ab" * 16, files, 4096)
    again = Offer.decode(offer.encode())
    assert again == offer and again.total == 14096
    assert [chunk_count(f.size, 4096) for f in again.files] == [3, 1, 1]
    for bad in (b"[]", b"{", b'{"id":"x"}', offer.encode().replace(b'"size":10000', b'"size":20000'), offer.encode().replace(b'"chunk_size":4096', b'"chunk_size":1')):
        with pytest.raises(BadOffer):
            Offer.decode(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_decode_as_an_offer_or_raise_bad_offer(data: bytes) -> None:
    try:
        Offer.decode(data)
    except BadOffer:
        pass


def test_chunks_verify_in_order_as_their_last_byte_arrives_and_the_root_covers_the_whole_file() -> None:
    data = os.urandom(10000)
    f = offered("f", data)
    progress = FileProgress(f, 4096)
    with pytest.raises(OutOfOrder):
        progress.feed(4096, data[4096:8192])
    with pytest.raises(OutOfOrder, match="cross"):
        progress.feed(0, data[:5000])
    assert not progress.feed(0, data[:1000]) and progress.verified == 0 and progress.position == 1000
    with pytest.raises(ChunkMismatch) as mismatch:
        progress.feed(1000, data[1000:4095] + b"!")
    assert mismatch.value.index == 0 and progress.position == 0, "back to the last verified chunk"
    progress.restart_at(0)
    for start in range(0, 10000, 1000):
        end = min(10000, start + 1000)
        if start < 8192 < end:
            progress.feed(start, data[start:8192])
            start = 8192
        if start < 4096 < end:
            progress.feed(start, data[start:4096])
            start = 4096
        complete = progress.feed(start, data[start:end])
    assert complete and progress.done and progress.verified_bytes == 10000
    assert f.root == file_root(len(data), [hash_chunk(data[i : i + 4096]) for i in range(0, 10000, 4096)])
    assert f.root != offered("f", data[:-1] + bytes([data[-1] ^ 1])).root
    empty = FileProgress(offered("e", b""), 4096)
    assert empty.feed(0, b"") and empty.done
    resumed = FileProgress(f, 4096)
    resumed.restart_at(2)
    assert resumed.position == 8192 and resumed.feed(8192, data[8192:])


def test_bulk_records_and_hello_round_trip_and_refuse_garbage() -> None:
    token = os.urandom(TOKEN_BYTES)
    assert parse_bulk_hello(bulk_hello(token)) == token
    for bad in (b"LNL" + bytes(17), b"LNB\x09" + bytes(16), b"LNB"):
        with pytest.raises(BadBulk):  # the hello is lannode.core.bulk's now, shared with the drive
            parse_bulk_hello(bad)
    kind, where, data = parse_record(data_header(7, 123456789) + b"payload")
    assert (kind, where, bytes(data)) == (R_DATA, (7, 123456789), b"payload")
    assert parse_record(ack_record(42))[:2] == (R_ACK, 42)
    assert parse_record(control_record({"start": [0, -1]}))[:2] == (R_CONTROL, {"start": [0, -1]})
    for bad in (b"", b"\x01abc", b"\x02" + bytes(3), b"\x03not json", b"\x03[1]", b"\x09"):
        with pytest.raises(BadOffer):
            parse_record(bad)
    s2r, r2s = bulk_keys(bytes(32))
    assert s2r != r2s and len(s2r) == len(r2s) == 32 and bulk_keys(bytes(31) + b"\x01") != (s2r, r2s)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bulk_record_parses_or_raises_bad_offer(data: bytes) -> None:
    try:
        parse_record(data)
    except BadOffer:
        pass


# -- the sender's files and the receiver's checks (lannode/transfer/offers.py) ------------------

from lannode.transfer.offers import (  # noqa: E402
    TransferError,
    check_offer,
    hash_file,
    make_offer,
    scan,
)


def test_a_folder_is_offered_with_its_structure_and_odd_entries_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "album"
    (root / "2026" / "summer").mkdir(parents=True)
    (root / "2026" / "summer" / "sea.jpg").write_bytes(os.urandom(9000))
    (root / "notes.txt").write_text("hello")
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to(root / "notes.txt")
    os.mkfifo(root / "pipe")
    single = tmp_path / "single.bin"
    single.write_bytes(b"1" * 5000)
    files, skipped = scan([root, single])
    assert [f.name for f in files] == ["album/empty", "album/notes.txt", "album/2026/summer/sea.jpg", "single.bin"]
    assert sorted(s.split(": ")[1] for s in skipped) == ["a symbolic link", "not a regular file"]
    offer = make_offer("ab" * 16, files, chunk_size=4096)
    assert [chunk_count(f.size, 4096) for f in offer.files] == [1, 1, 3, 2]
    sea = offer.files[2]
    data = (root / "2026" / "summer" / "sea.jpg").read_bytes()
    assert sea.root == file_root(9000, [hash_chunk(data[i : i + 4096]) for i in range(0, 9000, 4096)])
    # a file that changes between the scan and the hashing is caught
    (root / "notes.txt").write_text("hello, changed")
    with pytest.raises(TransferError, match="changed"):
        hash_file(files[1], 4096)
    with pytest.raises(TransferError, match="cannot read"):
        scan([tmp_path / "missing"])


def test_an_offer_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"

    def offer_of(*names: str, size: int = 10) -> Offer:
        return Offer("ab" * 16, tuple(offered(n, b"x" * size) for n in names), 4096)

    assert check_offer(offer_of("a.txt", "A.txt", "dir/b", "CON"), downloads, limit=1 << 30) == ["a.txt", "A.txt", "dir/b", "_CON"]
    with pytest.raises(TransferError, match="absolute path.*'..' component"):
        check_offer(offer_of("/etc/passwd", "x/../../y"), downloads, limit=1 << 30)
    with pytest.raises(TransferError, match="same name"):
        check_offer(offer_of("a", "a"), downloads, limit=1 << 30)
    with pytest.raises(TransferError, match="both a file and a folder"):
        check_offer(offer_of("a", "a/b"), downloads, limit=1 << 30)
    with pytest.raises(TransferError, match="over this node's limit"):
        check_offer(offer_of("big", size=5000), downloads, limit=4000)
    with pytest.raises(TransferError, match="not enough free space"):
        check_offer(offer_of("a"), downloads, limit=1 << 60, reserve=1 << 60)
    assert list(downloads.iterdir()) == []


from lannode.core.link import AES_GCM  # noqa: E402


@pytest.mark.parametrize("aes", [True, False] if AES_GCM else [False])  # AES-GCM needs AES-NI, as links do
@pytest.mark.parametrize("direct", [True, False])
def test_records_sealed_in_place_are_the_links_records(aes: bool, direct: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk path's in-place sealing (libsodium through cffi, or pynacl's API where that
    is missing) writes exactly the bytes ``seal`` does, and opens what ``seal`` wrote."""
    from nacl.exceptions import CryptoError

    from lannode.core import link

    if not direct:
        monkeypatch.setattr(link, "_sodium", None)
    key = os.urandom(32)
    writer, reference, reader = (link.RecordCipher(key, aes) for _ in range(3))
    out, opened = bytearray(300_000), bytearray(300_000)
    for size in (0, 1, 4096, 256 * 1024 + 13):
        plaintext = os.urandom(size)
        n = writer.seal_into(memoryview(plaintext), out)
        expected = reference.seal(plaintext)
        assert bytes(out[:n]) == expected
        m = reader.open_into(expected[:4], memoryview(expected)[4:], opened)
        assert bytes(opened[:m]) == plaintext
    tampered = bytearray(reference.seal(b"pay me"))
    tampered[-1] ^= 1
    with pytest.raises(CryptoError):
        reader.open_into(bytes(tampered[:4]), memoryview(tampered)[4:], opened)
