#!/usr/bin/env bash
# Train in one process (CPU here, or one Ascend NPU).
#   bash run_scripts/run_standalone_train.sh CONFIG [--set section.key=value ...] [--resume] [...]
# CONFIG is a YAML file or a name in ascend_configs/ (e.g. tiny). Everything after it goes to
# `python -m codegeex_ms.train` (see --help), e.g.
#   bash run_scripts/run_standalone_train.sh tiny --set data.train_path=data/shards --set train.output_dir=out/tiny
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$(realpath "$0")"
  exit 0
fi
cd "$(dirname "$0")/.."
PYTHON=python3
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
export GLOG_v=${GLOG_v:-3}   # MindSpore C++ log: errors only
config=$1
shift
exec "$PYTHON" -m codegeex_ms.train --config "$config" "$@"
