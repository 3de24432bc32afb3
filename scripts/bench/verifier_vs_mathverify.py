"""Python half of scripts/bench/verifier_vs_mathverify.sh (rl-zero's verifier vs math-verify).

Subcommands (the shell script calls them; they can be run by hand too):

  pairs OUT.jsonl [--generated N] [--seed S]
      Writes the benchmark pairs, one JSON object a line with the fields of `rl-zero score`
      (`response`, `answer`) plus `id`, `category`, `precision` (math-verify's float_rounding,
      or null) and, for fixture pairs, `expected` (the verdict of math-verify's own test suite).
      First every case of crates/rl-reward/tests/fixtures/math_verify_cases.json, then N
      seeded generated pairs: arithmetic responses in the shapes RL rollouts take (boxed,
      <answer> tags, "final answer is", long chains of thought, wrong answers, no answer),
      fractions vs decimals and thousands separators.

  mathverify PAIRS.jsonl VERDICTS.jsonl
      Times math-verify in-process, one pair at a time: `verify(parse(gold), parse(pred))`
      with the package defaults (5 s parsing and comparison timeouts; float_rounding from the
      pair when set). Interpreter start-up (from RLZ_LAUNCH_NS, the launch time in Unix ns,
      when set), import time and a warm-up on three pairs outside the set are measured
      separately. Timeouts are counted from math-verify's own "Timeout during ..." warnings.
      Writes one line per pair ({"id", "correct", "extracted": the matched string, "us",
      "timeouts"}) and prints
      one JSON summary line.

  report DIR
      Reads DIR/meta-{rl,mv}-<round>.json and DIR/verdicts-{rl,mv}-<round>.jsonl written by
      the shell script and prints a Markdown report: the per-side table, the ratio
      (math-verify time / rl-zero time) over rounds, agreement and the disagreeing pairs.
"""

import argparse
import json
import os
import pathlib
import random
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "crates/rl-reward/tests/fixtures/math_verify_cases.json"
TIMEOUT_S = 5.0


# ------------------------------------------------------------------------------------------
# pairs


def arithmetic(rng: random.Random) -> tuple[str, str, int]:
    """A question of rl_reward::tasks::arithmetic's shape: (LaTeX, plain text, value)."""
    level = rng.randint(1, 4)
    if level == 1:
        x, y = rng.randint(10, 98), rng.randint(10, 98)
        if rng.random() < 0.5:
            return f"{x} + {y}", f"{x} + {y}", x + y
        return f"{x} - {y}", f"{x} - {y}", x - y
    if level == 2:
        x, y = rng.randint(2, 8), rng.randint(10, 98)
        return f"{x} \\times {y}", f"{x} * {y}", x * y
    if level == 3:
        x, y, z = rng.randint(10, 998), rng.randint(2, 98), rng.randint(2, 98)
        return f"{x} + {y} \\times {z}", f"{x} + {y} * {z}", x + y * z
    x, y, z, w = rng.randint(10, 998), rng.randint(10, 998), rng.randint(2, 19), rng.randint(1, 998)
    return f"({x} - {y}) \\times {z} + {w}", f"({x} - {y}) * {z} + {w}", (x - y) * z + w


def chain_of_thought(rng: random.Random, plain: str, value: int, sentences: int) -> str:
    """A rambling derivation with intermediate numbers, as base models write them."""
    fillers = [
        "Let me think about this step by step.",
        "First, I need to be careful with the order of operations.",
        "Multiplication comes before addition, so I handle the product first.",
        "Let me double-check the intermediate result.",
        "Hmm, wait, let me verify that again.",
        "I will write down each partial sum so I do not lose track.",
    ]
    out = [f"We need to compute {plain}."]
    for _ in range(sentences):
        if rng.random() < 0.4:
            a, b = rng.randint(1, 999), rng.randint(1, 99)
            out.append(f"For instance ${a} + {b} = {a + b}$, which is not what we want.")
        else:
            out.append(rng.choice(fillers))
    out.append(f"So {plain} = {value}.")
    return " ".join(out)


