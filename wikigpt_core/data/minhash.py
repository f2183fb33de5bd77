r"""Vectorized word-shingle hashing and MinHash signatures (datasketch's `affine32` scheme).

A plain datasketch loop hashes every shingle with SHA-1 in Python and updates one MinHash at
a time. Here one document is hashed with a handful of numpy operations over its bytes:

1. words = `[^\W_]+` runs (Unicode letters/digits) of the casefolded text, found by one
   regex substitution and a byte scan;
2. word hash = polynomial hash of its bytes, from a prefix-sum (`cumsum`) over the document,
   made position-independent by multiplying with the inverse power (all mod 2^64);
3. shingle hash = polynomial combination of `k` consecutive word hashes, folded to 32 bits;
4. signature = datasketch's own permutations (`MinHash(num_perm, seed).permutations`) and
   MurmurHash3 pre-mix applied to all shingles at once, min over shingles.

The result equals `MinHash(num_perm, seed).update_batch(shingle_hashes)` with an identity
hash function (tests check this), so signatures interoperate with datasketch.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np
from datasketch import MinHash
from datasketch.minhash import _fmix

_M64 = (1 << 64) - 1
_P = 0x100000001B3  # FNV-64 prime (odd, so invertible mod 2^64)
_P_INV = pow(_P, -1, 1 << 64)
_Q = 0x9E3779B97F4A7C15  # combines word hashes into a shingle hash
_WORD_RE = re.compile(r"[^\W_]+")
_NON_WORD = re.compile(r"[\W_]+")
_ROWS_PER_CHUNK = 4_096


def normalized_text(text: str) -> str:
    """Text for exact dedup: casefolded words joined by single spaces (punctuation dropped)."""
    return " ".join(_WORD_RE.findall(text.casefold()))


def text_digest(text: str) -> bytes:
    """SHA-1 of the normalized text (exact-duplicate key)."""
    return hashlib.sha1(normalized_text(text).encode("utf-8")).digest()


@lru_cache(maxsize=4)
def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i mod 2^64 for i < n (cached; grown in powers of two)."""
    size = 1 << max(10, (n - 1).bit_length())
    pw = np.full(size, _P, dtype=np.uint64)
    pw[0] = 1
    inv = np.full(size, _P_INV, dtype=np.uint64)
    inv[0] = 1
    return np.cumprod(pw), np.cumprod(inv)


def word_hashes(text: str) -> np.ndarray:
    """64-bit hash per word of `text` (uint64 array, in order)."""
    # One C-speed regex pass turns every non-word character (punctuation, symbols, "_") into a
    # space, so words are exactly `[^\W_]+` (Unicode letters and digits) of the casefolded text.
    data = np.frombuffer(_NON_WORD.sub(" ", text.casefold()).encode("utf-8"), dtype=np.uint8)
    if data.size == 0:
        return np.empty(0, dtype=np.uint64)
    is_word = data != 32
    edges = np.diff(np.concatenate(([False], is_word, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return np.empty(0, dtype=np.uint64)
    pw, inv = _powers(data.size + 1)
    prefix = np.zeros(data.size + 1, dtype=np.uint64)
    np.cumsum(data.astype(np.uint64) * pw[: data.size], out=prefix[1:])
    raw = (prefix[ends] - prefix[starts]) * inv[starts]
    return _fmix(raw + (ends - starts).astype(np.uint64), 64)


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word k-grams (a text shorter than k words is one
    shingle)."""
    words = word_hashes(text)
    n = words.size
    if n == 0:
        return np.empty(0, dtype=np.uint32)
    k = min(k, n)
    acc = words[: n - k + 1].copy()
    q = np.uint64(1)
    for t in range(1, k):
        q = np.uint64((int(q) * _Q) & _M64)
        acc += words[t: n - k + 1 + t] * q
    acc = _fmix(acc, 64)
    return np.unique((acc >> np.uint64(32)).astype(np.uint32))


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a, b) for this num_perm and seed."""
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signature(shingles: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signature (uint32[num_perm]) of a set of 32-bit shingle hashes."""
    a, b = permutations(num_perm, seed)
    out = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
    if shingles.size == 0:
        return out
    mixed = _fmix(shingles.astype(np.uint32), 32)
    for lo in range(0, mixed.size, _ROWS_PER_CHUNK):  # bound the (shingles x perms) temporary
        chunk = mixed[lo: lo + _ROWS_PER_CHUNK, None] * a + b
        np.minimum(out, chunk.min(axis=0), out=out)
    return out


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: each band's `rows` signature values folded into one hash, so two
    documents share a bucket in band j iff (with overwhelming probability) their rows match."""
    n = signatures.shape[0]
    sig = signatures[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    acc = np.zeros((n, bands), dtype=np.uint64)
    for r in range(rows):
        acc = _fmix(acc * np.uint64(_Q) + sig[:, :, r] + np.uint64(r + 1), 64)
    return acc


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique shingle-hash arrays."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)
