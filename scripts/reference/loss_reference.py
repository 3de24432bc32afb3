#!/usr/bin/env python3
"""PyTorch transcription of the rl-loss losses, for golden values, gradients and benchmarks.

Re-implemented from the formulas (not copied) of, at the snapshots of docs/sources.md:
  verl   verl/trainer/ppo/core_algos.py (CA):  agg_loss L1025-1081, vanilla L1160-1250,
         gspo L1254-1326, sapo L1330-1411, gpg L1415-1447, clip_cov L1451-1552,
         kl_cov L1556-1632, geo_mean L1636-1718, cispo L1722-1779, value loss L1799-1838,
         kl_penalty L1841-1902, adaptive KL controller L152-173
  verl   verl/utils/torch_functional.py entropy_from_logits L224-238
  verl   verl/trainer/ppo/rollout_corr_helper.py truncated IS weights L481-598
  oat    oat/algorithms/ppo.py L216-224 (Dr. GRPO constant normaliser)
  TRL    trl/trainer/grpo_trainer.py L3054-3148 (grpo / dr_grpo / dapo / cispo / sapo)

Gradients are taken with torch autograd with respect to the current log-probs (values for the
value loss, logits for the entropy), so every stop-gradient of the sources is exercised.

Deviations, mirrored in Rust and documented in docs/loss.md:
  * clip_cov draws its tokens with a seeded SplitMix64 Fisher-Yates shuffle instead of
    torch.randperm (transcribed below), so the selection is reproducible;
  * sequence means divide by the number of non-empty rows (verl's global_batch_size semantics).

Usage:
  python loss_reference.py                      # writes crates/rl-loss/tests/fixtures/losses.json
  python loss_reference.py --bench [B T iters]  # times loss + backward at (B, T)
                                                # (TORCH_THREADS=n sets torch's thread count)
"""
import json
import math
import os
import sys
import time

import torch

F32 = torch.float32
MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# helpers


def masked_mean(v, m):
    return (torch.where(m.bool(), v, 0.0) * m).sum() / (m.sum() + 1e-8)


def agg(l, m, mode, group_ids=None, max_len=None, scale=None):
    """Aggregation; sequence means over non-empty rows (verl global_batch_size semantics)."""
    t = m.shape[-1]
    s = (l * m).sum(-1)
    lens = m.sum(-1)
    k = (lens > 0).to(F32)
    g = k.sum()
    if mode == "token-mean":
        return (l * m).sum() / m.sum()
    if mode == "seq-mean-token-sum":
        return (s * k).sum() / g
    if mode == "seq-mean-token-mean":
        return (s / (lens + 1e-8) * k).sum() / g
    if mode == "seq-mean-token-sum-norm":  # Dr. GRPO paper / oat: / (B * max_len)
        return (s * k).sum() / (g * (max_len or t))
    if mode == "seq-sum-token-sum-norm":  # verl's seq-mean-token-sum-norm: no / B
        return s.sum() / (scale or t)
    if mode == "group-token-mean":  # DAPO paper, per group
        total, groups = 0.0, 0
        for gid in sorted(set(group_ids)):
            rows = [i for i, x in enumerate(group_ids) if x == gid]
            n = lens[rows].sum()
            if n > 0:
                total = total + s[rows].sum() / n
                groups += 1
        return total / groups
    raise ValueError(mode)


def splitmix_choice(items, k, seed):
    state = seed & MASK64
    items = list(items)
    k = min(k, len(items))
    for i in range(k):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z = z ^ (z >> 31)
        j = i + z % (len(items) - i)
        items[i], items[j] = items[j], items[i]
    return items[:k]


# --------------------------------------------------------------------------------------------
# policy losses: each returns (per-token loss matrix or scalar, metrics dict)


def ppo(lp, old, adv, m, clip_low=0.2, clip_high=0.2, dual_clip=3.0):
    logr = torch.clamp(lp - old, -20.0, 20.0)
    ratio = torch.exp(logr)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    lc = torch.maximum(l1, l2)
    met = {
        "approx_kl": masked_mean(-logr, m).item(),
        "clipfrac": masked_mean((l2 > l1).to(F32), m).item(),
        "clipfrac_high": masked_mean(((l2 > l1) & (adv > 0)).to(F32), m).item(),
        "clipfrac_low": masked_mean(((l2 > l1) & (adv < 0)).to(F32), m).item(),
    }
    if dual_clip is None:
        return lc, met
    l3 = -adv * dual_clip
    met["clipfrac_dual"] = masked_mean(((lc > l3) & (adv < 0)).to(F32), m).item()
    return torch.where(adv < 0, torch.minimum(l3, lc), lc), met


