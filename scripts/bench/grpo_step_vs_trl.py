"""TRL side of scripts/bench/grpo_step_vs_trl.sh: ONE GRPOTrainer step (generate 32 completions,
score them, Dr. GRPO loss + backward over 8 micro-batches of 4, one AdamW step) on
SmolLM2-135M-Instruct in f32 on the CPU, timed without model loading and trainer setup.

  prepare DIR   converts .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (dequantized to f32 by
                transformers) and its tokenizer into a plain Hugging Face directory DIR
  step DIR      runs trainer.train() with max_steps=1 on the model in DIR and prints
                `RESULT side=trl secs=... tokens=... completion_len=... peak_rss_mb=...`

Settings (mirroring `examples/dr_grpo.rs --prompts 8 --samples 4 --max-new-tokens 128 --lr 1e-6
--temperature 1 --micro-batch 4`):
8 prompts x num_generations=4, max_completion_length=128, temperature 1, top_p 1, top_k 0,
loss_type="dr_grpo", scale_rewards="none", beta=0.0 (no reference model), epsilon 0.2,
num_iterations=1, lr 1e-6 constant, AdamW betas (0.9, 0.95), weight decay 0, max_grad_norm 1.0,
per_device_train_batch_size=4, gradient_accumulation_steps=8 (steps_per_generation defaults to 8,
so generation_batch_size = 32 and one optimizer step consumes exactly one generation), f32 (bf16
off), no gradient checkpointing, use_cpu, torch.set_num_threads(THREADS).

`secs` is on_step_begin -> on_step_end of the Trainer callback (generation, reward, 8 forward +
backward passes, grad clip, optimizer step); `gen_secs` is the part spent in
`_generate_and_score_completions` (generation + reward + advantages). `tokens` is every prompt and
completion token of the 32 sequences (padding excluded), `completion_len` the mean completion length
(EOS included, as TRL's completion mask).

usage: scripts/.venv/bin/python scripts/bench/grpo_step_vs_trl.py prepare target/bench-trl/smollm2-hf
       scripts/.venv/bin/python scripts/bench/grpo_step_vs_trl.py step target/bench-trl/smollm2-hf [--seed 0]
"""
import argparse
import os
import pathlib
import random
import re
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
GGUF = ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def held_out(a, b):
    """The held-out split of src/run.rs `held_out`."""
    return (a * 31 + b * 17) % 97 < 10


def question(a, b):
    """rl-zero's built-in addition question (src/run/data.rs `addition_prompts`)."""
    return f"What is {a} + {b}? Put the final answer in \\boxed{{}}."


