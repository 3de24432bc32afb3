#!/usr/bin/env python3
"""PyTorch reference for `crates/rl-advantage`: transcriptions (from the formulas, not copied) of the
advantage estimators of verl, TRL, oat, OpenRLHF and Open-Reasoner-Zero.

Citations are `repo:path Lnnn` at the snapshots listed in `docs/sources.md`
(verl b178a3cd56f5, trl f2cd57710ae3, oat c1a074c320ff, orz 3fdd9a07b4fb, orlhf 3c3be6234e0c).
`CA` = verl:verl/trainer/ppo/core_algos.py, `TF` = verl:verl/utils/torch_functional.py.

Usage:
    python scripts/reference/advantage.py --fixtures crates/rl-advantage/tests/fixtures/advantage.json
    python scripts/reference/advantage.py --bench [--b 4096 --t 4096 --group 16 --reps 3]

Every function computes in float32 like the original and returns `(advantages, returns)` of shape
(B, T). For the golden fixtures, advantages and returns are multiplied by the response mask (the Rust
crate guarantees exact zeros on masked positions; verl leaves whitened / carried values there).
"""

import argparse
import json
import time
from collections import defaultdict

import torch

# ---------------------------------------------------------------------------------------------
# verl helpers (TF L266-339)


def masked_mean(v, m):
    # TF L287-301: sum(v*m) / (sum(m) + 1e-8)
    return (torch.where(m.bool(), v, 0.0) * m).sum() / (m.sum() + 1e-8)


def masked_whiten(v, m):
    # TF L304-339: unbiased masked variance (x N/(N-1)), (v - mean) * rsqrt(var + 1e-8)
    mean = masked_mean(v, m)
    var = masked_mean((v - mean) ** 2, m)
    n = m.sum()
    var = var * n / (n - 1)
    return (v - mean) * torch.rsqrt(var + 1e-8)


def population_whiten(v, m):
    # orz:orz/ppo/utils.py L293-322 (and OpenRLHF): population variance, rsqrt(clamp(var, 1e-8))
    n = m.sum()
    mean = (v * m).sum() / n
    var = (((v - mean) * m) ** 2).sum() / n
    return (v - mean) * var.clamp(min=1e-8).rsqrt()


def by_id(index, scores):
    """verl's grouping: defaultdict(list) keyed by uid (CA L290-330 and siblings)."""
    groups = defaultdict(list)
    for i, g in enumerate(index):
        groups[g].append(i)
    return groups


# ---------------------------------------------------------------------------------------------
# verl estimators (CA)


def gae(rewards, values, mask, gamma, lam, whiten="unbiased"):
    # CA L215-263: reverse scan; masked tokens carry nextvalues/lastgaelam unchanged.
    B, T = rewards.shape
    nextvalues = torch.zeros(B)
    lastgaelam = torch.zeros(B)
    adv_rev = []
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        new = delta + gamma * lam * lastgaelam
        nextvalues = values[:, t] * mask[:, t] + (1 - mask[:, t]) * nextvalues
        lastgaelam = new * mask[:, t] + (1 - mask[:, t]) * lastgaelam
        adv_rev.append(lastgaelam)
    adv = torch.stack(adv_rev[::-1], dim=1)
    ret = adv + values
    if whiten == "unbiased":
        adv = masked_whiten(adv, mask)
    elif whiten == "population":
        adv = population_whiten(adv, mask)
    return adv, ret


def grpo(rewards, mask, index, eps=1e-6, norm_by_std=True, unbiased=True, singleton_zero=False):
    # CA L267-330: singleton -> mean 0, std 1 (verl); zero-variance -> numerator 0.
    scores = rewards.sum(-1)
    out = scores.clone()
    for rows in by_id(index, scores).values():
        g = scores[rows]
        if len(rows) == 1:
            mean, std = (g[0], torch.tensor(0.0)) if singleton_zero else (torch.tensor(0.0), torch.tensor(1.0))
        else:
            mean, std = g.mean(), g.std(unbiased=unbiased)
        for i in rows:
            out[i] = (scores[i] - mean) / (std + eps) if norm_by_std else scores[i] - mean
    out = out.unsqueeze(-1) * mask
    return out, out


