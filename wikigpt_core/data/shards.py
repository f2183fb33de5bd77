"""`token_shards`: the corpus tokenized into flat uint16 `train.bin` / `val.bin`.

- Each document is encoded (`encode_batch`, which runs on all cores inside `tokenizers`) and
  followed by the `<|endoftext|>` separator id.
- A document goes to val iff the hash of its id is below `val_fraction` (see `splits`), so no
  document is in both and the split is the same on every run.
- Work is cut into parts of `batch_docs` documents under `work/`; a killed run resumes from
  the finished parts. The final files are assembled with `np.memmap` writes, so memory holds
  one part at a time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wikigpt_core.artifacts import ArtifactWriter, StageResult, read_manifest
from wikigpt_core.data.parquet_io import find_parquet, iter_batches
from wikigpt_core.data.splits import heldout_ids, in_sorted
from wikigpt_core.tokenizer import DOC_SEP, WikiTokenizer

if TYPE_CHECKING:
    from wikigpt_core.config import ShardsConfig

DTYPE = np.uint16
SPLITS = ("train", "val")
_ENCODE_CHUNK = 64


def run_shards(cfg: ShardsConfig, corpus_dir: Path, tokenizer_dir: Path, out: Path, work: Path) -> StageResult:
    """Tokenize `corpus_dir/corpus.parquet` with the tokenizer in `tokenizer_dir`."""
    src = find_parquet(Path(corpus_dir), "corpus.parquet")
    tok = WikiTokenizer.load(tokenizer_dir)
    if tok.vocab_size > np.iinfo(DTYPE).max + 1:
        raise ValueError(f"vocab_size {tok.vocab_size} does not fit uint16 shards (<= 65,536)")
    sep = tok.backend.token_to_id(DOC_SEP)
    inputs = {
        "deduped_corpus": read_manifest(Path(corpus_dir)).get("content_hash", ""),
        "tokenizer": read_manifest(Path(tokenizer_dir)).get("content_hash", ""),
    }
    key = hashlib.sha256(json.dumps([inputs, dataclasses.asdict(cfg)], sort_keys=True).encode()).hexdigest()[:16]
    parts_dir = Path(work) / f"parts-{key}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    with ArtifactWriter(out, stage="token_shards", config=dataclasses.asdict(cfg), inputs=inputs) as w:
        val_ids = heldout_ids(src, cfg.val_fraction)
        part_stats = []
        for k, batch in enumerate(iter_batches(src, batch_size=cfg.batch_docs, columns=["id", "text"])):
            if _finished(parts_dir, k):
                part_stats.append(json.loads(_marker(parts_dir, k).read_text()) | {"reused": True})
                continue
            part_stats.append(_encode_part(tok, sep, batch, val_ids, parts_dir, k))
        totals = {s: sum(p[f"{s}_tokens"] for p in part_stats) for s in SPLITS}
        for split in SPLITS:
            _assemble(parts_dir, len(part_stats), split, totals[split], w.dir / f"{split}.bin")
        docs = {s: sum(p[f"{s}_docs"] for p in part_stats) for s in SPLITS}
        meta = {"vocab_size": tok.vocab_size, "dtype": "uint16", "train_tokens": totals["train"],
                "val_tokens": totals["val"], "separator_id": sep}
        (w.dir / "meta.json").write_text(json.dumps(meta, indent=2))
        w.stats.update({
            "train_tokens": totals["train"],
            "val_tokens": totals["val"],
            "val_fraction": cfg.val_fraction,
            "documents": docs["train"] + docs["val"],
            "train_documents": docs["train"],
            "val_documents": docs["val"],
            "parts": len(part_stats),
            "parts_reused": sum(1 for p in part_stats if p.get("reused")),
            "vocab_size": tok.vocab_size,
        })
    shutil.rmtree(parts_dir, ignore_errors=True)
    return w.result


def _marker(parts_dir: Path, k: int) -> Path:
    return parts_dir / f"part-{k:06d}.json"


def _part_file(parts_dir: Path, k: int, split: str) -> Path:
    return parts_dir / f"part-{k:06d}.{split}.u16"


def _finished(parts_dir: Path, k: int) -> bool:
    return _marker(parts_dir, k).exists()


def _encode_part(tok: WikiTokenizer, sep: int, batch, val_ids: np.ndarray, parts_dir: Path, k: int) -> dict[str, Any]:
    ids = batch.column(0).to_numpy()
    texts = batch.column(1).to_pylist()
    is_val = in_sorted(ids, val_ids).tolist()  # binary search: linear over the corpus
    sep_arr = np.array([sep], dtype=DTYPE)
    chunks: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    docs = {"train": 0, "val": 0}
    for lo in range(0, len(texts), _ENCODE_CHUNK):
        # encode_batch runs on all cores inside tokenizers; small chunks bound the memory of
        # the Encoding objects (ids, offsets, token strings) alive at once.
        for ids_list, v in zip(tok.encode_batch(texts[lo: lo + _ENCODE_CHUNK]), is_val[lo: lo + _ENCODE_CHUNK]):
            split = "val" if v else "train"
            chunks[split] += [np.asarray(ids_list, dtype=DTYPE), sep_arr]
            docs[split] += 1
    stats: dict[str, Any] = {"part": k}
    for split in SPLITS:
        arr = np.concatenate(chunks[split]) if chunks[split] else np.empty(0, dtype=DTYPE)
        path = _part_file(parts_dir, k, split)
        arr.tofile(path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        stats[f"{split}_tokens"] = int(arr.size)
        stats[f"{split}_docs"] = docs[split]
    tmp = _marker(parts_dir, k).with_suffix(".tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, _marker(parts_dir, k))
    return stats


def _assemble(parts_dir: Path, n_parts: int, split: str, total: int, dest: Path) -> None:
    """Copy the parts of one split into a single memmapped uint16 file."""
    if total == 0:
        dest.write_bytes(b"")
        return
    itemsize = np.dtype(DTYPE).itemsize
    with dest.open("wb") as f:
        f.truncate(total * itemsize)
    pos = 0
    for k in range(n_parts):
        part = np.fromfile(_part_file(parts_dir, k, split), dtype=DTYPE)
        if part.size:
            # One memmap window per part: only that part's pages are ever mapped and dirty.
            mm = np.memmap(dest, dtype=DTYPE, mode="r+", offset=pos * itemsize, shape=(part.size,))
            mm[:] = part
            mm.flush()
            del mm
        pos += part.size
    if pos != total:
        raise RuntimeError(f"{dest}: assembled {pos} tokens, parts promised {total}")
