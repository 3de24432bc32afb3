"""Pretrain the tiny arithmetic base model shipped in `assets/tiny-arith/`.

The `ppo_gae` example needs a policy that runs offline on a laptop CPU and that is good at the task
but not too good: RL must have room to raise held-out accuracy. This script builds that model from
scratch, deterministically, in a few minutes on one CPU thread:

  * a character-level tokenizer (`tokenizer.json`, loadable by the Rust `tokenizers` crate 0.23:
    a BPE model without merges and without pre-tokenizer, a `Fuse` decoder and a `<bos> $A`
    post-processor);
  * a `LlamaForCausalLM` (f32, GQA, tied embeddings) trained on
        prompt      `What is {a} + {b}? Put the final answer in \\boxed{}.`
        completion  ` \\boxed{{a+b}}` followed by `<eos>`
    for two-digit a, b, EXCEPT the held-out pairs (see `is_held_out`), which never appear in
    training and are the RL evaluation set;
  * training stops as soon as held-out greedy accuracy crosses `--target-acc` (deliberately
    under-trained), then the script measures greedy / sampled (T = 1) accuracy and the EOS rate on
    the held-out prompts and writes `eval_reference.json` (greedy ids and per-token log-probs that
    the Rust loader must reproduce), `pretrain_metrics.json` and `README.md`.

Run (from the repository root):
    scripts/.venv/bin/python scripts/pretrain_tiny.py --out assets/tiny-arith

Format, held-out rule and numbers: docs/tiny-model.md.
"""
import argparse
import json
import math
import os
import random
import re
import time

import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]  # newline + printable ASCII (space .. ~)
PROMPT = "What is {a} + {b}? Put the final answer in \\boxed{{}}."
COMPLETION = " \\boxed{{{s}}}"
MAX_NEW_TOKENS = 24
OPERANDS = range(10, 100)
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def is_held_out(a, b):
    """Held-out RL evaluation pair: never used in pretraining (833 of the 8100 pairs, ~10.3%)."""
    return (a * 31 + b * 17) % 97 < 10


def prompt_text(a, b):
    return PROMPT.format(a=a, b=b)


def completion_text(a, b):
    return COMPLETION.format(s=a + b)


def boxed_answer(text):
    """Content of the last `\\boxed{...}` in `text`, or None."""
    found = BOXED.findall(text)
    return found[-1].strip() if found else None


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
def build_tokenizer():
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return tok, vocab


def check_tokenizer(path, vocab):
    """Reload from disk; encode/decode round trips on every task string shape."""
    tok = Tokenizer.from_file(path)
    assert tok.get_vocab_size() == len(vocab)
    samples = [prompt_text(a, b) + completion_text(a, b) for a, b in [(10, 10), (99, 99), (37, 48)]]
    samples.append("".join(CHARS))
    for s in samples:
        enc = tok.encode(s)
        assert enc.ids[0] == vocab[BOS] and len(enc.ids) == len(s) + 1, (s, enc.tokens)
        assert enc.ids[1:] == [vocab[c] for c in s]
        assert tok.decode(enc.ids) == s, (tok.decode(enc.ids), s)
        assert tok.encode(s, add_special_tokens=False).ids == enc.ids[1:]
    assert tok.decode([vocab[c] for c in " \\boxed{85}"] + [vocab[EOS]]) == " \\boxed{85}"
    assert tok.encode("é").ids == [vocab[BOS], vocab[UNK]]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def encode_chars(vocab, s):
    return [vocab[c] for c in s]


def make_example(vocab, a, b):
    """(input_ids, labels): labels are -100 on `<bos>` + prompt, the completion ids + `<eos>` after."""
    p = [vocab[BOS]] + encode_chars(vocab, prompt_text(a, b))
    c = encode_chars(vocab, completion_text(a, b)) + [vocab[EOS]]
    return p + c, [-100] * len(p) + c


def collate(examples, pad_id):
    n = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
    return ids, labels


# ---------------------------------------------------------------------------------------------
# Generation and evaluation (all prompts have the same length: no padding on the prompt side)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, prompts, eos_id, pad_id, greedy, generator=None, max_new=MAX_NEW_TOKENS):
    """prompts: [B, P] long. Returns [B, <= max_new] new ids, `pad_id` after each row's EOS."""
    seq = prompts
    done = torch.zeros(prompts.shape[0], dtype=torch.bool)
    out = []
    for _ in range(max_new):
        logits = model(input_ids=seq).logits[:, -1].float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits, -1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        out.append(nxt)
        done |= nxt == eos_id
        seq = torch.cat([seq, nxt[:, None]], 1)
        if bool(done.all()):
            break
    return torch.stack(out, 1)


