r"""Vectorized word-shingle hashing and MinHash signatures (datasketch's `affine32` scheme).

A plain datasketch loop hashes every shingle with SHA-1 in Python and updates one MinHash at
a time. Here one document is hashed with a handful of numpy operations over its bytes:

1. words = `[^\W_]+` runs (Unicode letters/digits) of the casefolded text: one is-word flag per
   UTF-8 byte, from a 128-entry table for ASCII text, else from a per-code-point table (filled
   lazily, 256 code points at a time, by the `[\W_]` regex itself, so it is that regex exactly)
   spread over each character's bytes;
2. word hash = polynomial hash of its bytes, from a prefix-sum (`cumsum`) over the document,
   made position-independent by multiplying with the inverse power (all mod 2^64);
3. shingle hash = polynomial combination of `k` consecutive word hashes, folded to 32 bits;
4. signature = datasketch's own permutations (`MinHash(num_perm, seed).permutations`) and
   MurmurHash3 pre-mix applied to all shingles at once, min over shingles: one broadcast
   multiply, add and min per block of shingles (a contiguous row per permutation).

The result equals `MinHash(num_perm, seed).update_batch(shingle_hashes)` with an identity
hash function (tests check this), so signatures interoperate with datasketch. The exact-dedup
key (`text_digest`) comes from the same byte flags (`document_hashes` computes both at once).
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
_NON_WORD_CHAR = re.compile(r"[\W_]")
_BLOCK_ELEMENTS = 1 << 21  # uint32 cells of one (perms x shingles) block: 8 MiB
_SPACE = np.uint8(32)

# Is-word flag per code point, `[^\W_]` exactly; ASCII filled now, the rest 256 at a time.
_IS_WORD = np.zeros(0x110000, dtype=bool)
_BLOCK_DONE = np.zeros(0x110000 >> 8, dtype=bool)


def _fill_blocks(blocks: np.ndarray) -> None:
    for blk in blocks.tolist():
        lo = blk << 8
        chars = "".join(map(chr, range(max(lo, 1), lo + 256)))  # chr(0) is a non-word character
        marked = _NON_WORD_CHAR.sub("\0", chars).encode("utf-32-le", "surrogatepass")
        _IS_WORD[max(lo, 1): lo + 256] = np.frombuffer(marked, dtype=np.uint32) != 0
        _BLOCK_DONE[blk] = True


_fill_blocks(np.array([0]))
_ASCII_IS_WORD = _IS_WORD[:256].copy()
_ASCII_IS_WORD[128:] = False  # bytes >= 0x80 only occur in non-ASCII text, which is not read this way


def normalized_text(text: str) -> str:
    """Text for exact dedup: casefolded words joined by single spaces (punctuation dropped)."""
    return " ".join(_WORD_RE.findall(text.casefold()))


def text_digest(text: str) -> bytes:
    """SHA-1 of the normalized text (exact-duplicate key)."""
    data, is_word, starts, ends = _words(text)
    return _digest(data, is_word, starts, ends)


def document_hashes(text: str, k: int) -> tuple[bytes, np.ndarray]:
    """(`text_digest(text)`, `shingle_hashes(text, k)`) from one pass over the text."""
    data, is_word, starts, ends = _words(text)
    return _digest(data, is_word, starts, ends), _shingles(_word_hashes(data, starts, ends), k)


def _words(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """UTF-8 bytes of the casefolded text, their is-word flags and the [start, end) byte
    offsets of its words."""
    folded = text.casefold()
    # surrogatepass: a lone surrogate (a non-word character) encodes instead of raising
    data = np.frombuffer(folded.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if data.size == len(folded):  # ASCII: one byte per character
        is_word = _ASCII_IS_WORD[data]
    else:
        cps = np.frombuffer(folded.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        wide = cps[cps >= 0x80] >> 8
        todo = np.unique(wide[~_BLOCK_DONE[wide]])
        if todo.size:
            _fill_blocks(todo)
        # every byte of a character carries the character's flag
        width = 1 + (cps >= 0x80).view(np.uint8) + (cps >= 0x800).view(np.uint8) + (cps >= 0x10000).view(np.uint8)
        is_word = np.repeat(_IS_WORD[cps], width)
    flags = np.zeros(data.size + 2, dtype=bool)
    flags[1:-1] = is_word
    edges = np.flatnonzero(flags[1:] != flags[:-1])  # alternately a word's start and its end
    return data, is_word, edges[0::2], edges[1::2]


def _digest(data: np.ndarray, is_word: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bytes:
    """SHA-1 of the words joined by single spaces (`normalized_text`, encoded)."""
    if starts.size == 0:
        return hashlib.sha1(b"").digest()
    gaps = ends[:-1]  # the first byte after every word but the last becomes the one space
    keep = is_word.copy()
    keep[gaps] = True
    out = data.copy()
    out[gaps] = _SPACE
    return hashlib.sha1(out[keep].tobytes()).digest()


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
    data, _, starts, ends = _words(text)
    return _word_hashes(data, starts, ends)


def _word_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    # hash = sum of byte * P^(offset in the word) + word length, mixed: only the word's own
    # bytes count, wherever it stands and whatever separates it from its neighbours
    if starts.size == 0:
        return np.empty(0, dtype=np.uint64)
    pw, inv = _powers(data.size + 1)
    prefix = np.zeros(data.size + 1, dtype=np.uint64)
    np.multiply(data, pw[: data.size], out=prefix[1:])
    np.cumsum(prefix[1:], out=prefix[1:])
    raw = prefix[ends]
    raw -= prefix[starts]
    raw *= inv[starts]
    raw += (ends - starts).astype(np.uint64)
    return _fmix(raw, 64)


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word k-grams (a text shorter than k words is one
    shingle)."""
    return _shingles(word_hashes(text), k)


def _shingles(words: np.ndarray, k: int) -> np.ndarray:
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
    # Blocks of nearly equal size bound the (perms x shingles) temporary; each is contiguous,
    # one permutation per row, so the min runs along rows.
    blocks = -(-mixed.size * num_perm // _BLOCK_ELEMENTS)
    step = -(-mixed.size // blocks)
    a, b = a[:, None], b[:, None]
    for lo in range(0, mixed.size, step):
        cells = np.multiply(a, mixed[lo: lo + step])  # uint32: the wrap-around is the mod 2^32
        np.add(cells, b, out=cells)
        np.minimum(out, cells.min(axis=1), out=out)
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
