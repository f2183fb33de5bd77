"""Shared fixtures. The expensive one, `materialized`, runs the whole graph once per session on
the tiny profile and the embedded sample, in a temp WIKIGPT_HOME with a temp Dagster instance.

Also the CI rule (see tests/needs.py): with CI=true, a test that would skip because a required
tool or test package is missing fails instead, whether it asked through `require_tool` /
`require_module`, the `requires_tool(...)` marker, or `pytest.importorskip` of a package in
REQUIRED_MODULES. `--require-passed MARKER:N` fails a run in which fewer than N tests carrying
MARKER passed (so a suite cannot go green by collecting nothing).

Dagster is imported only by the fixtures that need it: `pytest -m gpu` runs on a bare GPU
machine (torch and pytest, no dagster), see benchmarks/gpu_check.py."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.needs import REQUIRED_MODULES, in_ci, require_tool
from wikigpt_core.config import Settings, load_settings

if TYPE_CHECKING:
    import dagster as dg

_IMPORT_SKIP = re.compile(r"could not import '([\w.]+)'")


def pytest_addoption(parser):
    parser.addoption("--require-passed", action="append", default=[], metavar="MARKER:N",
                     help="fail the run unless at least N tests marked MARKER passed")


def pytest_configure(config):
    config._wikigpt_passed = {}  # marker -> passed count, for --require-passed
    for spec in config.getoption("--require-passed"):
        marker, sep, n = spec.rpartition(":")
        if not sep or not marker or not n.isdigit():
            raise pytest.UsageError(f"--require-passed wants MARKER:N, got {spec!r}")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("requires_tool"):
        for name in mark.args:
            require_tool(name)


def _skip_to_failure_in_ci(report) -> None:
    """An importorskip of a required package is a broken install in CI: report it failed."""
    if not (in_ci() and report.skipped):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    m = _IMPORT_SKIP.search(reason)
    if m and m.group(1).split(".")[0] in REQUIRED_MODULES:
        report.outcome = "failed"
        report.longrepr = f"CI=true and a required test package is missing: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    _skip_to_failure_in_ci(report)
    if report.when == "call" and report.passed:
        counts = item.config._wikigpt_passed
        for mark in {m.name for m in item.iter_markers()}:
            counts[mark] = counts.get(mark, 0) + 1


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_to_failure_in_ci(outcome.get_result())


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    for spec in config.getoption("--require-passed"):
        marker, _, n = spec.rpartition(":")
        passed = config._wikigpt_passed.get(marker, 0)
        if passed < int(n):
            config.get_terminal_writer().line(
                f"--require-passed {spec}: only {passed} test(s) marked {marker!r} passed", red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True, scope="session")
def _offline_env():
    # Tests never talk to W&B or the Hub; WIKIGPT_* from the caller's shell must not leak in.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("HF_HUB_OFFLINE", "1")
        for var in ("WIKIGPT_CONFIG", "WIKIGPT_DUMP", "HF_TOKEN", "HF_REPO_ID", "WANDB_API_KEY"):
            mp.delenv(var, raising=False)
        mp.setenv("WIKIGPT_PROFILE", "tiny")
        yield


@dataclass
class Materialized:
    home: Path
    instance: dg.DagsterInstance
    defs: dg.Definitions
    settings: Settings
    run_id: str
    stdout: str
    """What `wikigpt run` printed."""

    def artifact(self, asset: str) -> Path:
        """The asset's current version (the directory its latest materialization wrote)."""
        return (self.home / self.settings.profile / asset / "current").resolve()

    def events(self, event_type: dg.DagsterEventType) -> list:
        return [e.dagster_event for e in self.instance.all_logs(self.run_id, of_type=event_type)]


@pytest.fixture(scope="session")
def materialized(tmp_path_factory) -> Materialized:
    """The README's first command, `wikigpt run`, as a real subprocess on the embedded default
    (the tiny profile and the enwiki sample), into a temp WIKIGPT_HOME and Dagster instance."""
    import os
    import subprocess
    import sys

    import dagster as dg

    from wikigpt_pipeline.instance import get_instance
    from wikigpt_pipeline.project import build_definitions

    home = tmp_path_factory.mktemp("wikigpt_home")
    with pytest.MonkeyPatch.context() as mp:
        # A throwaway but on-disk instance, laid out like a user's DAGSTER_HOME, so the
        # `wikigpt` CLI run as a subprocess sees the same history and staleness.
        mp.setenv("WIKIGPT_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        done = subprocess.run([sys.executable, "-m", "wikigpt_pipeline.cli", "run"], env=dict(os.environ),
                              capture_output=True, text=True, timeout=3_000)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        instance = get_instance()
        (run,) = instance.get_runs(limit=1)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        settings = load_settings("tiny")
        yield Materialized(home, instance, build_definitions(settings), settings, run.run_id, done.stdout)
        instance.dispose()
