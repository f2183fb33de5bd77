"""Deterministic held-out split by document id: a document's fate depends on its id alone,
so it is in val (or in the tokenizer's held-out slice) on every run, with any worker count."""
from __future__ import annotations

import numpy as np

from wikigpt_core.data.minhash import _fmix

_SALT = np.uint64(0x5EED_0F_5A11D_DA7A)


def id_scores(ids: np.ndarray) -> np.ndarray:
    """Uniform pseudo-random score in [0, 1) per document id (a 64-bit mix of the id)."""
    h = _fmix(ids.astype(np.int64).view(np.uint64) ^ _SALT, 64)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def val_mask(ids: np.ndarray, fraction: float) -> np.ndarray:
    """True for documents in the held-out split. With fraction > 0 and at least two documents,
    at least one document is held out (the lowest score) so a small corpus still has val."""
    ids = np.asarray(ids)
    scores = id_scores(ids)
    mask = scores < fraction
    if fraction > 0 and ids.size >= 2 and not mask.any():
        mask[np.argmin(scores)] = True
    return mask


def in_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Membership of each value in a sorted id array by binary search: O(len(values) x
    log len(sorted_ids)), so testing batch after batch stays linear in the corpus (np.isin
    sorts both arrays on every call)."""
    if sorted_ids.size == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, values), sorted_ids.size - 1)
    return sorted_ids[pos] == values


def heldout_ids(path, fraction: float) -> np.ndarray:
    """Sorted ids of the held-out documents of a parquet file (reads only the id column)."""
    import pyarrow.parquet as pq

    ids = pq.read_table(path, columns=["id"]).column("id").to_numpy()
    return np.sort(ids[val_mask(ids, fraction)])
