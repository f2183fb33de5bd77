"""The data stages' time, memory and disk against dump size, and what they project to at full scale.

    nice python benchmarks/data_scale.py [--copies 4,16,64] [--profile 124m] [--workdir /tmp/wikigpt-scale]

1. Dumps: the real sample's pages, `copies` rounds of them as a multistream dump + index; every
   round after the first gets fresh ids and titles and 30 % of its plain words swapped for
   other words of the same page (`builddump.perturbed_copies`), so the copies survive dedup
   while keeping real markup, length and language.
2. Every data stage (wiki_dump, cleaned_articles, deduped_corpus, tokenizer, token_shards) runs
   on each size through the stage CLI (`python -m wikigpt_core.run STAGE --spec FILE`) with the
   profile's settings, in a fresh process. Measured per run: wall time (and net of the CLI's
   start-up, timed alone), CPU seconds of the process tree, peak RSS of the stage process and
   of its largest worker (sampled from /proc every 50 ms: workers are spawned processes, whose
   ru_maxrss would carry the parent's high-water mark), output bytes and peak disk (output,
   scratch and half-written output together).
3. Fits, per stage, log-log least squares of net time and of peak RSS against size, and a
   linear fit of RSS against documents (the fixed bytes per document).
4. Tokenizer sample bound: trains on 1/4, 1/2 and all of the largest corpus and prints the
   held-out bytes per token and the peak RSS per training character.
5. Projection to the full English dump (22 GB bz2, 6.8 M articles, ~20 GB cleaned text) on a
   16-core, 64 GB machine: hours (Amdahl, with the serial share measured from the CPU use
   here), peak memory (main + one worker per core), disk per version.

Writes its figures and the machine as JSON to --json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import machine_info, machine_line, tree_rss_mb, write_json  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "data_scale.json"
DUMP_NAME = "enwiki-20990101-pages-articles-multistream"
STAGES = ("wiki_dump", "cleaned_articles", "deduped_corpus", "tokenizer", "token_shards")
INPUTS = {"cleaned_articles": ("wiki_dump",), "deduped_corpus": ("cleaned_articles",),
          "tokenizer": ("deduped_corpus",), "token_shards": ("deduped_corpus", "tokenizer")}
WORD_SHARE = 0.3
"""Share of a copy's plain words swapped: its cleaned text keeps a Jaccard well below dedup's."""

TASK_SETTINGS = "[clean]\npart_pages = 400\n\n[dedup]\nbatch_docs = 100\n"
"""Smaller tasks than the profile's, so even the smallest dump here spreads over worker
processes, as a full dump does: every size then has the same process layout. A worker's
memory is bounded by its task size, a setting, not by the corpus."""
SMALL_DOC_COUNTS = (25_000, 100_000)
"""Corpora of short synthetic documents that measure the fixed bytes per document of dedup
and shards: the sample dumps hold too few documents (~90 per copy) to see it above noise."""

FULL = {"bz2_bytes": 22e9, "articles": 6.8e6, "text_bytes": 20e9, "cores": 16, "memory_gb": 64}
"""The full English dump and the machine the projection assumes."""


# --------------------------------------------------------------------------- measuring
class TreeSampler:
    """Every 50 ms: RSS of one process and of each of its descendants, and bytes on disk under
    a folder (every 0.5 s). Keeps the peaks."""

    def __init__(self, pid: int, disk_root: Path) -> None:
        self.pid, self.disk_root = pid, disk_root
        self.main_mb = self.worker_mb = self.tree_mb = 0.0
        self.main_cpu_s = 0.0
        self.disk_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            rss = tree_rss_mb(self.pid)
            self.main_mb = max(self.main_mb, rss.get(self.pid, 0.0))
            self.worker_mb = max([self.worker_mb] + [v for p, v in rss.items() if p != self.pid])
            self.tree_mb = max(self.tree_mb, sum(rss.values()))
            self.main_cpu_s = max(self.main_cpu_s, _cpu_seconds(self.pid))
            tick += 1
            if tick % 10 == 0:
                self.disk_bytes = max(self.disk_bytes, tree_bytes(self.disk_root))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.disk_bytes = max(self.disk_bytes, tree_bytes(self.disk_root))


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process, threads included (not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["WIKIGPT_HOME"] = str(home)
    return env


def startup_seconds(env: dict[str, str]) -> float:
    """Wall time of the stage CLI's interpreter start and imports, without a stage (best of 3)."""
    code = "import wikigpt_core.run, wikigpt_core.config, wikigpt_core.artifacts"
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
    return min(times)


