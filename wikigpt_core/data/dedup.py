"""`deduped_corpus`: exact SHA-1 dedup on normalized text, then MinHash-LSH near-dup removal.

1. Hash pass (parallel, one task per `batch_docs` rows): per document the SHA-1 of its
   normalized text and its MinHash signature over word `shingle_size`-grams
   (`wikigpt_core.data.minhash`, datasketch's affine32 scheme, vectorized); signatures are
   folded into LSH band hashes and kept on disk, not in memory.
2. Exact: documents with the same SHA-1 collapse onto the lowest id.
3. LSH: bands x rows come from datasketch's `MinHashLSH(lsh_threshold, num_perm)` parameter
   optimizer. Buckets are found per band by sorting one band column at a time (8 bytes per
   document in memory; datasketch's in-memory index keeps a Python dict entry and set per
   band per document, ~100x that, which does not fit a full dump). The buckets are the ones
   datasketch's `MinHashLSH` finds for the same signatures and (bands, rows) — a test checks
   this pair for pair. Every candidate pair is confirmed by the exact Jaccard of the two
   shingle sets >= `threshold`, so no pair below the threshold is ever merged. The shingles
   of the candidate documents are spilled to a file on disk and read back through a memmap.

Memory of the main process is flat in the corpus apart from fixed arrays per document (ids,
SHA-1 digests, one band column and its sort order: ~90 bytes at their peak, in `_exact`),
16 bytes per candidate pair and per candidate document; no Python object is kept per document.
4. Confirmed pairs are joined into clusters (union-find); the lowest id of each cluster
   survives, so the result does not depend on order or worker count.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasketch import MinHashLSH

from wikigpt_core.artifacts import ArtifactWriter, StageResult, manifest_hash
from wikigpt_core.data.language import artifact_language, write_language
from wikigpt_core.data.minhash import band_hashes, document_hashes, jaccard, shingle_hashes, signature
from wikigpt_core.data.parquet_io import RowGroupWriter, find_parquet, iter_batches
from wikigpt_core.data.pool import bounded_map, resolve_workers
from wikigpt_core.data.splits import in_sorted

if TYPE_CHECKING:
    from wikigpt_core.config import DedupConfig

CORPUS = "corpus.parquet"
_MAX_BUCKET_PAIRS = 32  # larger buckets are linked as a star around their lowest id
_CONFIRM_CHUNK = 100_000  # candidate pairs turned into Python ints at a time
_EXAMPLE_PAIRS = 5  # merged pairs kept, with titles, in the stats


def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows) that datasketch's optimizer picks for lsh_threshold and num_perm."""
    lsh = MinHashLSH(threshold=cfg.lsh_threshold, num_perm=cfg.num_perm)
    return lsh.b, lsh.r


def hash_slice(path: str, row_group: int, lo: int, hi: int, step: int, tmp: str, k: int,
               num_perm: int, seed: int, bands: int, rows: int) -> dict[str, Any]:
    """Worker: digests + LSH band hashes of rows [lo, hi) of one row group, saved as .npy."""
    table = _read_slice(path, row_group, lo, hi, step)
    ids = table.column("id").to_numpy()
    texts = table.column("text").to_pylist()
    hashed = [document_hashes(t, k) for t in texts]  # digest and shingles from one pass per text
    digests = np.frombuffer(b"".join(d for d, _ in hashed), dtype="S20")
    sigs = np.stack([signature(sh, num_perm, seed) for _, sh in hashed]) if texts \
        else np.empty((0, num_perm), dtype=np.uint32)
    stem = Path(tmp) / _stem(row_group, lo)
    np.save(f"{stem}.ids.npy", ids)
    np.save(f"{stem}.sha1.npy", digests)
    np.save(f"{stem}.bands.npy", band_hashes(sigs, bands, rows))
    return {"row_group": row_group, "docs": len(texts), "chars": sum(map(len, texts))}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the lower id becomes the root, so roots are survivors
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo


