"""llama.cpp, found and started the same way by every test that uses it (no tests in here).

The llama.cpp venv is `$WIKIGPT_LLAMACPP_VENV` (default /work/venvs/llamacpp), built by
`tests/llamacpp/build_venv.sh`. Without it a test skips locally and fails under CI=true.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests import needs

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = "/work/venvs/llamacpp"


def llamacpp_python() -> str:
    """The llama.cpp venv's python, checked to import llama_cpp and its server."""
    venv = Path(os.environ.get("WIKIGPT_LLAMACPP_VENV", DEFAULT_VENV))
    py = venv / "bin" / "python"
    ok = py.is_file() and subprocess.run([str(py), "-c", "import llama_cpp, llama_cpp.server"],
                                         capture_output=True).returncode == 0
    if not ok:
        needs.missing(f"the llama.cpp venv at {venv} (llama-cpp-python[server]); build it with "
                      "tests/llamacpp/build_venv.sh or point WIKIGPT_LLAMACPP_VENV at one")
    return str(py)


def probe(gguf: Path, request: dict, workdir: Path) -> dict:
    """What llama.cpp computes for `request` (see probe.py), run in the llama.cpp venv."""
    req = workdir / "probe_request.json"
    req.write_text(json.dumps(request))
    out = subprocess.run([llamacpp_python(), str(HERE / "probe.py"), str(gguf), str(req)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"llama.cpp probe failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 serving one GGUF."""

    def __init__(self, gguf: Path, *, alias: str, n_ctx: int, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.alias = alias
        self.cmd = [llamacpp_python(), "-m", "llama_cpp.server", "--model", str(gguf),
                    "--model_alias", alias, "--host", "127.0.0.1", "--port", str(self.port),
                    "--n_ctx", str(n_ctx), "--n_threads", "2", "--verbose", "False"]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LlamaServer":
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"llama.cpp server did not answer in 120 s:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
