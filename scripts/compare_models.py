#!/usr/bin/env python3
"""Trains several configs with several seeds and prints mean ± std of every eval view's AUC.

Default: single-task vs shared-bottom vs ESMM on the generated data (data/gen; generate it
first: `build/bin/ncsrec gen --out data/gen`), with the Bayes-optimal AUC of the same eval split.
Other comparisons name their configs, e.g. Census-Income (docs/results/census.md):
  scripts/compare_models.py --config single-task=configs/census/single_task.yaml \\
      --config shared-bottom=configs/census/shared_bottom.yaml ...
Each run is `ncsrec train --config PATH --set run.seed=S [--set ...]`. For runs whose masks
IMP found, the round each task chose (best validation AUC) is listed after the table.
Standard library only.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

DEFAULT = ["single-task=configs/single_task.yaml", "shared-bottom=configs/shared_bottom.yaml",
           "ESMM=configs/quickstart.yaml"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", help="NAME=PATH (repeatable)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="extra --set for every run")
    ap.add_argument("--ncsrec", default="build/bin/ncsrec")
    args = ap.parse_args()
    configs = [c.split("=", 1) for c in (args.config or DEFAULT)]
    results, chosen = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for name, path in configs:
            for seed in range(1, args.seeds + 1):
                run = os.path.join(work, f"{name}-{seed}")
                cmd = [args.ncsrec, "train", "--config", path, "--run-dir", run, "--set", f"run.seed={seed}"]
                for s in args.set:
                    cmd += ["--set", s]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                s = json.load(open(os.path.join(run, "summary.json")))
                results.setdefault(name, []).append(s)
                imp = os.path.join(run, "masks", "imp.json")
                if os.path.exists(imp):  # IMP's choice per task: the round with the best validation AUC
                    for task, t in json.load(open(imp))["tasks"].items():
                        r = t["rounds"][t["chosen_round"]]
                        chosen.setdefault(name, []).append(
                            f"seed {seed} {task}: round {r['round']} (density {100 * r['density']:.2f}%, "
                            f"valid AUC {r['valid_auc']:.4f})")
                print(f"{name} seed {seed}: " + ", ".join(f"{v} {m['auc']:.4f}" for v, m in s["eval"].items()),
                      file=sys.stderr)

    def cell(vals):
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± " + (f"{sd:.4f}" if sd >= 5e-5 else "<0.0001")

    views = list(next(iter(results.values()))[0]["eval"].keys())
    print("| model | " + " | ".join(f"{v} AUC" for v in views) + " | dense params | mult-adds/sample | samples/s |")
    print("|---|" + "---|" * (len(views) + 3))
    for name, runs in results.items():
        row = [cell([r["eval"][v]["auc"] for r in runs]) for v in views]
        sps = statistics.mean(r["samples_per_sec"] for r in runs)
        cost = f"{runs[0].get('dense_parameters', 0):,} | {runs[0].get('multiply_adds_per_sample', 0):,}"
        print(f"| {name} | " + " | ".join(row) + f" | {cost} | {sps:,.0f} |")
    first = next(iter(results.values()))[0]["eval"]
    if all(first[v].get("bayes_auc") is not None for v in views):
        print("| Bayes-optimal | " + " | ".join(f"{first[v]['bayes_auc']:.4f}" for v in views) + " | | | |")
    for name, lines in chosen.items():
        print(f"\nIMP's chosen masks, {name}:")
        for line in lines:
            print(f"- {line}")


if __name__ == "__main__":
    main()
