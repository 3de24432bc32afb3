"""Golden values for rl-core's masked helpers (crates/rl-core/src/masked.rs).

Transcription of verl `verl/utils/torch_functional.py` at b178a3cd56f5:
masked_sum L266-284, masked_mean L287-301, masked_var L304-319, masked_whiten L322-339.
Run: scripts/.venv/bin/python scripts/reference/masked_ops.py
"""
import torch

torch.set_printoptions(precision=8)


def masked_sum(v, m, axis=None):
    valid = torch.where(m.bool(), v, 0.0)
    return (valid * m).sum() if axis is None else (valid * m).sum(axis)


def masked_mean(v, m, axis=None):
    s = masked_sum(v, m, axis)
    return s / (m.sum() + 1e-8) if axis is None else s / (m.sum(axis) + 1e-8)


def masked_var(v, m, unbiased=True):
    mean = masked_mean(v, m)
    centered = v - mean
    var = masked_mean(centered**2, m)
    if unbiased:
        n = m.sum()
        if n == 0 or n == 1:
            raise ValueError("too few valid elements")
        var = var * (n / (n - 1))
    return var


def masked_whiten(v, m, shift_mean=True):
    mean, var = masked_mean(v, m), masked_var(v, m)
    w = (v - mean) * torch.rsqrt(var + 1e-8)
    return w if shift_mean else w + mean


if __name__ == "__main__":
    nan, inf = float("nan"), float("inf")
    v = torch.tensor([[1.0, 2.0, 3.0, nan], [4.0, -1.0, 0.5, 2.0], [7.0, inf, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    print("masked_sum", masked_sum(v, m).item(), masked_sum(v, m, 1).tolist())
    print("masked_mean", masked_mean(v, m).item(), masked_mean(v, m, 1).tolist())
    print("masked_var unbiased", masked_var(v, m).item(), "biased", masked_var(v, m, False).item())
    w = masked_whiten(v, m)
    print("masked_whiten (valid)", torch.where(m.bool(), w, 0.0).tolist())
