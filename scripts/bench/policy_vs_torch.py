"""PyTorch / transformers side of `RLZ_POLICY_BENCH_SMOLLM2=WHAT:RxC[:ITERS] cargo bench --bench policy`.

SmolLM2-135M-Instruct in f32 (the GGUF dequantized by transformers, or an HF dir written by
`LanguageModel::save`), the same inputs as benches/policy.rs, one workload per process:
  * fwdbwd:BxT  forward + backward of the mean log-prob of B responses of T tokens after a
                16-token prompt (full-vocab log_softmax + gather, as rl-policy's token_log_probs);
  * sample:RxN  `generate` of N new tokens for R prompts of 16 tokens, temperature 1, no top-k /
                top-p, no EOS stop (min_new_tokens = N), KV cache;
  * gemm:BxT    only the matrix products of fwdbwd:BxT (same shapes, random values).

With `--precision bf16` the forward passes (and their products) run under
`torch.autocast(DEVICE, dtype=torch.bfloat16)` (weights stay f32; the log-softmax, the loss and the
backward call outside the autocast region, as PyTorch's AMP recipe does).

`--config CONFIG.json` builds a random-weight model from a Hugging Face config instead (seeded; the
GPU bundle's SmolLM2-135M- and Qwen2-0.5B-shaped models, scripts/gpu/configs/), which needs only
torch and transformers; `--device cuda` runs on the first GPU (timings after
`torch.cuda.synchronize()`, peak memory from `torch.cuda.max_memory_allocated`, reset per
iteration, and the device memory in use from `torch.cuda.mem_get_info`, as the Rust side measures
it). Several workloads may follow one another in one process (the model is built once).

Prints `RESULT side=torch ...` lines (seconds, tokens/s, peak RSS) for scripts/bench/compare.sh,
or with `--json` one JSON object per iteration (the format of rl-policy's `device_bench` example,
for scripts/gpu/run.sh).

usage: scripts/.venv/bin/python scripts/bench/policy_vs_torch.py fwdbwd:8x256[:ITERS] [--threads N] [--hf-dir DIR]
       python policy_vs_torch.py --config scripts/gpu/configs/tiny.json --device cpu --json fwdbwd:2x32:2 sample:2x8:2
"""
import argparse
import json
import pathlib
import resource
import sys
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
    ap.add_argument("spec", nargs="+", help="fwdbwd:BxT[:ITERS], sample:RxN[:ITERS] or gemm:BxT[:ITERS]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hf-dir", default=None)
    ap.add_argument("--config", default=None, help="random weights from this HF config.json")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", action="store_true", help="one JSON object per iteration")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("policy_vs_torch.py: --device cuda but torch.cuda.is_available() is False")
    clock = time.time()
    name = "smollm2-135m-gguf"
    if a.config:
        from transformers import AutoConfig
        raw = json.loads(pathlib.Path(a.config).read_text())
        cfg = AutoConfig.for_model(**raw)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        name = pathlib.Path(a.config).stem
    elif a.hf_dir:
        model = AutoModelForCausalLM.from_pretrained(a.hf_dir, dtype=torch.float32)
        name = pathlib.Path(a.hf_dir).name
    else:
        model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
    model.to(dev)
    params = sum(p.numel() for p in model.parameters())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    print(f"torch load: {time.time() - clock:.2f} s", file=sys.stderr if a.json else sys.stdout, flush=True)
    bf16 = a.precision == "bf16"
    gpu_used = [None]

    def sample_gpu():
        if cuda:
            free, total = torch.cuda.mem_get_info()
            now = (total - free) / 2**20
            gpu_used[0] = now if gpu_used[0] is None else max(gpu_used[0], now)

    def autocast():
        return torch.autocast(a.device, dtype=torch.bfloat16, enabled=bf16)

    for spec in a.spec:
        parts = spec.split(":")
        what, (r, c) = parts[0], map(int, parts[1].split("x"))
        iters = int(parts[2]) if len(parts) > 2 else 2
        run(a, model, dev, name, params, what, r, c, iters, autocast, sync, sample_gpu, gpu_used)


def run(a, model, dev, name, params, what, r, c, iters, autocast, sync, sample_gpu, gpu_used):
    """Times one workload `iters` times and reports each iteration."""
    cuda = a.device == "cuda"

    def begin():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        return time.time()

    def report(it, secs, tokens):
        if a.json:
            print(json.dumps({
                "side": "torch", "device": a.device, "model": name, "params": params,
                "precision": a.precision, "what": what, "shape": f"{r}x{c}", "iter": it,
                "secs": secs, "tok_s": tokens / secs, "peak_rss_mb": peak_rss_mb(),
                "gpu_used_mb": gpu_used[0],
                "gpu_peak_alloc_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            }), flush=True)
            return
        print(f"RESULT side=torch what={what} shape={r}x{c} threads={a.threads} iter={it} "
              f"secs={secs:.3f} tok_s={tokens / secs:.1f} peak_rss_mb={peak_rss_mb():.0f} "
              f"precision={a.precision}", flush=True)

    if what == "fwdbwd":
        prompt, response = ids(r, 16, 3).to(dev), ids(r, c, 4).to(dev)
        x = torch.cat([prompt, response], 1)
        for it in range(iters):
            model.zero_grad(set_to_none=True)
            clock = begin()
            with autocast():
                logits = model(x).logits[:, 15:-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, response[..., None])[..., 0]
            loss = lp.mean()
            sample_gpu()
            loss.backward()
            sync()
            secs = time.time() - clock
            sample_gpu()
            report(it, secs, r * (c + 16))
        model.zero_grad(set_to_none=True)
    elif what == "sample":
        vocab = min(49152, model.config.vocab_size)  # 49152: SmolLM2's, as benches/policy.rs
        prompts = torch.tensor([[(t * 131 + i * 17 + 5) % vocab for t in range(16)] for i in range(r)]).to(dev)
        with torch.no_grad():
            for it in range(iters):
                torch.manual_seed(it)
                clock = begin()
                with autocast():
                    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=c,
                                         min_new_tokens=c, do_sample=True, temperature=1.0, top_k=0,
                                         top_p=1.0, pad_token_id=2)
                sync()
                secs = time.time() - clock
                sample_gpu()
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
        rnd = lambda *shape: torch.randn(*shape, device=dev)  # noqa: E731
        lin = [(nh * hd, d), (nkv * hd, d), (nkv * hd, d), (d, nh * hd), (f, d), (f, d), (d, f)]
        lin = [(rnd(n, i), rnd(o, i), rnd(n, o)) for o, i in lin]
        q, k, vv = rnd(r, nkv, reps * t, hd), rnd(r, nkv, t, hd), rnd(r, nkv, t, hd)
        p, gctx = rnd(r, nkv, reps * t, t), rnd(r, nkv, reps * t, hd)
        hx, hw, hg = rnd(r * c, d), rnd(v, d), rnd(r * c, v)
        with torch.no_grad(), autocast():
            for it in range(iters):
                clock = begin()
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
                sync()
                report(it, time.time() - clock, n)
    else:
        raise SystemExit(f"unknown workload {what!r} (fwdbwd, sample or gemm)")


if __name__ == "__main__":
    main()
