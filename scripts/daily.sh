#!/usr/bin/env bash
# The daily retraining cycle over a range of days (docs/daily.md).
#
#   scripts/daily.sh --config FILE --first YYYY-MM-DD --last YYYY-MM-DD --out DIR
#                    [--mode incremental|scratch|frozen] [--export] [-- extra `ncsrec train` arguments]
#
# The config's data paths use {day} (and {next_day} for the next-day evaluation), e.g.
#   data: {train: ["data/gen/content/day={day}"], eval: ["data/gen/content/day={next_day}"]}
# Each day D trains into DIR/D/ (a run folder) and, once it has succeeded, gets DIR/D/_DONE:
#   incremental  day D starts from day D-1's checkpoint (--init-from DIR/D-1/checkpoints/final:
#                weights, optimizer state, masks and step carried); the progressive validation
#                (yesterday's model on today's data, before training) lands in its summary.json
#   scratch      every day trains from a fresh model on that day alone
#   frozen       the first day trains; later days only evaluate the first day's model
# The run is idempotent: a day with _DONE is skipped, so rerunning after a failure goes on from
# the first day not done. A day whose data folder has no _DONE marker yet (still being
# copied), or whose training fails, stops the run with a non-zero status; the previous days and
# their checkpoints are left as they were. Preempted training (SIGUSR1 or SIGTERM to this
# script, passed on to training as SIGUSR1: it saves a step checkpoint and exits 75) stops the
# run with status 75 and marks the day DIR/D/_PREEMPTED; the rerun resumes that day from its
# checkpoint (`ncsrec train --resume`) instead of starting it again.
# The next-day evaluation is skipped (and said) when day D+1 is not ready.
# --export: each day that trains also writes its serving exports (docs/export.md) before it is
# marked done: DIR/D/export/full.h5, and in incremental mode from the second day on
# DIR/D/export/delta.h5, the embedding rows changed since day D-1's checkpoint (day D-1's full
# export plus it is day D's). A failed export fails the day like a failed training.
#
# Environment:
#   NCSREC          the binary (default build/bin/ncsrec)
#   NCSREC_LAUNCH   a launcher prefix for training, e.g. "mpirun -np 4" or "srun --mpi=pmix"
#                   (cluster/daily.sbatch sets it)
# Writes DIR/daily.jsonl: one line per day with the day, mode, next-day eval metrics, the
# progressive metrics, wall and training seconds, checkpoint bytes, and with --export the
# exports' bytes and seconds.
set -euo pipefail

die() { echo "daily.sh: $*" >&2; exit 2; }

config= first= last= out= mode=incremental export=0
extra=()
while (($#)); do
  case "$1" in
    --config) config=${2:?}; shift 2 ;;
    --first) first=${2:?}; shift 2 ;;
    --last) last=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --mode) mode=${2:?}; shift 2 ;;
    --export) export=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,35p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $config && -n $first && -n $last && -n $out ]] || die "give --config, --first, --last and --out (see --help)"
[[ -f $config ]] || die "config $config not found"
case $mode in incremental | scratch | frozen) ;; *) die "--mode $mode: expected incremental, scratch or frozen" ;; esac
date -d "$first" +%F >/dev/null 2>&1 || die "--first $first is not a date YYYY-MM-DD"
date -d "$last" +%F >/dev/null 2>&1 || die "--last $last is not a date YYYY-MM-DD"
[[ $(date -d "$first" +%s) -le $(date -d "$last" +%s) ]] || die "--first $first is after --last $last"

ncsrec=${NCSREC:-build/bin/ncsrec}
[[ -x $ncsrec ]] || die "no ncsrec binary at $ncsrec (build it, or set NCSREC)"
read -r -a launch <<<"${NCSREC_LAUNCH:-}"
mkdir -p "$out"

# The data folder of `day` for the config's data.train (its first entry), by the binary's own
# substitution: `ncsrec train` resolves {day}; here only the marker check needs the path.
py=/usr/bin/python3  # Debian's, with python3-yaml (scripts/setup.sh)
[[ -x $py ]] || py=python3
train_pattern=$("$py" -c '
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
print(c["data"]["train"][0])' "$config")
[[ $train_pattern == *"{day}"* ]] || die "$config: data.train[0] ($train_pattern) has no {day}: the daily cycle needs day-partitioned paths"
day_folder() { echo "${train_pattern//\{day\}/$1}"; }
ready() { [[ -f "$(day_folder "$1")/_DONE" ]]; }

# run_training COMMAND...: runs it in the background, so that a SIGUSR1 or SIGTERM to this
# script reaches it at once (bash runs a trap only after a foreground child ends) as SIGUSR1:
# ncsrec (and mpirun or srun, which pass it to every rank) checkpoints and exits 75. Returns
# its exit status.
run_training() {
  "$@" &
  local child=$! rc=0
  # shellcheck disable=SC2064  # the child's pid, now
  trap "echo 'daily.sh: stop requested: asking training to checkpoint and stop'; kill -USR1 $child 2>/dev/null || true" USR1 TERM
  # `wait` returns early (> 128) when a trap ran: wait until the child has ended, then once
  # more for its exit status (bash keeps it).
  while :; do
    wait "$child" || true
    kill -0 "$child" 2>/dev/null || break
  done
  wait "$child" || rc=$?
  trap 'stop_requested=1' USR1 TERM
  return "$rc"
}
# Outside training a stop request is remembered: the run stops (75) before the next day starts.
stop_requested=0
trap 'stop_requested=1' USR1 TERM

# One line of daily.jsonl for `day` from its run folder (or eval output for frozen days).
record() {
  "$py" - "$@" <<'EOF'
import json, os, sys, time
day, mode, run, start_ns, out = sys.argv[1:6]
line = {"day": day, "mode": mode, "wall_seconds": round((time.time_ns() - int(start_ns)) / 1e9, 3)}
summary = os.path.join(run, "summary.json")
if os.path.exists(summary):
    s = json.load(open(summary))
    line.update(train_seconds=s.get("train_seconds"), steps=s.get("steps"), first_step=s.get("first_step"),
                next_day=s.get("eval") or None, progressive=s.get("progressive_eval"), samples=s.get("samples"),
                trained_rows=(s.get("negative_sampling") or {}).get("trained_rows", s.get("samples")))
    ckpt = os.path.join(run, "checkpoints", "final")
    line["checkpoint_bytes"] = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt))