def generated(n: int, seed: int) -> list[dict]:
    """n seeded pairs over the categories below, in a round-robin order."""
    rng = random.Random(seed)
    kinds = [
        "arith_boxed", "arith_boxed_wrong", "arith_answer_tag", "arith_final_answer",
        "arith_long_cot", "arith_plain_number", "fraction_vs_decimal", "thousands_separator",
        "arith_boxed", "arith_no_answer",
    ]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        latex, plain, value = arithmetic(rng)
        gold = str(value)
        if kind == "arith_boxed":
            pred = f"{latex} = {value}, so the answer is $\\boxed{{{value}}}$."
        elif kind == "arith_boxed_wrong":
            wrong = value + rng.choice([-10, -2, -1, 1, 2, 10])
            pred = f"Computing {plain} gives {wrong}. The answer is \\boxed{{{wrong}}}."
        elif kind == "arith_answer_tag":
            pred = (f"<think>{chain_of_thought(rng, plain, value, 3)}</think>\n"
                    f"<answer>{value}</answer>")
        elif kind == "arith_final_answer":
            pred = (f"{chain_of_thought(rng, plain, value, 2)}\n"
                    f"Final Answer: The final answer is ${value}$. I hope it is correct.")
        elif kind == "arith_long_cot":
            pred = f"{chain_of_thought(rng, plain, value, 30)} Therefore the answer is \\boxed{{{value}}}."
        elif kind == "arith_plain_number":
            pred = f"{plain} = {value}"
        elif kind == "fraction_vs_decimal":
            q = rng.choice([2, 4, 5, 8, 10, 16, 20, 25])
            p = rng.randint(1, 4 * q)
            if rng.random() < 0.5:
                gold, pred = f"\\frac{{{p}}}{{{q}}}", f"The ratio is $\\boxed{{{p / q:g}}}$."
            else:
                gold, pred = f"{p / q:g}", f"So the probability is $\\boxed{{\\frac{{{p}}}{{{q}}}}}$."
            if rng.random() < 0.25:  # a wrong one now and then
                pred = pred.replace(f"{p}", f"{p + 1}", 1)
        elif kind == "thousands_separator":
            big = rng.randint(1_000, 9_999_999)
            gold, pred = str(big), f"The total is $\\boxed{{{big:,}}}$ dollars."
        else:  # arith_no_answer: a truncated rollout
            pred = chain_of_thought(rng, plain, value, 4).rsplit(" So ", 1)[0] + " Now let me"
            pred = pred.replace(f" {value}", " ")
        out.append({"category": kind, "answer": gold, "response": pred, "precision": None})
    return out


def cmd_pairs(args: argparse.Namespace) -> None:
    fixture = json.loads(FIXTURE.read_text())
    rows = []
    for i, c in enumerate(fixture["cases"]):
        rows.append({
            "id": f"fx{i:03d}", "category": f"fixture:{c['test']}", "answer": c["gold"],
            "response": c["pred"], "precision": c["precision"], "expected": c["expected"],
        })
    for i, r in enumerate(generated(args.generated, args.seed)):
        rows.append({"id": f"gen{i:03d}", **r})
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} pairs ({len(fixture['cases'])} fixture, {args.generated} generated) -> {args.out}",
          file=sys.stderr)


# ------------------------------------------------------------------------------------------
# math-verify timing


def peak_rss_kb() -> int | None:
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cmd_mathverify(args: argparse.Namespace) -> None:
    started_ns = time.time_ns()
    launch = os.environ.get("RLZ_LAUNCH_NS")
    startup_s = (started_ns - int(launch)) / 1e9 if launch else None
    pairs = [json.loads(line) for line in open(args.pairs, encoding="utf-8") if line.strip()]

    import logging
    t = time.perf_counter()
    import math_verify
    from math_verify import parse, verify
    import_s = time.perf_counter() - t
    rss_after_import = peak_rss_kb()

    class TimeoutCounter(logging.Handler):
        """Counts math-verify's "Timeout during parsing/comparison" warnings."""

        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.count = 0

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Timeout during"):
                self.count += 1

    counter = TimeoutCounter()
    mv_logger = logging.getLogger("math_verify")
    mv_logger.addHandler(counter)
    mv_logger.propagate = False

    t = time.perf_counter()
    for g, p in [("1", "\\boxed{1}"), ("\\frac{1}{2}", "The answer is $0.5$."), ("(1, 2)", "so $x \\in (1, 2)$")]:
        verify(parse(g), parse(p))
    warmup_s = time.perf_counter() - t

    times, lines = [], []
    for pr in pairs:
        before = counter.count
        rounding = pr.get("precision")
        t = time.perf_counter()
        gold = parse(pr["answer"])
        pred = parse(pr["response"])
        ok = verify(gold, pred) if rounding is None else verify(gold, pred, float_rounding=rounding)
        us = (time.perf_counter() - t) * 1e6
        times.append(us)
        lines.append({"id": pr["id"], "correct": bool(ok), "extracted": str(pred[-1])[:200] if pred else None,
                      "us": us, "timeouts": counter.count - before})
    with open(args.out, "w", encoding="utf-8") as f:
        for r in lines:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    imax = max(range(len(times)), key=times.__getitem__) if times else 0
    print(json.dumps({
        "side": "math-verify",
        "version": getattr(math_verify, "__version__", None) or _dist_version("math-verify"),
        "n": len(pairs),
        "correct": sum(r["correct"] for r in lines),
        "total_s": sum(times) / 1e6,
        "median_us": statistics.median(times) if times else 0.0,
        "max_us": times[imax] if times else 0.0,
        "max_id": pairs[imax]["id"] if pairs else None,
        "timeouts": counter.count,
        "over_timeout": sum(us > TIMEOUT_S * 1e6 for us in times),
        "startup_s": startup_s,
        "import_s": import_s,
        "warmup_s": warmup_s,
        "rss_after_import_kb": rss_after_import,
        "peak_rss_kb": peak_rss_kb(),
    }))


