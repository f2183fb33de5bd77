"""Throughput, scaling and memory of the data stages, against baselines run in the same process.

    python benchmarks/data_pipeline.py [--copies 34] [--workdir /tmp/wikigpt-bench]

1. Builds a multistream dump (+ index) by replicating the real gensim enwiki sample's pages
   under new ids: `--copies` rounds (34 ≈ 207 MB of XML, "10x") and a tenth of that ("1x").
2. Extraction + cleaning (`run_clean`) with 1 worker and with every core: MB/s of XML and
   pages/s, overall and per process; the same input through the `wikiextractor` command line
   (`--no-templates`, 1 extract process and all), and the ratio between the two.
3. MinHash: the vectorized signature path (`wikigpt_core.data.minhash`) against a plain
   datasketch loop (`MinHash.update` per shingle), one core each; then `run_dedup` at 1 and
   all workers.
4. Tokenizer training and shard writing on the cleaned (not deduplicated) 10x articles.
5. Peak RSS of each stage run (summed over its process tree, sampled every 50 ms), at 1x and
   10x input, with the main process's growth above its post-import baseline and the largest
   worker.

Each measured run happens in a fresh child process (`--_stage`) that reports its own time
and peak RSS, so runs do not share caches or memory high-water marks. Goals (issue #4):
extraction+cleaning per core >= wikiextractor's, near-linear scaling, MinHash >= 5x the loop,
peak RSS flat between 1x and 10x.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- child mode
def _child(args: argparse.Namespace) -> None:
    """Run one stage in this process and print {"seconds", "rss_mb", "stats"}."""
    import dataclasses

    from wikigpt_core.config import load_settings
    from wikigpt_core.data.clean import run_clean
    from wikigpt_core.data.dedup import run_dedup
    from wikigpt_core.data.shards import run_shards
    from wikigpt_core.data.tokenizer_train import run_tokenizer

    s = load_settings("tiny")
    cpu0 = _self_and_children_cpu()
    base_mb = _proc_status_mb("VmRSS")  # after imports (torch comes with the config module)
    sampler = _TreeRSS()
    t0 = time.perf_counter()
    if args._stage == "clean":
        cfg = dataclasses.replace(s.clean, workers=args.workers, part_pages=500)
        r = run_clean(cfg, Path(args.inp), Path(args.out), Path(args.out + "-work"))
    elif args._stage == "dedup":
        # 100 documents per hashing task: even the 1x input spreads over workers, so the 1x and
        # 10x memory figures compare the same process layout.
        r = run_dedup(dataclasses.replace(s.dedup, workers=args.workers, batch_docs=100), Path(args.inp), Path(args.out))
    elif args._stage == "tokenizer":
        r = run_tokenizer(s.tokenizer, Path(args.inp), Path(args.out))
    elif args._stage == "shards":
        r = run_shards(s.shards, Path(args.inp), Path(args.tok), Path(args.out), Path(args.out + "-work"))
    else:
        raise SystemExit(f"unknown stage {args._stage}")
    seconds = time.perf_counter() - t0
    tree_mb, worker_mb = sampler.stop()
    main_hwm = _proc_status_mb("VmHWM")
    print(json.dumps({"seconds": seconds, "rss_mb": round(max(tree_mb, main_hwm), 1),
                      "stage_cpu_s": _self_and_children_cpu() - cpu0,
                      "main_base_mb": base_mb, "main_growth_mb": round(main_hwm - base_mb, 1),
                      "worker_peak_mb": round(worker_mb, 1),
                      "stats": {k: v for k, v in r.stats.items() if not isinstance(v, (dict, list))}}))


def _self_and_children_cpu() -> float:
    """CPU seconds of this process and its finished workers (the stage alone, without the
    interpreter and import start-up before it)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


