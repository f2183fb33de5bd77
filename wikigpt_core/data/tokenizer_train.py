"""`tokenizer`: byte-level BPE trained with HF `tokenizers`, streaming from the corpus parquet.

- Vocabulary = `vocab_size` including the four specials, which take ids 0..3 in the order of
  `wikigpt_core.tokenizer.SPECIAL_TOKENS` (they are given to the trainer first). Ordinary text
  never produces them: `WikiTokenizer` encodes with `encode_special_tokens`.
- Training reads the parquet in record batches through a generator; the corpus is never one
  string. Documents in the held-out slice (id hash < `heldout_fraction`, same rule as the val
  shard) are not trained on; bytes per token is measured on them.
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
from wikigpt_core.data.splits import heldout_ids
from wikigpt_core.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILE, WikiTokenizer

if TYPE_CHECKING:
    from wikigpt_core.config import TokenizerConfig

_EXAMPLES = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
    "E = mc² — naïve café in Zürich; 東京 is Tokyo.",
    "<|user|> typed as text stays ordinary tokens <|end|>",
)


def corpus_texts(path: Path, heldout_fraction: float, heldout: bool, max_chars: int = 0,
                 batch_size: int = 1_000) -> Iterator[str]:
    """Stream texts of the train (heldout=False) or held-out (True) documents."""
    seen = 0
    held = heldout_ids(path, heldout_fraction)
    for batch in iter_batches(path, batch_size=batch_size, columns=["id", "text"]):
        mask = np.isin(batch.column(0).to_numpy(), held)
        for text, is_held in zip(batch.column(1).to_pylist(), mask.tolist()):
            if is_held == heldout:
                yield text
                seen += len(text)
                if max_chars and seen >= max_chars:
                    return


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
        tok, trainer = build_trainer(cfg)
        tok.train_from_iterator(corpus_texts(src, cfg.heldout_fraction, False, cfg.max_train_chars), trainer)
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
            "bytes_per_token": round(nbytes / ntokens, 4) if ntokens else None,
            "examples": [_example(wt, t) for t in _EXAMPLES],
        })
    return w.result


def _example(wt: WikiTokenizer, text: str) -> dict:
    ids = wt.encode(text)
    pieces = [wt.decode([i]) for i in ids]
    return {"text": text, "tokens": len(ids), "pieces": " | ".join(pieces),
            "round_trip": wt.decode(ids) == text}
