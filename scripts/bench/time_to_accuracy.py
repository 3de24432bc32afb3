"""Report of scripts/bench/time_to_accuracy.sh: held-out greedy accuracy against training time for
rl-zero and TRL, both scored by rl-zero's greedy evaluator on the same held-out prompts.

  python3 scripts/bench/time_to_accuracy.py OUT [--marks 0.5 0.8]

reads OUT/rl-zero/{metrics.jsonl,eval/step-N.jsonl} and OUT/trl/{metrics.jsonl,eval/step-N.jsonl,
summary.json} and OUT/*.time (`/usr/bin/time -v` of each side), prints a Markdown table and writes
OUT/time_to_accuracy.svg (held-out accuracy, train reward, response length and truncation rate
against training time, both sides). Training time = the sum of the per-step times up to a step: rl-zero's
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


# Per-step training curves of each side: (rl-zero metric, TRL metric) per panel.
CURVES = {
    "train reward (mean of the step's samples)": ("reward/mean", "trl/reward"),
    "response length (mean tokens)": ("response/length_mean", "trl/completions/mean_length"),
    "truncation rate (share cut at the token budget)": ("response/truncated_frac", "trl/completions/clipped_ratio"),
}


def step_curve(side_dir, time_key, key):
    """[(training minutes at the step's end, value)] of per-step metric `key`."""
    secs, pts = train_seconds(side_dir, time_key), []
    for line in (side_dir / "metrics.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d.get(key) is not None and d.get("step") in secs and "eval/accuracy" not in d:
            pts.append((secs[d["step"]] / 60, float(d[key]), 0.0))
    return pts


def panel(parts, box, title, series, xmax, ymax, error_bars):
    """One chart in `box` = (left, top, width, height): `series` {name: [(minutes, y, err)]}."""
    left, top, w, h = box
    x = lambda m: left + w * m / xmax
    y = lambda v: top + h * (1 - v / ymax)
    parts.append(f'<text x="{left + w / 2}" y="{top - 8}" text-anchor="middle">{title}</text>')
    for i in range(6):
        v = ymax * i / 5
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    step = max(1, round(xmax / 6))
    for m in range(0, int(xmax) + 1, step):
        parts.append(f'<text x="{x(m):.1f}" y="{top + h + 16}" text-anchor="middle">{m}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + h}" stroke="black"/>'
                 f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" stroke="black"/>')
    for i, (name, pts) in enumerate(series.items()):
        colour = ("#1f77b4", "#d62728")[i % 2]
        d = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v, _ in pts)
        parts.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if error_bars:
            for m, v, se in pts:
                parts.append(f'<line x1="{x(m):.1f}" x2="{x(m):.1f}" y1="{y(min(ymax, v + se)):.1f}" '
                             f'y2="{y(max(0, v - se)):.1f}" stroke="{colour}"/>')
                parts.append(f'<circle cx="{x(m):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{left + 10}" y="{top + 16 + 16 * i}" fill="{colour}">{name}</text>')


def svg(series, curves, path):
    """Four charts against training minutes: held-out accuracy (± 1 s.e.), then each of CURVES."""
    W, H, pw, ph = 1000, 720, 400, 230
    xmax = max(m for pts in series.values() for m, _, _ in pts) * 1.05 or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">training minutes (evaluations and checkpoint saves excluded)</text>']
    charts = [("held-out greedy accuracy (± 1 s.e.)", series, 1.0, True)]
    for title, by_side in curves.items():
        top = max((v for pts in by_side.values() for _, v, _ in pts), default=1.0)
        charts.append((title, by_side, 1.0 if top <= 1.0 else top * 1.1, False))
    for i, (title, by_side, ymax, bars) in enumerate(charts):
        box = (70 + (i % 2) * 490, 40 + (i // 2) * 320, pw, ph)
        panel(parts, box, title, by_side, xmax, ymax, bars)
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--marks", type=float, nargs="+", default=[0.5, 0.8])
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    sides = {"rl-zero": ("rl-zero", "time/step_s"), "TRL GRPOTrainer": ("trl", "time/step_s")}
    series, rows, curves = {}, {}, {title: {} for title in CURVES}
    for side, (name, (d, key)) in enumerate(sides.items()):
        if not (out / d / "metrics.jsonl").is_file():
            continue
        for title, keys in CURVES.items():
            curves[title][name] = step_curve(out / d, key, keys[side])
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
    svg(series, curves, out / "time_to_accuracy.svg")
    print(f"\nfigure {out / 'time_to_accuracy.svg'}")


if __name__ == "__main__":
    main()
