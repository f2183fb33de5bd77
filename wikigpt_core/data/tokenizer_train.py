"""`tokenizer`: byte-level BPE trained with HF `tokenizers`, streaming from the corpus parquet.

- Vocabulary = `vocab_size` including the four specials, which take ids 0..3 in the order of
  `wikigpt_core.tokenizer.SPECIAL_TOKENS` (they are given to the trainer first). Ordinary text
  never produces them: `WikiTokenizer` encodes with `encode_special_tokens`.
- Training reads the parquet in record batches through a generator; the corpus is never one
  string. Documents in the held-out slice (id hash < `heldout_fraction`, same rule as the val
  shard) are not trained on; bytes per token is measured on them.
- With `max_train_chars` set, the trainer sees a deterministic sample of about that many
  characters, spread over the whole corpus: a document is in it iff a second hash of its id
  (independent of the held-out one) falls below max_train_chars / the corpus's training
  characters. HF's BPE trainer holds every word and pair count in memory, so its memory grows
  with the text it sees; the stage refuses to start when `estimate_memory_gb` of the sample
  exceeds `max_memory_gb`.
- Unicode normalization: none. Byte-level BPE is lossless on any input, so decode(encode(x))
  == x and the model sees exactly what users type. Wikipedia text is already stored in NFC by
  MediaWiki, so an NFC normalizer would change nothing on the corpus, while NFKC would fold
  meaning-bearing compatibility characters (x² → x2, ½ → 1/2, ﬁ → fi) and make encoding
  lossy at serving time.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from wikigpt_core.artifacts import ArtifactWriter, StageResult, read_manifest
from wikigpt_core.data.parquet_io import find_parquet, iter_batches
from wikigpt_core.data.splits import heldout_ids, id_scores, in_sorted
from wikigpt_core.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILE, WikiTokenizer

if TYPE_CHECKING:
    from wikigpt_core.config import TokenizerConfig

_EXAMPLES = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
    "E = mc² — naïve café in Zürich; 東京 is Tokyo.",
    "<|user|> typed as text stays ordinary tokens <|end|>",
)


_SAMPLE_SALT = np.int64(0x7A3C_51E9_0B2D_4F61)
"""Mixed into ids before scoring, so the training sample is independent of the held-out split."""
BASE_MEMORY_BYTES = 600e6
"""Peak RSS of the stage apart from the trainer's counts (measured: ~340 MB; rounded up)."""
MEMORY_BYTES_PER_CHAR = 4.0
"""Peak RSS per training character (`benchmarks/data_scale.py`: 3.1 bytes per character from
10 M to 82 M characters of the 124m tokenizer's training; rounded up). Linear in the sample,
so it over-estimates text whose vocabulary grows slower than its length, as real text does."""


def estimate_memory_gb(train_chars: int) -> float:
    """Estimated peak RSS (GB) of training on `train_chars` characters."""
    return (BASE_MEMORY_BYTES + MEMORY_BYTES_PER_CHAR * train_chars) / 1e9


def max_chars_within(memory_gb: float) -> int:
    """The largest training sample whose estimated memory fits `memory_gb`."""
    return max(0, int((memory_gb * 1e9 - BASE_MEMORY_BYTES) / MEMORY_BYTES_PER_CHAR))


def sample_scores(ids: np.ndarray) -> np.ndarray:
    """Uniform score in [0, 1) per id, independent of `splits.id_scores(ids)`."""
    return id_scores(np.asarray(ids, dtype=np.int64) ^ _SAMPLE_SALT)


def training_chars(path: Path, held: np.ndarray, batch_size: int = 10_000) -> int:
    """Characters of the documents the trainer may see (all but the held-out ones)."""
    import pyarrow.compute as pc

    total = 0
    for batch in iter_batches(path, batch_size=batch_size, columns=["id", "text"]):
        lengths = pc.utf8_length(batch.column(1)).to_numpy(zero_copy_only=False)
        total += int(lengths[~in_sorted(batch.column(0).to_numpy(), held)].sum())
    return total


def sample_fraction(corpus_chars: int, max_chars: int) -> float:
    """Share of training documents to keep so the sample holds about `max_chars` characters."""
    if not max_chars or corpus_chars <= max_chars:
        return 1.0
    return max_chars / corpus_chars


