#!/usr/bin/env bash
# E-CDCTR's three levels (docs/ecdctr.md), each a job of its own that shares with the others
# only what is marked done:
#
#   scripts/ecdctr.sh tpm  --out OUT --config FILE --first D --last D [-- train args]
#       The tiny pre-training model, one content day at a time, each day from the day before;
#       after day D its export becomes the snapshot OUT/snapshots/day=D/ (snapshot.h5, then
#       _DONE). A day already snapshotted is skipped.
#   scripts/ecdctr.sh cpm  --out OUT --config FILE --data PATTERN --day D [--window W]
#                          [--history K] [--name NAME] [-- train args]
#       The complete pre-training model (the ads model's architecture) on the content days
#       D-W+1..D (PATTERN has {day}), into OUT/NAME/D (NAME default cpm). --history K: with the
#       historical features of the newest K snapshots older than its first day (so no feature
#       has seen the rows it trains on).
#   scripts/ecdctr.sh actr --out OUT --config FILE --first D --last D [--history K] [--cpm NAME]
#                          [--name NAME] [-- train args]
#       The ads model, one ads day at a time into OUT/NAME/D (NAME default actr): from its own
#       checkpoint of the day before when there is one; otherwise, with --cpm, initialised from
#       the newest finished OUT/NAME_CPM/X with X < D (BatchNorm re-initialised, a fresh
#       optimizer); otherwise fresh. --history K: the features of the newest K finished
#       snapshots older than D, built on first use into OUT/history/k<K>-<newest day>/ (of
#       tables user_id and item_id; the config's model.history says how the model reads them).
#       Each day writes OUT/NAME/D/versions.json (the CPM or checkpoint it started from and the
#       snapshots behind its features), which its checkpoint records too.
#
# Everything a level reads from another is taken only when marked done (_DONE): a snapshot or
# a CPM still being written is skipped for the previous one, so the levels can run on their
# own cadences (cluster/ecdctr.sbatch). Every level is idempotent (a day with _DONE is
# skipped) and stops at a day whose data is not ready or whose training fails (status 1 or
# training's), leaving what is done as it is.
#
# Environment: NCSREC (default build/bin/ncsrec), NCSREC_LAUNCH (a launcher prefix for training).
set -euo pipefail

die() { echo "ecdctr.sh: $*" >&2; exit 2; }
log() { echo "ecdctr.sh: $*" >&2; }

level="${1:-}"
[[ -n $level ]] || die "usage: scripts/ecdctr.sh tpm|cpm|actr --out OUT ... (see the top of this file)"
shift
out= config= first= last= day= data= window=3 history=0 cpm= name=
extra=()
while (($#)); do
  case "$1" in
    --out) out=${2:?}; shift 2 ;;
    --config) config=${2:?}; shift 2 ;;
    --first) first=${2:?}; shift 2 ;;
    --last) last=${2:?}; shift 2 ;;
    --day) day=${2:?}; shift 2 ;;
    --data) data=${2:?}; shift 2 ;;
    --window) window=${2:?}; shift 2 ;;
    --history) history=${2:?}; shift 2 ;;
    --cpm) cpm=${2:?}; shift 2 ;;
    --name) name=${2:?}; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ -n $out && -n $config ]] || die "--out and --config are required"
[[ -f $config ]] || die "$config: no such config"
[[ $window =~ ^[1-9][0-9]*$ ]] || die "--window must be a positive number of days"
[[ $history =~ ^[0-9]+$ ]] || die "--history must be a number of snapshots"
case "${name:-}" in
  tpm | snapshots | history) die "--name $name: that folder of OUT belongs to another level" ;;
esac
[[ $level == actr && -n $cpm && ${name:-actr} == "$cpm" ]] && die "--name and --cpm must differ: A-CTR and CPM write day folders of their own"
ncsrec=${NCSREC:-build/bin/ncsrec}
read -r -a launch <<<"${NCSREC_LAUNCH:-}"
py=/usr/bin/python3
[[ -x $py ]] || py=python3
mkdir -p "$out"

valid_day() { date -d "$1" +%F >/dev/null 2>&1 && [[ $(date -d "$1" +%F) == "$1" ]]; }
next_day() { date -d "$1 + 1 day" +%F; }
prev_day() { date -d "$1 - 1 day" +%F; }
days() {  # days FIRST LAST: the days in between, inclusive
  local d=$1
  while :; do echo "$d"; [[ $d == "$2" ]] && break; d=$(next_day "$d"); done
}
# The config's first data.train entry (with {day}), unless --data gives one.
train_pattern() {
  [[ -n $data ]] && { echo "$data"; return; }
  "$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["train"][0])' "$config"
}
day_folder() { local p; p=$(train_pattern); echo "${p//\{day\}/$1}"; }
ready() { [[ -f "$(day_folder "$1")/_DONE" ]]; }