def _dist_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------
# report


def fmt_us(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.2f} ms"
    return f"{us:.1f} µs"


def short(s: str, n: int = 70) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n // 2 - 2] + " … " + s[-(n // 2 - 2):]


def cmd_report(args: argparse.Namespace) -> None:
    d = pathlib.Path(args.dir)
    rounds = sorted(int(p.stem.split("-")[-1]) for p in d.glob("meta-rl-*.json"))
    meta = {s: [json.loads((d / f"meta-{s}-{r}.json").read_text()) for r in rounds] for s in ("rl", "mv")}
    verdicts = {
        s: [{v["id"]: v for v in map(json.loads, open(d / f"verdicts-{s}-{r}.jsonl"))} for r in rounds]
        for s in ("rl", "mv")
    }
    pairs = [json.loads(line) for line in open(d / "pairs.jsonl", encoding="utf-8") if line.strip()]
    loads = (d / "loadavg.txt").read_text().splitlines() if (d / "loadavg.txt").exists() else []
    med = statistics.median
    ratios = [m["total_s"] / r["total_s"] for r, m in zip(meta["rl"], meta["mv"])]
    ratios_med = [m["median_us"] / r["median_us"] for r, m in zip(meta["rl"], meta["mv"])]
    n = len(pairs)
    # A pair's time is its median over rounds: one preempted call on a shared machine does not
    # make it the slowest pair. The slowest single call of any round is reported next to it.
    pair_us = {s: {p["id"]: med(v[p["id"]]["us"] for v in verdicts[s]) for p in pairs} for s in ("rl", "mv")}

    def side_cells(side: str, ids: list[str]) -> list[str]:
        ms = meta[side]
        times = [pair_us[side][i] for i in ids]
        slow = max(ids, key=pair_us[side].__getitem__)
        calls = [(v[i]["us"], i) for v in verdicts[side] for i in ids]
        worst_us, worst_id = max(calls)
        timeouts = sum(v[i].get("timeouts", 0) for v in verdicts[side] for i in ids)
        over = sum(us > TIMEOUT_S * 1e6 for us, _ in calls)
        totals = [sum(v[i]["us"] for i in ids) / 1e6 for v in verdicts[side]]
        startup = [m["startup_s"] for m in ms if m.get("startup_s") is not None]
        imp = [m["import_s"] for m in ms if m.get("import_s") is not None]
        return [
            fmt_us(med(times)),
            f"{fmt_us(pair_us[side][slow])} ({slow})",
            f"{fmt_us(worst_us)} ({worst_id})",
            f"{med(totals) * 1e3:.1f} ms" if med(totals) < 1 else f"{med(totals):.2f} s",
            f"{timeouts} ({over} calls > {TIMEOUT_S:g} s)",
            f"{med(startup) * 1e3:.0f} ms" if startup else "n/a",
            f"{med(imp):.2f} s" if imp else "n/a",
            f"{max(m['peak_rss_kb'] for m in ms) / 1024:.0f} MiB",
        ]

    print(f"# rl-zero verifier vs math-verify {meta['mv'][0].get('version')}: {n} pairs, {len(rounds)} rounds\n")
    if loads:
        print(f"load average (1/5/15 min) at start: {loads[0]}; at end: {loads[-1] if len(loads) > 1 else '?'}\n")
    subsets = [("all pairs", [p["id"] for p in pairs]),
               ("fixture pairs", [p["id"] for p in pairs if "expected" in p]),
               ("generated pairs", [p["id"] for p in pairs if "expected" not in p])]
    print("| pairs | side | per-pair median | per-pair max (pair) | slowest call (pair) | total | timeouts "
          "| start-up | import | peak RSS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ids in subsets:
        if not ids:
            continue
        for side, label in (("rl", "rl-zero (release)"), ("mv", "math-verify")):
            print(f"| {name} ({len(ids)}) | {label} | " + " | ".join(side_cells(side, ids)) + " |")
    print()
    for name, ids in subsets[1:]:
        if ids:
            r = [sum(m[i]["us"] for i in ids) / sum(v[i]["us"] for i in ids)
                 for v, m in zip(verdicts["rl"], verdicts["mv"])]
            print(f"- {name}: ratio math-verify / rl-zero (total time) min {min(r):.0f}x, "
                  f"median {med(r):.0f}x, max {max(r):.0f}x over rounds")
    rss_imp = [m.get("rss_after_import_kb") for m in meta["mv"] if m.get("rss_after_import_kb")]
    if rss_imp:
        print(f"\nmath-verify RSS right after `import math_verify`: {max(rss_imp) / 1024:.0f} MiB.")
    print("\nA pair's time is its median over the rounds; median and max are over pairs. Total: median over "
          "rounds of the sum of per-pair times. Timeouts and slow calls: summed over rounds. Start-up: "
          "process launch to the first line of the program (Python: interpreter + stdlib); import: "
          "`import math_verify` (sympy, latex2sympy2, antlr4); start-up, import, RSS: per process.\n")
    print("| round | rl-zero total (ms) | math-verify total (s) | ratio (total) | ratio (median pair) |")
    print("|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rounds):
        print(f"| {r} | {meta['rl'][i]['total_s'] * 1e3:.1f} | {meta['mv'][i]['total_s']:.2f} | "
              f"{ratios[i]:.0f}x | {ratios_med[i]:.0f}x |")
    print(f"\nratio math-verify / rl-zero (total time): min {min(ratios):.0f}x, median {med(ratios):.0f}x, "
          f"max {max(ratios):.0f}x; per-pair median: min {min(ratios_med):.0f}x, median {med(ratios_med):.0f}x, "
          f"max {max(ratios_med):.0f}x")

    # verdict stability and agreement (round 1 verdicts; flips across rounds reported)
    flips = {s: sorted({p["id"] for p in pairs for v in verdicts[s][1:] if v[p["id"]]["correct"] != verdicts[s][0][p["id"]]["correct"]})
             for s in ("rl", "mv")}
    for s, ids in flips.items():
        if ids:
            print(f"\nWARNING: {s} verdicts changed between rounds for {', '.join(ids)}")
    rl, mv = verdicts["rl"][0], verdicts["mv"][0]
    dis = [p for p in pairs if rl[p["id"]]["correct"] != mv[p["id"]]["correct"]]
    print(f"\nagreement: {n - len(dis)}/{n} = {100 * (n - len(dis)) / n:.1f}%"
          f" (rl-zero says correct on {sum(v['correct'] for v in rl.values())}, math-verify on {sum(v['correct'] for v in mv.values())})")
    fx = [p for p in pairs if "expected" in p]
    if fx:
        a_rl = sum(rl[p["id"]]["correct"] == p["expected"] for p in fx)
        a_mv = sum(mv[p["id"]]["correct"] == p["expected"] for p in fx)
        print(f"fixture pairs matching the expected verdict of math-verify's test suite: rl-zero {a_rl}/{len(fx)}, "
              f"math-verify (default parse/verify) {a_mv}/{len(fx)}")
    by_cat: dict[str, list[dict]] = {}
    for p in dis:
        by_cat.setdefault(p["category"], []).append(p)
    print(f"\n## {len(dis)} disagreements, by category\n")
    for cat, ps in sorted(by_cat.items()):
        print(f"### {cat} ({len(ps)})\n")
        print("| id | gold | prediction | rl-zero (extracted) | math-verify (extracted) | suite expects |")
        print("|---|---|---|---|---|---|")
        for p in ps:
            r, m = rl[p["id"]], mv[p["id"]]
            cell = lambda s: short(s, 60).replace("|", "\\|")  # noqa: E731
            print(f"| {p['id']} | `{cell(p['answer'])}` | `{cell(p['response'])}` | {r['correct']} (`{cell(str(r['extracted']))}`) | "
                  f"{m['correct']} (`{cell(str(m['extracted']))}`) | {p.get('expected', '')} |")
        print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs")
    p.add_argument("out")
    p.add_argument("--generated", type=int, default=270)
    p.add_argument("--seed", type=int, default=8)
    p = sub.add_parser("mathverify")
    p.add_argument("pairs")
    p.add_argument("out")
    p = sub.add_parser("report")
    p.add_argument("dir")
    args = ap.parse_args()
    {"pairs": cmd_pairs, "mathverify": cmd_mathverify, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