def last_boxed(text):
    """Content of the last \\boxed{...} (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth, out = start + len("\\boxed{"), 1, []
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return "".join(out).strip()
        out.append(c)
        i += 1
    return None


def correctness_reward(prompts, completions, answer, **kwargs):
    """1.0 when the last \\boxed{} content equals the answer, else 0.0."""
    rewards = []
    for c, a in zip(completions, answer):
        text = c[0]["content"] if isinstance(c, list) else c
        rewards.append(1.0 if last_boxed(text) == str(a) else 0.0)
    return rewards


def dr_grpo_config(out_dir, *, seed, steps, lr, micro, batch, samples, max_new, temperature, **extra):
    """The GRPOConfig of rl-zero's Dr. GRPO recipes (shared by both TRL benchmarks): CPU, f32, no
    gradient checkpointing; constant lr, no warm-up, AdamW (0.9, 0.95), eps 1e-8, no weight decay,
    grad clip 1.0; `batch // micro` micro-batches of `micro` per optimizer step (one optimizer step
    per generation batch); `samples` per prompt, `max_new` tokens, `temperature`, top-p 1, top-k off;
    Dr. GRPO loss and advantage (`loss_type="dr_grpo"`, `scale_rewards="none"`), PPO clip 0.2, one
    iteration, no KL (`beta=0`, no reference model). `extra` overrides or adds fields."""
    from trl import GRPOConfig

    fields = dict(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        seed=seed, max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
        per_device_train_batch_size=micro, gradient_accumulation_steps=batch // micro,
        num_generations=samples, max_completion_length=max_new, temperature=temperature, top_p=1.0,
        top_k=0, loss_type="dr_grpo", scale_rewards="none", beta=0.0, epsilon=0.2, num_iterations=1,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0,
    )
    fields.update(extra)
    return GRPOConfig(**fields)


def prepare(out_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = pathlib.Path(out_dir)
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        print(f"{out} exists")
        return
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    if tok.chat_template is None:
        sys.exit("the GGUF tokenizer has no chat template")
    # A model loaded from GGUF is flagged as quantized and refuses save_pretrained: copy its (already
    # dequantized, f32) weights into a plain model built from the same config without that flag.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        sys.exit(f"weight mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"wrote {out} (eos {tok.eos_token!r}, pad {tok.pad_token!r})")


def step(model_dir, seed, threads, out_dir, prompts_per_step, samples, max_new, precision="f32"):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    import trl
    from trl import GRPOTrainer

    torch.set_num_threads(threads)
    clock = time.time()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    load_s = time.time() - clock

    rng = random.Random(seed)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if not held_out(a, b)]
    rng.shuffle(pairs)
    pairs = pairs[: 8 * prompts_per_step]
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": question(a, b)}],
         "answer": str(a + b)}
        for a, b in pairs
    ])

    micro = 4
    batch = prompts_per_step * samples
    assert batch % micro == 0
    # bf16: TRL's own mixed precision (`bf16=True`: accelerate wraps the f32 model's forward in
    # torch.autocast("cpu", dtype=torch.bfloat16), generation included; f32 master weights and AdamW).
    args = dr_grpo_config(out_dir, seed=seed, steps=1, lr=1e-6, micro=micro, batch=batch,
                          samples=samples, max_new=max_new, temperature=1.0, bf16=precision == "bf16")
    assert args.steps_per_generation == args.gradient_accumulation_steps
    assert args.generation_batch_size == batch, args.generation_batch_size

    class Timer(TrainerCallback):
        begin = end = None

        def on_step_begin(self, *a, **k):
            if self.begin is None:
                self.begin = time.perf_counter()

        def on_step_end(self, *a, **k):
            if self.end is None:
                self.end = time.perf_counter()

    timer = Timer()
    clock = time.time()
    trainer = GRPOTrainer(model=model, reward_funcs=correctness_reward, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[timer])
    setup_s = time.time() - clock
    assert trainer.ref_model is None if hasattr(trainer, "ref_model") else True

    stats = {"gen_s": 0.0, "tokens": 0, "completions": 0, "completion_tokens": 0, "reward_sum": 0.0}
    inner = trainer._generate_and_score_completions

    def timed_generate(inputs):
        t = time.perf_counter()
        out = inner(inputs)
        stats["gen_s"] += time.perf_counter() - t
        cm, pm = out["completion_mask"], out["prompt_mask"]
        stats["tokens"] += int(cm.sum() + pm.sum())
        stats["completions"] += int(cm.size(0))
        stats["completion_tokens"] += int(cm.sum())
        return out

    trainer._generate_and_score_completions = timed_generate
    clock = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - clock
    secs = timer.end - timer.begin
    assert stats["completions"] == batch, stats
    hist = [h for h in trainer.state.log_history if "reward" in h]
    reward = hist[-1]["reward"] if hist else float("nan")
    comp_len = stats["completion_tokens"] / stats["completions"]
    print(f"trl {trl.__version__} torch {torch.__version__}: load {load_s:.2f} s, trainer setup {setup_s:.2f} s, "
          f"train() {train_wall:.2f} s", file=sys.stderr)
    print(f"RESULT side=trl secs={secs:.3f} gen_secs={stats['gen_s']:.3f} train_secs={secs - stats['gen_s']:.3f} "
          f"tokens={stats['tokens']} completion_len={comp_len:.2f} reward={reward:.4f} "
          f"peak_rss_mb={peak_rss_mb():.0f} load_secs={load_s:.2f} setup_secs={setup_s:.2f} "
          f"train_wall_secs={train_wall:.3f} precision={precision} "
          f"accelerate_mixed_precision={trainer.accelerator.mixed_precision}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["prepare", "step"])
    ap.add_argument("dir", help="Hugging Face model directory (written by prepare)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "2")))
    ap.add_argument("--out", default=str(ROOT / "target/bench-trl/trl-out"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: GRPOConfig(bf16=True), PyTorch autocast with f32 master weights")
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.dir)
    else:
        step(a.dir, a.seed, a.threads, a.out, a.prompts, a.samples, a.max_new_tokens, a.precision)


if __name__ == "__main__":
    main()
