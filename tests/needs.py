"""What a test needs from outside the project (a Debian tool, a `[test]` package), found or
reported the same way everywhere.

Run locally, a missing requirement skips the test, so a subset runs on any laptop. In CI
(`CI=true`, which `.ci/run` exports) it FAILS: a broken install must turn the run red, never
quietly smaller. `tests/conftest.py` applies the same rule to `pytest.importorskip` of the
packages in REQUIRED_MODULES and to the `requires_tool(...)` marker.
"""
from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

# Packages the `[test]` extra installs (and `sky`, which the cloud extra installs): missing in
# CI means the install is broken.
REQUIRED_MODULES = {"transformers", "openai", "gguf", "playwright", "sky"}

# Debian tools the tests drive: the apt package that provides each, and the environment
# variable (if any) that points the tests at another binary. WIKIGPT_CHROMIUM is what the
# browser tests launch; set to a path that does not exist, it makes chromium unavailable (how
# CI's failure on a missing browser is shown). rsync is run from PATH by the launcher itself.
TOOLS: dict[str, tuple[str, str | None]] = {
    "chromium": ("chromium", "WIKIGPT_CHROMIUM"),
    "rsync": ("rsync", None),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Skip locally, fail in CI, with one message saying what is missing and how to get it."""
    if in_ci():
        pytest.fail(f"CI=true and a test requirement is missing: {what}", pytrace=False)
    pytest.skip(f"missing {what}", allow_module_level=True)


def tool_path(name: str) -> str | None:
    """The binary for a tool in TOOLS: its override variable when set (even to a path that does
    not exist: that is how a run is made to lack it), else the first one on PATH."""
    _, var = TOOLS[name]
    override = os.environ.get(var) if var else None
    if override is not None:
        return override if Path(override).is_file() and os.access(override, os.X_OK) else None
    return shutil.which(name)


def require_tool(name: str) -> str:
    """The path of a Debian tool the test drives; skip (locally) or fail (CI) without it."""
    path = tool_path(name)
    if path is None:
        package, var = TOOLS[name]
        where = f"{var}={os.environ[var]!r} is not an executable" if var and var in os.environ else "not on PATH"
        missing(f"the `{name}` binary ({where}); install it with `apt-get install -y {package}`")
    return path  # type: ignore[return-value]


def require_module(name: str) -> ModuleType:
    """Import a test dependency; skip (locally) or fail (CI) when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        extra = "cloud" if name == "sky" else "test"
        missing(f"python package `{name}` ({e}); install the `{extra}` extra: pip install -e \".[{extra}]\"")
        raise  # unreachable: missing() always raises
