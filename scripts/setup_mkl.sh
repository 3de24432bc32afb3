#!/usr/bin/env bash
# Makes sure Intel MKL's runtime library exists at <repo>/.cache/mkl/lib/libmkl_rt.so.3 and prints
# its path. MKL comes from its PyPI wheel (`mkl`, downloaded without dependencies into
# <repo>/.cache/wheels); only the libraries a sequential LP64 gemm needs are unpacked (~440 MB).
# rl-zero opens it at run time when RLZ_BLAS points at it (see docs/policy.md, "CPU matrix
# products"):
#   RLZ_BLAS=$(bash scripts/setup_mkl.sh) cargo run --release --example ppo_gae
# Idempotent. MKL is Intel's proprietary library under the Intel Simplified Software License.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version=${RLZ_MKL_VERSION:-2026.2.1}
dest="$repo/.cache/mkl/lib"
wheels="$repo/.cache/wheels"
libs="libmkl_rt.so.3 libmkl_core.so.3 libmkl_sequential.so.3 libmkl_intel_lp64.so.3
      libmkl_def.so.3 libmkl_mc3.so.3 libmkl_avx2.so.3 libmkl_avx512.so.3 libmkl_avx10.so.3"
if [ -s "$dest/libmkl_rt.so.3" ] && [ -s "$dest/libmkl_avx10.so.3" ]; then
  echo "$dest/libmkl_rt.so.3"
  exit 0
fi
mkdir -p "$dest" "$wheels"
if [ -x "$repo/scripts/.venv/bin/pip" ]; then
  pip_cmd=("$repo/scripts/.venv/bin/pip")
elif command -v pip3 >/dev/null 2>&1; then
  pip_cmd=(pip3)
else
  pip_cmd=(python3 -m pip)
fi
wheel=$(ls "$wheels"/mkl-"$version"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  # Exit 2 = the registry could not be reached (CI skips the MKL phase); any later failure is
  # exit 1 (CI fails: MKL was found but could not be set up).
  "${pip_cmd[@]}" download -q --no-deps "mkl==$version" -d "$wheels" >&2 || exit 2
  wheel=$(ls "$wheels"/mkl-"$version"-*.whl | head -n 1)
fi
python3 - "$wheel" "$dest" $libs <<'PY'
import os, sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    members = {os.path.basename(n): n for n in z.namelist() if "/lib/" in n}
    for name in names:
        if name not in members:
            sys.exit(f"setup_mkl.sh: {name} is not in {wheel}")
        tmp = os.path.join(dest, name + ".part")
        with z.open(members[name]) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, os.path.join(dest, name))
PY
echo "$dest/libmkl_rt.so.3"