def gspo(lp, old, adv, m, clip_low, clip_high):
    lens = m.sum(-1).clamp(min=1)
    sbar = ((lp - old) * m).sum(-1) / lens
    log_s = torch.clamp(lp - lp.detach() + sbar.detach().unsqueeze(-1), max=10.0)
    s = torch.exp(log_s)
    l1 = -adv * s
    l2 = -adv * torch.clamp(s, 1 - clip_low, 1 + clip_high)
    return torch.maximum(l1, l2), {"clipfrac": masked_mean((l2 > l1).to(F32), m).item()}


def cispo(lp, old, adv, m, clip_low, clip_high):
    ratio = torch.exp(torch.clamp(lp - old, -20.0, 20.0))
    w = torch.clamp(ratio, 1 - clip_low, 1 + clip_high).detach()
    clipped = ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).to(F32)
    return -w * adv * lp, {"clipfrac": masked_mean(clipped, m).item()}


def sapo(lp, old, adv, m, tau_pos=1.0, tau_neg=1.05):
    ratio = torch.exp(torch.clamp(lp - old, -20.0, 20.0))
    tau = torch.where(adv > 0, torch.tensor(tau_pos, dtype=F32), torch.tensor(tau_neg, dtype=F32))
    gate = torch.sigmoid(tau * (ratio - 1))
    return -(gate * (4.0 / tau) * adv), {}


def gmpo(lp, old, adv, m, clip_low, clip_high):
    logr = lp - old
    sgn = torch.sign(adv)
    logr_c = torch.clamp(logr, -clip_low, clip_high)
    mm = sgn * torch.min(sgn * logr, sgn * logr_c)
    lens = m.sum(-1)
    ratio = torch.exp((mm * m).sum(-1) / (lens + 1e-8))
    abar = (adv * m).sum(-1) / (lens + 1e-8)
    clipped = torch.ne(logr, logr_c)
    met = {
        "clipfrac_high": masked_mean((clipped & (adv > 0)).to(F32), m).item(),
        "clipfrac_low": masked_mean((clipped & (adv < 0)).to(F32), m).item(),
    }
    return torch.mean(-abar * ratio), met  # scalar (verl: mean over all rows)


def covariance(lp, adv, m):
    ma = masked_mean(adv, m)
    ml = masked_mean(lp.detach(), m)
    return (adv - ma) * (lp.detach() - ml)


def clip_cov(lp, old, adv, m, clip_low, clip_high, ratio_k, lb, ub, seed):
    ratio = torch.exp(lp - old)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    by_origin = (l2 > l1) & (m > 0)
    cov = covariance(lp, adv, m)
    cov[m == 0] = -math.inf
    cov[by_origin] = -math.inf
    n = int(m.sum().item())
    k = max(int(ratio_k * n), 1)
    flat = ((cov < ub) & (cov > lb) & (m > 0)).reshape(-1)
    cand = [i for i in range(flat.numel()) if bool(flat[i])]
    corr = torch.ones_like(adv).reshape(-1)
    chosen = splitmix_choice(cand, k, seed)
    corr[chosen] = 0.0
    corr = corr.reshape(adv.shape)
    return torch.maximum(l1, l2) * corr, {"cov_frac": len(chosen) / n}


def kl_cov(lp, old, adv, m, ratio_k, kl_coef):
    logr = lp - old
    ratio = torch.exp(logr)
    l = -adv * ratio
    l_kl = -adv * ratio + kl_coef * logr.abs()
    valid = (m > 0).reshape(-1)
    idx = torch.nonzero(valid).reshape(-1)
    a, p = adv.reshape(-1)[idx], lp.detach().reshape(-1)[idx]
    cov = (a - a.mean()) * (p - p.mean())
    k = max(1, int(len(cov) * ratio_k))
    top = idx[torch.topk(cov, k, largest=True).indices]
    sel = torch.zeros(m.numel(), dtype=torch.bool)
    sel[top] = True
    sel = sel.reshape(m.shape)
    return torch.where(sel, l_kl, l), {"cov_frac": k / len(cov)}


def reinforce(lp, old, adv, m):
    return -lp * adv, {}