def run_dedup(cfg: DedupConfig, cleaned_dir: Path, out: Path) -> StageResult:
    """Deduplicate `cleaned_dir/articles.parquet` into `out/corpus.parquet`."""
    src = find_parquet(Path(cleaned_dir), "articles.parquet")
    bands, rows = lsh_params(cfg)
    workers = resolve_workers(cfg.workers)
    slices = _slices(src, cfg.batch_docs)
    inputs = {"cleaned_articles": _version(Path(cleaned_dir))}
    with ArtifactWriter(out, stage="deduped_corpus", config=dataclasses.asdict(cfg), inputs=inputs) as w, \
            tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".dedup-") as tmp:
        args = [(str(src), g, lo, hi, cfg.batch_docs, tmp, cfg.shingle_size, cfg.num_perm, cfg.seed, bands, rows)
                for g, lo, hi in slices]
        for _ in bounded_map(hash_slice, args, workers):
            pass
        ids, digests, band_files = _load_hash_pass(Path(tmp), slices)
        exact_removed, exact_pairs = _exact(ids, digests)
        alive = ~in_sorted(ids, exact_removed)
        del digests
        candidates = _lsh_candidates(ids, alive, band_files, bands)
        fuzzy_removed, fuzzy_pairs, checked = _confirm(src, candidates, cfg, Path(tmp))
        removed = np.union1d(exact_removed, fuzzy_removed)
        kept = _write_corpus(src, w.dir / CORPUS, removed)
        language = artifact_language(Path(cleaned_dir))
        write_language(w.dir, language)  # later stages read the corpus language from here
        n = len(ids)
        w.stats.update({
            "language": language,
            "rows_in": n,
            "rows": kept,
            "exact_removed": len(exact_removed),
            "fuzzy_removed": len(fuzzy_removed),
            "dedup_fraction": round((n - kept) / max(1, n), 6),
            "lsh_bands": bands,
            "lsh_rows": rows,
            "candidate_pairs": checked,
            "workers": workers,
            "example_pairs": _titles(src, exact_pairs[:3] + fuzzy_pairs[:5]),
        })
    return w.result


def _read_slice(path: str, row_group: int, lo: int, hi: int, step: int) -> pa.Table:
    """Rows [lo, hi) of a row group (lo a multiple of step), streaming through the row group
    in batches of `step` rows so memory holds one batch, not the whole row group."""
    for k, batch in enumerate(pq.ParquetFile(path).iter_batches(
            batch_size=step, row_groups=[row_group], columns=["id", "text"])):
        if k * step == lo:
            return pa.Table.from_batches([batch]).slice(0, hi - lo)
    raise ValueError(f"{path}: row group {row_group} has no rows {lo}..{hi}")


def _stem(row_group: int, lo: int) -> str:
    return f"rg-{row_group:06d}-{lo:09d}"


def _slices(src: Path, batch_docs: int) -> list[tuple[int, int, int]]:
    """(row group, lo, hi) tasks of at most batch_docs rows: parallelism does not depend on
    how large the input's row groups are."""
    meta = pq.ParquetFile(src).metadata
    return [(g, lo, min(lo + batch_docs, meta.row_group(g).num_rows))
            for g in range(meta.num_row_groups) for lo in range(0, meta.row_group(g).num_rows, batch_docs)]


def _load_hash_pass(tmp: Path, slices: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    stems = [_stem(g, lo) for g, lo, _ in slices]
    ids = [np.load(tmp / f"{s}.ids.npy") for s in stems]
    digests = [np.load(tmp / f"{s}.sha1.npy") for s in stems]
    band_files = [tmp / f"{s}.bands.npy" for s in stems]
    if not ids:
        return np.empty(0, np.int64), np.empty(0, "S20"), band_files
    return np.concatenate(ids), np.concatenate(digests), band_files


def _exact(ids: np.ndarray, digests: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """Sorted ids whose normalized text equals that of a lower id."""
    order = np.lexsort((ids, digests))  # by digest, then id
    d, i = digests[order], ids[order]
    same = np.concatenate(([False], d[1:] == d[:-1]))
    removed = np.unique(i[same])
    run_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(i))))  # first row of each run
    pairs = [{"kept": int(i[run_start[k]]), "removed": int(i[k]), "method": "exact", "jaccard": 1.0}
             for k in np.flatnonzero(same)[:5]]
    return removed, pairs


def _lsh_candidates(ids: np.ndarray, alive: np.ndarray, band_files: list[Path], bands: int) -> np.ndarray:
    """(low id, high id) pairs sharing a bucket in any band, one band column at a time: an
    (n, 2) int64 array, unique rows in sorted order."""
    live_ids = ids[alive]
    found = np.empty((0, 2), dtype=np.int64)
    for b in range(bands):
        col = _band_column(band_files, b)[alive]
        order = np.lexsort((live_ids, col))
        found = np.unique(np.concatenate([found, _bucket_pairs(col[order], live_ids[order])]), axis=0)
    return found


def _band_column(band_files: list[Path], band: int) -> np.ndarray:
    """One band's hashes for every document, in hash-pass order (8 bytes per document)."""
    if not band_files:
        return np.empty(0, dtype=np.uint64)
    return np.concatenate([np.load(f, mmap_mode="r")[:, band] for f in band_files])


