#!/usr/bin/env bash
# scripts/ecdctr.sh end to end on tiny generated data (docs/ecdctr.md):
#   - tpm days 1-2: snapshots day=1, day=2 marked done;
#   - cpm day 2 (window 1) with features of the snapshots older than day 2 (day 1 only);
#   - a TPM snapshot of day 3 and a CPM of day 3 "being written" (no _DONE, a partial file):
#     A-CTR day 4 takes snapshots 2 and 1 and the CPM of day 2, says it skipped the others, and
#     records that in versions.json, summary.json and its checkpoint (meta/history_version);
#     BatchNorm was re-initialised from CPM;
#   - the day-3 snapshot finished: A-CTR day 5 continues from A-CTR day 4 with snapshots 3 and 2;
#   - a rerun skips done days; an ads day not ready stops the level with status 1.
set -uo pipefail
ncsrec="$1"
root="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
export NCSREC="$ncsrec"
py=/usr/bin/python3
[[ -x $py ]] || py=python3
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
ok() { echo "ok   $*"; }
e="$root/scripts/ecdctr.sh"

"$ncsrec" gen --out gen --days 6 --rows-per-day 3000 --users 300 --items 100 --ads-fraction 0.2 >/dev/null ||
  { echo "FAIL gen"; exit 1; }
sed -e 's|data/gen-ecdctr|gen|; s|rows: 100000|rows: 300|; s|rows: 20000|rows: 100|; s|batch_size: 1024|batch_size: 256|' \
  "$root/configs/ecdctr/tpm.yaml" >tpm.yaml
sed -e 's|data/gen-ecdctr|gen|; s|rows: 100000|rows: 300|; s|rows: 20000|rows: 100|; s|batch_size: 256|batch_size: 64|' \
  "$root/configs/ecdctr/ads.yaml" >ads.yaml

bash "$e" tpm --out out --config tpm.yaml --first 2026-01-01 --last 2026-01-02 >tpm.log 2>&1 || { cat tpm.log; fail "tpm"; }
[[ -f out/snapshots/day=2026-01-02/_DONE && -f out/snapshots/day=2026-01-02/snapshot.h5 ]] && ok "tpm snapshots" ||
  fail "tpm: no snapshot of day 2"

bash "$e" cpm --out out --config ads.yaml --data 'gen/content/day={day}' --day 2026-01-02 --window 1 --history 2 \
  >cpm.log 2>&1 || { cat cpm.log; fail "cpm"; }
grep -q '"history": "out/history/k2-2026-01-01"' out/cpm/2026-01-02/versions.json && ok "cpm features from before its window" ||
  fail "cpm: $(cat out/cpm/2026-01-02/versions.json 2>/dev/null)"

# Day 3's snapshot and CPM are being written: a partial file, no _DONE.
mkdir -p out/snapshots/day=2026-01-03 out/cpm/2026-01-03
head -c 1000 out/snapshots/day=2026-01-02/snapshot.h5 >out/snapshots/day=2026-01-03/snapshot.h5
bash "$e" actr --out out --config ads.yaml --first 2026-01-04 --last 2026-01-04 --history 2 --cpm cpm >actr4.log 2>&1 ||
  { cat actr4.log; fail "actr day 4"; }
grep -q "snapshot out/snapshots/day=2026-01-03 is not done" actr4.log && ok "actr says it skipped the snapshot being written" ||
  fail "actr day 4 did not report the snapshot being written"
"$py" - out/actr/2026-01-04 <<'PY' || fail "actr day 4: versions"
import json, sys, h5py
run = sys.argv[1]
v, s = json.load(open(f"{run}/versions.json")), json.load(open(f"{run}/summary.json"))
meta = h5py.File(f"{run}/checkpoints/final/rank-0.h5")["meta"].attrs
ckpt_version = meta["history_version"]
ckpt_version = ckpt_version.decode() if isinstance(ckpt_version, bytes) else str(ckpt_version)
want = s["history_version"]
checks = {
    "features from snapshots 2 and 1": want.startswith("2026-01-02@") and ",2026-01-01@" in want,
    "versions.json and the checkpoint agree": v["history_version"] == want and ckpt_version == want,
    "initialised from CPM day 2": v["init_from"].endswith("out/cpm/2026-01-02") and s["init_from"].endswith("cpm/2026-01-02/checkpoints/final"),
}
init = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"event": "init"' in l]
checks["BatchNorm re-initialised"] = bool(init) and init[0]["reinitialised"] > 0
for what, good in checks.items():
    print(("ok   " if good else "FAIL ") + "actr day 4: " + what)
sys.exit(0 if all(checks.values()) else 1)
PY

# The day-3 snapshot is finished now (the TPM level catches up): day 5 takes it.
rm -rf out/snapshots/day=2026-01-03
bash "$e" tpm --out out --config tpm.yaml --first 2026-01-01 --last 2026-01-03 >tpm3.log 2>&1 || { cat tpm3.log; fail "tpm day 3"; }
grep -q "tpm 2026-01-01: done" tpm3.log && ok "tpm rerun skips done days" || fail "tpm rerun retrained a done day"
bash "$e" actr --out out --config ads.yaml --first 2026-01-04 --last 2026-01-05 --history 2 --cpm cpm >actr5.log 2>&1 ||
  { cat actr5.log; fail "actr day 5"; }
grep -q "actr 2026-01-04: done" actr5.log && ok "actr rerun skips done days" || fail "actr rerun retrained day 4"
"$py" - out/actr/2026-01-05 <<'PY' || fail "actr day 5: versions"
import json, sys
v = json.load(open(f"{sys.argv[1]}/versions.json"))
good = v["history_version"].startswith("2026-01-03@") and v["init_from"].endswith("out/actr/2026-01-04")
print(("ok   " if good else "FAIL ") + f"actr day 5: from actr day 4 with snapshots {v['history_version']}")
sys.exit(0 if good else 1)
PY

# An ads day not ready stops the level (status 1) and trains nothing of it.
rm gen/ads/day=2026-01-06/_DONE
bash "$e" actr --out out --config ads.yaml --first 2026-01-06 --last 2026-01-06 --history 2 >actr6.log 2>&1
rc=$?
[[ $rc == 1 && ! -d out/actr/2026-01-06 ]] && ok "an ads day not ready stops actr (status 1)" || fail "actr day 6: status $rc"

if ((fails)); then
  echo "ecdctr.sh: $fails check(s) failed"
  exit 1
fi
echo "ecdctr.sh: all checks passed"
