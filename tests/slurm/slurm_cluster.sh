#!/usr/bin/env bash
# A throwaway single-node Slurm for tests: munged (private socket and key), slurmctld and
# slurmd -N localhost, every file under one scratch folder, a generated slurm.conf on free
# non-default ports. Nothing under /etc is read or changed; the system's own munged/Slurm (if
# any) is left alone. Needs root (SlurmUser=root) and the slurm-wlm and munge packages.
# Not a model of a production cluster: one node, no accounting, no cgroups, no GRES (GPUs).
#
#   slurm_cluster.sh start DIR   stop whatever an earlier cluster left in DIR, wipe its state,
#                                start a fresh one and wait until the node is idle; prints
#                                `export SLURM_CONF=DIR/slurm.conf` (also in DIR/env.sh)
#   slurm_cluster.sh stop DIR    cancel its jobs, stop every daemon of the cluster in DIR (also
#                                after a half-failed start); keeps DIR/log for post-mortems
#
# Environment knobs:
#   SLURM_TEST_CPUS   CPUs of the node (default: nproc; more than the machine has drains it)
#   SLURM_TEST_PORT   slurmctld port, slurmd uses the next one (default: a free random pair)
#   SLURM_TEST_WAIT   seconds to wait for the node to become idle (default 30)
#   SLURM_TEST_CRED_EXPIRE  AuthInfo cred_expire: also how long a requeued job waits before it
#                     may start again (Slurm's default 120 s; requeue tests want a few seconds)
#   SLURM_TEST_SCHEDULER_PARAMETERS  SchedulerParameters (e.g. bf_interval=1: a requeued job is
#                     started by the next scheduling pass, by default up to 30 s later)
set -uo pipefail

die() { echo "slurm_cluster: $*" >&2; exit 1; }