def run_stage(stage: str, run_dir: Path, inputs: dict[str, Path], env: dict[str, str], profile: str,
              config: Path | None = None, dump: Path | None = None) -> dict:
    """Write the stage's spec, run it through the stage CLI under the sampler, return figures."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out, work, spec = run_dir / "out", run_dir / "work", run_dir / "spec.json"
    cli = [sys.executable, "-m", "wikigpt_core.run", stage]
    write = cli + ["--write-spec", str(spec), "--profile", profile, "--out", str(out), "--work", str(work)]
    write += [f"--input={k}={v}" for k, v in inputs.items()]
    write += (["--config", str(config)] if config else []) + (["--dump", str(dump)] if dump else [])
    subprocess.run(write, env=env, check=True, cwd=REPO, capture_output=True)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cli + ["--spec", str(spec)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid, run_dir)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    sampler.stop()
    if proc.returncode:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": seconds, "cpu_s": _children_cpu() - cpu0, "main_cpu_s": sampler.main_cpu_s,
            "main_mb": round(sampler.main_mb, 1),
            "worker_mb": round(sampler.worker_mb, 1), "tree_mb": round(sampler.tree_mb, 1),
            "out_bytes": tree_bytes(out), "peak_disk_bytes": sampler.disk_bytes,
            "stats": {k: v for k, v in manifest.get("stats", {}).items() if isinstance(v, (int, float, str))},
            "out": out}


# --------------------------------------------------------------------------- building
def build_dump(workdir: Path, copies: int) -> dict:
    """A multistream dump of `copies` perturbed rounds of the sample (built once, then reused)."""
    from wikigpt_core.data.builddump import perturbed_copies, split_dump, write_multistream

    d = workdir / f"dump-x{copies}"
    meta = d / "build.json"
    if not meta.exists():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        header, pages = split_dump()
        info = write_multistream(header, perturbed_copies(pages, copies, share=WORD_SHARE),
                                 d / f"{DUMP_NAME}.xml.bz2", d / f"{DUMP_NAME}-index.txt.bz2",
                                 pages_per_stream=100, level=6)
        meta.write_text(json.dumps(info))
    return json.loads(meta.read_text()) | {"copies": copies, "xml": d / f"{DUMP_NAME}.xml.bz2"}


def run_size(workdir: Path, dump: dict, env: dict[str, str], profile: str, config: Path) -> dict[str, dict]:
    """Every data stage on one dump, each reading the previous stages' outputs."""
    runs: dict[str, dict] = {}
    base = workdir / f"runs-x{dump['copies']}"
    for stage in STAGES:
        inputs = {name: runs[name]["out"] for name in INPUTS.get(stage, ())}
        r = run_stage(stage, base / stage, inputs, env, profile, config=config,
                      dump=dump["xml"] if stage == "wiki_dump" else None)
        runs[stage] = r
        print(f"  x{dump['copies']:<4} {stage:<17} {r['seconds']:7.1f} s  cpu {r['cpu_s']:7.1f} s"
              f"  main {r['main_mb']:6.0f} MB  worker {r['worker_mb']:6.0f} MB"
              f"  out {r['out_bytes'] / 1e6:8.1f} MB  peak disk {r['peak_disk_bytes'] / 1e6:8.1f} MB", flush=True)
    return runs


def tokenizer_curve(workdir: Path, corpus: Path, text_chars: int, env: dict[str, str], profile: str) -> list[dict]:
    """Held-out bytes/token and peak RSS when training on 1/4, 1/2 and all of `corpus`."""
    points = []
    for share in (0.25, 0.5, 1.0):
        cfg = workdir / f"tokenizer-{share}.toml"
        cfg.write_text(f"[tokenizer]\nmax_train_chars = {0 if share == 1.0 else int(share * text_chars)}\n")
        r = run_stage("tokenizer", workdir / f"curve-{share}", {"deduped_corpus": corpus}, env, profile, config=cfg)
        point = {"share": share, "train_chars": r["stats"].get("train_chars"), "seconds": r["seconds"],
                 "main_mb": r["main_mb"], "bytes_per_token": r["stats"].get("bytes_per_token")}
        points.append(point)
        print(f"  trained on {share:4.2f} of the corpus ({point['train_chars']} chars): held-out"
              f" {point['bytes_per_token']} bytes/token, {r['seconds']:.1f} s, peak RSS {r['main_mb']:.0f} MB", flush=True)
    return points


