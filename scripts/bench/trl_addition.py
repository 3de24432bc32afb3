"""TRL side of scripts/bench/time_to_accuracy.sh: TRL's GRPOTrainer trains SmolLM2-135M-Instruct on
two-digit addition with the recipe of recipes/smollm2_addition_constant.toml, saving the policy every
`--save-every` steps so that rl-zero's own greedy evaluator (`rl-zero eval`) scores TRL's checkpoints
on the same held-out prompts as rl-zero's run.

  train MODEL_DIR OUT   MODEL_DIR: the model as a Hugging Face directory (written by
                        `grpo_step_vs_trl.py prepare`); OUT gets `step-NNNNNN/` checkpoints (model and
                        tokenizer), `metrics.jsonl` (one line per step) and `summary.json`.

The recipe, mirrored field by field (rl-zero name -> GRPOConfig):
  trainer.sampling.n 8 -> num_generations; run.prompts_per_step 8 -> generation_batch_size 64;
  trainer.sampling.max_new_tokens 64 -> max_completion_length; temperature 0.7, top_p 1, top_k 0
  (off), min_p off; trainer.actor.lr 2e-5 constant -> learning_rate, lr_scheduler_type "constant",
  warmup 0; AdamW (0.9, 0.95), eps 1e-8, weight decay 0 -> adam_beta1/2, adam_epsilon, weight_decay;
  max_grad_norm 1.0; micro_batch_size 8 -> per_device_train_batch_size 8 with
  gradient_accumulation_steps 8 (one optimizer step per generation batch, as rl-zero's one
  mini-batch); Dr. GRPO: loss_type "dr_grpo" (token sums / max_completion_length), scale_rewards
  "none" (advantage = reward - group mean); PPO clip epsilon 0.2, num_iterations 1, beta 0 (no KL,
  no reference model); no gradient checkpointing, CPU, torch.set_num_threads(THREADS);
  run.compute_dtype "f32" -> bf16=False, "bf16" -> bf16=True (TRL's own mixed precision: accelerate
  runs the f32 model's forward, generation included, under torch.autocast("cpu", torch.bfloat16);
  f32 master weights and AdamW moments, as rl-zero's bf16), or `--precision` when given.
  Reward: rl-zero's own `{ type = "orz" }` through `rl-zero score` (the same answer extraction and
  math verifier, 1 only when correct AND the completion stopped by itself, i.e. its ids end in an
  EOS token), so both sides train on identical rewards.
  Prompts: the same chat-templated questions over the same training pool: the training split of
  the recipe's `run.dataset` as `rl-zero prompts --split train` writes it (addition, the seeded
  arithmetic levels or a JSONL file, held-out prompts excluded exactly as in the rl-zero run);
  `run.question_template`, when set, wraps each question as rl-zero does (its `{question}`
  replaced once). The order is a seeded shuffle of Python's, not rl-zero's.

Time: `train_secs` accumulates on_step_begin -> on_step_end (generation, reward, forward/backward,
optimizer step); saving a checkpoint happens after on_step_end and is not counted, as rl-zero's
`time/step_s` excludes its evaluations and checkpoints.

The settings are read from `--recipe` (default recipes/smollm2_addition_constant.toml); a run file with a
setting this script does not mirror (another advantage, loss aggregation, schedule, ...) is refused.

usage: scripts/.venv/bin/python scripts/bench/trl_addition.py train target/bench-trl/smollm2-hf OUT \
           [--recipe recipes/smollm2_addition_constant.toml] [--steps 20] [--save-every 5] [--seed 0] [--threads 2] \
           [--precision f32|bf16]
"""
import argparse
import json
import os
import pathlib
import random
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from grpo_step_vs_trl import dr_grpo_config  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train(a):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    import trl
    from trl import GRPOTrainer

    torch.set_num_threads(a.threads)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # The ids generation stops on (TRL's `eos_token_ids`: the tokenizer's EOS and the generation config's).
    gen_eos = model.generation_config.eos_token_id
    eos_ids = {tok.eos_token_id} | set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])

    rng = random.Random(a.seed)
    rlz = os.environ.get("RLZ_BIN", str(ROOT / "target/release/rl-zero"))
    rows = training_rows(a.recipe, rlz, a.seed, a.question_template)
    rng.shuffle(rows)
    need = a.steps * a.prompts
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": q}], "answer": ans}
        for q, ans in (rows * (need // len(rows) + 1))[:need]
    ])

    def orz_reward(prompts, completions, answer, completion_ids, **kwargs):
        # rl-zero's own reward, through `rl-zero score`: the same verifier (answer extraction
        # cascade, math equivalence) and the same ORZ rule (0 unless the completion stopped by
        # itself, i.e. its ids end in an EOS token) as the rl-zero run, one process per batch.
        with tempfile.TemporaryDirectory() as tmp:
            src = pathlib.Path(tmp) / "in.jsonl"
            with open(src, "w") as f:
                for c, ans, ids in zip(completions, answer, completion_ids):
                    text = c[0]["content"] if isinstance(c, list) else c
                    stopped = bool(ids) and ids[-1] in eos_ids
                    f.write(json.dumps({"response": text, "answer": str(ans),
                                        "finish": "eos" if stopped else "length",
                                        "response_tokens": len(ids)}) + "\n")
            out = subprocess.run([rlz, "score", "-i", str(src), "--reward", '{"type": "orz"}'],
                                 check=True, capture_output=True, text=True).stdout
        rewards = [float(json.loads(l)["reward"]) for l in out.splitlines() if l.strip()]
        assert len(rewards) == len(completions), (len(rewards), len(completions))
        return rewards

    batch = a.prompts * a.samples
    micro = a.micro_batch
    assert batch % micro == 0
    args = dr_grpo_config(out / "trl-state", seed=a.seed, steps=a.steps, lr=a.lr, micro=micro,
                          batch=batch, samples=a.samples, max_new=a.max_new_tokens,
                          temperature=a.temperature, shuffle_dataset=False,
                          bf16=a.precision == "bf16")
    assert args.generation_batch_size == batch, args.generation_batch_size

    log = open(out / "metrics.jsonl", "w")
    state = {"begin": None, "train_secs": 0.0, "logs": {}, "wall0": time.perf_counter()}

    def save(step):
        d = out / f"step-{step:06d}"
        model.save_pretrained(d)
        tok.save_pretrained(d)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, st, control, **k):
            state["begin"] = time.perf_counter()

        def on_step_end(self, args, st, control, **k):
            secs = time.perf_counter() - state["begin"]
            state["train_secs"] += secs
            state["step"] = st.global_step
            state["step_secs"] = secs
            if st.global_step % a.save_every == 0 or st.global_step == a.steps:
                save(st.global_step)

        def on_log(self, args, st, control, logs=None, **k):
            # One line per training step (the end-of-training summary log has no step of its own).
            if st.global_step == state.get("logged") or "train_runtime" in (logs or {}):
                return
            state["logged"] = st.global_step
            line = {"step": st.global_step, "time/step_s": state.get("step_secs"),
                    "time/train_total_s": state["train_secs"],
                    "time/wall_s": time.perf_counter() - state["wall0"]}
            for key, v in (logs or {}).items():
                if isinstance(v, (int, float)):
                    line[f"trl/{key}"] = v
            log.write(json.dumps(line) + "\n")
            log.flush()

    trainer = GRPOTrainer(model=model, reward_funcs=orz_reward, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[Clock()])
    save(0)
    wall = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - wall
    summary = {"trl": trl.__version__, "torch": torch.__version__, "steps": a.steps,
               "train_secs": state["train_secs"], "train_wall_secs": wall, "peak_rss_mb": peak_rss_mb(),
               "threads": a.threads, "precision": a.precision,
               "accelerate_mixed_precision": str(trainer.accelerator.mixed_precision)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


def training_rows(recipe, rlz, seed, template=None):
    """(question, answer) training rows of the recipe's `run.dataset`, exactly as an rl-zero run
    with `trainer.seed = seed` takes them (`rl-zero prompts --split train`: the built-in addition or arithmetic split, or a
    JSONL file's rows but its last `run.eval_prompts`), each question written into `template` at
    its `{question}` (rl-zero's `run.question_template`)."""
    # From the repository root, as time_to_accuracy.sh runs `rl-zero train` (a relative JSONL
    # `run.dataset` is read from there).
    cmd = [rlz, "prompts", "--config", str(pathlib.Path(recipe).resolve()), "--split", "train",
           "--set", f"trainer.seed={seed}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    rows = [(r["prompt"], str(r["answer"])) for r in map(json.loads, out.splitlines())]
    if template is None:
        return rows
    return [(template.replace("{question}", q, 1), ans) for q, ans in rows]


def recipe_args(path):
    """The GRPOConfig-relevant fields of an rl-zero run file; refuses what this script does not mirror."""
    import tomllib

    r = tomllib.loads(pathlib.Path(path).read_text())
    run, tr, alg = r.get("run", {}), r.get("trainer", {}), r.get("algorithm", {})
    samp, actor = tr.get("sampling", {}), tr.get("actor", {})
    adam, sched = actor.get("adam", {}), actor.get("schedule", {"type": "constant"})
    checks = {
        "run.reward": (run.get("reward", {}).get("type"), "orz"),
        "algorithm.advantage.type": (alg.get("advantage", {}).get("type"), "dr_grpo"),
        "algorithm.policy_loss.type": (alg.get("policy_loss", {}).get("type"), "ppo"),
        "algorithm.policy_loss.aggregation.type":
            (alg.get("policy_loss", {}).get("aggregation", {}).get("type"), "seq_mean_token_sum_norm"),
        "trainer.actor.schedule.type": (sched.get("type"), "constant"),
        "trainer.actor.adam.beta2": (adam.get("beta2"), 0.95),
        "trainer.actor.adam.weight_decay": (adam.get("weight_decay"), 0.0),
        "trainer.ppo_epochs": (tr.get("ppo_epochs", 1), 1),
    }
    if "dynamic_sampling" in tr:
        sys.exit(f"{path}: trainer.dynamic_sampling is set; TRL's GRPOTrainer has no dynamic sampling "
                 "to mirror it with")
    for field, (got, want) in checks.items():
        if got != want:
            sys.exit(f"{path}: {field} = {got!r}; this script mirrors only {want!r}")
    if run.get("eval_split", "test") != "test":
        sys.exit(f"{path}: run.eval_split = {run['eval_split']!r}; this script mirrors only \"test\"")
    template = run.get("question_template")
    if template is not None and template.count("{question}") != 1:
        sys.exit(f"{path}: run.question_template must contain {{question}} exactly once")
    return {
        "question_template": template,
        "prompts": run.get("prompts_per_step", 8),
        "samples": samp.get("n", 8),
        "micro_batch": tr.get("micro_batch_size", 8),
        "max_new_tokens": samp.get("max_new_tokens", 64),
        "temperature": samp.get("temperature", 1.0),
        "lr": actor.get("lr", 1e-6),
        "recipe_precision": run.get("compute_dtype", "f32"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["train"])
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--recipe", default=str(ROOT / "recipes/smollm2_addition_constant.toml"),
                    help="rl-zero run file whose sampling, optimizer and batch settings TRL gets")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "2")))
    ap.add_argument("--precision", choices=["f32", "bf16"],
                    help="compute precision (default: the recipe's run.compute_dtype, else f32)")
    a = ap.parse_args()
    for k, v in recipe_args(a.recipe).items():
        setattr(a, k, v)
    if a.precision is None:
        a.precision = a.recipe_precision
    if a.precision not in ("f32", "bf16"):
        sys.exit(f"{a.recipe}: run.compute_dtype = {a.precision!r}; this script mirrors \"f32\" or \"bf16\"")
    print(f"recipe {a.recipe}: {vars(a)}", file=sys.stderr)
    train(a)


if __name__ == "__main__":
    main()
