#!/usr/bin/env python3
"""Single-task vs shared-bottom vs ESMM on the generated data, several seeds, mean ± std.

Trains configs/{single_task,shared_bottom,quickstart}.yaml with run.seed = 1..N on data/gen
(generate it first: `build/bin/ncsrec gen --out data/gen`) and prints a markdown table of
AUC per task beside the Bayes-optimal AUC of the same eval split, plus training samples/s.
Standard library only. Usage: scripts/compare_models.py [--seeds 3] [--ncsrec build/bin/ncsrec]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

MODELS = [("single-task", "configs/single_task.yaml"), ("shared-bottom", "configs/shared_bottom.yaml"),
          ("ESMM", "configs/quickstart.yaml")]
VIEWS = ["ctr", "cvr", "ctcvr"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ncsrec", default="build/bin/ncsrec")
    ap.add_argument("--data", default="data/gen")
    args = ap.parse_args()
    env = dict(os.environ)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name, config in MODELS:
            for seed in range(1, args.seeds + 1):
                run = os.path.join(work, f"{name}-{seed}")
                cmd = [args.ncsrec, "train", "--config", config, "--run-dir", run, "--set", f"run.seed={seed}",
                       "--set", f'data.train=["{args.data}/content/day=2026-01-0[1-7]"]',
                       "--set", f'data.eval=["{args.data}/content/day=2026-01-08"]']
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
                s = json.load(open(os.path.join(run, "summary.json")))
                results.setdefault(name, []).append(s)
                print(f"{name} seed {seed}: " + ", ".join(f"{v} {s['eval'][v]['auc']:.4f}" for v in VIEWS),
                      file=sys.stderr)

    def cell(vals):
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± " + (f"{sd:.4f}" if sd >= 5e-5 else "<0.0001")

    first = next(iter(results.values()))[0]
    print("| model | " + " | ".join(f"{v} AUC" for v in VIEWS) + " | samples/s |")
    print("|---|" + "---|" * (len(VIEWS) + 1))
    for name, runs in results.items():
        row = [cell([r["eval"][v]["auc"] for r in runs]) for v in VIEWS]
        sps = statistics.mean(r["samples_per_sec"] for r in runs)
        print(f"| {name} | " + " | ".join(row) + f" | {sps:,.0f} |")
    print("| Bayes-optimal | " + " | ".join(f"{first['eval'][v]['bayes_auc']:.4f}" for v in VIEWS) + " | |")


if __name__ == "__main__":
    main()
