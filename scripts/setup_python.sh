#!/usr/bin/env bash
# Creates scripts/.venv with the Python reference stack (PyTorch, transformers, TRL, math-verify, gguf)
# used to regenerate golden fixtures and to run side-by-side benchmarks. Only PyPI is needed.
# CI does not need it: fixtures are committed. Usage: bash scripts/setup_python.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch numpy safetensors transformers gguf accelerate sentencepiece
if [ "${RLZ_FULL_PY:-0}" = 1 ]; then
  "$venv/bin/pip" install -q trl math-verify
fi
echo "python reference stack ready: $venv/bin/python"
