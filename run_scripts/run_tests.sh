#!/usr/bin/env bash
# Set up .venv and run the whole test suite (CPU only, tiny configs). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash run_scripts/setup.sh
export MS_LOG_LEVEL=${MS_LOG_LEVEL:-3}   # MindSpore: errors only
exec .venv/bin/python -m pytest -q tests "$@"
