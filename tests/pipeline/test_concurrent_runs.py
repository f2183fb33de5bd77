"""Concurrent runs never collide: two runs of one version compute it once (the other waits and
is a cache hit), a dead run's lock is freed by the kernel, and a brand-new Dagster home opened by
several processes at once is created once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from wikigpt_core.integrity import verify_artifact
from wikigpt_core.version_lock import held_if_free, lock_path, version_lock

# One pipeline run of the two cheapest assets, in-process, on the instance in DAGSTER_HOME;
# prints {asset: cache_hit} as its last line.
PIPELINE_RUN = textwrap.dedent("""
    import json
    import dagster as dg
    from wikigpt_core.config import load_settings
    from wikigpt_pipeline.instance import get_instance
    from wikigpt_pipeline.jobs import PIPELINE_JOB
    from wikigpt_pipeline.project import build_definitions

    instance = get_instance()
    job = build_definitions(load_settings("tiny")).resolve_job_def(PIPELINE_JOB)
    keys = [dg.AssetKey("wiki_dump"), dg.AssetKey("cleaned_articles")]
    result = job.execute_in_process(instance=instance, asset_selection=keys)
    assert result.success
    hits = {e.asset_key.path[-1]: e.event_specific_data.materialization.metadata["cache_hit"].value
            for e in result.get_asset_materialization_events()}
    print(json.dumps(hits))
""")


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "WIKIGPT_HOME": str(tmp_path / "home"),
            "DAGSTER_HOME": str(tmp_path / "home" / "dagster")}


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_two_concurrent_stage_runs_of_one_version_compute_it_once(tmp_path):
    env = _env(tmp_path)
    spec = tmp_path / "dump.json"
    written = subprocess.run([sys.executable, "-m", "wikigpt_core.run", "wiki_dump", "--write-spec", str(spec)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert written.returncode == 0, written.stderr
    runs = [_start(["-m", "wikigpt_core.run", "wiki_dump", "--spec", str(spec)], env) for _ in range(2)]
    outs = [_finish(p) for p in runs]

    assert sum("cache hit" in out for out in outs) == 1  # exactly one computed
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    out_dir = Path(json.loads(spec.read_text())["out"])
    assert {r["content_hash"] for r in results} == {verify_artifact(out_dir, "wiki_dump")["content_hash"]}
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_two_concurrent_pipeline_runs_on_a_fresh_home_compute_each_version_once(tmp_path):
    """Both open a brand-new DAGSTER_HOME at once (its storage is created once) and materialize
    the same versions: each asset is computed by one run and a cache hit in the other."""
    env = _env(tmp_path)
    runs = [_start(["-c", PIPELINE_RUN], env) for _ in range(2)]
    hits = [json.loads(_finish(p).strip().splitlines()[-1]) for p in runs]
    for asset in ("wiki_dump", "cleaned_articles"):
        assert sorted(h[asset] for h in hits) == [False, True], hits
        (version,) = [p for p in (tmp_path / "home" / "tiny" / asset).iterdir() if p.name != "current"]
        verify_artifact(version, asset)


def test_a_fresh_dagster_home_opened_by_several_processes_at_once(tmp_path):
    env = _env(tmp_path)
    opener = "from wikigpt_pipeline.instance import get_instance; get_instance().get_runs(limit=1)"
    for p in [_start(["-c", opener], env) for _ in range(4)]:
        _finish(p)


def test_a_killed_runs_version_lock_is_released(tmp_path):
    work = tmp_path / "_work" / "asset" / "v1"
    holder = _start(["-c", textwrap.dedent(f"""
        import time
        from wikigpt_core.version_lock import version_lock
        with version_lock({str(work)!r}):
            print("held", flush=True)
            time.sleep(600)
    """)], dict(os.environ))
    assert holder.stdout.readline().strip() == "held"
    with held_if_free(lock_path(work)) as free:
        assert not free  # a live run holds it
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with held_if_free(lock_path(work)) as free:
        assert free  # the kernel dropped the dead process's lock


def test_a_waiting_run_says_so_then_reuses_the_version(tmp_path):
    env = _env(tmp_path)
    spec = tmp_path / "dump.json"
    assert subprocess.run([sys.executable, "-m", "wikigpt_core.run", "wiki_dump", "--write-spec", str(spec)],
                          env=env, capture_output=True, timeout=300).returncode == 0
    work = Path(json.loads(spec.read_text())["work"])
    with version_lock(work):  # as a run computing this version would
        waiting = _start(["-m", "wikigpt_core.run", "wiki_dump", "--spec", str(spec)], env)
        assert "waiting for it to finish this version" in waiting.stdout.readline()
    assert "cache hit" not in _finish(waiting)  # nothing was published meanwhile: it computed