def value_loss(v, old, ret, m, clip):
    vc = torch.max(torch.min(v, old + clip), old - clip)
    l1 = (v - ret) ** 2
    l2 = (vc - ret) ** 2
    return torch.max(l1, l2), {"clipfrac": masked_mean((l2 > l1).to(F32), m).item()}


def kl_est(lp, ref, name):
    x = lp - ref
    if name == "k1":
        return x
    if name == "abs":
        return x.abs()
    if name == "k2":
        return 0.5 * x.square()
    if name == "k3":
        k = torch.clamp(ref - lp, -20, 20)
        return torch.clamp(torch.exp(k) - k - 1, -10, 10)
    raise ValueError(name)


def kl_st(lp, ref, name):
    b = kl_est(lp, ref, "k2")
    return b - b.detach() + kl_est(lp, ref, name).detach()


def entropy_from_logits(z):
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


def tis(lp_train, lp_rollout, m, level, threshold):
    logr = lp_train - lp_rollout
    if level == "token":
        w = torch.exp(torch.clamp(logr, -20, 20))
    else:
        w = torch.exp(torch.clamp((logr * m).sum(-1, keepdim=True), -20, 20)).expand_as(logr)
    return (w * m).clamp(max=threshold)


# --------------------------------------------------------------------------------------------
# fixtures


def make_inputs(gen, b, t, lens, per_token_adv=False):
    lp = torch.log(torch.rand(b, t, generator=gen) * 0.95 + 0.02)
    old = lp + (torch.rand(b, t, generator=gen) - 0.5) * 0.8
    if per_token_adv:
        adv = torch.randn(b, t, generator=gen)
    else:
        adv = torch.randn(b, 1, generator=gen).expand(b, t).clone()
    m = torch.zeros(b, t)
    for i, n in enumerate(lens):
        m[i, :n] = 1.0
    # Padding holds garbage the losses must ignore.
    pad = m == 0
    lp[pad] = -3.0
    old[pad] = 1.5
    adv[pad] = 7.0
    return lp, old, adv, m


def t2l(x):
    return [[float(v) for v in row] for row in x]


def policy_case(name, kind, params, agg_spec, fn, lp, old, adv, m, is_w=None, group_ids=None):
    lp = lp.clone().requires_grad_(True)
    out, met = fn(lp, old, adv, m)
    if out.dim() == 0:
        loss = out
    else:
        if is_w is not None:
            out = out * is_w
        a = dict(agg_spec)
        mode = a.pop("mode")
        loss = agg(out, m, mode, group_ids=group_ids, **a)
    loss.backward()
    case = {
        "name": name,
        "kind": kind,
        "config": params,
        "inputs": {"log_probs": t2l(lp.detach()), "old_log_probs": t2l(old), "advantages": t2l(adv), "mask": t2l(m)},
        "loss": float(loss),
        "grad": t2l(lp.grad),
        "metrics": met,
    }
    if is_w is not None:
        case["inputs"]["rollout_is_weights"] = t2l(is_w)
    if group_ids is not None:
        case["inputs"]["group_ids"] = group_ids
    return case


def recipe_spelling(x):
    """The recipe spelling of an aggregation spec: verl's `loss_agg_mode` names ("seq-mean-token-sum")
    become rl-loss's `{"type": "seq_mean_token_sum"}` (serde tag `type`, snake_case)."""
    if isinstance(x, dict):
        x = {k: recipe_spelling(v) for k, v in x.items()}
        if "mode" in x:
            x["type"] = x.pop("mode").replace("-", "_")
        return x
    if isinstance(x, list):
        return [recipe_spelling(v) for v in x]
    return x


def recipe_spelling_configs(out):
    for case in out["cases"]:
        if "config" in case:
            case["config"] = recipe_spelling(case["config"])
    return out