def corpus_texts(path: Path, heldout_fraction: float, heldout: bool, max_chars: int = 0,
                 batch_size: int = 1_000, keep_fraction: float = 1.0) -> Iterator[str]:
    """Stream texts of the train (heldout=False) or held-out (True) documents. Training
    documents are kept iff their sample score < `keep_fraction`; the stream stops after
    `max_chars` characters (0: no limit)."""
    seen = 0
    held = heldout_ids(path, heldout_fraction)
    for batch in iter_batches(path, batch_size=batch_size, columns=["id", "text"]):
        ids = batch.column(0).to_numpy()
        wanted = in_sorted(ids, held) if heldout else ~in_sorted(ids, held)
        if not heldout and keep_fraction < 1.0:
            wanted &= sample_scores(ids) < keep_fraction
        for text, want in zip(batch.column(1).to_pylist(), wanted.tolist()):
            if want:
                yield text
                seen += len(text)
                if max_chars and seen >= max_chars:
                    return


class TokenizerMemoryError(RuntimeError):
    """Training would need more memory than `tokenizer.max_memory_gb` allows."""


def check_memory(cfg: TokenizerConfig, train_chars: int) -> None:
    """Refuse to start when training on `train_chars` characters is estimated above the cap."""
    need = estimate_memory_gb(train_chars)
    if cfg.max_memory_gb and need > cfg.max_memory_gb:
        raise TokenizerMemoryError(
            f"training the tokenizer on {train_chars:,} characters needs about {need:.1f} GB "
            f"(~{MEMORY_BYTES_PER_CHAR:g} bytes per character), over tokenizer.max_memory_gb = "
            f"{cfg.max_memory_gb:g}; set tokenizer.max_train_chars to at most "
            f"{max_chars_within(cfg.max_memory_gb):,} (a smaller sample, spread over the corpus), "
            "or raise max_memory_gb on a machine with more memory")


def build_trainer(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def run_tokenizer(cfg: TokenizerConfig, corpus_dir: Path, out: Path) -> StageResult:
    """Train the tokenizer on `corpus_dir/corpus.parquet`, write `out/tokenizer.json`."""
    src = find_parquet(Path(corpus_dir), "corpus.parquet")
    if cfg.vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"tokenizer.vocab_size={cfg.vocab_size} is below 260 (256 bytes + 4 specials)")
    inputs = {"deduped_corpus": read_manifest(Path(corpus_dir)).get("content_hash", "")}
    with ArtifactWriter(out, stage="tokenizer", config=dataclasses.asdict(cfg), inputs=inputs) as w:
        corpus_chars = training_chars(src, heldout_ids(src, cfg.heldout_fraction))
        train_chars = min(corpus_chars, cfg.max_train_chars or corpus_chars)
        check_memory(cfg, train_chars)
        keep = sample_fraction(corpus_chars, cfg.max_train_chars)
        texts = corpus_texts(src, cfg.heldout_fraction, False, cfg.max_train_chars, keep_fraction=keep)
        seen = [0]
        tok, trainer = build_trainer(cfg)
        tok.train_from_iterator(_counted(texts, seen), trainer)
        path = w.dir / TOKENIZER_FILE
        tok.save(str(path))
        wt = WikiTokenizer.load(path)  # validates specials at ids 0..3
        if wt.vocab_size != cfg.vocab_size:
            raise ValueError(
                f"trained vocabulary has {wt.vocab_size} entries, configured {cfg.vocab_size}: "
                "the corpus is too small for this vocab_size (lower it or use a larger dump)")
        nbytes = ntokens = ndocs = 0
        for text in corpus_texts(src, cfg.heldout_fraction, True):
            nbytes += len(text.encode("utf-8"))
            ntokens += len(wt.encode(text))
            ndocs += 1
        w.stats.update({
            "vocab_size": wt.vocab_size,
            "specials": list(SPECIAL_TOKENS),
            "normalization": "none (byte-level, lossless)",
            "heldout_docs": ndocs,
            "corpus_chars": corpus_chars,
            "train_chars": seen[0],
            "train_sample_fraction": round(keep, 6),
            "estimated_memory_gb": round(estimate_memory_gb(train_chars), 2),
            "bytes_per_token": round(nbytes / ntokens, 4) if ntokens else None,
            "examples": [_example(wt, t) for t in _EXAMPLES],
        })
    return w.result


def _counted(texts: Iterator[str], seen: list[int]) -> Iterator[str]:
    """Pass texts through, adding their characters to seen[0]."""
    for t in texts:
        seen[0] += len(t)
        yield t


def _example(wt: WikiTokenizer, text: str) -> dict:
    ids = wt.encode(text)
    pieces = [wt.decode([i]) for i in ids]
    return {"text": text, "tokens": len(ids), "pieces": " | ".join(pieces),
            "round_trip": wt.decode(ids) == text}
