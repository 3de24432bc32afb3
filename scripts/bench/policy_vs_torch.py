"""PyTorch side of `RLZ_POLICY_BENCH_SMOLLM2=BxT cargo bench --bench policy`.

SmolLM2-135M-Instruct (GGUF dequantized to f32 by transformers, or an HF dir written by
`LanguageModel::save`), same inputs as benches/policy.rs:
  * forward+backward of the mean log-prob of B responses of T tokens after a 16-token prompt
    (full-vocab log_softmax + gather, as rl-policy's `token_log_probs`), 2 iterations;
  * greedy KV-cache generation of 32 tokens for 1 and 8 prompts of 16 tokens.

usage: scripts/.venv/bin/python scripts/bench/policy_vs_torch.py 2x128 [--threads N] [--hf-dir DIR]
"""
import argparse
import pathlib
import time

import torch
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
GGUF = ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"


def ids(rows, cols, seed):
    """The same pseudo-random ids as `ids()` in benches/policy.rs."""
    v = [(((i * 2654435761) & 0xFFFFFFFF) ^ seed) % 512 for i in range(rows * cols)]
    return torch.tensor(v, dtype=torch.long).reshape(rows, cols)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hf-dir", default=None)
    a = ap.parse_args()
    b, t = map(int, a.shape.split("x"))
    torch.set_num_threads(a.threads)
    clock = time.time()
    if a.hf_dir:
        model = AutoModelForCausalLM.from_pretrained(a.hf_dir, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
    print(f"torch load: {time.time() - clock:.2f} s")
    prompt, response = ids(b, 16, 3), ids(b, t, 4)
    x = torch.cat([prompt, response], 1)
    for it in range(2):
        model.zero_grad(set_to_none=True)
        clock = time.time()
        logits = model(x).logits[:, 15:-1]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, response[..., None])[..., 0]
        loss = lp.mean()
        fwd = time.time() - clock
        loss.backward()
        total = time.time() - clock
        print(f"torch fwd+bwd {b}x{t} iter {it}: fwd {fwd:.2f} s, fwd+bwd {total:.2f} s, "
              f"{b * (t + 16) / total:.1f} tok/s")
    prompts = torch.tensor([[(tt * 131 + i * 17 + 5) % 49152 for tt in range(16)] for i in range(8)])
    with torch.no_grad():
        for rows in (1, 8):
            clock = time.time()
            model.generate(prompts[:rows], attention_mask=torch.ones_like(prompts[:rows]),
                           max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=2)
            secs = time.time() - clock
            print(f"torch greedy {rows}x32: {secs:.2f} s, {rows * 32 / secs:.1f} tok/s")


if __name__ == "__main__":
    main()
