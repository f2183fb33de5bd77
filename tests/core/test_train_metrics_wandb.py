"""W&B is optional: without the package, the default offline mode warns and keeps logging to
the JSONL file and the callback; WANDB_MODE=online fails at once with what to install."""
from __future__ import annotations

import json
import sys

import pytest

from wikigpt_core.train import metrics


@pytest.fixture()
def no_wandb(monkeypatch):
    """Make `wandb` unimportable, as in an install without the `wandb` extra."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    real = metrics.importlib.util.find_spec
    monkeypatch.setattr(metrics.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))


def test_offline_without_wandb_warns_and_still_logs(tmp_path, monkeypatch, no_wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    seen = []
    with pytest.warns(RuntimeWarning, match=r"wandb is not installed.*\.\[wandb\]"):
        log = metrics.MetricLogger(tmp_path / "log.jsonl", wandb_dir=tmp_path / "wandb",
                                   on_metrics=lambda m, s: seen.append((s, m)))
    log.log({"loss/train": 2.5}, step=1)
    log.close()
    assert log.wandb_run is None and not (tmp_path / "wandb").exists()
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"step": 1, "loss/train": 2.5}
    assert seen == [(1, {"loss/train": 2.5})]


def test_online_without_wandb_fails_with_the_install_line(tmp_path, monkeypatch, no_wandb):
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(RuntimeError, match=r"WANDB_MODE=online but wandb is not installed.*pip install -e"):
        metrics.MetricLogger(tmp_path / "log.jsonl", wandb_dir=tmp_path / "wandb")


def test_disabled_never_looks_for_wandb(tmp_path, monkeypatch, no_wandb):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        log = metrics.MetricLogger(None, wandb_dir=tmp_path / "wandb")
    assert log.wandb_run is None
