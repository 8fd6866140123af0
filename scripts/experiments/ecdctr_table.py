"""Tables of the E-CDCTR experiment (scripts/experiments/ecdctr.sh) from runs/ecdctr/seed-*/."""
import glob
import json
import os
import statistics
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table_util import ms  # noqa: E402

root = sys.argv[1] if len(sys.argv) > 1 else "runs/ecdctr"
data = sys.argv[2] if len(sys.argv) > 2 else "data/gen-ecdctr"
variants = ["alone", "cpm", "tpm", "both"]
names = {"alone": "A-CTR alone", "cpm": "+ CPM init", "tpm": "+ TPM features", "both": "+ both"}
seeds = sorted(glob.glob(os.path.join(root, "seed-*")))
days = [f"2026-01-{d:02d}" for d in range(7, 21)]


def summary(seed, variant, day):
    p = os.path.join(seed, "actr-" + variant, day, "summary.json")
    return json.load(open(p)) if os.path.exists(p) else None


def metric(seed, variant, day, key):
    s = summary(seed, variant, day)
    return s["eval"]["ctr"][key] if s and s.get("eval") else None


def auc(labels, scores):
    """Exact AUC with ties at their average rank."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    pos = labels > 0.5
    n1, n0 = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else float("nan")


def ads_day(day):
    users, clicks = [], []
    for f in sorted(glob.glob(os.path.join(data, "ads", f"day={day}", "part-*.h5"))):
        with h5py.File(f, "r") as h:
            users.append(h["meta/user_id"][()])
            clicks.append(h["labels/click"][()])
    return np.concatenate(users), np.concatenate(clicks).astype(np.float64)


def shift(day, n):
    import datetime
    return (datetime.date.fromisoformat(day) + datetime.timedelta(days=n)).isoformat()


for key, label in [("auc", "AUC"), ("gauc", "GAUC")]:
    print(f"Next-day ads CTR {label} (model after day D on ads day D+1), mean ± std over {len(seeds)} seeds:\n")
    print("| day D | " + " | ".join(names[v] for v in variants) + " |")
    print("| --- | " + " | ".join("---" for _ in variants) + " |")
    for day in days:
        print(f"| {day} | " + " | ".join(ms([metric(s, v, day, key) for s in seeds]) for v in variants) + " |")
    means = [ms([statistics.mean([metric(s, v, d, key) for d in days]) for s in seeds]) for v in variants]
    print("| mean of days 7-20 | " + " | ".join(means) + " |")
    first = [ms([statistics.mean([metric(s, v, d, key) for d in days[:3]]) for s in seeds]) for v in variants]
    print("| mean of days 7-9 | " + " | ".join(first) + " |\n")

# Forgetting: users with no ads impression in the 7 days before the eval day.
print("Forgetting: next-day ads CTR AUC over rows whose user had no ads impression in the 7 days "
      "before, eval days 15-21, mean ± std over seeds of the mean over days:\n")
cache = {}
rows_share = []
per_variant = {v: [] for v in variants}
for s in seeds:
    vals = {v: [] for v in variants}
    for d in [f"2026-01-{x:02d}" for x in range(14, 21)]:
        e = shift(d, 1)
        if e not in cache:
            users, clicks = ads_day(e)
            recent = set()
            for k in range(1, 8):
                recent.update(ads_day(shift(e, -k))[0].tolist())
            unseen = np.array([u not in recent for u in users.tolist()])
            cache[e] = (clicks, unseen)
        clicks, unseen = cache[e]
        if s == seeds[0]:
            rows_share.append(unseen.mean())
        for v in variants:
            p = os.path.join(s, "actr-" + v, d, "next_day.csv")
            if not os.path.exists(p):
                continue
            scores = np.loadtxt(p, delimiter=",", skiprows=1, usecols=1)
            vals[v].append(auc(clicks[unseen], scores[unseen]))
    for v in variants:
        if vals[v]:
            per_variant[v].append(statistics.mean(vals[v]))
print("| | " + " | ".join(names[v] for v in variants) + " |")
print("| --- | " + " | ".join("---" for _ in variants) + " |")
print("| AUC, users unseen in ads for 7 days | " + " | ".join(ms(per_variant[v]) for v in variants) + " |")
print(f"\nThose rows are {100 * statistics.mean(rows_share):.1f}% of each eval day on average.")