def small_doc_corpus(workdir: Path, n_docs: int) -> Path:
    """A cleaned-articles folder of `n_docs` distinct ~40-word documents drawn from the
    sample's words (built once)."""
    import numpy as np
    import pyarrow.parquet as pq

    from wikigpt_core.data.builddump import split_dump
    from wikigpt_core.data.parquet_io import articles_table

    d = workdir / f"small-docs-{n_docs}"
    if (d / "articles.parquet").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    _, pages = split_dump()
    words = np.array(sorted({w for p in pages for w in p.split() if w.isalpha() and w.islower()}))
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(words), size=(n_docs, 40))
    rows = ((i + 1, f"Doc {i}", f"https://en.wikipedia.org/wiki/Doc_{i}", b" ".join(words[picks[i]]).decode())
            for i in range(n_docs))
    pq.write_table(articles_table(rows), d / "articles.parquet", compression="zstd", row_group_size=10_000)
    (d / "language.txt").write_text("en\n")
    return d


def per_document_memory(workdir: Path, tokenizer: Path, env: dict[str, str], profile: str, config: Path) -> dict:
    """Peak RSS of dedup and shards on the small-document corpora, and its slope per document."""
    out: dict[str, dict] = {"deduped_corpus": {}, "token_shards": {}}
    for n in SMALL_DOC_COUNTS:
        cleaned = small_doc_corpus(workdir, n)
        dd = run_stage("deduped_corpus", workdir / f"small-{n}" / "dedup", {"cleaned_articles": cleaned}, env, profile, config)
        sh = run_stage("token_shards", workdir / f"small-{n}" / "shards",
                       {"deduped_corpus": dd["out"], "tokenizer": tokenizer}, env, profile, config)
        for stage, r in (("deduped_corpus", dd), ("token_shards", sh)):
            out[stage][n] = {"main_mb": r["main_mb"], "worker_mb": r["worker_mb"], "seconds": r["seconds"]}
            print(f"  {stage:<15} {n:>8} documents: {r['seconds']:6.1f} s  main {r['main_mb']:6.0f} MB"
                  f"  worker {r['worker_mb']:6.0f} MB", flush=True)
    lo, hi = SMALL_DOC_COUNTS[0], SMALL_DOC_COUNTS[-1]
    for stage in out:
        slope = (out[stage][hi]["main_mb"] - out[stage][lo]["main_mb"]) * 2**20 / (hi - lo)
        out[stage]["bytes_per_doc"] = max(slope, 0.0)
        print(f"  {stage}: main process {slope:.0f} bytes per document")
    return out


# --------------------------------------------------------------------------- fitting
def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x: the exponent of y ~ x^k."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    return linear_fit(lx, ly)[0]


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


PROCESS_PARALLEL = ("cleaned_articles", "deduped_corpus")
"""Stages whose parallel work runs in worker processes: their serial share is the stage
process's own CPU. The tokenizer and shards run threads inside one process."""


def serial_share(stage: str, run: dict, cores: int) -> float:
    """Amdahl's serial share: the stage process's share of the CPU for process-parallel stages,
    else from the cores the run kept busy here (a shared machine makes that look more serial
    than it is, so the projection errs long)."""
    if stage in PROCESS_PARALLEL and run["cpu_s"] > 0:
        return min(1.0, run["main_cpu_s"] / run["cpu_s"])
    busy = min(max(run["cpu_s"] / run["seconds"], 1.0), cores)
    if cores <= 1:
        return 1.0
    return min(1.0, max(0.0, (cores / busy - 1) / (cores - 1)))


def stage_scale(stage: str, largest: dict, full_train_chars: float) -> float:
    """How much more input the full dump gives this stage than the largest run here."""
    if stage in ("wiki_dump", "cleaned_articles"):
        return FULL["bz2_bytes"] / largest["bz2_bytes"]
    if stage == "tokenizer":  # trains on a bounded sample: its work grows with the sample only
        return full_train_chars / max(1, largest["train_chars"])
    return FULL["text_bytes"] / largest["text_bytes"]


