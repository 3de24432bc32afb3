"""Report of scripts/bench/time_to_accuracy.sh: held-out greedy accuracy against training time for
rl-zero and TRL, both scored by rl-zero's greedy evaluator on the same held-out prompts.

  python3 scripts/bench/time_to_accuracy.py OUT [--marks 0.5 0.8]

reads OUT/rl-zero/{metrics.jsonl,eval/step-N.jsonl} and OUT/trl/{metrics.jsonl,eval/step-N.jsonl,
summary.json} and OUT/*.time (`/usr/bin/time -v` of each side), prints a Markdown table and writes
OUT/time_to_accuracy.svg. Training time = the sum of the per-step times up to a step: rl-zero's
`time/step_s` (rollout, scoring, update), TRL's on_step_begin -> on_step_end; neither counts
evaluations or checkpoint saves. Error bars: one binomial standard error, sqrt(p(1-p)/n).
Standard library only.
"""
import argparse
import json
import math
import pathlib
import re


def evals(side_dir):
    """{step: (accuracy, n)} from the eval/step-N.jsonl response files (reward > 0 = correct)."""
    out = {}
    for f in sorted((side_dir / "eval").glob("step-*.jsonl")):
        rows = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        step = int(f.stem.split("-")[1])
        out[step] = (sum(r["reward"] > 0 for r in rows) / len(rows), len(rows))
    return out


def train_seconds(side_dir, key):
    """{step: cumulative training seconds} from a metrics JSONL with per-step `key` seconds."""
    cum, total = {0: 0.0}, 0.0
    for line in (side_dir / "metrics.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d.get(key) is not None and "eval/accuracy" not in d:
            total += d[key]
            cum[d["step"]] = total
    return cum


def peak_rss_mib(path):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text()) if path.is_file() else None
    return int(m.group(1)) / 1024 if m else float("nan")


def wall(path):
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", path.read_text()) if path.is_file() else None
    if not m:
        return float("nan")
    secs = 0.0
    for part in m.group(1).split(":"):
        secs = secs * 60 + float(part)
    return secs


def first_reaching(points, mark):
    """Training minutes of the first evaluation at or above `mark`, or None."""
    for minutes, acc, _ in points:
        if acc >= mark:
            return minutes
    return None


def precision(out):
    """Each side's compute precision: rl-zero's from its saved run.toml, TRL's from summary.json."""
    import tomllib

    said = []
    run = out / "rl-zero" / "run.toml"
    if run.is_file():
        dtype = tomllib.loads(run.read_text()).get("run", {}).get("compute_dtype", "f32")
        said.append(f"rl-zero {dtype}")
    summary = out / "trl" / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        said.append(f"TRL {s.get('precision', 'f32')} (accelerate mixed_precision "
                    f"{s.get('accelerate_mixed_precision', 'no')})")
    return ", ".join(said) or "unknown"


def svg(series, path):
    W, H, L, R, T, B = 640, 400, 60, 20, 30, 50
    xmax = max(m for pts in series.values() for m, _, _ in pts) * 1.05 or 1.0
    x = lambda m: L + (W - L - R) * m / xmax
    y = lambda a: T + (H - T - B) * (1 - a)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{W / 2}" y="18" text-anchor="middle">held-out greedy accuracy vs training time (± 1 s.e.)</text>']
    for a in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(f'<line x1="{L}" x2="{W - R}" y1="{y(a)}" y2="{y(a)}" stroke="#ddd"/>')
        parts.append(f'<text x="{L - 6}" y="{y(a) + 4}" text-anchor="end">{a:.1f}</text>')
    step = max(1, round(xmax / 6))
    for m in range(0, int(xmax) + 1, step):
        parts.append(f'<text x="{x(m)}" y="{H - B + 16}" text-anchor="middle">{m}</text>')
    parts.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">training minutes (evaluations excluded)</text>')
    parts.append(f'<line x1="{L}" x2="{L}" y1="{T}" y2="{H - B}" stroke="black"/><line x1="{L}" x2="{W - R}" y1="{H - B}" y2="{H - B}" stroke="black"/>')
    for i, (name, pts) in enumerate(series.items()):
        colour = ("#1f77b4", "#d62728")[i % 2]
        d = " ".join(f"{x(m):.1f},{y(a):.1f}" for m, a, _ in pts)
        parts.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for m, a, se in pts:
            parts.append(f'<line x1="{x(m):.1f}" x2="{x(m):.1f}" y1="{y(min(1, a + se)):.1f}" y2="{y(max(0, a - se)):.1f}" stroke="{colour}"/>')
            parts.append(f'<circle cx="{x(m):.1f}" cy="{y(a):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{L + 10}" y="{T + 16 + 16 * i}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--marks", type=float, nargs="+", default=[0.5, 0.8])
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    sides = {"rl-zero": ("rl-zero", "time/step_s"), "TRL GRPOTrainer": ("trl", "time/step_s")}
    series, rows = {}, {}
    for name, (d, key) in sides.items():
        if not (out / d / "metrics.jsonl").is_file():
            continue
        secs, acc = train_seconds(out / d, key), evals(out / d)
        pts = [(secs[s] / 60, p, math.sqrt(p * (1 - p) / n)) for s, (p, n) in sorted(acc.items()) if s in secs]
        series[name] = pts
        last = max(secs)
        rows[name] = {
            "steps": last,
            "steps_per_hour": last / (secs[last] / 3600) if secs[last] else float("nan"),
            "rss": peak_rss_mib(out / f"{d}.time"),
            "wall": wall(out / f"{d}.time"),
            "marks": {m: first_reaching(pts, m) for m in a.marks},
            "points": {s: (p, n, secs.get(s)) for s, (p, n) in sorted(acc.items())},
        }
    if not series:
        raise SystemExit(f"no metrics under {out}")
    print(f"precision: {precision(out)}\n")
    print("| side | step | training min | held-out accuracy ± s.e. |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        for s, (p, n, t) in r["points"].items():
            t = f"{t / 60:.1f}" if t is not None else "?"
            print(f"| {name} | {s} | {t} | {p:.3f} ± {math.sqrt(p * (1 - p) / n):.3f} |")
    print()
    head = " | ".join(f"min to {m}" for m in a.marks)
    print(f"| side | {head} | steps/hour (training) | wall min (process) | peak RSS MiB |")
    print("|---|" + "---:|" * (len(a.marks) + 3))
    for name, r in rows.items():
        marks = " | ".join(f"{v:.1f}" if v is not None else "not reached" for v in r["marks"].values())
        print(f"| {name} | {marks} | {r['steps_per_hour']:.0f} | {r['wall'] / 60:.1f} | {r['rss']:.0f} |")
    if len(rows) == 2:
        (na, ra), (nb, rb) = rows.items()
        for m in a.marks:
            ta, tb = ra["marks"][m], rb["marks"][m]
            if ta and tb:
                print(f"\ntime to {m}: {nb} / {na} = {tb / ta:.2f}x")
            else:
                print(f"\ntime to {m}: {na} {ta}, {nb} {tb} (a side did not reach it: no ratio)")
        print(f"training steps per hour: {na} / {nb} = {ra['steps_per_hour'] / rb['steps_per_hour']:.2f}x")
    svg(series, out / "time_to_accuracy.svg")
    print(f"\nfigure {out / 'time_to_accuracy.svg'}")


if __name__ == "__main__":
    main()