def grpo_vectorized(rewards, mask, index, eps=1e-6):
    # CA L334-357, verl/utils/groupwise.py L164-226: var = (sum r^2 - (sum r)^2/n) / max(n-1, 1),
    # std = sqrt(max(var, eps)); singleton mean 0 std 1.
    scores = rewards.sum(-1)
    out = scores.clone()
    for rows in by_id(index, scores).values():
        g = scores[rows]
        n = len(rows)
        if n == 1:
            mean, std = torch.tensor(0.0), torch.tensor(1.0)
        else:
            mean = g.sum() / n
            var = (torch.sum(g * g) - g.sum() ** 2 / n) / max(n - 1, 1)
            std = torch.sqrt(torch.clamp(var, min=eps))
        for i in rows:
            out[i] = (scores[i] - mean) / (std + eps)
    out = out.unsqueeze(-1) * mask
    return out, out


def rloo(rewards, mask, index):
    # CA L477-525: r*n/(n-1) - mean*n/(n-1); singleton keeps r.
    scores = rewards.sum(-1)
    out = scores.clone()
    for rows in by_id(index, scores).values():
        n = len(rows)
        if n > 1:
            mean = scores[rows].mean()
            for i in rows:
                out[i] = scores[i] * n / (n - 1) - mean * n / (n - 1)
    out = out.unsqueeze(-1) * mask
    return out, out


def reinforce_pp_baseline(rewards, mask, index):
    # CA L425-473: r - mean_g (singleton mean 0), tile over T, masked_whiten, * mask.
    scores = rewards.sum(-1)
    out = scores.clone()
    for rows in by_id(index, scores).values():
        mean = scores[rows].mean() if len(rows) > 1 else torch.tensor(0.0)
        for i in rows:
            out[i] = scores[i] - mean
    tiled = out.unsqueeze(-1).tile([1, rewards.shape[1]]) * mask
    adv = masked_whiten(tiled, mask) * mask
    return adv, adv


def reinforce_pp(rewards, mask, gamma):
    # CA L583-618: G_t = r_t + gamma G_{t+1}, reset G <- G * M_t; masked_whiten(G) * mask.
    B, T = rewards.shape
    ret = torch.zeros_like(rewards)
    running = torch.zeros(B)
    for t in reversed(range(T)):
        running = rewards[:, t] + gamma * running
        ret[:, t] = running
        running = running * mask[:, t]
    adv = masked_whiten(ret, mask) * mask
    return adv, ret