for kind in ("full", "delta"):
    path = os.path.join(run, "export", kind + ".h5")
    if os.path.exists(path):
        line[kind + "_export_bytes"] = os.path.getsize(path)
seconds = os.path.join(run, "export", "seconds")
if os.path.exists(seconds):
    line["export_seconds"] = float(open(seconds).read())
evaljson = os.path.join(run, "eval.json")
if os.path.exists(evaljson):
    line["next_day"] = json.load(open(evaljson)).get("eval")
with open(os.path.join(out, "daily.jsonl"), "a") as f:
    f.write(json.dumps(line) + "\n")
EOF
}

day=$first
prev=
while :; do
  run="$out/$day"
  next=$(date -d "$day + 1 day" +%F)
  if [[ -f $run/_DONE ]]; then
    echo "daily.sh: $day already done ($run)"
  else
    ready "$day" || { echo "daily.sh: day $day is not ready ($(day_folder "$day")/_DONE missing): stopping" >&2; exit 1; }
    if ((stop_requested)); then
      echo "daily.sh: stop requested: stopping before day $day; rerun to go on" >&2
      exit 75
    fi
    resume=0
    if [[ -f $run/_PREEMPTED && -f $run/config.yaml ]] && compgen -G "$run/checkpoints/step-*" >/dev/null; then
      resume=1  # a preempted day goes on from its checkpoint
    else
      rm -rf "$run"  # what a failed attempt left
    fi
    eval_args=()
    ready "$next" || { echo "daily.sh: $next not ready: no next-day evaluation for $day"; eval_args=(--set "data.eval=[]"); }
    start=$(date +%s%N)
    if [[ $mode == frozen && -n $prev ]]; then
      frozen="$out/$first/checkpoints/final"
      mkdir -p "$run"
      if ((${#eval_args[@]} == 0)); then
        "$ncsrec" eval --checkpoint "$frozen" --data "$(day_folder "$next")" --out "$run/eval.json" >"$run/eval.txt"
      fi
    else
      init=()
      [[ $mode == incremental && -n $prev ]] && init=(--init-from "$out/$prev/checkpoints/final")
      set +e
      if ((resume)); then
        # The run's own config.yaml holds what the first attempt was given (day, init, --set).
        echo "daily.sh: $day ($mode): resuming the preempted run $run"
        run_training "${launch[@]}" "$ncsrec" train --resume --run-dir "$run"
      else
        echo "daily.sh: $day ($mode${init:+, from $prev})"
        run_training "${launch[@]}" "$ncsrec" train --config "$config" --day "$day" --run-dir "$run" "${init[@]}" \
          "${eval_args[@]}" "${extra[@]}"
      fi
      rc=$?
      set -e
      if ((rc == 75)); then
        touch "$run/_PREEMPTED"
        echo "daily.sh: day $day was preempted (exit 75) and saved a checkpoint in $run;" \
          "rerun to resume it" >&2
        exit 75
      fi
      rm -f "$run/_PREEMPTED"
      what=training
      if ((rc == 0 && export)); then
        what=exporting
        since=()
        [[ $mode == incremental && -n $prev ]] && since=(--since "$out/$prev/checkpoints/final")
        mkdir -p "$run/export"
        export_start=$(date +%s%N)
        set +e
        "$ncsrec" export --run-dir "$run" --out "$run/export/full.h5" >"$run/export/full.txt" &&
          { ((${#since[@]} == 0)) ||
            "$ncsrec" export --run-dir "$run" "${since[@]}" --out "$run/export/delta.h5" >"$run/export/delta.txt"; }
        rc=$?
        set -e
        echo "$(( ($(date +%s%N) - export_start) / 1000000 ))e-3" >"$run/export/seconds"
      fi
      if ((rc != 0)); then
        last_good=none
        [[ -n $prev ]] && last_good="$out/$prev/checkpoints/final"
        echo "daily.sh: $what day $day failed (exit $rc); the last good checkpoint is $last_good;" \
          "rerun to retry from $day" >&2
        exit "$rc"
      fi
    fi
    record "$day" "$mode" "$run" "$start" "$out"
    touch "$run/_DONE"
  fi
  prev=$day
  [[ $day == "$last" ]] && break
  day=$next
done
echo "daily.sh: days $first..$last done ($mode): $out/daily.jsonl"
