"""llama.cpp, reached through llama-cpp-python in a Python of its own.

llama-cpp-python compiles llama.cpp when it installs (about ten minutes on two cores), so the
project does not depend on it. The Python that has it is `$WIKIGPT_LLAMACPP_VENV/bin/python`
(a venv, as tests/llamacpp/build_venv.sh builds one), else the running Python when it
imports llama_cpp. It is a tool's location, like a token: not part of any version.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VENV_ENV = "WIKIGPT_LLAMACPP_VENV"
PINNED = "llama-cpp-python==0.3.36"
WORKER = Path(__file__).with_name("llamacpp_worker.py")
WORKER_TIMEOUT_S = 3_600


class LlamaCppMissing(RuntimeError):
    """No Python with llama-cpp-python was found."""


class LlamaCppFailed(RuntimeError):
    """llama.cpp ran and failed."""


def _imports_llama_cpp(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True)
    return probe.returncode == 0


def llamacpp_python() -> str:
    """The Python to run llama.cpp with, or LlamaCppMissing saying how to get one."""
    venv = os.environ.get(VENV_ENV, "").strip()
    if venv:
        python = Path(venv).expanduser() / "bin" / "python"
        if python.is_file() and _imports_llama_cpp(str(python)):
            return str(python)
        raise LlamaCppMissing(
            f"{VENV_ENV}={venv}, but {python} does not import llama_cpp; build that venv with "
            f"`python3 -m venv {venv} && {venv}/bin/pip install '{PINNED}'` (compiles llama.cpp, "
            "about 10 minutes), or unset it to use this Python's llama_cpp")
    if _imports_llama_cpp(sys.executable):
        return sys.executable
    raise LlamaCppMissing(
        "gguf_release runs llama.cpp through llama-cpp-python, which is not installed here. "
        f"Either `pip install '{PINNED}'` into this environment, or build a venv for it "
        f"(`python3 -m venv ~/llamacpp && ~/llamacpp/bin/pip install '{PINNED}'`) and set "
        f"{VENV_ENV}=~/llamacpp. It compiles llama.cpp: about 10 minutes. Or switch the asset "
        "off: [release] gguf = false.")


def run_worker(request: dict, python: str | None = None) -> dict:
    """Run one llamacpp_worker request; its JSON reply, or LlamaCppFailed with its stderr."""
    python = python or llamacpp_python()
    with tempfile.TemporaryDirectory(prefix="wikigpt-llamacpp-") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps(request), encoding="utf-8")
        reply = Path(tmp) / "reply.json"
        done = subprocess.run([python, str(WORKER), str(req), str(reply)], capture_output=True,
                              text=True, timeout=WORKER_TIMEOUT_S)
        if done.returncode != 0:
            raise LlamaCppFailed(f"llama.cpp ({request['op']}) failed with exit code "
                                 f"{done.returncode}:\n{done.stderr[-3000:]}")
        return json.loads(reply.read_text(encoding="utf-8"))