def remax(rewards, mask, baseline):
    # CA L622-654: R = reverse cumsum of r*M; A = R - b * M.
    ret = (rewards * mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
    adv = ret - baseline.unsqueeze(-1) * mask
    return adv, ret


def opo(rewards, mask, index):
    # CA L529-579: b_g = sum(L r) / sum(L); singleton b = 0.
    scores = rewards.sum(-1)
    lens = mask.sum(-1)
    out = scores.clone()
    for rows in by_id(index, scores).values():
        if len(rows) == 1:
            b = torch.tensor(0.0)
        else:
            b = (lens[rows] * scores[rows]).sum() / lens[rows].sum()
        for i in rows:
            out[i] = scores[i] - b
    out = out.unsqueeze(-1) * mask
    return out, out


def gpg(rewards, mask, index):
    # CA L658-717: alpha = B / max(count_nonzero(r), 1); a = alpha (r - mean_g) / f_norm, f_norm = 1.
    scores = rewards.sum(-1)
    B = scores.shape[0]
    alpha = B / max(int(torch.count_nonzero(scores)), 1)
    out = scores.clone()
    for rows in by_id(index, scores).values():
        mean = scores[rows].mean() if len(rows) > 1 else torch.tensor(0.0)
        for i in rows:
            out[i] = alpha * (scores[i] - mean)
    out = out.unsqueeze(-1) * mask
    return out, out


def grpo_passk(rewards, mask, index, eps=1e-6, norm_by_std=True):
    # CA L361-419: only the arg-max of each group gets r_max - r_second (/ (std + eps)).
    scores = rewards.sum(-1)
    out = torch.zeros_like(scores)
    for rows in by_id(index, scores).values():
        g = scores[rows]
        top, idx = torch.topk(g, 2)
        a = top[0] - top[1]
        if norm_by_std:
            a = a / (g.std() + eps)
        out[rows[int(idx[0])]] = a
    out = out.unsqueeze(-1) * mask
    return out, out


# ---------------------------------------------------------------------------------------------
# TRL (trl:trl/trainer/grpo_trainer.py L2683-2730) and oat (oat:oat/algorithms/ppo.py L344-358):
# consecutive groups of equal size G.


def trl_grpo(rewards, mask, G, scale="group", eps=1e-4):
    scores = rewards.sum(-1)
    grouped = scores.view(-1, G)
    mean = grouped.mean(dim=1).repeat_interleave(G)
    adv = scores - mean
    if scale == "group":
        adv = adv / (grouped.std(dim=1).repeat_interleave(G) + eps)
    elif scale == "batch":
        adv = adv / (scores.std() + eps)
    out = adv.unsqueeze(-1) * mask
    return out, out


def oat_grpo(rewards, mask, G, eps=1e-8):
    scores = rewards.sum(-1).view(-1, G)
    adv = (scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + eps)
    out = adv.reshape(-1).unsqueeze(-1) * mask
    return out, out


# ---------------------------------------------------------------------------------------------
# Fixtures


def place_last(scores, mask):
    # verl:verl/workers/reward_manager/naive.py L100: score on the last valid token.
    r = torch.zeros_like(mask)
    for i in range(mask.shape[0]):
        idx = mask[i].nonzero()
        if len(idx):
            r[i, int(idx[-1])] = scores[i]
    return r


def ragged_mask(gen, lens, T, holes=False):
    m = torch.zeros(len(lens), T)
    for i, L in enumerate(lens):
        m[i, :L] = 1.0
        if holes and L > 3 and i % 2 == 0:
            m[i, 1 : 1 + (i % 3) + 1] = 0.0  # interior masked tokens (tool observations)
    return m


def case(name, est, mask, index, rewards, adv_ret, values=None, baseline=None, token_rewards=False):
    adv, ret = adv_ret
    c = {
        "name": name,
        "estimator": est,
        "group_ids": [int(i) for i in index],
        "mask": mask.tolist(),
        "advantages": (adv * mask).tolist(),
        "returns": (ret * mask).tolist(),
    }
    if token_rewards:
        c["token_rewards"] = rewards.tolist()
    else:
        c["sequence_rewards"] = rewards.sum(-1).tolist()
    if values is not None:
        c["values"] = values.tolist()
    if baseline is not None:
        c["baseline"] = baseline.tolist()
    return c


def fixtures():
    gen = torch.Generator().manual_seed(1234)
    T = 7
    # Mixed group sizes 4, 3, 2, 1 and an all-equal group of 3; ids interleaved, not contiguous.
    index = [5, 2, 5, 9, 2, 5, 7, 2, 5, 7, 11, 40, 11, 11]
    lens = [7, 3, 5, 1, 6, 7, 2, 4, 3, 7, 5, 4, 6, 2]
    B = len(index)
    mask = ragged_mask(gen, lens, T)
    scores = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 0.0, -1.0, 0.25, 1.0, 0.5, 0.3, 1.5, 0.3, 0.3])
    seq = place_last(scores, mask)
    # Token-level rewards: the same totals spread over several tokens of the row.
    tok = seq.clone()
    for i in range(B):
        if lens[i] >= 2:
            tok[i, 0] += 0.125
            tok[i, lens[i] - 1] -= 0.125
    values = torch.randn(B, T, generator=gen) * 0.5
    holes = ragged_mask(gen, lens, T, holes=True)
    seq_h = place_last(scores, holes)
    dense = torch.randn(B, T, generator=gen) * holes
    baseline = torch.rand(B, generator=gen)
    pk_index = [3, 3, 8, 8, 8, 3, 1, 1, 1, 1, 6, 6, 6, 1]  # every group >= 2, group 6 all-equal
    pk_scores = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 1.0, 0.0, 1.0, 0.7, 0.2, 0.3, 0.3, 0.3, 1.0])
    pk_seq = place_last(pk_scores, mask)
    G = 4
    trl_index = [i // G for i in range(12)]
    trl_mask = mask[:12]
    trl_scores = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2, 1.0, 0.0, 0.0, 0.0])
    trl_seq = place_last(trl_scores, trl_mask)
    # std ~1.2e-4 < floor 1e-3; dyadic values keep the float32 mean exact
    tiny = torch.tensor([0.5, 0.5 + 2**-12, 0.5, 0.5, 1.0, 0.0, 1.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    tiny_seq = place_last(tiny, trl_mask)

    cases = []
    for name, r, tr in [("sequence", seq, False), ("token", tok, True)]:
        cases += [
            case(f"verl_grpo_{name}", {"type": "grpo"}, mask, index, r, grpo(r, mask, index), token_rewards=tr),
            case(f"verl_dr_grpo_{name}", {"type": "dr_grpo"}, mask, index, r, grpo(r, mask, index, norm_by_std=False), token_rewards=tr),
            case(f"verl_rloo_{name}", {"type": "rloo"}, mask, index, r, rloo(r, mask, index), token_rewards=tr),
            case(f"verl_rpp_baseline_{name}", {"type": "reinforce_plus_plus_baseline"}, mask, index, r, reinforce_pp_baseline(r, mask, index), token_rewards=tr),
            case(f"verl_opo_{name}", {"type": "opo"}, mask, index, r, opo(r, mask, index), token_rewards=tr),
            case(f"verl_gpg_{name}", {"type": "gpg"}, mask, index, r, gpg(r, mask, index), token_rewards=tr),
        ]
    cases += [
        case("biased_std_grpo", {"type": "grpo", "std": "biased", "eps": 1e-6}, mask, index, seq, grpo(seq, mask, index, unbiased=False)),
        case("verl_grpo_passk", {"type": "grpo_passk"}, mask, pk_index, pk_seq, grpo_passk(pk_seq, mask, pk_index)),
        case("verl_grpo_passk_no_std", {"type": "grpo_passk", "norm_by_std": False}, mask, pk_index, pk_seq, grpo_passk(pk_seq, mask, pk_index, norm_by_std=False)),
        case("verl_grpo_vectorized_floor", {"type": "grpo", "std_floor": 1e-3}, trl_mask, trl_index, tiny_seq, grpo_vectorized(tiny_seq, trl_mask, trl_index)),
        case("trl_grpo_group", {"type": "grpo", "eps": 1e-4, "singleton": "zero"}, trl_mask, trl_index, trl_seq, trl_grpo(trl_seq, trl_mask, G)),
        case("trl_batch_std", {"type": "batch_std"}, trl_mask, trl_index, trl_seq, trl_grpo(trl_seq, trl_mask, G, scale="batch")),
        case("trl_dr_grpo_none", {"type": "dr_grpo", "singleton": "zero"}, trl_mask, trl_index, trl_seq, trl_grpo(trl_seq, trl_mask, G, scale="none")),
        case("oat_grpo", {"type": "grpo", "eps": 1e-8, "singleton": "zero"}, trl_mask, trl_index, trl_seq, oat_grpo(trl_seq, trl_mask, G)),
        case("verl_gae_default_sequence", {"type": "gae"}, mask, index, seq, gae(seq, values, mask, 1.0, 1.0), values=values),
        case("verl_gae_holes_token", {"type": "gae", "gamma": 0.99, "lambda": 0.95}, holes, index, dense, gae(dense, values, holes, 0.99, 0.95), values=values, token_rewards=True),
        case("gae_no_whiten_holes", {"type": "gae", "gamma": 0.9, "lambda": 0.8, "whiten": "none"}, holes, index, seq_h, gae(seq_h, values, holes, 0.9, 0.8, whiten="none"), values=values),
        case("orz_gae", {"type": "gae", "whiten": "population"}, mask, index, seq, gae(seq, values, mask, 1.0, 1.0, whiten="population"), values=values),
        case("verl_reinforce_pp_token", {"type": "reinforce_plus_plus", "gamma": 0.97}, holes, index, dense, reinforce_pp(dense, holes, 0.97), token_rewards=True),
        case("verl_reinforce_pp_sequence", {"type": "reinforce_plus_plus"}, mask, index, seq, reinforce_pp(seq, mask, 1.0)),
        case("verl_remax_token", {"type": "remax"}, holes, index, dense, remax(dense, holes, baseline), baseline=baseline, token_rewards=True),
        case("verl_remax_sequence", {"type": "remax"}, mask, index, seq, remax(seq, mask, baseline), baseline=baseline),
    ]
    return {"generator": "scripts/reference/advantage.py --fixtures", "torch": torch.__version__, "cases": cases}


# ---------------------------------------------------------------------------------------------
# Bench: the same estimators at B = prompts x group, T tokens, on this machine.


def bench(B, T, group, reps):
    gen = torch.Generator().manual_seed(0)
    lens = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T).unsqueeze(0) < lens.unsqueeze(1)).float()
    scores = torch.randint(0, 2, (B,), generator=gen).float()
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lens - 1] = scores
    values = torch.randn(B, T, generator=gen)
    baseline = torch.rand(B, generator=gen)
    index = [i // group for i in range(B)]
    runs = {
        "gae": lambda: gae(rewards, values, mask, 1.0, 1.0),
        "grpo": lambda: grpo(rewards, mask, index),
        "grpo_vectorized": lambda: grpo_vectorized(rewards, mask, index),
        "dr_grpo": lambda: grpo(rewards, mask, index, norm_by_std=False),
        "batch_std": lambda: trl_grpo(rewards, mask, group, scale="batch"),
        "trl_grpo": lambda: trl_grpo(rewards, mask, group),
        "rloo": lambda: rloo(rewards, mask, index),
        "reinforce_plus_plus": lambda: reinforce_pp(rewards, mask, 1.0),
        "reinforce_plus_plus_baseline": lambda: reinforce_pp_baseline(rewards, mask, index),
        "remax": lambda: remax(rewards, mask, baseline),
        "opo": lambda: opo(rewards, mask, index),
        "gpg": lambda: gpg(rewards, mask, index),
        "grpo_passk": lambda: grpo_passk(rewards, mask, index),
        # memory-bound floor: one (B, T) broadcast multiply
        "floor_broadcast_mul": lambda: scores.unsqueeze(-1) * mask,
    }
    out = {"B": B, "T": T, "group": group, "torch": torch.__version__, "threads": torch.get_num_threads(), "ms": {}}
    with torch.no_grad():
        for name, f in runs.items():
            f()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                f()
                times.append((time.perf_counter() - t0) * 1e3)
            times.sort()
            out["ms"][name] = times[len(times) // 2]
            print(f"{name:32s} {out['ms'][name]:10.2f} ms", flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixtures", help="write the golden fixtures (JSON) to this path")
    p.add_argument("--bench", action="store_true", help="time every estimator at B x T")
    p.add_argument("--b", type=int, default=4096)
    p.add_argument("--t", type=int, default=4096)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", help="with --bench: also write the timings to this path")
    a = p.parse_args()
    if a.fixtures:
        with open(a.fixtures, "w") as f:
            json.dump(fixtures(), f, separators=(",", ":"))
            f.write("\n")
    if a.bench:
        res = bench(a.b, a.t, a.group, a.reps)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
    if not (a.fixtures or a.bench):
        p.print_help()


if __name__ == "__main__":
    main()