# The newest finished snapshots (up to K) older than day $1, newest first, one per line.
done_snapshots_before() {
  local before=$1 k=$2 d
  for dir in $(ls -d "$out"/snapshots/day=* 2>/dev/null | sort -r); do
    d=${dir##*/day=}
    [[ $d < $before ]] || continue
    if [[ ! -f $dir/_DONE ]]; then
      log "snapshot $dir is not done (still being written?): skipped"
      continue
    fi
    echo "$dir"
    k=$((k - 1))
    ((k == 0)) && break
  done
}

# The history features folder for models of day $1 (built now if needed); prints its path.
history_for() {
  local before=$1 snaps newest dir args=()
  mapfile -t snaps < <(done_snapshots_before "$before" "$history")
  ((${#snaps[@]})) || { log "no finished TPM snapshot older than $before: run the tpm level first"; return 1; }
  newest=${snaps[0]##*/day=}
  dir="$out/history/k$history-$newest"
  if [[ ! -f $dir/_DONE ]]; then
    for s in "${snaps[@]}"; do args+=(--snapshot "$s"); done
    rm -rf "$dir"  # what an interrupted build left (never a done one)
    "$ncsrec" history "${args[@]}" --tables user_id,item_id --out "$dir" >&2
  fi
  echo "$dir"
}

history_args() {  # history_args DIR: the --set argument that reads DIR's features (model.history of the config)
  echo "--set" "model.history.file=$1/features.h5"
}

train() {  # train RUN_DIR DAY [ARGS...]: one training run; exits with its status on failure
  local run=$1 d=$2 rc
  shift 2
  rm -rf "$run"  # what a failed attempt left
  set +e
  "${launch[@]}" "$ncsrec" train --config "$config" --day "$d" --run-dir "$run" "$@" "${extra[@]}"
  rc=$?
  set -e
  if ((rc != 0)); then
    log "training $run failed (exit $rc); rerun to retry"
    exit "$rc"
  fi
}

case "$level" in
  tpm)
    valid_day "$first" && valid_day "$last" || die "--first and --last must be days YYYY-MM-DD"
    for d in $(days "$first" "$last"); do
      snap="$out/snapshots/day=$d"
      if [[ -f $snap/_DONE ]]; then log "tpm $d: done"; continue; fi
      ready "$d" || { log "tpm: day $d is not ready ($(day_folder "$d")/_DONE missing): stopping"; exit 1; }
      run="$out/tpm/$d" prev="$out/tpm/$(prev_day "$d")"
      if [[ ! -f $run/_DONE ]]; then
        init=()
        [[ -f $prev/_DONE ]] && init=(--init-from "$prev/checkpoints/final")
        log "tpm $d${init:+ from $(prev_day "$d")}"
        train "$run" "$d" "${init[@]}"
        touch "$run/_DONE"
      fi
      rm -rf "$snap"
      mkdir -p "$snap"
      "$ncsrec" export --run-dir "$run" --out "$snap/snapshot.h5" >&2
      touch "$snap/_DONE"  # the snapshot is readable from now on
    done
    ;;
  cpm)
    valid_day "$day" || die "--day must be a day YYYY-MM-DD"
    [[ -n $data ]] || die "cpm needs --data PATTERN: the content days it trains on, with {day}"
    run="$out/${name:-cpm}/$day" hist=
    if [[ -f $run/_DONE ]]; then log "cpm $day: done"; exit 0; fi
    start=$(date -d "$day - $((window - 1)) days" +%F)
    list=
    for d in $(days "$start" "$day"); do
      ready "$d" || { log "cpm: day $d is not ready ($(day_folder "$d")/_DONE missing)"; exit 1; }
      list+="${list:+,}\"$(day_folder "$d")\""
    done
    args=(--set "data.train=[$list]" --set "data.eval=[]")
    versions="{\"day\": \"$day\", \"window\": [\"$start\", \"$day\"]"
    if ((history > 0)); then
      hist=$(history_for "$start") || exit 1
      read -r -a h <<<"$(history_args "$hist")"
      args+=("${h[@]}")
      versions+=", \"history\": \"$hist\""
    fi
    log "cpm $day: content $start..$day${hist:+, features $hist}"
    train "$run" "$day" "${args[@]}"
    echo "$versions}" >"$run/versions.json"
    touch "$run/_DONE"
    ;;
  actr)
    valid_day "$first" && valid_day "$last" || die "--first and --last must be days YYYY-MM-DD"
    name=${name:-actr}
    for d in $(days "$first" "$last"); do
      run="$out/$name/$d" prev="$out/$name/$(prev_day "$d")"
      if [[ -f $run/_DONE ]]; then log "actr $d: done"; continue; fi
      ready "$d" || { log "actr: day $d is not ready ($(day_folder "$d")/_DONE missing): stopping"; exit 1; }
      args=() from=fresh
      if [[ -f $prev/_DONE ]]; then
        args=(--init-from "$prev/checkpoints/final") from="$prev"
      elif [[ -n $cpm ]]; then
        newest=
        for c in $(ls -d "$out/$cpm"/* 2>/dev/null | sort -r); do
          [[ ${c##*/} < $d && -f $c/_DONE ]] && { newest=$c; break; }
        done
        [[ -n $newest ]] || { log "actr $d: no finished CPM in $out/$cpm older than $d: run the cpm level first"; exit 1; }
        # From CPM by name: BatchNorm re-initialised (content and ads differ), a fresh optimizer.
        args=(--init-from "$newest/checkpoints/final" --set init.optimizer_state=false --set 'init.reinit=["*.bn.*"]')
        from="$newest"
      fi
      hist=
      if ((history > 0)); then
        hist=$(history_for "$d") || exit 1
        read -r -a h <<<"$(history_args "$hist")"
        args+=("${h[@]}")
      fi
      next=$(next_day "$d")
      ready "$next" || args+=(--set "data.eval=[]")
      log "actr $d: from $from${hist:+, features $hist}"
      train "$run" "$d" "${args[@]}"
      "$py" - "$run" "$d" "$from" "$hist" <<'EOF'
import json, os, sys
run, day, start, hist = sys.argv[1:5]
v = {"day": day, "init_from": start, "history": hist or None}
s = json.load(open(os.path.join(run, "summary.json")))
v["history_version"] = s.get("history_version") or None
json.dump(v, open(os.path.join(run, "versions.json"), "w"))
EOF
      touch "$run/_DONE"
    done
    ;;
  *) die "unknown level '$level': tpm, cpm or actr" ;;
esac
