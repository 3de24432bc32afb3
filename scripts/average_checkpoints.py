#!/usr/bin/env python3
"""Average the weights of several rl-zero policy checkpoints (uniform mean, "model soup").

    scripts/.venv/bin/python scripts/average_checkpoints.py OUT_DIR CKPT [CKPT ...]

Each CKPT is a `checkpoints/step-NNNNNN` directory of `rl-zero train` or its `policy/`
subdirectory (`model.safetensors` + `config.json`). OUT_DIR gets the mean of every tensor
(accumulated in float64, stored in the inputs' dtype) and the first checkpoint's other files, so
`rl-zero eval --model OUT_DIR` evaluates it. Every checkpoint must hold the same tensor names,
shapes and dtypes; anything else is an error naming the file and tensor. Used by trial t12 of
docs/results.md.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def policy_dir(p: Path) -> Path:
    if (p / "policy" / "model.safetensors").is_file():
        return p / "policy"
    if (p / "model.safetensors").is_file():
        return p
    sys.exit(f"error: {p}: no model.safetensors (nor policy/model.safetensors)")


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    dirs = [policy_dir(Path(a)) for a in sys.argv[2:]]
    if out.exists():
        sys.exit(f"error: {out} exists; choose a new directory")
    first = load_file(dirs[0] / "model.safetensors")
    sums = {k: v.astype(np.float64) for k, v in first.items()}
    for d in dirs[1:]:
        f = d / "model.safetensors"
        ts = load_file(f)
        if set(ts) != set(first):
            sys.exit(f"error: {f}: tensor names differ from {dirs[0]} "
                     f"(only here: {sorted(set(ts) - set(first))[:3]}, "
                     f"missing: {sorted(set(first) - set(ts))[:3]})")
        for k, v in ts.items():
            if v.shape != first[k].shape or v.dtype != first[k].dtype:
                sys.exit(f"error: {f}: tensor {k} is {v.dtype}{list(v.shape)}, "
                         f"expected {first[k].dtype}{list(first[k].shape)}")
            sums[k] += v
    shutil.copytree(dirs[0], out, ignore=shutil.ignore_patterns("model.safetensors"))
    mean = {k: (s / len(dirs)).astype(first[k].dtype) for k, s in sums.items()}
    save_file(mean, str(out / "model.safetensors"))
    print(f"{out}: mean of {len(dirs)} checkpoints ({len(mean)} tensors)")


if __name__ == "__main__":
    main()