def score(tok, vocab, pairs, new_ids):
    """(accuracy, eos_rate, mean response length incl. EOS) of completions for `pairs`."""
    eos = vocab[EOS]
    correct = ended = length = 0
    for (a, b), row in zip(pairs, new_ids.tolist()):
        if eos in row:
            row = row[: row.index(eos) + 1]
            ended += 1
        length += len(row)
        text = tok.decode([t for t in row if t != eos])
        correct += boxed_answer(text) == str(a + b)
    n = len(pairs)
    return correct / n, ended / n, length / n


def evaluate(model, tok, vocab, pairs, greedy=True, samples=1, seed=0, chunk=512):
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    rep = [p for p in pairs for _ in range(samples)]
    news = []
    for i in range(0, len(rep), chunk):
        part = rep[i : i + chunk]
        prompts = torch.tensor([[vocab[BOS]] + encode_chars(vocab, prompt_text(a, b)) for a, b in part])
        new = generate(model, prompts, vocab[EOS], vocab[PAD], greedy, gen)
        new = torch.nn.functional.pad(new, (0, MAX_NEW_TOKENS - new.shape[1]), value=vocab[PAD])
        news.append(new)
    model.train()
    return score(tok, vocab, rep, torch.cat(news))


# ---------------------------------------------------------------------------------------------
# Golden reference for the Rust loader
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def eval_reference(model, tok, vocab, pairs):
    model.eval()
    cases = []
    for a, b in pairs:
        prompt = [vocab[BOS]] + encode_chars(vocab, prompt_text(a, b))
        new = generate(model, torch.tensor([prompt]), vocab[EOS], vocab[PAD], greedy=True)[0].tolist()
        if vocab[EOS] in new:
            new = new[: new.index(vocab[EOS]) + 1]
        full = torch.tensor([prompt + new])
        logp = torch.log_softmax(model(input_ids=full).logits[0].float(), -1)
        lp = [logp[len(prompt) - 1 + t, tid].item() for t, tid in enumerate(new)]
        text = tok.decode([t for t in new if t != vocab[EOS]])
        cases.append(
            {
                "a": a,
                "b": b,
                "prompt": prompt_text(a, b),
                "prompt_ids": prompt,
                "greedy_new_ids": new,
                "greedy_text": text,
                "greedy_logprobs": lp,
                "correct": boxed_answer(text) == str(a + b),
            }
        )
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/tiny-arith")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--max-steps", type=int, default=6000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--target-acc", type=float, default=0.30, help="stop once held-out greedy accuracy >= this")
    ap.add_argument("--samples", type=int, default=8, help="T=1 samples per held-out prompt in the final eval")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    tok, vocab = build_tokenizer()
    tok_path = os.path.join(args.out, "tokenizer.json")
    tok.save(tok_path)
    check_tokenizer(tok_path, vocab)

    pairs = [(a, b) for a in OPERANDS for b in OPERANDS]
    held = [p for p in pairs if is_held_out(*p)]
    train = [p for p in pairs if not is_held_out(*p)]
    print(f"pairs: {len(train)} train, {len(held)} held out")

    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=128,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD],
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(cfg).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    rng = random.Random(args.seed)
    history = []
    step = 0
    stopped_by = "max_steps"
    model.train()
    while step < args.max_steps:
        batch = [make_example(vocab, *rng.choice(train)) for _ in range(args.batch)]
        ids, labels = collate(batch, vocab[PAD])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        # Accuracy jumps quickly once carries are learnt: evaluate more often when close to the target.
        every = args.eval_every if not history or history[-1]["held_out_greedy_acc"] < args.target_acc / 3 else 10
        if step % every == 0:
            acc, eos_rate, _ = evaluate(model, tok, vocab, held)
            history.append({"step": step, "loss": round(loss.item(), 4), "held_out_greedy_acc": round(acc, 4)})
            print(f"step {step:5d}  loss {loss.item():.4f}  held-out greedy acc {acc:.3f}  eos {eos_rate:.3f}"
                  f"  ({time.time() - t0:.0f}s)", flush=True)
            if acc >= args.target_acc:
                stopped_by = "target_acc"
                break
    train_secs = time.time() - t0

    greedy_acc, greedy_eos, greedy_len = evaluate(model, tok, vocab, held)
    samp_acc, samp_eos, samp_len = evaluate(model, tok, vocab, held, greedy=False, samples=args.samples,
                                            seed=args.seed + 1)
    train_probe = random.Random(args.seed + 2).sample(train, len(held))
    train_greedy_acc, _, _ = evaluate(model, tok, vocab, train_probe)
    metrics = {
        "seed": args.seed,
        "steps": step,
        "stopped_by": stopped_by,
        "batch_size": args.batch,
        "lr": args.lr,
        "parameters": n_params,
        "held_out_prompts": len(held),
        "train_pairs": len(train),
        "held_out_greedy_acc": round(greedy_acc, 4),
        "held_out_greedy_eos_rate": round(greedy_eos, 4),
        "held_out_greedy_mean_len": round(greedy_len, 2),
        "held_out_sampled_acc": round(samp_acc, 4),
        "held_out_sampled_eos_rate": round(samp_eos, 4),
        "held_out_sampled_mean_len": round(samp_len, 2),
        "samples_per_prompt": args.samples,
        "train_probe_greedy_acc": round(train_greedy_acc, 4),
        "train_wall_secs": round(train_secs, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "history": history,
    }

    model.save_pretrained(args.out, safe_serialization=True)
    GenerationConfig(bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD],
                     max_new_tokens=MAX_NEW_TOKENS).save_pretrained(args.out)
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": UNK,
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": 128,
            "padding_side": "left",
            "clean_up_tokenization_spaces": False,
        }, f, indent=2)
        f.write("\n")

    # Reload from disk: the reference must come from the saved weights.
    reloaded = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    ref_pairs = held[:: max(1, len(held) // 8)][:8]
    ref = {
        "source": "scripts/pretrain_tiny.py",
        "conventions": "prompt_ids = <bos> + prompt chars; greedy_new_ids: argmax tokens appended one by one, "
                       f"at most {MAX_NEW_TOKENS}, stopping after (and including) <eos>; "
                       "greedy_logprobs[t] = log softmax(logits at position len(prompt_ids) - 1 + t)[greedy_new_ids[t]]",
        "eos_token_id": vocab[EOS],
        "cases": eval_reference(reloaded, tok, vocab, ref_pairs),
    }
    with open(os.path.join(args.out, "eval_reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out, "pretrain_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    write_readme(args, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=1))


def write_readme(args, m):
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    text = f"""# tiny-arith: a tiny, deliberately under-trained arithmetic base model

The default policy of `cargo run --release --example ppo_gae`: a {m['parameters']:,}-parameter
`LlamaForCausalLM` with a character-level tokenizer, pretrained from scratch by this repository on
two-digit addition and stopped early, so that RL has room to improve it.
f32, hidden {args.hidden}, {args.layers} layers, {args.heads} heads / {args.kv_heads} KV heads (head dim {args.hidden // args.heads}),
intermediate {4 * args.hidden}, tied embeddings (no `lm_head.weight` tensor), RoPE theta 10000, 128 positions.

    prompt      <bos>What is 37 + 48? Put the final answer in \\boxed{{}}.
    completion   \\boxed{{85}}<eos>

Held-out pairs (the RL evaluation set, never in pretraining): `(a * 31 + b * 17) % 97 < 10`
({m['held_out_prompts']} of 8100 pairs). Details: `docs/tiny-model.md`.

## How it was made

    scripts/.venv/bin/python scripts/pretrain_tiny.py --out assets/tiny-arith

seed {m['seed']}, batch {m['batch_size']}, AdamW lr {m['lr']}, {m['steps']} steps (stopped by `{m['stopped_by']}`),
{m['threads']} CPU thread, torch {m['torch']}, training wall time {m['train_wall_secs']} s.

## Measured on the {m['held_out_prompts']} held-out prompts

| metric | value |
|---|---|
| greedy accuracy | {m['held_out_greedy_acc']:.3f} |
| sampled accuracy (T = 1, {m['samples_per_prompt']} samples / prompt) | {m['held_out_sampled_acc']:.3f} |
| EOS rate, greedy / sampled | {m['held_out_greedy_eos_rate']:.3f} / {m['held_out_sampled_eos_rate']:.3f} |
| mean response length (tokens, incl. EOS), greedy / sampled | {m['held_out_greedy_mean_len']} / {m['held_out_sampled_mean_len']} |
| greedy accuracy on {m['held_out_prompts']} training pairs | {m['train_probe_greedy_acc']:.3f} |

`pretrain_metrics.json` has the full record (accuracy curve included); `eval_reference.json` has
greedy completions and per-token log-probs of 8 held-out prompts from transformers, for checking
that a loader reproduces this model.

## Files

`config.json`, `model.safetensors` ({size / 1e6:.2f} MB), `generation_config.json`, `tokenizer.json`,
`tokenizer_config.json`, `eval_reference.json`, `pretrain_metrics.json`.

## Licence

Generated by this project; same licence as the project: MIT OR Apache-2.0.
"""
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
