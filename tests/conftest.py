"""Shared fixtures. The expensive one, `materialized`, runs the whole graph once per session on
the tiny profile and the embedded sample, in a temp WIKIGPT_HOME with a temp Dagster instance.

Also the CI rule (see tests/needs.py): with CI=true, a test that would skip because a required
tool or test package is missing fails instead, whether it asked through `require_tool` /
`require_module`, the `requires_tool(...)` marker, or `pytest.importorskip` of a package in
REQUIRED_MODULES. `--require-passed MARKER:N` fails a run in which fewer than N tests carrying
MARKER passed (so a suite cannot go green by collecting nothing)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from tests.needs import REQUIRED_MODULES, in_ci, require_tool
from wikigpt_core.config import Settings, load_settings

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
    result: dg.ExecuteInProcessResult

    def artifact(self, asset: str) -> Path:
        """The asset's current version (the directory its latest materialization wrote)."""
        return (self.home / self.settings.profile / asset / "current").resolve()


@pytest.fixture(scope="session")
def materialized(tmp_path_factory) -> Materialized:
    from wikigpt_pipeline.jobs import PIPELINE_JOB
    from wikigpt_pipeline.project import build_definitions

    from wikigpt_pipeline.instance import get_instance

    home = tmp_path_factory.mktemp("wikigpt_home")
    with pytest.MonkeyPatch.context() as mp:
        # A throwaway but on-disk instance, laid out like a user's DAGSTER_HOME, so the
        # `wikigpt` CLI run as a subprocess sees the same history and staleness.
        mp.setenv("WIKIGPT_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        instance = get_instance()
        settings = load_settings("tiny")
        defs = build_definitions(settings)
        result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(instance=instance)
        assert result.success
        yield Materialized(home, instance, defs, settings, result)
        instance.dispose()