class _TreeRSS:
    """Samples (every 50 ms) the summed RSS of this process and all its descendants, and the
    largest descendant. ru_maxrss cannot be used: Linux carries a parent's high-water mark
    into a forked-then-exec'd child, so every child would report at least its parent's peak."""

    def __init__(self) -> None:
        import threading

        self.tree_mb = self.worker_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        me = os.getpid()
        while not self._stop.wait(0.05):
            children: dict[int, list[int]] = {}
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
                except (OSError, IndexError, ValueError):
                    continue
            tree, todo = [], [me]
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo.extend(children.get(pid, []))
            rss = {}
            for pid in tree:
                try:
                    rss[pid] = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page_mb
                except (OSError, IndexError, ValueError):
                    pass
            self.tree_mb = max(self.tree_mb, sum(rss.values()))
            self.worker_mb = max([self.worker_mb] + [v for p, v in rss.items() if p != me])

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.tree_mb, self.worker_mb


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def run_stage(stage: str, inp: Path, out: Path, workers: int = 0, tok: Path | None = None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(Path(str(out) + "-work"), ignore_errors=True)
    cmd = [sys.executable, __file__, "--_stage", stage, "--inp", str(inp), "--out", str(out),
           "--workers", str(workers)] + (["--tok", str(tok)] if tok else [])
    cpu0 = _children_cpu()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode:
        raise SystemExit(f"{stage} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # CPU seconds of the whole process tree (includes the ~3 s interpreter/torch start-up of
    # the child, a constant that favours the baseline).
    out["cpu_s"] = _children_cpu() - cpu0
    return out


def _children_cpu() -> float:
    """user+sys CPU seconds of all finished descendants (workers included)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- building
def build_dumps(workdir: Path, copies: int) -> dict[str, dict]:
    from wikigpt_core.data.builddump import replicate, split_dump, write_multistream

    header, pages = split_dump()
    out = {}
    for label, n in (("1x", max(1, copies // 10)), ("10x", copies)):
        d = workdir / f"dump-{label}"
        name = "enwiki-20990101-pages-articles-multistream"
        xml, index = d / f"{name}.xml.bz2", d / f"{name}-index.txt.bz2"
        meta = d / "build.json"
        if not meta.exists():
            d.mkdir(parents=True, exist_ok=True)
            info = write_multistream(header, replicate(pages, n), xml, index, pages_per_stream=100, level=6)
            meta.write_text(json.dumps(info))
        out[label] = json.loads(meta.read_text()) | {"dir": d, "xml": xml}
    return out


# --------------------------------------------------------------------------- baselines
def wikiextractor_cli(xml: Path, out: Path, processes: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of its process tree) for the wikiextractor command line."""
    shutil.rmtree(out, ignore_errors=True)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "wikiextractor.WikiExtractor", "--no-templates", "-q",
                    "--processes", str(processes), "-o", str(out), str(xml)],
                   check=True, capture_output=True)
    return time.perf_counter() - t0, _children_cpu() - cpu0


def minhash_comparison(articles: Path, max_chars: int = 3_000_000) -> dict:
    """Single core: vectorized signatures vs datasketch's per-shingle MinHash.update loop."""
    import re

    import pyarrow.parquet as pq
    from datasketch import MinHash

    from wikigpt_core.data.minhash import shingle_hashes, signature

    texts, total = [], 0
    for t in pq.read_table(articles, columns=["text"]).column("text").to_pylist():
        texts.append(t)
        total += len(t)
        if total >= max_chars:
            break
    word = re.compile(r"[^\W_]+")
    t0 = time.perf_counter()
    for t in texts:
        signature(shingle_hashes(t, 5), 128, 1)
    vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in texts:
        m = MinHash(num_perm=128, seed=1)
        w = word.findall(t.casefold())
        for i in range(max(1, len(w) - 4)):
            m.update(" ".join(w[i:i + 5]).encode("utf-8"))
    loop = time.perf_counter() - t0
    mb = total / 1e6
    return {"mb": mb, "vectorized_mb_s": mb / vec, "loop_mb_s": mb / loop, "ratio": loop / vec}


