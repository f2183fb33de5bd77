"""Throughput, scaling and memory of the data stages, against baselines run in the same process.

    python benchmarks/data_pipeline.py [--copies 34] [--workdir /tmp/wikigpt-bench] [--only clean,minhash]

1. Dumps: the real gensim enwiki sample's pages replicated under new ids, `--copies` rounds
   ("10x"; 34 = ~207 MB of XML) and a tenth of that ("1x"), written as multistream + index.
2. Extraction + cleaning on EQUAL WORK. `run_clean` filters pages (redirects, lists, stubs,
   disambiguation, too short, wrong language, leftover markup); the wikiextractor CLI keeps every
   non-redirect article. So both are given the same pages in: a dump holding only the pages our
   filters keep (found by cleaning the sample once, then replicated like the others). Both then
   put out the same pages; the script checks the page ids out are equal on both sides and
   prints them. Timed: `run_clean` with 1 worker and with every core, and `python -m
   wikiextractor.WikiExtractor --no-templates` with 1 process and with every core. "Per core" is
   MB of XML per CPU-second of the whole process tree (workers included), which stays meaningful
   on a shared machine. Goal: >= 1.5x wikiextractor per core.
3. MinHash at equal output: our vectorized `signature` against datasketch's own batch APIs,
   `MinHash.bulk` and per-document `MinHash.update_batch`, fed the same 32-bit shingle hashes
   (hashfunc=int), one core each. Every signature is checked bit-equal before any figure is
   printed; the faster of the two datasketch APIs is the baseline. Goal: >= 3x.
4. Scaling of cleaning and dedup from 1 worker to every core, with the core count, the load
   average and the CPU use of the run, which say what limits it on a small or shared machine.
5. Tokenizer training and shard writing on the cleaned articles; peak RSS of each stage (summed
   over its process tree, sampled every 50 ms) at 1x and 10x input.

Each measured stage run happens in a fresh child process (`--_stage`) that reports its own time,
CPU and peak RSS, so runs do not share caches or memory high-water marks. Figures and the
machine (CPU model, cores, load) are also written as JSON to --json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import machine_info, machine_line, tree_rss_mb, write_json  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "data_pipeline.json"
SECTIONS = ("clean", "minhash", "dedup", "tokenizer", "rss")


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
    main0 = _self_cpu()
    base_mb = _proc_status_mb("VmRSS")  # after imports (torch comes with the config module)
    sampler = _TreeRSS()
    t0 = time.perf_counter()
    if args._stage == "clean":
        cfg = dataclasses.replace(s.clean, workers=args.workers, part_pages=args.part_pages)
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
                      "main_cpu_s": _self_cpu() - main0,
                      "main_base_mb": base_mb, "main_growth_mb": round(main_hwm - base_mb, 1),
                      "worker_peak_mb": round(worker_mb, 1),
                      "stats": {k: v for k, v in r.stats.items() if not isinstance(v, (dict, list))}}))


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


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
        me = os.getpid()
        while not self._stop.wait(0.05):
            rss = tree_rss_mb(me)
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


def run_stage(stage: str, inp: Path, out: Path, workers: int = 0, tok: Path | None = None,
              part_pages: int = 40) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(Path(str(out) + "-work"), ignore_errors=True)
    cmd = [sys.executable, __file__, "--_stage", stage, "--inp", str(inp), "--out", str(out),
           "--workers", str(workers), "--part-pages", str(part_pages)] + (["--tok", str(tok)] if tok else [])
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
DUMP_NAME = "enwiki-20990101-pages-articles-multistream"


def _write_dump(d: Path, header: bytes, pages, pages_per_stream: int = 100) -> dict:
    xml, index = d / f"{DUMP_NAME}.xml.bz2", d / f"{DUMP_NAME}-index.txt.bz2"
    meta = d / "build.json"
    if not meta.exists():
        from wikigpt_core.data.builddump import write_multistream

        d.mkdir(parents=True, exist_ok=True)
        info = write_multistream(header, pages, xml, index, pages_per_stream=pages_per_stream, level=6)
        meta.write_text(json.dumps(info))
    return json.loads(meta.read_text()) | {"dir": d, "xml": xml}


def build_dumps(workdir: Path, copies: int) -> dict[str, dict]:
    """The 1x and 10x replicated dumps, plus the sample itself (one copy)."""
    from wikigpt_core.data.builddump import replicate, split_dump

    header, pages = split_dump()
    out = {"sample": _write_dump(workdir / "dump-sample", header, iter(pages))}
    for label, n in (("1x", max(1, copies // 10)), ("10x", copies)):
        out[label] = _write_dump(workdir / f"dump-{label}", header, replicate(pages, n))
    return out


def equal_work_dump(workdir: Path, sample: dict, copies: int) -> tuple[dict, set[int]]:
    """A dump of only the sample pages `run_clean` keeps, replicated `copies` times, and the
    ids it holds: the input on which both sides must put out every page."""
    import pyarrow.parquet as pq

    from wikigpt_core.data.builddump import page_id, replicate, split_dump

    kept_dir = workdir / "clean-sample"
    if not (kept_dir / "articles.parquet").exists():
        run_stage("clean", sample["dir"], kept_dir, workers=1)
    kept = set(pq.read_table(kept_dir / "articles.parquet", columns=["id"]).column("id").to_pylist())
    header, pages = split_dump()
    chosen = [p for p in pages if page_id(p) in kept]
    # Smaller streams than enwiki's 100 pages: the kept pages are few but long, and a real dump
    # has thousands of streams to spread over workers, which a small benchmark dump must mimic.
    d = _write_dump(workdir / f"dump-kept-x{copies}", header, replicate(chosen, copies), pages_per_stream=20)
    ids = {page_id(p) for p in replicate(chosen, copies)}
    return d, ids


# --------------------------------------------------------------------------- baselines
def wikiextractor_cli(xml: Path, out: Path, processes: int) -> dict:
    """Wall and CPU seconds (its whole process tree) of the wikiextractor command line, and the
    page ids it wrote."""
    shutil.rmtree(out, ignore_errors=True)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "wikiextractor.WikiExtractor", "--no-templates", "-q",
                    "--processes", str(processes), "-o", str(out), str(xml)],
                   check=True, capture_output=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    doc = re.compile(r'<doc id="(\d+)"')
    ids = [int(m) for f in sorted(out.rglob("wiki_*")) for m in doc.findall(f.read_text(errors="replace"))]
    return {"seconds": wall, "cpu_s": cpu, "ids": ids}


def minhash_comparison(articles: Path, max_chars: int = 3_000_000, repeats: int = 3) -> dict:
    """One core: our `signature` vs datasketch's MinHash.bulk and update_batch on the same
    shingle hashes, bit-equal output checked; best of `repeats` for every side."""
    import numpy as np
    import pyarrow.parquet as pq
    from datasketch import MinHash

    from wikigpt_core.data.minhash import shingle_hashes, signature

    texts, total = [], 0
    for t in pq.read_table(articles, columns=["text"]).column("text").to_pylist():
        texts.append(t)
        total += len(t.encode("utf-8"))
        if total >= max_chars:
            break
    t0 = time.perf_counter()
    shingles = [shingle_hashes(t, 5) for t in texts]
    shingle_s = time.perf_counter() - t0
    as_lists = [sh.tolist() for sh in shingles]  # datasketch iterates Python ints: prepared untimed

    def best(fn):
        times, out = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    def by_update_batch():
        res = []
        for lst in as_lists:
            m = MinHash(num_perm=128, seed=1, hashfunc=int)
            m.update_batch(lst)
            res.append(m)
        return res

    ours_s, ours = best(lambda: [signature(sh, 128, 1) for sh in shingles])
    bulk_s, bulk = best(lambda: MinHash.bulk(as_lists, num_perm=128, seed=1, hashfunc=int))
    ub_s, ub = best(by_update_batch)
    for name, other in (("MinHash.bulk", bulk), ("update_batch", ub)):
        bad = [i for i, (a, m) in enumerate(zip(ours, other)) if not np.array_equal(a, m.hashvalues)]
        if bad:
            raise SystemExit(f"signatures differ from datasketch {name} on {len(bad)} of {len(texts)} documents")
    base_name, base_s = min((("MinHash.bulk", bulk_s), ("update_batch", ub_s)), key=lambda x: x[1])
    mb = total / 1e6
    return {"docs": len(texts), "text_mb": mb, "shingles": int(sum(sh.size for sh in shingles)),
            "bit_equal": True, "ours_s": ours_s, "bulk_s": bulk_s, "update_batch_s": ub_s,
            "baseline": base_name, "shingle_s": shingle_s,
            "ratio_signature": base_s / ours_s,
            "ratio_text_to_signature": (shingle_s + base_s) / (shingle_s + ours_s)}


def scaling_note(one: dict, many: dict, workers: int, load: float, tasks: int) -> str:
    """What limits the speed-up: the cores the run actually got, the share of serial work in
    the main process, and how many tasks there were to spread."""
    busy = many["stage_cpu_s"] / many["seconds"]  # cores kept busy on average
    serial = many["main_cpu_s"] / many["seconds"]
    parts = [f"CPU use {busy:.2f} of {workers} cores", f"main process (dispatch + merge) {100 * serial:.0f}% of the wall time",
             f"{tasks} tasks", f"load average {load:.1f} on {os.cpu_count()} cores"]
    if load > (os.cpu_count() or 1):
        parts.append("the machine is shared: other processes hold the cores the workers would use")
    if many["stage_cpu_s"] > 1.15 * one["stage_cpu_s"]:
        parts.append(f"{many['stage_cpu_s'] / one['stage_cpu_s']:.2f}x the CPU-seconds of 1 worker "
                     "(worker start-up, contention for memory bandwidth and shared caches)")
    return "; ".join(parts)


# --------------------------------------------------------------------------- report
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=34, help="sample replications for the 10x dump (34 ≈ 207 MB XML)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/wikigpt-bench"))
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections: {', '.join(SECTIONS)}")
    p.add_argument("--part-pages", type=int, default=40, help="pages per cleaning task (the stage's part_pages)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--_stage"), p.add_argument("--inp"), p.add_argument("--out"), p.add_argument("--tok")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    if args._stage:
        _child(args)
        return
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        raise SystemExit(f"--only: unknown section(s) {sorted(only - set(SECTIONS))}; choose from {SECTIONS}")

    from wikigpt_core.data.pool import resolve_workers

    cores = resolve_workers(0)
    machine = machine_info()
    fig: dict = {"cores": cores}
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    print(machine_line(machine))
    print(f"cores available to this process: {cores}")
    t0 = time.perf_counter()
    dumps = build_dumps(w, args.copies)
    big_full = dumps["10x"]
    eq, eq_ids = equal_work_dump(w, dumps["sample"], args.copies)
    for label, d in (("1x", dumps["1x"]), ("10x", dumps["10x"]), ("equal-work", eq)):
        print(f"dump {label}: {d['pages']} pages, {d['xml_bytes'] / 1e6:.1f} MB XML, {d['bz2_bytes'] / 1e6:.1f} MB bz2")
    print(f"(built in {time.perf_counter() - t0:.0f} s)\n")
    worker_counts = sorted({1, cores})
    pp = args.part_pages
    # Every cleaning process loads the language model; the first one on a machine unpacks it
    # into $WIKIGPT_HOME/_cache (~0.5 CPU-s more), later ones read the unpacked copy. Measure
    # the steady state: unpack it here, untimed, if no process has yet.
    from wikigpt_core.data.language import _identifier, model_cache_dir

    cold = not list(model_cache_dir().glob("model-*.npz"))
    _identifier()
    print(f"language model cache: {'unpacked now (was cold)' if cold else 'warm'} at {model_cache_dir()}")
    fig["language_model_cache"] = "cold, unpacked before timing" if cold else "warm"
    clean = {}
    src = w / f"clean-eq-w{cores}"

    if only & {"clean", "dedup", "tokenizer", "rss"}:
        xml_mb, pages = eq["xml_bytes"] / 1e6, eq["pages"]
        tasks = -(-pages // pp)
        print(f"== extraction + cleaning on equal work: {pages} pages in, every one kept by our filters ==")
        print("   per core = MB of XML per CPU-second of the process tree, workers included")
        for n in worker_counts:
            r = run_stage("clean", eq["dir"], w / f"clean-eq-w{n}", workers=n, part_pages=pp)
            r["load"] = os.getloadavg()[0]
            clean[n] = r
            print(f"  ours workers={n}: wall {r['seconds']:.1f} s  {xml_mb / r['seconds']:.2f} MB/s  {pages / r['seconds']:.0f} pages/s"
                  f" | per core {xml_mb / r['stage_cpu_s']:.2f} MB/s {pages / r['stage_cpu_s']:.0f} pages/s"
                  f" (incl. interpreter start-up {xml_mb / r['cpu_s']:.2f} MB/s)"
                  f" | tree peak RSS {r['rss_mb']} MB  rows out {r['stats']['rows']}", flush=True)
        import pyarrow.parquet as pq

        ours_ids = set(pq.read_table(src / "articles.parquet", columns=["id"]).column("id").to_pylist())
        wx = {}
        for n in worker_counts:
            r = wikiextractor_cli(eq["xml"], w / f"wx-eq-w{n}", n)
            wx[n] = r
            print(f"  wikiextractor --processes {n}: wall {r['seconds']:.1f} s  {xml_mb / r['seconds']:.2f} MB/s"
                  f"  {pages / r['seconds']:.0f} pages/s | per core {xml_mb / r['cpu_s']:.2f} MB/s"
                  f" {pages / r['cpu_s']:.0f} pages/s | pages out {len(r['ids'])}", flush=True)
        wx_ids = set(wx[cores]["ids"])
        same = ours_ids == wx_ids == eq_ids
        print(f"  pages in {len(eq_ids)}; out: ours {len(ours_ids)}, wikiextractor {len(wx_ids)};"
              f" same ids on both sides and equal to the input: {same}"
              + ("" if same else f" (only ours {len(ours_ids - wx_ids)}, only wikiextractor {len(wx_ids - ours_ids)})"))
        fig["clean"] = {"pages_in": len(eq_ids), "pages_out_ours": len(ours_ids), "pages_out_wikiextractor": len(wx_ids),
                        "same_pages_out": same, "xml_mb": xml_mb, "part_pages": pp, "tasks": tasks,
                        "ours": {n: {k: v for k, v in r.items() if k != "stats"} | {"rows": r["stats"]["rows"]}
                                 for n, r in clean.items()},
                        "wikiextractor": {n: {"seconds": r["seconds"], "cpu_s": r["cpu_s"], "pages_out": len(r["ids"])}
                                          for n, r in wx.items()},
                        "ratio_per_core": {n: wx[n]["cpu_s"] / clean[n]["stage_cpu_s"] for n in worker_counts},
                        "ratio_per_core_incl_startup": {n: wx[n]["cpu_s"] / clean[n]["cpu_s"] for n in worker_counts},
                        "ratio_wall": {n: wx[n]["seconds"] / clean[n]["seconds"] for n in worker_counts}}
        for n in worker_counts:
            print(f"  ours / wikiextractor at {n} process(es): per core {fig['clean']['ratio_per_core'][n]:.2f}x (goal >= 1.5x),"
                  f" counting our interpreter start-up too {fig['clean']['ratio_per_core_incl_startup'][n]:.2f}x,"
                  f" wall-clock {fig['clean']['ratio_wall'][n]:.2f}x")
        if cores > 1:
            sc = clean[1]["seconds"] / clean[cores]["seconds"]
            note = scaling_note(clean[1], clean[cores], cores, clean[cores]["load"], tasks)
            fig["clean"]["scaling"] = {"speedup": sc, "workers": cores, "limits": note}
            print(f"  scaling 1 -> {cores} workers: {sc:.2f}x (linear = {cores}x); {note}")
            wsc = wx[1]["seconds"] / wx[cores]["seconds"]
            print(f"  (wikiextractor 1 -> {cores} processes: {wsc:.2f}x)")
            fig["clean"]["wikiextractor_scaling"] = wsc

    if "minhash" in only:
        print("== MinHash signatures at equal output, one core ==")
        if not (src / "articles.parquet").exists():
            run_stage("clean", eq["dir"], src, workers=cores, part_pages=pp)
        mh = minhash_comparison(src / "articles.parquet")
        fig["minhash"] = mh
        print(f"  {mh['docs']} documents, {mh['text_mb']:.1f} MB, {mh['shingles']} shingles; signatures bit-equal: {mh['bit_equal']}")
        print(f"  ours {mh['text_mb'] / mh['ours_s']:.2f} MB/s  MinHash.bulk {mh['text_mb'] / mh['bulk_s']:.2f} MB/s"
              f"  update_batch {mh['text_mb'] / mh['update_batch_s']:.2f} MB/s (signature step only)")
        print(f"  ours / datasketch's best ({mh['baseline']}): {mh['ratio_signature']:.1f}x (goal >= 3x);"
              f" text -> signature with our shingling ({mh['text_mb'] / mh['shingle_s']:.2f} MB/s) on both sides:"
              f" {mh['ratio_text_to_signature']:.1f}x")

    dd = {}
    if only & {"dedup", "tokenizer", "rss"}:
        print("== dedup (run_dedup) on the equal-work cleaned articles ==")
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        text_mb_clean = sum(pc.sum(pc.binary_length(b.column(0))).as_py() or 0
                            for b in pq.ParquetFile(src / "articles.parquet").iter_batches(columns=["text"])) / 1e6
        for n in worker_counts:
            r = run_stage("dedup", src, w / f"dedup-eq-w{n}", workers=n)
            r["load"] = os.getloadavg()[0]
            dd[n] = r
            st = r["stats"]
            print(f"  workers={n}: {r['seconds']:.1f} s  {st['rows_in'] / r['seconds']:.0f} docs/s"
                  f"  {text_mb_clean / r['seconds']:.2f} MB/s  per core {text_mb_clean / r['stage_cpu_s']:.2f} MB/s"
                  f"  peak RSS {r['rss_mb']} MB  removed exact {st['exact_removed']} fuzzy {st['fuzzy_removed']}", flush=True)
        fig["dedup"] = {"text_mb": text_mb_clean, "runs": {n: {k: v for k, v in r.items() if k != "stats"} for n, r in dd.items()}}
        if cores > 1:
            sc = dd[1]["seconds"] / dd[cores]["seconds"]
            note = scaling_note(dd[1], dd[cores], cores, dd[cores]["load"], -(-dd[cores]["stats"]["rows_in"] // 100))
            fig["dedup"]["scaling"] = {"speedup": sc, "workers": cores, "limits": note}
            print(f"  scaling 1 -> {cores}: {sc:.2f}x; {note}")

    if "tokenizer" in only:
        print("== tokenizer + shards on the cleaned articles (duplicates kept, for volume) ==")
        corpus = w / "corpus-eq"
        corpus.mkdir(exist_ok=True)
        target = corpus / "corpus.parquet"
        if target.exists():
            target.unlink()
        os.link(src / "articles.parquet", target)
        (corpus / "manifest.json").write_text(json.dumps({"content_hash": "bench"}))
        text_mb = fig["dedup"]["text_mb"]
        tk = run_stage("tokenizer", corpus, w / "tok-eq")
        print(f"  tokenizer: {tk['seconds']:.1f} s  {text_mb / tk['seconds']:.2f} MB/s of text"
              f"  per core {text_mb / tk['stage_cpu_s']:.2f} MB/s  peak RSS {tk['rss_mb']} MB")
        sh = run_stage("shards", corpus, w / "shards-eq", tok=w / "tok-eq")
        toks = sh["stats"]["train_tokens"] + sh["stats"]["val_tokens"]
        print(f"  shards: {sh['seconds']:.1f} s  {text_mb / sh['seconds']:.2f} MB/s  {toks / sh['seconds'] / 1e6:.2f} M tokens/s"
              f"  per core {text_mb / sh['stage_cpu_s']:.2f} MB/s  peak RSS {sh['rss_mb']} MB")
        fig["tokenizer"] = {k: v for k, v in tk.items() if k != "stats"}
        fig["shards"] = {k: v for k, v in sh.items() if k != "stats"} | {"tokens": toks}

    if "rss" in only:
        print("== peak RSS, 1x vs 10x input (the replicated dumps, filters dropping pages as usual) ==")
        c1 = run_stage("clean", dumps["1x"]["dir"], w / "clean-1x", workers=cores, part_pages=pp)
        c10 = run_stage("clean", big_full["dir"], w / "clean-10x", workers=cores, part_pages=pp)
        d1 = run_stage("dedup", w / "clean-1x", w / "dedup-1x", workers=cores)
        d10 = run_stage("dedup", w / "clean-10x", w / "dedup-10x", workers=cores)

        def rss(label: str, one: dict, ten: dict) -> None:
            print(f"  {label}: peak RSS of the process tree 1x {one['rss_mb']} MB, 10x {ten['rss_mb']} MB"
                  f" (ratio {ten['rss_mb'] / one['rss_mb']:.2f});"
                  f" main process above its post-import baseline ({one['main_base_mb']} MB): 1x +{one['main_growth_mb']} MB,"
                  f" 10x +{ten['main_growth_mb']} MB; largest worker 1x {one['worker_peak_mb']} MB, 10x {ten['worker_peak_mb']} MB")

        rss(f"clean (workers={cores})", c1, c10)
        rss(f"dedup (workers={cores})", d1, d10)
        fig["rss_mb"] = {"clean": {"1x": c1["rss_mb"], "10x": c10["rss_mb"]}, "dedup": {"1x": d1["rss_mb"], "10x": d10["rss_mb"]}}
    fig["total_seconds"] = time.perf_counter() - t0
    print(f"\ntotal benchmark time {fig['total_seconds']:.0f} s")
    print(f"figures: {write_json(args.json, 'benchmarks/data_pipeline.py', machine, fig)}")


if __name__ == "__main__":
    main()
