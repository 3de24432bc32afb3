"""Summarises a GPU bundle run (scripts/gpu/run.sh) into report.json and report.md.

usage: python report.py OUT_DIR TOTAL_SECONDS

Reads OUT_DIR/steps.jsonl (one line per step: tests and benchmark processes), OUT_DIR/bench/*.jsonl
(one JSON object per benchmark iteration, from rl-policy's device_bench example and
policy_vs_torch.py --json) and OUT_DIR/versions.txt. Benchmark figures: the median over the
iterations after the first (warm-up) of each workload; ratio = PyTorch seconds / rl-zero seconds
(above 1: rl-zero is faster). Standard library only.
"""
import collections
import json
import pathlib
import statistics
import sys


def main():
    out, total = pathlib.Path(sys.argv[1]), float(sys.argv[2])
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    rows = []
    for f in sorted((out / "bench").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["model"], r["precision"], r["what"], r["shape"], r["side"])].append(r)
    bench = []
    for key in sorted({k[:4] for k in by}):
        entry = {"model": key[0], "precision": key[1], "what": key[2], "shape": key[3]}
        for side in ("rl-zero", "torch"):
            its = by.get(key + (side,), [])
            counted = [r for r in its if r["iter"] > 0] or its
            if not counted:
                entry[side] = None
                continue
            gpu = [r.get("gpu_used_mb") for r in its if r.get("gpu_used_mb") is not None]
            alloc = [r.get("gpu_peak_alloc_mb") for r in its if r.get("gpu_peak_alloc_mb") is not None]
            entry[side] = {
                "secs_median": statistics.median(r["secs"] for r in counted),
                "tok_s_median": statistics.median(r["tok_s"] for r in counted),
                "iters_counted": len(counted),
                "gpu_used_mb_max": max(gpu) if gpu else None,
                "gpu_peak_alloc_mb_max": max(alloc) if alloc else None,
                "params": its[0].get("params"),
            }
        if entry.get("rl-zero") and entry.get("torch"):
            entry["ratio_torch_over_rlzero"] = entry["torch"]["secs_median"] / entry["rl-zero"]["secs_median"]
        bench.append(entry)
    tests = [s for s in steps if s["kind"] == "test"]
    count = collections.Counter(s["status"] for s in tests)
    versions = (out / "versions.txt").read_text() if (out / "versions.txt").exists() else ""
    report = {
        "total_secs": total,
        "tests": tests,
        "test_summary": dict(count),
        "bench_steps": [s for s in steps if s["kind"] == "bench"],
        "bench": bench,
        "versions": versions,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    md = ["# rl-zero GPU bundle report", ""]
    md.append(f"Total {total:.0f} s. Tests: " + ", ".join(f"{v} {k}" for k, v in sorted(count.items())) + ".")
    md += ["", "```", versions.strip(), "```", "", "## Tests", "", "| test | status | seconds |", "|---|---|---:|"]
    for s in tests:
        md.append(f"| {s['name']} | {s['status']} | {s.get('secs', '')} |")
    md += ["", "## Benchmark (median of the iterations after the first; ratio = torch s / rl-zero s)", "",
           "| model | precision | workload | rl-zero s | torch s | ratio | rl-zero tok/s | torch tok/s "
           "| GPU MiB in use rl-zero / torch | torch peak allocated MiB |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def f(x, fmt="{:.3f}"):
        return "–" if x is None else fmt.format(x)

    for e in bench:
        rz, tc = e.get("rl-zero") or {}, e.get("torch") or {}
        md.append(
            f"| {e['model']} | {e['precision']} | {e['what']} {e['shape']} | {f(rz.get('secs_median'))} | "
            f"{f(tc.get('secs_median'))} | {f(e.get('ratio_torch_over_rlzero'), '{:.2f}')} | "
            f"{f(rz.get('tok_s_median'), '{:.0f}')} | {f(tc.get('tok_s_median'), '{:.0f}')} | "
            f"{f(rz.get('gpu_used_mb_max'), '{:.0f}')} / {f(tc.get('gpu_used_mb_max'), '{:.0f}')} | "
            f"{f(tc.get('gpu_peak_alloc_mb_max'), '{:.0f}')} |")
    failed = [s for s in steps if s["kind"] == "bench" and s["status"] != "pass"]
    if failed:
        md += ["", "Benchmark steps that did not pass: " + ", ".join(f"{s['name']} ({s['status']})" for s in failed)]
    md += ["", "Logs: logs/<step>.log; raw iterations: bench/*.jsonl; this data: report.json.", ""]
    (out / "report.md").write_text("\n".join(md))
    print(f"report: {out / 'report.md'} and {out / 'report.json'}")
    print("\n".join(md[md.index("## Tests"):]))


if __name__ == "__main__":
    main()
