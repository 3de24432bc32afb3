"""PyTorch / transformers side of `RLZ_POLICY_BENCH_SMOLLM2=WHAT:RxC[:ITERS] cargo bench --bench policy`.

SmolLM2-135M-Instruct in f32 (the GGUF dequantized by transformers, or an HF dir written by
`LanguageModel::save`), the same inputs as benches/policy.rs, one workload per process:
  * fwdbwd:BxT  forward + backward of the mean log-prob of B responses of T tokens after a
                16-token prompt (full-vocab log_softmax + gather, as rl-policy's token_log_probs);
  * sample:RxN  `generate` of N new tokens for R prompts of 16 tokens, temperature 1, no top-k /
                top-p, no EOS stop (min_new_tokens = N), KV cache;
  * gemm:BxT    only the matrix products of fwdbwd:BxT (same shapes, random values).

With `--precision bf16` the forward passes (and their products) run under
`torch.autocast("cpu", dtype=torch.bfloat16)` (weights stay f32; the log-softmax, the loss and the
backward call outside the autocast region, as PyTorch's AMP recipe does).

Prints `RESULT side=torch ...` lines (seconds, tokens/s, peak RSS) for scripts/bench/compare.sh.

usage: scripts/.venv/bin/python scripts/bench/policy_vs_torch.py fwdbwd:8x256[:ITERS] [--threads N] [--hf-dir DIR]
"""
import argparse
import pathlib
import resource
import time

import torch
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
GGUF = ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"


def ids(rows, cols, seed):
    """The same pseudo-random ids as `ids()` in benches/policy.rs."""
    v = [(((i * 2654435761) & 0xFFFFFFFF) ^ seed) % 512 for i in range(rows * cols)]
    return torch.tensor(v, dtype=torch.long).reshape(rows, cols)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", help="fwdbwd:BxT[:ITERS] or sample:RxN[:ITERS]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hf-dir", default=None)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    parts = a.spec.split(":")
    what, (r, c) = parts[0], map(int, parts[1].split("x"))
    iters = int(parts[2]) if len(parts) > 2 else 2
    torch.set_num_threads(a.threads)
    clock = time.time()
    if a.hf_dir:
        model = AutoModelForCausalLM.from_pretrained(a.hf_dir, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
    print(f"torch load: {time.time() - clock:.2f} s")
    bf16 = a.precision == "bf16"

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def report(it, secs, tokens):
        print(f"RESULT side=torch what={what} shape={r}x{c} threads={a.threads} iter={it} "
              f"secs={secs:.3f} tok_s={tokens / secs:.1f} peak_rss_mb={peak_rss_mb():.0f} "
              f"precision={a.precision}", flush=True)

    if what == "fwdbwd":
        prompt, response = ids(r, 16, 3), ids(r, c, 4)
        x = torch.cat([prompt, response], 1)
        for it in range(iters):
            model.zero_grad(set_to_none=True)
            clock = time.time()
            with autocast():
                logits = model(x).logits[:, 15:-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, response[..., None])[..., 0]
            lp.mean().backward()
            report(it, time.time() - clock, r * (c + 16))
    elif what == "sample":
        prompts = torch.tensor([[(t * 131 + i * 17 + 5) % 49152 for t in range(16)] for i in range(r)])
        with torch.no_grad():
            for it in range(iters):
                torch.manual_seed(it)
                clock = time.time()
                with autocast():
                    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=c,
                                         min_new_tokens=c, do_sample=True, temperature=1.0, top_k=0,
                                         top_p=1.0, pad_token_id=2)
                secs = time.time() - clock
                assert out.shape[1] == 16 + c, out.shape
                report(it, secs, r * c)
    elif what == "gemm":
        # The matrix products of fwdbwd:RxC alone, as benches/policy.rs `gemm` (same shapes).
        cfg = model.config
        d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
        nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        hd = getattr(cfg, "head_dim", None) or d // nh
        t = c + 16
        n, reps = r * t, nh // nkv
        lin = [(nh * hd, d), (nkv * hd, d), (nkv * hd, d), (d, nh * hd), (f, d), (f, d), (d, f)]
        lin = [(torch.randn(n, i), torch.randn(o, i), torch.randn(n, o)) for o, i in lin]
        q, k, vv = torch.randn(r, nkv, reps * t, hd), torch.randn(r, nkv, t, hd), torch.randn(r, nkv, t, hd)
        p, gctx = torch.randn(r, nkv, reps * t, t), torch.randn(r, nkv, reps * t, hd)
        hx, hw, hg = torch.randn(r * c, d), torch.randn(v, d), torch.randn(r * c, v)
        with torch.no_grad(), autocast():
            for it in range(iters):
                clock = time.time()
                for _ in range(cfg.num_hidden_layers):
                    for x, w, g in lin:
                        torch.nn.functional.linear(x, w)
                        g @ w
                        g.t() @ x
                    q @ k.transpose(-1, -2)
                    p @ vv
                    gctx @ vv.transpose(-1, -2)
                    p.transpose(-1, -2) @ gctx
                    p @ k
                    p.transpose(-1, -2) @ q
                hx @ hw.t()
                hg @ hw
                hg.t() @ hx
                report(it, time.time() - clock, n)
    else:
        raise SystemExit(f"unknown workload {what!r} (fwdbwd, sample or gemm)")


if __name__ == "__main__":
    main()