def build():
    gen = torch.Generator().manual_seed(1234)
    b, t = 4, 8
    lens = [8, 5, 3, 6]
    lp, old, adv, m = make_inputs(gen, b, t, lens)
    lpt, oldt, advt, mt = make_inputs(gen, b, t, lens, per_token_adv=True)
    lpe, olde, adve, me = make_inputs(gen, b, t, [8, 0, 3, 6])
    cases = []
    tm = {"mode": "token-mean"}

    def ppo_case(name, cfg, agg_spec, data=(lp, old, adv, m), **kw):
        conf = dict(cfg, aggregation=agg_spec, type="ppo")
        fn = lambda a, b_, c, d: ppo(a, b_, c, d, cfg["clip_low"], cfg["clip_high"], cfg["dual_clip"])
        cases.append(policy_case(name, "policy", conf, agg_spec, fn, *data, **kw))

    verl = {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": 3.0}
    dapo = {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": 10.0}
    nodual = {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": None}
    # dual clip c = 1.2 makes the dual branch active on these inputs
    tight = {"clip_low": 0.1, "clip_high": 0.15, "dual_clip": 1.2}
    ppo_case("ppo_verl_token_mean", verl, tm)
    ppo_case("ppo_dapo_token_mean", dapo, tm, data=(lpt, oldt, advt, mt))
    ppo_case("ppo_dual_clip_active", tight, tm, data=(lpt, oldt, advt, mt))
    ppo_case("ppo_grpo_seq_mean_token_mean", nodual, {"mode": "seq-mean-token-mean"})
    ppo_case("ppo_dr_grpo_sum_norm", nodual, {"mode": "seq-mean-token-sum-norm", "max_len": 10})
    ppo_case("ppo_seq_mean_token_sum", verl, {"mode": "seq-mean-token-sum"})
    ppo_case("ppo_verl_sum_norm", verl, {"mode": "seq-sum-token-sum-norm"})
    ppo_case("ppo_group_token_mean", verl, {"mode": "group-token-mean"}, group_ids=[0, 0, 1, 1])
    ppo_case("ppo_empty_row_seq_mean", verl, {"mode": "seq-mean-token-mean"}, data=(lpe, olde, adve, me))
    ppo_case("ppo_empty_row_token_mean", verl, tm, data=(lpe, olde, adve, me))
    # rollout correction: token-level TIS weights from a perturbed "rollout" log-prob
    rollout = old + (torch.rand(b, t, generator=gen) - 0.5) * 1.2
    w_tok = tis(old, rollout, m, "token", 2.0)
    w_seq = tis(old, rollout, m, "sequence", 2.0)
    ppo_case("ppo_with_tis", verl, tm, is_w=w_tok)
    for level, w in (("token", w_tok), ("sequence", w_seq)):
        cases.append({
            "name": f"tis_{level}", "kind": "tis", "config": {"level": level, "threshold": 2.0},
            "inputs": {"log_probs": t2l(old), "old_log_probs": t2l(rollout), "mask": t2l(m)},
            "weights": t2l(w),
        })

    def add(name, conf, agg_spec, fn, data=(lpt, oldt, advt, mt), **kw):
        cases.append(policy_case(name, "policy", conf, agg_spec, fn, *data, **kw))

    smtm = {"mode": "seq-mean-token-mean"}
    add("gspo", {"type": "gspo", "clip_low": 0.01, "clip_high": 0.02, "aggregation": smtm}, smtm,
        lambda a, b_, c, d: gspo(a, b_, c, d, 0.01, 0.02), data=(lp, old, adv, m))
    add("cispo_verl", {"type": "cispo", "clip_low": 0.2, "clip_high": 0.2, "aggregation": tm}, tm,
        lambda a, b_, c, d: cispo(a, b_, c, d, 0.2, 0.2))
    add("cispo_trl", {"type": "cispo", "clip_low": 1.0, "clip_high": 0.25, "aggregation": tm}, tm,
        lambda a, b_, c, d: cispo(a, b_, c, d, 1.0, 0.25))
    add("sapo", {"type": "sapo", "tau_pos": 1.0, "tau_neg": 1.05, "aggregation": smtm}, smtm, sapo)
    add("gmpo", {"type": "gmpo", "clip_low": 0.1, "clip_high": 0.15}, tm,
        lambda a, b_, c, d: gmpo(a, b_, c, d, 0.1, 0.15), data=(lp, old, adv, m))
    add("clip_cov", {"type": "clip_cov", "clip_low": 0.2, "clip_high": 0.2, "ratio": 0.2, "lb": 0.0,
                     "ub": 5.0, "seed": 3, "aggregation": tm}, tm,
        lambda a, b_, c, d: clip_cov(a, b_, c, d, 0.2, 0.2, 0.2, 0.0, 5.0, 3))
    add("kl_cov", {"type": "kl_cov", "ratio": 0.2, "kl_coef": 0.5, "aggregation": tm}, tm,
        lambda a, b_, c, d: kl_cov(a, b_, c, d, 0.2, 0.5))
    add("reinforce_seq_mean_token_sum", {"type": "reinforce", "aggregation": {"mode": "seq-mean-token-sum"}},
        {"mode": "seq-mean-token-sum"}, reinforce)

    # value loss: values, old values, returns
    v = torch.randn(b, t, generator=gen)
    vold = v + (torch.rand(b, t, generator=gen) - 0.5) * 0.8
    ret = torch.randn(b, t, generator=gen)
    for clip in (0.2, 0.5):
        vv = v.clone().requires_grad_(True)
        mat, met = value_loss(vv, vold, ret, m, clip)
        loss = 0.5 * agg(mat, m, "token-mean")
        loss.backward()
        cases.append({
            "name": f"value_clip_{clip}", "kind": "value", "config": {"clip": clip, "aggregation": tm},
            "inputs": {"values": t2l(v), "old_values": t2l(vold), "returns": t2l(ret), "mask": t2l(m)},
            "loss": float(loss), "grad": t2l(vv.grad), "metrics": met,
        })

    # KL as a loss term, every estimator, plain and straight-through
    ref = lp + (torch.rand(b, t, generator=gen) - 0.5) * 1.5
    for name in ("k1", "abs", "k2", "k3"):
        for st in (False, True):
            x = lp.clone().requires_grad_(True)
            mat = kl_st(x, ref, name) if st else kl_est(x, ref, name)
            loss = 0.1 * agg(mat, m, "seq-mean-token-mean")
            loss.backward()
            cases.append({
                "name": f"kl_{name}{'_st' if st else ''}", "kind": "kl",
                "config": {"kl": {"estimator": name, "straight_through": st}, "coef": 0.1, "aggregation": smtm},
                "inputs": {"log_probs": t2l(lp), "ref_log_probs": t2l(ref), "mask": t2l(m)},
                "loss": float(loss), "grad": t2l(x.grad),
                "values": t2l(kl_est(lp, ref, name) * m),
            })

    # entropy from logits (B, T, V) with an arbitrary upstream gradient
    z = (torch.randn(2, 3, 5, generator=gen) * 2.0).requires_grad_(True)
    up = torch.randn(2, 3, generator=gen)
    h = entropy_from_logits(z)
    (h * up).sum().backward()
    cases.append({
        "name": "entropy", "kind": "entropy",
        "inputs": {"logits": z.detach().tolist(), "upstream": t2l(up)},
        "values": t2l(h.detach()), "grad": z.grad.tolist(),
    })
    return {"generator": "scripts/reference/loss_reference.py", "torch": torch.__version__, "cases": cases}


# --------------------------------------------------------------------------------------------
# benchmark


def bench(b, t, iters):
    if os.environ.get("TORCH_THREADS"):
        torch.set_num_threads(int(os.environ["TORCH_THREADS"]))
    torch.manual_seed(0)
    lp0, old, adv, m = make_inputs(torch.Generator().manual_seed(0), b, t, [t - (i * 7) % (t // 2) for i in range(b)])
    fns = {
        "ppo_token_mean": lambda x: agg(ppo(x, old, adv, m)[0], m, "token-mean"),
        "gspo": lambda x: agg(gspo(x, old, adv, m, 3e-4, 4e-4)[0], m, "seq-mean-token-mean"),
        "cispo": lambda x: agg(cispo(x, old, adv, m, 0.2, 0.2)[0], m, "token-mean"),
        "value": lambda x: 0.5 * agg(value_loss(x, old, adv, m, 0.5)[0], m, "token-mean"),
        "kl_k3": lambda x: agg(kl_est(x, old, "k3"), m, "token-mean"),
    }
    res = {}
    for name, f in fns.items():
        times = []
        for _ in range(iters + 1):
            x = lp0.clone().requires_grad_(True)
            s = time.perf_counter()
            f(x).backward()
            times.append(time.perf_counter() - s)
        res[name] = sorted(times[1:])[len(times[1:]) // 2] * 1e3
    print(json.dumps({"B": b, "T": t, "torch_threads": torch.get_num_threads(), "median_ms": res}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        args = [int(a) for a in sys.argv[2:]] + [512, 4096, 5][len(sys.argv) - 2:]
        bench(*args[:3])
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        out = os.path.join(here, "..", "..", "crates", "rl-loss", "tests", "fixtures", "losses.json")
        with open(out, "w") as f:
            json.dump(recipe_spelling_configs(build()), f, indent=None, separators=(",", ":"))
        print("wrote", os.path.normpath(out))