usage() { sed -n '8,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# port_in_use PORT: some TCP socket (listening or connected) has PORT as its local port; a
# connected one blocks slurmctld's bind as surely as a listener.
port_in_use() {
  local hex
  hex="$(printf ':%04X ' "$1")"
  grep -qF "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null && return 0
  timeout 2 bash -c ": </dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# pid_alive PID: running, a zombie (exited, not yet reaped) does not count.
pid_alive() {
  local stat
  [[ -n "$1" ]] && { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

read_pid() { [[ -s "$1" ]] && tr -dc '0-9' <"$1"; }

# ancestors: this shell and its parents, which may carry SLURM_CONF too and must survive.
ancestors() {
  local p="$BASHPID"
  while [[ -n "$p" && "$p" != 0 ]]; do
    echo "$p"
    p="$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null)"
  done
}

# cluster_pids DIR: every live process of the cluster in DIR. The daemons (munged, slurmctld,
# slurmscriptd, slurmd, slurmstepd) by name plus a working folder or open file inside DIR
# (slurmstepd overwrites its environment with its process title, so only its slurmd.log and
# cwd tell which cluster it serves); job processes by SLURM_JOB_ID plus SLURM_CONF=DIR/slurm.conf
# in their environment.
cluster_pids() {
  local dir="$1" f p skip vars v has_conf has_job link comm
  skip=" $(ancestors | tr '\n' ' ') "
  for f in "$dir/run/munged.pid" "$dir/run/slurmctld.pid" "$dir/run/slurmd.pid"; do
    p="$(read_pid "$f")"
    pid_alive "$p" && echo "$p"
  done
  for f in /proc/[0-9]*; do
    p="${f#/proc/}"
    [[ "$skip" == *" $p "* ]] && continue
    { read -r comm <"$f/comm"; } 2>/dev/null || continue
    pid_alive "$p" || continue
    case "$comm" in
      munged | slurmctld | slurmscriptd | slurmd | slurmstepd)
        for link in "$f/cwd" "$f"/fd/*; do
          [[ "$(readlink "$link" 2>/dev/null)/" == "$dir/"* ]] && { echo "$p"; break; }
        done
        continue
        ;;
    esac
    { mapfile -d '' -t vars <"$f/environ"; } 2>/dev/null || continue
    has_conf=0 has_job=0
    for v in "${vars[@]}"; do
      case "$v" in
        "SLURM_CONF=$dir/slurm.conf") has_conf=1 ;;
        SLURM_JOB_ID=*) has_job=1 ;;
      esac
    done
    ((has_conf && has_job)) && echo "$p"
  done | sort -un
}

stop_cluster() {
  local dir="$1"
  [[ -d "$dir" ]] || return 0
  local conf="$dir/slurm.conf" p asked=0
  if [[ -f "$conf" ]] && pid_alive "$(read_pid "$dir/run/slurmctld.pid")"; then
    asked=1
    # Jobs first, and wait for them to go: `scontrol shutdown` stops the daemons but leaves
    # running steps (slurmstepd and the tasks) behind.
    SLURM_CONF="$conf" timeout 10 scancel --user="$(id -un)" >/dev/null 2>&1
    for _ in $(seq 50); do
      [[ -z "$(SLURM_CONF="$conf" timeout 5 squeue -h -o %i 2>/dev/null)" ]] && break
      sleep 0.3
    done
    SLURM_CONF="$conf" timeout 10 scontrol shutdown >/dev/null 2>&1
  fi
  if [[ -S "$dir/munge/munge.socket" ]] && pid_alive "$(read_pid "$dir/run/munged.pid")"; then
    timeout 10 munged --stop --socket="$dir/munge/munge.socket" >/dev/null 2>&1
  fi
  # Whatever is still there after a grace period (long only when slurmctld took the shutdown
  # request; a dead slurmctld cannot pass it on to slurmd) gets TERM, then KILL.
  for _ in $(seq $((asked ? 20 : 2))); do
    [[ -z "$(cluster_pids "$dir")" ]] && break
    sleep 0.5
  done
  for p in $(cluster_pids "$dir"); do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 10); do
    [[ -z "$(cluster_pids "$dir")" ]] && break
    sleep 0.5
  done
  for p in $(cluster_pids "$dir"); do kill -KILL "$p" 2>/dev/null; done
  sleep 0.2
  local left
  left="$(cluster_pids "$dir")"
  [[ -z "$left" ]] || { echo "slurm_cluster: processes survive SIGKILL: $left" >&2; return 1; }
  rm -f "$dir/run/"*.pid "$dir/munge/munge.socket"*
  return 0
}

# pick_ports: a free even port P (P and P+1 free), below the kernel's ephemeral range so an
# outgoing connection cannot take it between this check and the daemons' bind.
pick_ports() {
  local base low high
  if [[ -n "${SLURM_TEST_PORT:-}" ]]; then
    base="$SLURM_TEST_PORT"
    if port_in_use "$base" || port_in_use $((base + 1)); then
      die "SLURM_TEST_PORT=$base: port $base or $((base + 1)) is already in use"
    fi
    echo "$base"
    return
  fi
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
  high=$((low - 2))
  ((high > 12000)) || high=60000
  for _ in $(seq 50); do
    base=$((10000 + (RANDOM % ((high - 10000) / 2)) * 2))
    if ! port_in_use "$base" && ! port_in_use $((base + 1)); then
      echo "$base"
      return
    fi
  done
  die "found no free port pair in 10000-$high"
}

write_conf() {
  local dir="$1" port="$2" cpus="$3"
  cat >"$dir/slurm.conf" <<EOF
# Generated by tests/slurm/slurm_cluster.sh: a single-node test cluster under $dir
ClusterName=ncsrectest
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket${SLURM_TEST_CRED_EXPIRE:+,cred_expire=$SLURM_TEST_CRED_EXPIRE}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
# Job ids restart at 1 on every cold start: keep per-step temporary folders (PMIx makes
# TmpFS/spmix_appdir_<uid>_<job>.<step>) out of the shared /tmp, where a killed step's
# leftover would make the next cluster's step of the same id fail.
TmpFS=$dir/tmp
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=pmix
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
InactiveLimit=0
MailProg=/bin/true
KillWait=5
MinJobAge=300
${SLURM_TEST_SCHEDULER_PARAMETERS:+SchedulerParameters=$SLURM_TEST_SCHEDULER_PARAMETERS
}NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  : >"$dir/plugstack.conf"
}

# show_logs DIR: the tail of every daemon log, for a failed start.
show_logs() {
  local f
  for f in "$1"/log/*.log; do
    [[ -f "$f" ]] || continue
    echo "---- ${f#"$1"/} (last 20 lines) ----" >&2
    tail -n 20 "$f" >&2
  done
}

# start_once DIR CPUS WAIT_S: one attempt from a clean DIR. Returns 0 when the node is idle,
# 3 when a daemon lost its port to another process (worth another attempt), 1 otherwise; a
# failed attempt leaves no daemon behind.
start_once() {
  local dir="$1" cpus="$2" wait_s="$3" port p
  rm -rf "${dir:?}/state" "$dir/spool" "$dir/tmp" "$dir/munge" "$dir/log" "$dir/run" "$dir/slurm.conf" "$dir/env.sh"
  # munged insists: key and folders not writable by others, socket folder o+x.
  chmod 0755 "$dir"
  mkdir -p "$dir/state" "$dir/spool" "$dir/tmp" "$dir/munge" "$dir/log" "$dir/run"
  chmod 0755 "$dir/munge" "$dir/run" "$dir/log"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$dir/munge/munge.key"

  port="$(pick_ports)" || return 1
  write_conf "$dir" "$port" "$cpus"
  echo "export SLURM_CONF=$dir/slurm.conf" >"$dir/env.sh"
  export SLURM_CONF="$dir/slurm.conf"

  local why=""
  if ! timeout 20 munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
      --log-file="$dir/log/munged.log" --pid-file="$dir/run/munged.pid" --seed-file="$dir/munge/munged.seed"; then
    why="munged failed to start"
  # Both daemons fork into the background and bind their port afterwards.
  elif ! timeout 20 slurmctld -c -f "$SLURM_CONF"; then
    why="slurmctld failed to start"
  elif ! timeout 20 slurmd -N localhost -f "$SLURM_CONF"; then
    why="slurmd failed to start"
  fi

  local deadline=$((SECONDS + wait_s)) state=""
  while [[ -z "$why" ]] && ((SECONDS < deadline)); do
    state="$(timeout 5 sinfo -h -N -n localhost -o %T 2>/dev/null | head -n 1)"
    [[ "$state" == idle ]] && break
    for p in munged slurmctld slurmd; do
      pid_alive "$(read_pid "$dir/run/$p.pid")" ||
        { why="$p exited during start-up (node state '${state:-unknown}')"; break; }
    done
    [[ -n "$why" ]] || sleep 0.3
  done
  [[ -n "$why" || "$state" == idle ]] || { timeout 5 sinfo -R >&2; why="node not idle after ${wait_s} s (state '${state:-unknown}')"; }
  if [[ -z "$why" ]]; then
    echo "slurm_cluster: node localhost idle with $cpus CPUs (slurmctld port $port, slurmd port $((port + 1)))" >&2
    return 0
  fi
  if grep -qs "Address already in use" "$dir/log/slurmctld.log" "$dir/log/slurmd.log"; then
    echo "slurm_cluster: port $port or $((port + 1)) was taken meanwhile; trying other ports" >&2
    stop_cluster "$dir"
    return 3
  fi
  show_logs "$dir"
  stop_cluster "$dir"
  echo "slurm_cluster: $why" >&2
  return 1
}

start_cluster() {
  local dir="$1" cpus="${SLURM_TEST_CPUS:-$(nproc)}" wait_s="${SLURM_TEST_WAIT:-30}" p attempt rc
  [[ $(id -u) -eq 0 ]] || die "must run as root (the test cluster runs its daemons as root)"
  export PATH="$PATH:/usr/sbin"
  for p in munged slurmctld slurmd sinfo scontrol squeue scancel; do
    command -v "$p" >/dev/null 2>&1 || die "$p not found (apt-get install slurm-wlm munge)"
  done

  mkdir -p "$dir"
  stop_cluster "$dir" || die "could not stop the previous cluster in $dir"
  for attempt in 1 2 3; do
    start_once "$dir" "$cpus" "$wait_s"
    rc=$?
    ((rc == 0)) && { echo "export SLURM_CONF=$dir/slurm.conf"; return 0; }
    ((rc == 3 && attempt < 3)) || break
  done
  die "could not start the test cluster in $dir (logs: $dir/log)"
}

(($# == 2)) || usage
dir="$(mkdir -p "$2" && cd "$2" && pwd)" || die "cannot create $2"
case "$1" in
  start) start_cluster "$dir" ;;
  stop) stop_cluster "$dir" ;;
  *) usage ;;
esac
