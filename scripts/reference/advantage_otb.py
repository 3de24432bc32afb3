#!/usr/bin/env python3
"""PyTorch reference for `rl_advantage::OptimalTokenBaseline`: a transcription (from the formulas,
not copied) of verl's optimal token baseline,
verl:verl/trainer/ppo/core_algos.py L758-873 (`compute_optimal_token_baseline_advantage`,
registry name `optimal_token_baseline`) at verl b178a3cd56f5.

    G_t = sum_{k>=t} r_k M_k                              (return-to-go)
    w_t = (1 - 2 exp(logp_t) + sum_pi_squared_t) * rho_t^2 (rho = 1 without IS weights)
    W_t = sum_{k<=t} w_k M_k                              (cumulative path-variance proxy)
    B_t = sum_group G_t W_t M_t / (sum_group W_t M_t + eps), B = 0 for a group of one
    handle_zero_tail: a group's unique longest response gets B = 0 from the second-longest length on
    A_t = (G_t - B_t) M_t

Usage:
    python scripts/reference/advantage_otb.py --fixtures crates/rl-advantage/tests/fixtures/optimal_token_baseline.json

Computes in float32 like verl. Returns are multiplied by the mask for the fixtures (the Rust crate
guarantees exact zeros on masked positions; verl returns the unmasked return-to-go).
"""

import argparse
import json
import pathlib
import sys
from collections import defaultdict

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from advantage import place_last, ragged_mask  # noqa: E402


def optimal_token_baseline(rewards, mask, index, logp, spp, is_w=None, zero_tail=False, eps=1e-8):
    B, T = rewards.shape
    # CA L810: reverse cumulative sum of the masked rewards.
    ret = torch.flip(torch.cumsum(torch.flip(rewards * mask, [1]), 1), [1])
    # CA L813-819: per-token variance proxy, optionally scaled by the squared IS weight.
    w = 1.0 - 2.0 * torch.exp(logp) + spp
    if is_w is not None:
        w = w * is_w * is_w
    # CA L823: forward cumulative sum over valid tokens.
    W = torch.cumsum(w * mask, 1)
    groups = defaultdict(list)
    for i, g in enumerate(index):
        groups[g].append(i)
    base = torch.zeros(B, T)
    for rows in groups.values():
        if len(rows) < 2:
            continue  # CA L836-838: no baseline for a single response
        idx = torch.tensor(rows)
        m, g, wc = mask[idx], ret[idx], W[idx]
        b_t = (g * wc * m).sum(0) / ((wc * m).sum(0) + eps)  # CA L850-853
        base[idx] = b_t.expand(len(rows), T)
        if zero_tail:  # CA L858-868
            lens = m.sum(1)
            srt = torch.sort(lens).values
            longest, second = int(srt[-1]), int(srt[-2])
            if longest > second:
                who = rows[int((lens == longest).nonzero()[0, 0])]
                base[who, second:] = 0.0
    adv = (ret - base) * mask  # CA L871
    return adv, ret


def fixtures():
    gen = torch.Generator().manual_seed(4321)
    T = 8
    # Group sizes 4, 3, 2, 1 (ids interleaved); group 2 has a unique longest response, group 5
    # a tie for the longest.
    index = [5, 2, 5, 9, 2, 5, 7, 2, 5, 7, 11, 11, 11]
    lens = [8, 3, 5, 1, 6, 7, 2, 4, 8, 8, 5, 8, 8]
    B = len(index)
    mask = ragged_mask(gen, lens, T)
    holes = ragged_mask(gen, lens, T, holes=True)
    scores = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 0.0, -1.0, 0.25, 1.0, 0.5, 0.3, 1.5, 0.3])
    pi = 0.05 + 0.95 * torch.rand(B, T, generator=gen)
    logp = torch.log(pi)
    spp = pi * pi + (1.0 - pi) ** 2 * torch.rand(B, T, generator=gen)
    is_w = 0.5 + torch.rand(B, T, generator=gen)
    dense = torch.randn(B, T, generator=gen) * holes

    def case(name, est, m, r, token, is_weights=None, **kw):
        adv, ret = optimal_token_baseline(r, m, index, logp, spp, is_w=is_weights, **kw)
        c = {
            "name": name,
            "estimator": est,
            "group_ids": index,
            "mask": m.tolist(),
            "log_probs": logp.tolist(),
            "sum_pi_squared": spp.tolist(),
            "advantages": (adv * m).tolist(),
            "returns": (ret * m).tolist(),
        }
        if token:
            c["token_rewards"] = r.tolist()
        else:
            c["sequence_rewards"] = r.sum(-1).tolist()
        if is_weights is not None:
            c["is_weights"] = is_weights.tolist()
        return c

    seq = place_last(scores, mask)
    seq_h = place_last(scores, holes)
    otb = {"type": "optimal_token_baseline"}
    tail = {"type": "optimal_token_baseline", "handle_zero_tail": True}
    cases = [
        case("otb_sequence", otb, mask, seq, False),
        case("otb_sequence_zero_tail", tail, mask, seq, False, zero_tail=True),
        case("otb_holes_token_is_weights", otb, holes, dense, True, is_weights=is_w),
        case("otb_holes_token_zero_tail_is_weights", tail, holes, dense, True, is_weights=is_w, zero_tail=True),
        case("otb_holes_sequence_eps", {"type": "optimal_token_baseline", "epsilon": 1e-3}, holes, seq_h, False, eps=1e-3),
    ]
    return {"generator": "scripts/reference/advantage_otb.py --fixtures", "torch": torch.__version__, "cases": cases}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fixtures", required=True, help="write the golden fixture JSON here")
    a = p.parse_args()
    with open(a.fixtures, "w") as f:
        json.dump(fixtures(), f, separators=(",", ":"))
    print(f"wrote {a.fixtures}")


if __name__ == "__main__":
    main()
