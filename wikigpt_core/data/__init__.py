"""The data half of WikiGPT: dump → cleaned articles → deduplicated corpus → tokenizer → shards.

Each stage is a plain function, declared in `wikigpt_core/stages.py` and run from the command
line by `python -m wikigpt_core.run STAGE --spec FILE`:

| module | function | artifact |
|---|---|---|
| `dump` | `run_dump(DumpConfig, out, work)`, `observe_dump(DumpConfig)` | the dump file(s) |
| `clean` | `run_clean(CleanConfig, dump_dir, out, work)` | `articles.parquet`, `language.txt` |
| `dedup` | `run_dedup(DedupConfig, cleaned_dir, out)` | `corpus.parquet` |
| `tokenizer_train` | `run_tokenizer(TokenizerConfig, corpus_dir, out)` | `tokenizer.json` |
| `shards` | `run_shards(ShardsConfig, corpus_dir, tokenizer_dir, out, work)` | `train.bin`, `val.bin`, `meta.json` |

Helpers: `dumpsite` (which dumps the dump site has finished, `<wiki>/latest`, a dump's identity),
`language` (the target language and the py3langid filter), `xmlpages` (pages, encodings, siteinfo).

Properties every stage keeps:
- Streaming: dumps are read stream by stream, parquet batch by batch; row groups are bounded
  by rows and bytes (`parquet_io`). What does grow with the corpus is small per-document state
  (dedup keeps ~40 bytes per document: id, SHA-1, one band column at a time; shards keep the
  held-out ids).
- Resume: `clean` and `shards` cut their work into parts under `work/`; a part is finished
  when its `.json` marker exists; a rerun after a kill reuses finished parts and produces the
  same bytes. `dump` resumes a partial download from its `.part` file.
- Bad input raises a `wikigpt_core.data.errors.DumpError` subclass naming the file and the
  problem; nothing is published (`ArtifactWriter` removes its temp dir).
- Worker processes are spawned and import only these modules (never torch/config).
"""
