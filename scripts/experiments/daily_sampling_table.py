"""Tables of the negative-downsampling experiment from runs/daily_sampling/<variant>/seed-<s>/daily.jsonl
and runs/daily_sampling/exports/sizes.tsv."""
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table_util import ms  # noqa: E402

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/daily_sampling")
variants = ["all", "logit", "weight", "none"]
runs = {v: [[json.loads(l) for l in open(p)] for p in sorted((root / v).glob("seed-*/daily.jsonl"))] for v in variants}
runs = {v: r for v, r in runs.items() if r}


def metric(line, task, key):
    nd = line.get("next_day")
    return nd[task][key] if nd else None


days = [l["day"] for l in next(iter(runs.values()))[0]]
seeds = len(next(iter(runs.values())))
for task, key, digits in [("ctr", "auc", 4), ("ctr", "calibration", 3), ("ctcvr", "auc", 4),
                          ("ctcvr", "calibration", 3)]:
    print(f"Next-day {task.upper()} {key} (model after day D on day D+1), mean ± std over {seeds} seeds:\n")
    print("| day D | " + " | ".join(runs) + " |")
    print("| --- | " + " | ".join("---" for _ in runs) + " |")
    for i, day in enumerate(days):
        cells = [ms([metric(r[i], task, key) for r in runs[v]], digits) for v in runs]
        if all(c == "-" for c in cells):
            continue
        print(f"| {day} | " + " | ".join(cells) + " |")
    means = []
    for v in runs:
        vals = [statistics.mean([metric(r[i], task, key) for i in range(1, len(days))
                                 if metric(r[i], task, key) is not None]) for r in runs[v]]
        means.append(ms(vals, digits))
    print("| mean of days 2-10 | " + " | ".join(means) + " |\n")

print("Rows trained and time per day (mean over days and seeds):\n")
print("| variant | impressions/day | rows trained/day | train s/day | wall s/day |")
print("| --- | --- | --- | --- | --- |")
for v in runs:
    lines = [l for r in runs[v] for l in r]
    print(f"| {v} | {statistics.mean(l['samples'] for l in lines):.0f} | "
          f"{statistics.mean(l['trained_rows'] for l in lines):.0f} | "
          f"{statistics.mean(l['train_seconds'] for l in lines):.2f} | {statistics.mean(l['wall_seconds'] for l in lines):.2f} |")

sizes = root / "exports" / "sizes.tsv"
if sizes.exists():
    print("\nServing exports of the every-row run (seed 1): the full view of each day, and the delta "
          "since the day before:\n")
    print("| day | full MB | full table rows | delta MB | delta table rows |")
    print("| --- | --- | --- | --- | --- |")
    for line in open(sizes):
        day, full, full_rows, delta, delta_rows = line.split()
        print(f"| {day} | {int(full) / 1e6:.2f} | {full_rows} | {int(delta) / 1e6:.2f} | {delta_rows} |")
