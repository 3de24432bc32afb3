#!/usr/bin/env python3
"""Two-digit addition as a JSONL dataset for `run.dataset`, with a question template of your own.

The pairs and their order are those of rl-zero's built-in `dataset = "addition"`
(src/run/data.rs `addition_prompts`): every (a, b) with 10 <= a, b <= 99, a-major; the pairs with
(31a + 17b) mod 97 < 10 are held out of training; the evaluated held-out pairs are `--eval` of
them, spread by a stride with offset `seed mod stride`. The training pairs come first, then the
held-out ones, so with `run.eval_prompts = --eval` the run evaluates on the same pairs as the
built-in dataset (and `run.eval_split = "validation"` takes the same validation prompts).

usage: python3 scripts/data/addition_jsonl.py OUT.jsonl [--template T] [--eval 200] [--seed 0]
The template is Python str.format with {a} and {b}; the default is the built-in question.
"""
import argparse
import json


def held_out(a, b):
    return (a * 31 + b * 17) % 97 < 10


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--template", default="What is {a} + {b}? Put the final answer in \\boxed{{}}.")
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.eval < 1:
        ap.error("--eval must be at least 1")
    train, test = [], []
    for x in range(10, 100):
        for y in range(10, 100):
            (test if held_out(x, y) else train).append((x, y))
    stride = max(len(test) // a.eval, 1)
    test = test[a.seed % stride :: stride][: a.eval]
    with open(a.out, "w") as f:
        for x, y in train + test:
            row = {"prompt": a.template.format(a=x, b=y), "answer": str(x + y)}
            f.write(json.dumps(row) + "\n")
    print(f"{a.out}: {len(train)} training + {len(test)} held-out prompts")


if __name__ == "__main__":
    main()
