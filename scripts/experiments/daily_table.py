"""Tables of the daily-cycle experiment from runs/daily/<mode>/seed-<s>/daily.jsonl."""
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table_util import ms  # noqa: E402

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/daily")
modes = ["incremental", "scratch", "frozen"]
runs = {m: [[json.loads(l) for l in open(p)] for p in sorted((root / m).glob("seed-*/daily.jsonl"))] for m in modes}


def metric(line, task, key="auc"):
    nd = line.get("next_day")
    return nd[task][key] if nd else None


days = [l["day"] for l in runs["incremental"][0]]
for task in ["ctr", "ctcvr"]:
    print(f"Next-day {task.upper()} AUC (model after day D, evaluated on day D+1), mean ± std over "
          f"{len(runs['incremental'])} seeds:\n")
    print("| day D | " + " | ".join(modes) + " | Bayes |")
    print("| --- | " + " | ".join("---" for _ in modes) + " | --- |")
    for i, day in enumerate(days):
        cells = [ms([metric(r[i], task) for r in runs[m]]) for m in modes]
        bayes = metric(runs["incremental"][0][i], task, "bayes_auc")
        if all(c == "-" for c in cells):
            continue
        print(f"| {day} | " + " | ".join(cells) + (f" | {bayes:.4f} |" if bayes else " | - |"))
    means = []
    for m in modes:
        vals = [statistics.mean([metric(r[i], task) for i in range(1, len(days)) if metric(r[i], task) is not None])
                for r in runs[m]]
        means.append(ms(vals))
    print("| mean of days 2-10 | " + " | ".join(means) + " | |\n")

print("Wall time per day (seconds: training, the progressive and next-day evaluations, checkpoint; "
      "not the exports) and checkpoint size:\n")
print("| mode | wall s/day | train s/day | checkpoint MB |")
print("| --- | --- | --- | --- |")
for m in modes:
    walls = [l["wall_seconds"] - l.get("export_seconds", 0.0) for r in runs[m] for l in r]  # without exports
    trains = [l["train_seconds"] for r in runs[m] for l in r if l.get("train_seconds") is not None]
    sizes = [l["checkpoint_bytes"] / 1e6 for r in runs[m] for l in r if l.get("checkpoint_bytes")]
    print(f"| {m} | {statistics.mean(walls):.2f} | {statistics.mean(trains):.2f} | "
          f"{statistics.mean(sizes):.2f} |")

print("\nPer day (mean over seeds): wall seconds of each mode's day (without the exports), and the"
      " incremental run's export seconds, checkpoint and export sizes (MB; the delta holds the embedding"
      " rows changed since the day before):\n")
print("| day | " + " | ".join(f"{m} wall s" for m in modes) + " | export s | checkpoint MB | full export MB | delta MB |")
print("| --- | " + " | ".join("---" for _ in modes) + " | --- | --- | --- | --- |")


def mean_of(vals):
    vals = [v for v in vals if v is not None]
    return f"{statistics.mean(vals):.2f}" if vals else "-"


def field(lines, key, scale=1.0):
    return [l[key] * scale if l.get(key) is not None else None for l in lines]


for i, day in enumerate(days):
    walls = [mean_of([r[i]["wall_seconds"] - r[i].get("export_seconds", 0.0) for r in runs[m]]) for m in modes]
    inc = [r[i] for r in runs["incremental"]]
    print(f"| {day} | " + " | ".join(walls) + f" | {mean_of(field(inc, 'export_seconds'))} | "
          f"{mean_of(field(inc, 'checkpoint_bytes', 1e-6))} | {mean_of(field(inc, 'full_export_bytes', 1e-6))} | "
          f"{mean_of(field(inc, 'delta_export_bytes', 1e-6))} |")
