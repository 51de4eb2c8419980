#!/usr/bin/env bash
# Launch data/model-parallel training, one process per device. Three ways:
#
#   cpu N CONFIG [train args]
#       N worker processes on this machine (data parallel over MindSpore's TCP collectives),
#       started by msrun; needs parallel.data_parallel=N in the config (or --set it).
#   msrun WORKER_NUM LOCAL_WORKER_NUM MASTER_ADDR MASTER_PORT NODE_RANK CONFIG [train args]
#       Ascend multi-node job with msrun: run once per node (NODE_RANK 0..nodes-1), e.g. 8 NPUs
#       per node: msrun 1536 8 10.0.0.1 8118 $NODE CONFIG.
#   ranktable RANK_TABLE_FILE CONFIG [train args]
#       Ascend job from an HCCL rank table: starts one process per NPU listed for this server
#       (matched by IP, or SERVER_ID=<server_id>) with RANK_TABLE_FILE, RANK_SIZE, RANK_ID and
#       DEVICE_ID set. Run it on every server.
#
# Per-rank logs go to $LOG_DIR (default log_distribute/): worker_<rank>.log (msrun) or
# rank_<rank>.log (rank table). Train args go to `python -m codegeex_ms.train`, e.g.
# --set data.train_path=DIR --set train.output_dir=OUT --resume. Environment: MASTER_PORT (cpu
# mode, default 8118), LOG_DIR, GLOG_v.
set -euo pipefail
SCRIPT=$(realpath "$0")
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$SCRIPT"; exit "${1:-0}"; }
[ $# -ge 1 ] || usage 1
cd "$(dirname "$0")/.."
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"   # msrun starts a bare `python`
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GLOG_v=${GLOG_v:-3}
LOG_DIR=${LOG_DIR:-log_distribute}
mode=$1
shift
case "$mode" in
  cpu|msrun|ranktable) mkdir -p "$LOG_DIR" ;;
esac
case "$mode" in
  cpu)
    [ $# -ge 2 ] || usage 1
    n=$1; config=$2; shift 2
    exec msrun --worker_num="$n" --local_worker_num="$n" --master_port="${MASTER_PORT:-8118}" \
      --log_dir="$LOG_DIR" --join=True \
      python -m codegeex_ms.train --config "$config" --device-target CPU --no-progress "$@"
    ;;
  msrun)
    [ $# -ge 6 ] || usage 1
    workers=$1; local_workers=$2; addr=$3; port=$4; node_rank=$5; config=$6; shift 6
    exec msrun --worker_num="$workers" --local_worker_num="$local_workers" --master_addr="$addr" \
      --master_port="$port" --node_rank="$node_rank" --log_dir="$LOG_DIR" --join=True \
      python -m codegeex_ms.train --config "$config" --device-target Ascend --no-progress "$@"
    ;;
  ranktable)
    [ $# -ge 2 ] || usage 1
    table=$(realpath "$1"); config=$2; shift 2
    # "<rank_size> <device_id>:<rank_id> ..." for this server's devices
    layout=$(python - "$table" <<'PY'
import json, os, socket, subprocess, sys
table = json.load(open(sys.argv[1]))
servers = table["server_list"]
size = sum(len(s["device"]) for s in servers)
mine = os.environ.get("SERVER_ID")
if mine is None:
    ips = set(subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split())
    ips.add(socket.gethostbyname(socket.gethostname()))
    found = [s for s in servers if s["server_id"] in ips]
    if len(found) != 1:
        sys.exit(f"cannot tell which server of {sys.argv[1]} this is (IPs {sorted(ips)}); set SERVER_ID")
    mine = found[0]["server_id"]
devices = [d for s in servers if s["server_id"] == mine for d in s["device"]]
if not devices:
    sys.exit(f"server {mine} is not in {sys.argv[1]}")
print(size, *(f"{d['device_id']}:{d['rank_id']}" for d in devices))
PY
)
    read -r size pairs <<<"$layout"
    pids=()
    for pair in $pairs; do
      device=${pair%%:*}; rank=${pair##*:}
      RANK_TABLE_FILE=$table RANK_SIZE=$size RANK_ID=$rank DEVICE_ID=$device \
        python -m codegeex_ms.train --config "$config" --device-target Ascend --no-progress "$@" \
        >"$LOG_DIR/rank_$rank.log" 2>&1 &
      pids+=($!)
      echo "rank $rank on device $device: pid ${pids[-1]}, log $LOG_DIR/rank_$rank.log"
    done
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    exit $status
    ;;
  -h|--help) usage 0 ;;
  *) echo "unknown mode '$mode'" >&2; usage 1 ;;
esac