# --------------------------------------------------------------------------- report
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=34, help="sample replications for the 10x dump (34 ≈ 207 MB XML)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/wikigpt-bench"))
    p.add_argument("--_stage"), p.add_argument("--inp"), p.add_argument("--out"), p.add_argument("--tok")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    if args._stage:
        _child(args)
        return

    from wikigpt_core.data.pool import resolve_workers

    cores = resolve_workers(0)
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    print(f"cores available: {cores}; load average now: {os.getloadavg()}")
    t0 = time.perf_counter()
    dumps = build_dumps(w, args.copies)
    for label, d in dumps.items():
        print(f"dump {label}: {d['pages']} pages, {d['xml_bytes'] / 1e6:.1f} MB XML, {d['bz2_bytes'] / 1e6:.1f} MB bz2")
    print(f"(built in {time.perf_counter() - t0:.0f} s)\n")
    big = dumps["10x"]
    xml_mb, pages = big["xml_bytes"] / 1e6, big["pages"]

    print("== extraction + cleaning (run_clean, multistream, parallel over streams) ==")
    print("   per core = MB of XML per CPU-second of the process tree, workers included (robust on a shared box)")
    worker_counts = sorted({1, cores})
    clean = {}
    for n in worker_counts:
        r = run_stage("clean", big["dir"], w / f"clean-10x-w{n}", workers=n)
        clean[n] = r
        print(f"  workers={n}: wall {r['seconds']:.1f} s  {xml_mb / r['seconds']:.2f} MB/s  {pages / r['seconds']:.0f} pages/s"
              f" | per process {xml_mb / r['seconds'] / n:.2f} MB/s {pages / r['seconds'] / n:.0f} pages/s"
              f" | per core {xml_mb / r['stage_cpu_s']:.2f} MB/s {pages / r['stage_cpu_s']:.0f} pages/s"
              f" (incl. start-up {xml_mb / r['cpu_s']:.2f} MB/s)"
              f" | tree peak RSS {r['rss_mb']} MB  rows {r['stats']['rows']}")
    if cores > 1:
        print(f"  scaling 1 -> {cores} workers: {clean[1]['seconds'] / clean[cores]['seconds']:.2f}x (linear = {cores}x)")
    print("== wikiextractor command line (--no-templates), same input ==")
    wx = {}
    for n in worker_counts:
        wall, cpu = wikiextractor_cli(big["xml"], w / f"wx-w{n}", n)
        wx[n] = (wall, cpu)
        print(f"  --processes {n}: wall {wall:.1f} s  {xml_mb / wall:.2f} MB/s  {pages / wall:.0f} pages/s"
              f" | per core {xml_mb / cpu:.2f} MB/s {pages / cpu:.0f} pages/s")
    for n in worker_counts:
        print(f"  ours / wikiextractor at {n} process(es): wall-clock {wx[n][0] / clean[n]['seconds']:.2f}x,"
              f" per core {wx[n][1] / clean[n]['stage_cpu_s']:.2f}x"
              f" (counting our interpreter start-up too: {wx[n][1] / clean[n]['cpu_s']:.2f}x)")

    print("== MinHash signatures, one core ==")
    mh = minhash_comparison(w / "clean-10x-w1" / "articles.parquet")
    print(f"  vectorized {mh['vectorized_mb_s']:.2f} MB/s vs MinHash.update loop {mh['loop_mb_s']:.2f} MB/s"
          f" on {mh['mb']:.1f} MB: {mh['ratio']:.1f}x (goal >= 5x)")
    print("== dedup (run_dedup) ==")
    dd = {}
    src = w / f"clean-10x-w{cores}"
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    text_mb_clean = sum(pc.sum(pc.binary_length(b.column(0))).as_py() or 0
                        for b in pq.ParquetFile(src / "articles.parquet").iter_batches(columns=["text"])) / 1e6
    for n in worker_counts:
        r = run_stage("dedup", src, w / f"dedup-10x-w{n}", workers=n)
        dd[n] = r
        st = r["stats"]
        print(f"  workers={n}: {r['seconds']:.1f} s  {st['rows_in'] / r['seconds']:.0f} docs/s"
              f"  {text_mb_clean / r['seconds']:.2f} MB/s  per core {text_mb_clean / r['stage_cpu_s']:.2f} MB/s"
              f"  peak RSS {r['rss_mb']} MB  removed exact {st['exact_removed']} fuzzy {st['fuzzy_removed']}")
    if cores > 1:
        print(f"  scaling 1 -> {cores}: {dd[1]['seconds'] / dd[cores]['seconds']:.2f}x")

    print("== tokenizer + shards on the cleaned 10x articles (duplicates kept, for volume) ==")
    corpus = w / "corpus-10x"
    corpus.mkdir(exist_ok=True)
    target = corpus / "corpus.parquet"
    if not target.exists():
        os.link(src / "articles.parquet", target)
    (corpus / "manifest.json").write_text(json.dumps({"content_hash": "bench"}))
    text_mb = text_mb_clean
    tk = run_stage("tokenizer", corpus, w / "tok-10x")
    print(f"  tokenizer: {tk['seconds']:.1f} s  {text_mb / tk['seconds']:.2f} MB/s of text"
          f"  per core {text_mb / tk['stage_cpu_s']:.2f} MB/s  peak RSS {tk['rss_mb']} MB")
    sh = run_stage("shards", corpus, w / "shards-10x", tok=w / "tok-10x")
    toks = sh["stats"]["train_tokens"] + sh["stats"]["val_tokens"]
    print(f"  shards: {sh['seconds']:.1f} s  {text_mb / sh['seconds']:.2f} MB/s  {toks / sh['seconds'] / 1e6:.2f} M tokens/s"
          f"  per core {text_mb / sh['stage_cpu_s']:.2f} MB/s"
          f"  peak RSS {sh['rss_mb']} MB")

    print("== peak RSS, 1x vs 10x input ==")
    small = dumps["1x"]
    c1 = run_stage("clean", small["dir"], w / "clean-1x", workers=cores)
    d1 = run_stage("dedup", w / "clean-1x", w / "dedup-1x", workers=cores)
    def rss(label: str, one: dict, ten: dict) -> None:
        print(f"  {label}: peak RSS of the process tree 1x {one['rss_mb']} MB, 10x {ten['rss_mb']} MB"
              f" (ratio {ten['rss_mb'] / one['rss_mb']:.2f});"
              f" main process above its post-import baseline ({one['main_base_mb']} MB): 1x +{one['main_growth_mb']} MB,"
              f" 10x +{ten['main_growth_mb']} MB; largest worker 1x {one['worker_peak_mb']} MB, 10x {ten['worker_peak_mb']} MB")

    rss(f"clean (workers={cores})", c1, clean[cores])
    rss(f"dedup (workers={cores})", d1, dd[cores])
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
