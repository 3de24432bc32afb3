#!/usr/bin/env python3
"""PyTorch reference for `rl_loss::Aggregation::Luspo`: a transcription (from the formulas, not
copied) of TRL's `loss_type="luspo"`, trl:trl/trainer/grpo_trainer.py at trl f2cd57710ae3:

    log_ratio = logp - old_logp                                  (L3054)
    token level:    coef_1 = exp(log_ratio)                      (L3055-3056, L3066)
    sequence level: coef_1 = exp(sum_t log_ratio M / max(L, 1))  (L3057-3059, L3066), shape (B, 1)
    coef_2 = clamp(coef_1, 1 - eps_low, 1 + eps_high)            (L3084)
    per_token_loss = -min(coef_1 A, coef_2 A)                    (L3089-3091)
    loss = (per_token_loss * L).mean(),  L = mask.sum(1, keepdim=True)   (L3143-3145)

Cases:
* `luspo_token_level`: token-level ratio, loss (B, T); the reference multiplies by the mask (rl-loss
  excludes padding; TRL's token-level branch does not, see `Aggregation::Luspo`). Checked against
  `PpoLoss` (no dual clip) with `aggregation = luspo`.
* `luspo_sequence_level`: TRL's recommended sequence-level ratio, loss (B, 1), so the mean is over
  B. Checked against `GspoLoss` with `aggregation = seq-sum-token-sum-norm, scale = B` (the
  equivalence documented on `Aggregation::Luspo`).

Writes crates/rl-loss/tests/fixtures/luspo.json (loss and gradient w.r.t. logp).
Run: scripts/.venv/bin/python scripts/reference/loss_luspo.py
"""

import json
import pathlib

import torch

torch.set_default_dtype(torch.float32)


def luspo_loss(logp, old, adv, mask, eps_low, eps_high, level):
    log_ratio = logp - old
    if level == "token":
        coef_1 = torch.exp(log_ratio)
    else:
        coef_1 = torch.exp(((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1))
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    if level == "token":
        per_token_loss = per_token_loss * mask
    return (per_token_loss * mask.sum(1, keepdim=True)).mean()


def main():
    gen = torch.Generator().manual_seed(2602)
    B, T = 5, 7
    lens = [7, 3, 5, 1, 6]
    mask = torch.zeros(B, T)
    for i, n in enumerate(lens):
        mask[i, :n] = 1.0
    old = -0.2 - 2.0 * torch.rand(B, T, generator=gen)
    logp0 = old + 0.3 * torch.randn(B, T, generator=gen)
    adv_tok = torch.randn(B, T, generator=gen)
    adv_row = torch.randn(B, 1, generator=gen)
    cases = []
    for name, level, adv, eps, config in [
        ("luspo_token_level", "token", adv_tok, (0.2, 0.28),
         {"type": "ppo", "clip_low": 0.2, "clip_high": 0.28, "aggregation": {"type": "luspo"}}),
        ("luspo_sequence_level", "sequence", adv_row, (0.04, 0.05),
         {"type": "gspo", "clip_low": 0.04, "clip_high": 0.05,
          "aggregation": {"type": "seq_sum_token_sum_norm", "scale": float(B)}}),
    ]:
        logp = logp0.clone().requires_grad_(True)
        loss = luspo_loss(logp, old, adv, mask, eps[0], eps[1], level)
        loss.backward()
        cases.append({
            "name": name,
            "config": config,
            "inputs": {
                "log_probs": logp0.tolist(),
                "old_log_probs": old.tolist(),
                "advantages": adv.expand(B, T).tolist(),
                "mask": mask.tolist(),
            },
            "loss": loss.item(),
            "grad": logp.grad.tolist(),
        })
    out = pathlib.Path(__file__).resolve().parents[2] / "crates/rl-loss/tests/fixtures/luspo.json"
    out.write_text(json.dumps({"generator": "scripts/reference/loss_luspo.py", "torch": torch.__version__,
                               "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {len(cases)} cases -> {out}")


if __name__ == "__main__":
    main()
