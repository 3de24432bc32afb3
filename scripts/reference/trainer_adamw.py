"""Golden values for rl-trainer's AdamW, gradient clipping and cosine-with-min-lr schedule.

Run: scripts/.venv/bin/python scripts/reference/trainer_adamw.py (from the repository root)
Writes crates/rl-trainer/tests/fixtures/adamw.json.

* AdamW: torch.optim.AdamW (decoupled weight decay, bias correction), the optimizer verl
  (YAML L8-80: lr, betas (0.9, 0.999), weight_decay 0.01) and OpenRLHF/ORZ/oat (betas (0.9, 0.95))
  use (snapshots in docs/sources.md).
* Clipping: torch.nn.utils.clip_grad_norm_ (max_norm 1.0 in verl `grad_clip`, ORZ/oat/OpenRLHF
  `max_norm`); the total norm is returned before clipping.
* Schedule: transformers.get_cosine_with_min_lr_schedule_with_warmup, which OpenRLHF/oat select
  with `cosine_with_min_lr` (min_lr_rate 0.1, warmup ratio 0.03).
"""
import json
import pathlib

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

torch.manual_seed(0)
params = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
grads = [[torch.randn_like(p) * 3.0 for p in params] for _ in range(5)]
init = [p.clone() for p in params]

cfg = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
max_norm = 1.0
ps = [torch.nn.Parameter(p.clone()) for p in params]
opt = torch.optim.AdamW(ps, **cfg)
steps = []
for gs in grads:
    for p, g in zip(ps, gs):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(ps, max_norm)
    opt.step()
    steps.append(
        {
            "grads": [g.flatten().tolist() for g in gs],
            "pre_clip_norm": float(norm),
            "params_after": [p.detach().flatten().tolist() for p in ps],
        }
    )

# LR schedule: 100 total steps, 10 warmup, min ratio 0.1.
p = torch.nn.Parameter(torch.zeros(1))
o = torch.optim.AdamW([p], lr=1.0)
sched = get_cosine_with_min_lr_schedule_with_warmup(
    o, num_warmup_steps=10, num_training_steps=100, min_lr_rate=0.1
)
lrs = []
for _ in range(110):
    lrs.append(o.param_groups[0]["lr"])
    o.step()
    sched.step()

out = {
    "config": {"lr": cfg["lr"], "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "max_norm": max_norm},
    "shapes": [list(p.shape) for p in params],
    "init": [p.flatten().tolist() for p in init],
    "steps": steps,
    "cosine": {"base_lr": 1.0, "warmup_steps": 10, "total_steps": 100, "min_lr_ratio": 0.1, "lrs": lrs},
}
path = pathlib.Path(__file__).resolve().parents[2] / "crates/rl-trainer/tests/fixtures/adamw.json"
path.write_text(json.dumps(out, indent=1))
print("wrote", path)
