"""Reed–Solomon erasure coding for the drive: reedsolo's code, applied to whole stripes.

A file's segment is cut into ``k`` data stripes of equal length; ``m`` parity stripes
are added so that any ``k`` of the ``k + m`` fragments rebuild the data. The code is
exactly reedsolo's (``RSCodec(m)``: GF(256) with the polynomial 0x11d, generator 2,
first consecutive root 0): byte ``i`` of every fragment, read across the fragments in
order, is a reedsolo codeword (``k`` message bytes, then ``m`` ecc bytes). So
reedsolo can check or repair any column on its own, and the tests hold this codec to
it.

reedsolo works a column at a time in Python, about 1 MB/s. The code is linear, so here
it is a matrix: the parity of each column is ``P @ column`` over GF(256), with ``P``
(m × k) read off reedsolo by encoding the unit vectors. Rebuilding from any ``k``
fragments multiplies by the inverse of their ``k`` rows of the generator ``[I; P]``,
inverted once per loss pattern and cached.

Whole stripes are multiplied by one of two backends, which give the same bytes:

* **ISA-L** (Intel's storage library, BSD; Debian's ``libisal2``), when the machine has
  it: its ``ec_encode_data`` multiplies stripes by any matrix over this same field
  (polynomial 0x11d) with SIMD, about 10 GB/s a core here, and ctypes lets go of the
  GIL meanwhile, so the drive's coding threads run in parallel.
* **numpy** otherwise: a table of byte-pair products indexed by the stripes' 16-bit
  words, about 0.75 GB/s.

``LANNODE_ERASURE=numpy`` in the environment keeps ISA-L out; ``BACKEND`` says which runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import reedsolo

PRIM = 0x11D
GENERATOR = 2
FCR = 0
MAX_FRAGMENTS = 255

Stripe = npt.NDArray[np.uint8]


class ErasureError(ValueError):
    """Parameters or fragments the code cannot work with; the message says why."""


def _field() -> tuple[Stripe, Stripe, Stripe]:
    """reedsolo's GF(256): the product table, and each element's inverse."""
    gf_log, gf_exp, _ = reedsolo.init_tables(prim=PRIM, generator=GENERATOR, c_exp=8)
    log = np.array(gf_log[:256], dtype=np.int32)
    exp = np.array(gf_exp[:512], dtype=np.uint8)
    a = np.arange(256)
    product = exp[(log[:, None] + log[None, :]) % 255].astype(np.uint8)
    product[0, :] = 0
    product[:, 0] = 0
    inverse = np.zeros(256, dtype=np.uint8)
    inverse[1:] = exp[(255 - log[1:]) % 255]
    return product, inverse, a.astype(np.uint8)


MUL, INV, _ELEMENTS = _field()


def gf_mul(a: int, b: int) -> int:
    return int(MUL[a, b])


def _invert(matrix: Stripe) -> Stripe:
    """The inverse of a square matrix over GF(256) (Gauss–Jordan); ErasureError if singular."""
    n = matrix.shape[0]
    work = np.concatenate([matrix.astype(np.uint8), np.eye(n, dtype=np.uint8)], axis=1)
    for col in range(n):
        pivot = next((r for r in range(col, n) if work[r, col]), None)
        if pivot is None:
            raise ErasureError("these fragments do not determine the data")
        if pivot != col:
            work[[col, pivot]] = work[[pivot, col]]
        work[col] = MUL[INV[work[col, col]], work[col]]
        for r in range(n):
            if r != col and work[r, col]:
                work[r] ^= MUL[work[r, col], work[col]]
    return work[:, n:].copy()


class Codec:
    """k data fragments and m parity fragments; any k of them rebuild the data."""

    def __init__(self, k: int, m: int) -> None:
        if not (isinstance(k, int) and isinstance(m, int)) or k < 1 or m < 0 or k + m > MAX_FRAGMENTS:
            raise ErasureError(f"k={k}, m={m}: need k >= 1, m >= 0 and k + m <= {MAX_FRAGMENTS}")
        self.k = k
        self.m = m
        parity = np.zeros((m, k), dtype=np.uint8)
        if m:
            rs = reedsolo.RSCodec(m, nsize=MAX_FRAGMENTS, fcr=FCR, prim=PRIM, generator=GENERATOR)
            for j in range(k):
                unit = bytearray(k)
                unit[j] = 1
                parity[:, j] = np.frombuffer(bytes(rs.encode(unit))[k:], dtype=np.uint8)
        self.parity = parity
        self.generator = np.concatenate([np.eye(k, dtype=np.uint8), parity], axis=0)
        self._decoders = lru_cache(maxsize=64)(self._decoder)

    def encode(self, stripes: Sequence[bytes | bytearray | memoryview | Stripe]) -> list[Stripe]:
        """The m parity stripes for k data stripes of one length."""
        data = self._stripes(stripes, self.k)
        return multiply(self.parity, data)

    def decode(self, fragments: Mapping[int, bytes | bytearray | memoryview | Stripe]) -> list[Stripe]:
        """The k data stripes from any k fragments, given as {index: bytes}, data fragments
        being 0..k-1 and parity k..k+m-1. ErasureError if fewer than k are given."""
        indexes = sorted(i for i in fragments if 0 <= i < self.k + self.m)
        if len(indexes) < self.k:
            raise ErasureError(f"{len(indexes)} fragments of {self.k + self.m}; any {self.k} are needed")
        chosen = tuple(indexes[: self.k])
        given = self._stripes([fragments[i] for i in chosen], self.k)
        if chosen == tuple(range(self.k)):
            return list(given)
        decoder = self._decoders(chosen)
        missing = [j for j in range(self.k) if j not in chosen]  # the data stripes not given; the others are copies
        rebuilt = dict(zip(missing, multiply(decoder[missing], given)))
        return [given[chosen.index(j)] if j in chosen else rebuilt[j] for j in range(self.k)]

    def _decoder(self, rows: tuple[int, ...]) -> Stripe:
        return _invert(self.generator[list(rows)])

    @staticmethod
    def _stripes(stripes: Sequence[bytes | bytearray | memoryview | Stripe], count: int) -> list[Stripe]:
        if len(stripes) != count:
            raise ErasureError(f"expected {count} stripes, got {len(stripes)}")
        arrays = [s if isinstance(s, np.ndarray) else np.frombuffer(s, dtype=np.uint8) for s in stripes]
        if len({a.shape for a in arrays}) > 1:
            raise ErasureError("stripes must all have the same length")
        return arrays


def multiply(matrix: Stripe, stripes: list[Stripe]) -> list[Stripe]:
    """``matrix`` (r × k) times k stripes of one length over GF(256): r stripes."""
    if not len(matrix):
        return []
    if _ISAL is not None and stripes[0].shape[0] >= ISAL_MIN_BYTES:
        return _isal_multiply(_ISAL, matrix, stripes)
    return [_combine(row, stripes) for row in matrix]


def _combine(coefficients: Stripe, stripes: list[Stripe]) -> Stripe:
    """Sum over GF(256) of coefficient × stripe: a table lookup per stripe, XORed together.
    Bytes go two at a time through a 65,536-entry table of byte-pair products, which
    halves the lookups (numpy has no byte shuffle; a lookup is what it does fast), a
    block at a time so that the block stays in the cache across the stripes."""
    n = stripes[0].shape[0]
    pairs = n // 2
    out = np.zeros(n, dtype=np.uint8)
    wide = out[: 2 * pairs].view(np.uint16)
    terms = [(c, _pair_table(c) if c > 1 else None, s[: 2 * pairs].view(np.uint16)) for c, s in zip(coefficients.tolist(), stripes) if c]
    scratch = np.empty(min(pairs, BLOCK), dtype=np.uint16)
    for start in range(0, pairs, BLOCK):
        end = min(pairs, start + BLOCK)
        target = wide[start:end]
        for c, table, words in terms:
            if table is None:
                target ^= words[start:end]
            else:
                part = scratch[: end - start]
                table.take(words[start:end], out=part, mode="clip")  # a uint16 index is always in range: no checks
                target ^= part
    if n % 2:
        for c, stripe in zip(coefficients.tolist(), stripes):
            out[-1] ^= MUL[c, stripe[-1]]
    return out


BLOCK = 32 * 1024  # 16-bit words per block: 64 KiB of each stripe


@lru_cache(maxsize=256)
def _pair_table(c: int) -> npt.NDArray[np.uint16]:
    """c × each byte of a 16-bit word, both bytes at once (128 KiB per coefficient)."""
    row = MUL[c].astype(np.uint16)
    words = np.arange(65536, dtype=np.uint32)
    table: npt.NDArray[np.uint16] = ((row[words >> 8] << 8) | row[words & 0xFF]).astype(np.uint16)
    return table


# -- ISA-L -----------------------------------------------------------------------------------------

ISAL_MIN_BYTES = 64  # shorter stripes cost more in the call than in the arithmetic


def _load_isal() -> ctypes.CDLL | None:
    if os.environ.get("LANNODE_ERASURE", "").lower() == "numpy":
        return None
    for name in ("libisal.so.2", ctypes.util.find_library("isal")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)  # a CDLL call releases the GIL
        except OSError:
            continue
        lib.ec_init_tables.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        lib.ec_init_tables.restype = None
        lib.ec_encode_data.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.ec_encode_data.restype = None
        return lib
    return None


@lru_cache(maxsize=256)
def _isal_tables(matrix: bytes, rows: int, k: int) -> ctypes.Array[ctypes.c_ubyte]:
    """ISA-L's expanded multiplication tables for a matrix (32 bytes per coefficient)."""
    assert _ISAL is not None
    tables = (ctypes.c_ubyte * (32 * rows * k))()
    _ISAL.ec_init_tables(k, rows, ctypes.c_char_p(matrix), tables)
    return tables


def _isal_multiply(lib: ctypes.CDLL, matrix: Stripe, stripes: list[Stripe]) -> list[Stripe]:
    rows, k = matrix.shape
    n = stripes[0].shape[0]
    if n > 0x7FFFFFFF:
        raise ErasureError("stripes over 2 GiB")
    inputs = [np.ascontiguousarray(s) for s in stripes]  # kept alive across the call
    outputs = [np.empty(n, dtype=np.uint8) for _ in range(rows)]
    tables = _isal_tables(np.ascontiguousarray(matrix, dtype=np.uint8).tobytes(), rows, k)
    data = (ctypes.c_void_p * k)(*[a.ctypes.data for a in inputs])
    coding = (ctypes.c_void_p * rows)(*[a.ctypes.data for a in outputs])
    lib.ec_encode_data(n, k, rows, tables, data, coding)
    return outputs


_ISAL = _load_isal()
BACKEND = "isa-l" if _ISAL is not None else "numpy"
