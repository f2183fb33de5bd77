"""The data half of WikiGPT: dump → cleaned articles → deduplicated corpus → tokenizer → shards.

Each stage is a plain function plus a CLI (`python -m wikigpt_core.data.<stage> --help`):

| module | function | artifact |
|---|---|---|
| `dump` | `run_dump(DumpConfig, out, work)` | the dump file(s) |
| `clean` | `run_clean(CleanConfig, dump_dir, out, work)` | `articles.parquet` |
| `dedup` | `run_dedup(DedupConfig, cleaned_dir, out)` | `corpus.parquet` |
| `tokenizer_train` | `run_tokenizer(TokenizerConfig, corpus_dir, out)` | `tokenizer.json` |
| `shards` | `run_shards(ShardsConfig, corpus_dir, tokenizer_dir, out, work)` | `train.bin`, `val.bin`, `meta.json` |
"""
