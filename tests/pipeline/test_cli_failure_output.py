"""The quiet `wikigpt run` on a bad dump: one line naming the failed step and the user's file,
and where the full log (with the traceback) is; no traceback on the console."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from wikigpt_core.data.errors import LOCAL_FILE_HINT, REFETCH_HINT
from wikigpt_core.data.sources import sample_path


def test_a_failed_run_prints_one_line_per_failure_and_the_log_path(tmp_path):
    data = sample_path().read_bytes()
    bad = tmp_path / "mine" / "enwiki-truncated-pages-articles.xml.bz2"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) * 6 // 10])
    env = {**os.environ, "WIKIGPT_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "home" / "dagster"), "WIKIGPT_DUMP": str(bad)}
    done = subprocess.run([sys.executable, "-m", "wikigpt_pipeline.cli", "run"], env=env,
                          capture_output=True, text=True, timeout=600)
    console = done.stdout + done.stderr
    assert done.returncode == 1, console
    assert "Traceback" not in console, console
    (failure,) = [line for line in done.stdout.splitlines() if line.startswith("  FAILED ")]
    assert failure.strip().startswith(f"FAILED wiki_dump: wiki_dump: {bad}: truncated bz2"), failure
    assert REFETCH_HINT not in console and LOCAL_FILE_HINT in failure
    (log_line,) = [line for line in done.stdout.splitlines() if "full log: " in line]
    log = Path(log_line.split("full log: ", 1)[1].strip())
    text = log.read_text()
    assert "wikigpt_core/data/dump.py\", line" in text and str(bad) in text  # the whole traceback