def project(stage: str, series: list[dict], sizes: list[dict], startup: float, cores_here: int,
            full_train_chars: float, bytes_per_doc: float) -> dict:
    """Full-dump hours on FULL['cores'], peak memory (main + a worker per core) and output bytes.
    Memory: the largest run's peak plus `bytes_per_doc` (measured on many small documents) for
    every article of the full dump; a worker's peak is its task's, as measured."""
    big, big_size = series[-1], sizes[-1]
    scale = stage_scale(stage, big_size, full_train_chars)
    cpu_full = max(big["cpu_s"] - startup, 0.1) * scale
    s = serial_share(stage, big, cores_here)
    hours = cpu_full * (s + (1 - s) / FULL["cores"]) / 3600
    main_full = big["main_mb"] + bytes_per_doc * FULL["articles"] / 2**20
    worker_full = max(r["worker_mb"] for r in series)
    if stage == "tokenizer":
        from wikigpt_core.data.tokenizer_train import estimate_memory_gb

        main_full = estimate_memory_gb(int(full_train_chars)) * 1e9 / 2**20
    out_scale = FULL["bz2_bytes"] / big_size["bz2_bytes"] if stage != "tokenizer" else 1.0
    return {"hours": hours, "serial_share": s, "main_mb": main_full, "worker_mb": worker_full,
            "peak_gb": (main_full + FULL["cores"] * worker_full) * 2**20 / 1e9,
            "main_bytes_per_doc": bytes_per_doc,
            "out_bytes": big["out_bytes"] * out_scale, "peak_disk_bytes": big["peak_disk_bytes"] * out_scale}


