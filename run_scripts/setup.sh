#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned requirements into it.
#   bash run_scripts/setup.sh          runtime + test requirements
#   bash run_scripts/setup.sh --runtime   runtime only
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
reqs=(-r requirements.txt)
[ "${1:-}" = "--runtime" ] || reqs+=(-r requirements-dev.txt)
echo "[setup] installing ${reqs[*]}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
.venv/bin/python -c "import mindspore, tokenizers; print('[setup] mindspore', mindspore.__version__, '| tokenizers', tokenizers.__version__)" 2>&1 | grep '^\[setup\]'
