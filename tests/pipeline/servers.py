"""Start real Dagster processes on loopback for tests, and talk GraphQL to them."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

from tests.needs import tool_path

REPO = Path(__file__).resolve().parents[2]
# What the browser tests launch (WIKIGPT_CHROMIUM overrides PATH; see tests/needs.py).
CHROMIUM = tool_path("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dagster_process(kind: str, env: dict[str, str], log: Path, timeout: float = 180) -> Iterator[str]:
    """`kind` is "webserver" (dagster-webserver) or "dev" (`wikigpt ui`, the README's way to
    start `dagster dev`: webserver + daemon on the persistent DAGSTER_HOME)."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    if kind == "webserver":
        cmd = [str(bin_dir / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    else:
        cmd = [sys.executable, "-m", "wikigpt_pipeline.cli", "ui", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ | env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_ready(url, proc, timeout, log)
            yield url
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True and everything it spawned: SIGTERM
    to its group, SIGKILL if it has not exited within 30 s."""
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster exited early:\n{log.read_text()[-3000:]}")
        try:
            data = graphql(url, "{ workspaceOrError { ... on Workspace { locationEntries { "
                                "locationOrLoadError { __typename } } } } }")
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and entries[0]["locationOrLoadError"]:
                kind = entries[0]["locationOrLoadError"]["__typename"]
                if kind == "RepositoryLocation":
                    return
                if kind == "PythonError":
                    raise RuntimeError(f"code location failed to load:\n{log.read_text()[-3000:]}")
        except (httpx.HTTPError, KeyError, TypeError):
            pass
        time.sleep(1)
    raise TimeoutError(f"dagster not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    r = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    r.raise_for_status()
    body = r.json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    return body["data"]


STALE_QUERY = """
{ assetNodes { assetKey { path } staleStatus staleCauses { category reason dependency { path } } } }
"""


def stale_status(url: str) -> dict[str, tuple[str, list[dict]]]:
    nodes = graphql(url, STALE_QUERY)["assetNodes"]
    return {"/".join(n["assetKey"]["path"]): (n["staleStatus"], n["staleCauses"]) for n in nodes}
