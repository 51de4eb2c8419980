#!/usr/bin/env bash
# Set up .venv and run the whole test suite (CPU only, tiny configs). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash run_scripts/setup.sh
export GLOG_v=${GLOG_v:-3}   # MindSpore C++ log: errors only
exec .venv/bin/python -m pytest -q tests "$@"