def _bucket_pairs(hashes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pairs of ids with equal hashes, from arrays sorted by (hash, id): every pair of a bucket
    up to _MAX_BUCKET_PAIRS members, a star around the lowest id above it."""
    starts = np.flatnonzero(np.concatenate(([True], hashes[1:] != hashes[:-1])))
    sizes = np.diff(np.concatenate((starts, [len(hashes)])))
    out = [np.empty((0, 2), dtype=np.int64)]
    for s, m in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
        members = ids[s: s + m]
        if m <= _MAX_BUCKET_PAIRS:
            x, y = np.triu_indices(m, 1)
            out.append(np.stack([members[x], members[y]], axis=1))
        else:
            out.append(np.stack([np.full(m - 1, members[0]), members[1:]], axis=1))
    return np.concatenate(out)


class _ShingleSpill:
    """Shingle sets of the candidate documents in one flat file, read back through a memmap:
    memory holds 16 bytes per candidate document, not its shingles."""

    def __init__(self, path: Path, doc_ids: np.ndarray) -> None:
        self.path, self.doc_ids = path, doc_ids
        self.start = np.zeros(doc_ids.size, dtype=np.int64)
        self.size = np.zeros(doc_ids.size, dtype=np.int64)
        self._mm: np.ndarray | None = None

    def fill(self, src: Path, shingle_size: int) -> None:
        pos = 0
        with self.path.open("wb") as f:
            for batch in iter_batches(src, batch_size=1_000, columns=["id", "text"]):
                batch_ids = batch.column(0).to_numpy()
                hit = np.flatnonzero(in_sorted(batch_ids, self.doc_ids))
                if not hit.size:
                    continue
                for j, text in zip(hit.tolist(), batch.column(1).take(pa.array(hit)).to_pylist()):
                    sh = shingle_hashes(text, shingle_size)
                    k = np.searchsorted(self.doc_ids, batch_ids[j])
                    self.start[k], self.size[k] = pos, sh.size
                    f.write(sh.tobytes())
                    pos += sh.size
        self._mm = np.memmap(self.path, dtype=np.uint32, mode="r") if pos else np.empty(0, np.uint32)

    def get(self, doc_id: int) -> np.ndarray:
        k = np.searchsorted(self.doc_ids, doc_id)
        return self._mm[self.start[k]: self.start[k] + self.size[k]]


def _confirm(src: Path, candidates: np.ndarray, cfg: DedupConfig, tmp: Path) -> tuple[np.ndarray, list[dict], int]:
    """Exact shingle Jaccard for each candidate pair; union confirmed pairs; non-roots go
    (sorted ids)."""
    if not len(candidates):
        return np.empty(0, dtype=np.int64), [], 0
    spill = _ShingleSpill(tmp / "candidate-shingles.u32", np.unique(candidates))
    spill.fill(src, cfg.shingle_size)
    uf = _UnionFind()
    examples: list[dict] = []
    for lo in range(0, len(candidates), _CONFIRM_CHUNK):
        for a, b in candidates[lo: lo + _CONFIRM_CHUNK].tolist():
            j = jaccard(spill.get(a), spill.get(b))
            if j >= cfg.threshold:
                uf.union(a, b)
                if len(examples) < _EXAMPLE_PAIRS:
                    examples.append({"kept": a, "removed": b, "method": "minhash", "jaccard": round(j, 4)})
    removed = np.array(sorted(x for x in uf.parent if uf.find(x) != x), dtype=np.int64)
    return removed, examples, len(candidates)


def _write_corpus(src: Path, dest: Path, removed: np.ndarray) -> int:
    pf = pq.ParquetFile(src)
    group = pf.metadata.row_group(0).num_rows if pf.num_row_groups else 1
    drop = pa.array(removed, type=pa.int64())
    with RowGroupWriter(dest, group) as writer:  # same row-group bound as the input
        for batch in iter_batches(src, batch_size=500):
            keep = pc.invert(pc.is_in(batch.column(0), value_set=drop))
            writer.write(batch.filter(keep))
    return writer.rows


def _titles(src: Path, pairs: list[dict]) -> list[dict]:
    """Add titles to example pairs (one small scan)."""
    want = {p[k] for p in pairs for k in ("kept", "removed")}
    titles: dict[int, str] = {}
    if want:
        for batch in iter_batches(src, batch_size=5_000, columns=["id", "title"]):
            for i, t in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                if i in want:
                    titles[i] = t
    return [p | {"kept_title": titles.get(p["kept"]), "removed_title": titles.get(p["removed"])} for p in pairs]


def _version(directory: Path) -> str:
    return manifest_hash(directory) or ""
