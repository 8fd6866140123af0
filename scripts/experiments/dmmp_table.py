#!/usr/bin/env python3
"""Markdown table of the DMMP experiment (scripts/experiments/dmmp.sh) for one conflict level:
mean ± sd over seeds of each student's served list (mixed score; a one-task model's task score)
against click and conversion relevance, plus the eval AUCs from summary.json."""
import json
import statistics
import sys
from pathlib import Path

level = Path(sys.argv[1])
seeds = sorted(p for p in level.iterdir() if p.is_dir())
variants = ["two-tower-none", "two-tower-distill", "three-tower-none", "three-tower-distill",
            "three-tower+gate-none", "three-tower+gate-distill"]
ks = [10, 50, 200]


def fmt(values):
    if not values:
        return "–"
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.4f} ± {s:.4f}"


cols = [f"{m}@{k} {rel}" for rel in ("click", "conv") for m in ("R", "NDCG") for k in ks]
print("| student | " + " | ".join(cols) + " |")
print("|---|" + "---|" * len(cols))
for v in variants:
    rows = {c: [] for c in cols}
    for s in seeds:
        f = s / v / "retrieval.json"
        if not f.exists():
            continue
        lists = json.loads(f.read_text())["lists"]
        served = "mixed" if "mixed/click" in lists else "ctr"
        for rel, name in (("click", "click"), ("conv", "conversion")):
            for m, key in (("R", "recall"), ("NDCG", "ndcg")):
                for k in ks:
                    rows[f"{m}@{k} {rel}"].append(lists[f"{served}/{name}"][f"{key}@{k}"])
    print(f"| {v} | " + " | ".join(fmt(rows[c]) for c in cols) + " |")
print()
print(f"seeds: {', '.join(p.name for p in seeds)}; served list: the mixed score (two-tower: its CTR score)")
