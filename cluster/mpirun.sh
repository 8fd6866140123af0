#!/usr/bin/env bash
# OpenMPI's mpirun with the settings ncsrec wants, for machines without Slurm (or inside an
# allocation you got another way). Everything after `--` is the ncsrec command line.
#
#   cluster/mpirun.sh -n 4 -- train --config configs/quickstart.yaml --run-dir runs/qs-4
#   cluster/mpirun.sh -n 16 --hostfile hosts --threads 4 -- train --config configs/ncs.yaml
#   cluster/mpirun.sh -n 2 --dry-run -- train --config configs/quickstart.yaml   # print, don't run
#
# Options before `--`:
#   -n, -np N         ranks in total (required): one per GPU, or one per core group on CPUs
#   --threads T       OpenMP threads per rank (default 1, or NCSREC_THREADS); each rank gets T
#                     cores. A config's run.threads > 0 takes precedence inside ncsrec.
#   --hostfile FILE   (or -H host:slots,...) several nodes: ranks are placed by the slots listed
#   --dry-run         print the mpirun command and exit
#   anything else     passed to mpirun unchanged (e.g. -x NCCL_DEBUG=INFO, --report-bindings)
#
# What it does for you:
#   - root: sets OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM), which mpirun otherwise insists on;
#   - binding: each rank bound to its T cores (--map-by slot:PE=T --bind-to core); on one node
#     with more ranks x threads than cores it adds --oversubscribe and binds nothing instead;
#   - network: on one node, MPI's TCP traffic stays on loopback; with several nodes, set
#     NCSREC_NET_IF (e.g. eth0, ib0) to name the interface, else OpenMPI picks;
#   - environment: OMP_*, NCSREC_*, NCCL_*, UCX_*, CUDA_VISIBLE_DEVICES, PATH and
#     LD_LIBRARY_PATH are exported to every rank (-x), remote ones included.
#
# Environment: NCSREC (the binary; default build/bin/ncsrec in this repository, else `ncsrec`
# on PATH), NCSREC_THREADS, NCSREC_NET_IF.
set -euo pipefail

die() { echo "mpirun.sh: $*" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ranks=""
threads="${NCSREC_THREADS:-1}"
multi_node=0
dry_run=0
mpi_args=()
while (($#)); do
  case "$1" in
    --) shift; break ;;
    -n | -np | --np | -c) ranks="${2:-}"; shift 2 || die "$1 needs a value" ;;
    --threads) threads="${2:-}"; shift 2 || die "--threads needs a value" ;;
    --hostfile | --machinefile | -hostfile | -machinefile | -H | --host | -host)
      multi_node=1
      mpi_args+=("$1" "${2:-}")
      shift 2 || die "$1 needs a value"
      ;;
    --dry-run) dry_run=1; shift ;;
    *) mpi_args+=("$1"); shift ;;
  esac
done
(($#)) || die "usage: cluster/mpirun.sh -n N [--threads T] [--hostfile FILE] [mpirun options] -- train --config FILE ..."
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || die "-n N (the number of ranks) is required, got '${ranks}'"
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, got '${threads}'"

ncsrec="${NCSREC:-}"
if [[ -z "$ncsrec" ]]; then
  if [[ -x "$root/build/bin/ncsrec" ]]; then
    ncsrec="$root/build/bin/ncsrec"
  else
    ncsrec="$(command -v ncsrec)" || die "no ncsrec binary: set NCSREC=/path/to/ncsrec or build into $root/build"
  fi
fi
[[ -x "$ncsrec" ]] || die "NCSREC=$ncsrec is not an executable file"
command -v mpirun >/dev/null 2>&1 || die "mpirun not found (Debian: apt-get install openmpi-bin)"

if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMP_NUM_THREADS="$threads"

# Physical cores (mpirun counts cores, not hardware threads, as slots).
cores="$(lscpu -p=socket,core 2>/dev/null | grep -v '^#' | sort -u | wc -l)" || cores=0
((cores > 0)) || cores="$(nproc)"

placement=()
if ((!multi_node && ranks * threads > cores)); then
  echo "mpirun.sh: $ranks ranks x $threads threads on $cores cores: oversubscribing, no binding" >&2
  placement=(--oversubscribe --bind-to none)
else
  placement=(--map-by "slot:PE=$threads" --bind-to core)
fi

network=()
if ((multi_node)); then
  if [[ -n "${NCSREC_NET_IF:-}" ]]; then
    network=(--mca btl_tcp_if_include "$NCSREC_NET_IF" --mca oob_tcp_if_include "$NCSREC_NET_IF")
  fi
else
  export OMPI_MCA_btl_tcp_if_include="${OMPI_MCA_btl_tcp_if_include:-lo}"
  export OMPI_MCA_oob_tcp_if_include="${OMPI_MCA_oob_tcp_if_include:-lo}"
fi

exports=()
for v in $(compgen -e | grep -E '^(OMP|NCSREC|NCCL|UCX)_' || true) CUDA_VISIBLE_DEVICES PATH LD_LIBRARY_PATH; do
  [[ -n "${!v:-}" ]] && exports+=(-x "$v")
done

cmd=(mpirun -np "$ranks" "${placement[@]}" "${network[@]}" "${exports[@]}" "${mpi_args[@]}" "$ncsrec" "$@")
if ((dry_run)); then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