# --------------------------------------------------------------------------- report
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", default="4,16,64", help="three (or more) dump sizes, in sample copies")
    p.add_argument("--profile", default="124m", help="settings the stages run with (default 124m)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/wikigpt-scale"))
    p.add_argument("--no-curve", action="store_true", help="skip the tokenizer bytes/token curve")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args()
    copies = sorted(int(c) for c in args.copies.split(","))
    if len(copies) < 2:
        raise SystemExit("--copies: give at least two sizes to fit an exponent, e.g. 4,16,64")

    from wikigpt_core.config import load_settings
    from wikigpt_core.data.pool import resolve_workers

    settings = load_settings(args.profile, env=False)
    machine = machine_info()
    cores = resolve_workers(0)
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    env = child_env(w / "home")
    task_config = w / "tasks.toml"
    task_config.write_text(TASK_SETTINGS)
    print(machine_line(machine))
    startup = startup_seconds(env)
    print(f"profile {args.profile}; cores {cores}; stage CLI start-up alone {startup:.1f} s (subtracted from net times)")
    t0 = time.perf_counter()
    dumps = [build_dump(w, c) for c in copies]
    for d in dumps:
        print(f"dump x{d['copies']}: {d['pages']} pages, {d['xml_bytes'] / 1e6:.0f} MB XML, {d['bz2_bytes'] / 1e6:.1f} MB bz2")
    print(f"(dumps ready in {time.perf_counter() - t0:.0f} s)\n")

    runs: dict[int, dict[str, dict]] = {}
    sizes: list[dict] = []
    for d in dumps:
        runs[d["copies"]] = r = run_size(w, d, env, args.profile, task_config)
        sizes.append({"copies": d["copies"], "bz2_bytes": d["bz2_bytes"], "xml_bytes": d["xml_bytes"],
                      "docs": r["deduped_corpus"]["stats"].get("rows_in", 0),
                      "text_bytes": r["tokenizer"]["stats"].get("corpus_chars", 0) or r["deduped_corpus"]["out_bytes"],
                      "train_chars": r["tokenizer"]["stats"].get("train_chars", 0)})
    largest = runs[copies[-1]]
    dd = largest["deduped_corpus"]["stats"]
    print(f"\ndedup at x{copies[-1]}: {dd.get('rows_in')} in, exact removed {dd.get('exact_removed')},"
          f" fuzzy removed {dd.get('fuzzy_removed')}, candidate pairs {dd.get('candidate_pairs')}")

    curve = []
    if not args.no_curve:
        print("\n== tokenizer: held-out bytes/token against training sample (largest corpus) ==")
        curve = tokenizer_curve(w, largest["deduped_corpus"]["out"], sizes[-1]["text_bytes"], env, args.profile)

    print("\n== fixed memory per document: dedup and shards on many short documents ==")
    per_doc = per_document_memory(w, largest["tokenizer"]["out"], env, args.profile, task_config)

    full_train = min(settings.tokenizer.max_train_chars or FULL["text_bytes"], FULL["text_bytes"])
    fig: dict = {"profile": args.profile, "cores": cores, "startup_s": startup, "sizes": sizes,
                 "full_dump": FULL, "tokenizer_max_train_chars": settings.tokenizer.max_train_chars,
                 "stages": {}, "tokenizer_curve": curve,
                 "per_document_memory": {s: {str(k): v for k, v in d.items()} for s, d in per_doc.items()}}
    print(f"\n== per stage: exponent of net wall time, CPU time and peak RSS (main, worker) against size, x{copies[0]}..x{copies[-1]} ==")
    total = {"hours": 0.0, "disk": 0.0, "peak_gb": 0.0}
    for stage in STAGES:
        series = [runs[c][stage] for c in copies]
        xs = [float(c) for c in copies]
        net = [max(r["seconds"] - startup, 0.1) for r in series]
        k_time = loglog_slope(xs, net)
        # CPU seconds: the exponent a shared machine's load does not distort
        k_cpu = loglog_slope(xs, [max(r["cpu_s"] - startup, 0.1) for r in series])
        k_main = loglog_slope(xs, [r["main_mb"] for r in series])
        k_worker = loglog_slope(xs, [r["worker_mb"] for r in series]) if all(r["worker_mb"] for r in series) else None
        proj = project(stage, series, sizes, startup, cores, full_train,
                       per_doc.get(stage, {}).get("bytes_per_doc", 0.0))
        fig["stages"][stage] = {"runs": [{k: v for k, v in r.items() if k != "out"} | {"copies": c, "net_seconds": n}
                                         for r, c, n in zip(series, copies, net)],
                                "time_exponent": k_time, "cpu_exponent": k_cpu, "main_rss_exponent": k_main,
                                "worker_rss_exponent": k_worker, "projection": proj}
        wk = f"{k_worker:+.2f}" if k_worker is not None else "  -  "
        print(f"  {stage:<17} time^{k_time:.2f}  cpu^{k_cpu:.2f}  main RSS^{k_main:+.2f}  worker RSS^{wk}")
        total["hours"] += proj["hours"]
        total["disk"] += proj["out_bytes"]
        total["peak_gb"] = max(total["peak_gb"], proj["peak_gb"])

    print(f"\n== projection: full English dump ({FULL['bz2_bytes'] / 1e9:.0f} GB bz2, {FULL['articles'] / 1e6:.1f} M articles,"
          f" ~{FULL['text_bytes'] / 1e9:.0f} GB text) on {FULL['cores']} cores, {FULL['memory_gb']} GB ==")
    print(f"  tokenizer sample: {full_train / 1e9:.1f} G characters")
    for stage in STAGES:
        pr = fig["stages"][stage]["projection"]
        print(f"  {stage:<17} {pr['hours']:6.2f} h  peak memory {pr['peak_gb']:6.1f} GB"
              f" (main {pr['main_mb'] / 1024:.1f} GB + {FULL['cores']} x worker {pr['worker_mb'] / 1024:.2f} GB)"
              f"  output {pr['out_bytes'] / 1e9:6.1f} GB  peak disk {pr['peak_disk_bytes'] / 1e9:6.1f} GB"
              f"  (serial share {pr['serial_share']:.2f})")
    print(f"  all data stages: {total['hours']:.1f} h, peak memory {total['peak_gb']:.1f} GB,"
          f" {total['disk'] / 1e9:.0f} GB on disk per version (the dump included)")
    fig["total"] = total
    fig["total_seconds"] = time.perf_counter() - t0
    print(f"\nbenchmark time {fig['total_seconds']:.0f} s")
    print(f"figures: {write_json(args.json, 'benchmarks/data_scale.py', machine, fig)}")


if __name__ == "__main__":
    main()
