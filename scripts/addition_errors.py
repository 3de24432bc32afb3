"""Where a two-digit addition policy goes wrong: reads response JSONL files written by `rl-zero eval
--responses` or a run's `eval/step-NNNNNN.jsonl` (fields `prompt`, `answer`, `response`, `reward`) and
prints, per file, the accuracy, the wrong answers that are off by exactly +10 (a carry too many) or
-10 (a carry missed), and the wrong / total answers by the sum of the two ones digits (0-18; a carry
happens from 10 on), which shows whether the errors sit at the carry boundary (sums 8-11: two on
either side of 9 | 10).

usage: python3 scripts/addition_errors.py runs/X/eval/step-000060.jsonl [more.jsonl ...]
"""
import json
import re
import sys

QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")
NUMBER = re.compile(r"-?\d+")


def answer_of(response):
    """The number a response ends on: the last number after its last `=`, else its last number."""
    tail = response.rsplit("=", 1)[-1] if "=" in response else response
    nums = NUMBER.findall(tail) or NUMBER.findall(response)
    return int(nums[-1]) if nums else None


def summarise(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                m = QUESTION.search(r["prompt"])
                rows.append((int(m[1]), int(m[2]), r["response"], float(r["reward"])))
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"{path}:{n}: not a response line of a two-digit addition prompt ({e!r})")
    if not rows:
        sys.exit(f"{path}: no responses")
    total, wrong = [0] * 19, [0] * 19
    up = down = other = 0
    for a, b, response, reward in rows:
        ones = a % 10 + b % 10
        total[ones] += 1
        if reward > 0:
            continue
        wrong[ones] += 1
        got = answer_of(response)
        diff = None if got is None else got - (a + b)
        up += diff == 10
        down += diff == -10
        other += diff not in (10, -10)
    acc = sum(r[3] > 0 for r in rows) / len(rows)
    print(f"{path}: accuracy {acc:.3f} of {len(rows)}; wrong by +10 {up}, by -10 {down}, otherwise {other}")
    print("  ones-digit sum  " + " ".join(f"{s:>5}" for s in range(19) if total[s]))
    print("  wrong / total   " + " ".join(f"{wrong[s]}/{total[s]}".rjust(5) for s in range(19) if total[s]))
    near = sum(wrong[8:12]), sum(total[8:12])
    print(f"  near the carry boundary (ones sum 8-11): {near[0]} of {near[1]} wrong; elsewhere "
          f"{sum(wrong) - near[0]} of {sum(total) - near[1]}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        summarise(p)


if __name__ == "__main__":
    main()
