"""Golden values for rl-reward's length shaping (writes crates/rl-reward/tests/fixtures/overlong.json).

Transcribed from the formulas (no code copied):
* DAPO overlong reward shaping, verl `verl/workers/reward_manager/dapo.py` L116-122
  (see docs/sources.md): expected = max_resp_len - buffer_len;
  r += min(-(L - expected) / buffer_len * penalty_factor, 0).
* Open-Reasoner-Zero outcome reward, `orz_7b_ppo.py` L236-243: 1 if correct and
  stop_reason == "stop" else 0.

Run: scripts/.venv/bin/python scripts/reference/reward_overlong.py
"""

import json
import pathlib

import torch


def overlong(L, max_len, buffer, factor):
    expected = max_len - buffer
    exceed = torch.tensor(float(L), dtype=torch.float64) - expected
    return float(torch.clamp(-exceed / buffer * factor, max=0.0))


def orz(correct, stopped):
    return 1.0 if (correct and stopped) else 0.0


cases = []
for max_len, buffer, factor in [(20480, 4096, 1.0), (100, 20, 1.0), (512, 128, 0.5), (64, 64, 2.0)]:
    for L in sorted({0, 1, max_len - buffer - 1, max_len - buffer, max_len - buffer + 1,
                     max_len - buffer // 2, max_len - 1, max_len}):
        if L >= 0:
            cases.append({"L": L, "max_len": max_len, "buffer": buffer, "factor": factor,
                          "penalty": overlong(L, max_len, buffer, factor)})

orz_cases = [{"correct": c, "stopped": s, "reward": orz(c, s)} for c in (True, False) for s in (True, False)]

out = pathlib.Path(__file__).resolve().parents[2] / "crates/rl-reward/tests/fixtures/overlong.json"
out.write_text(json.dumps({"overlong": cases, "orz": orz_cases}, indent=1) + "\n")
print(f"wrote {len(cases)} overlong and {len(orz_cases)} ORZ cases -> {out}")
