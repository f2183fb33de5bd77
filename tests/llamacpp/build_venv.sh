#!/usr/bin/env bash
# Build the llama.cpp venv the real-LLM tests use (tests/core/test_align_llamacpp.py and the
# llama.cpp checks of tests/core/test_release_gguf.py). It compiles llama.cpp from source:
# about 10 minutes on 2 cores. The tests find it at $WIKIGPT_LLAMACPP_VENV (default
# /work/venvs/llamacpp); without it they skip locally and fail under CI=true.
set -euo pipefail
VENV="${WIKIGPT_LLAMACPP_VENV:-/work/venvs/llamacpp}"
PY="${PYTHON:-python3.11}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "llama-cpp-python[server]==0.3.36"
"$VENV/bin/python" -c "import llama_cpp, llama_cpp.server; print('llama-cpp-python', llama_cpp.__version__)"
