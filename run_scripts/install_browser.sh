#!/usr/bin/env bash
# Install what the playground browser test needs: Debian's chromium and Playwright's Python
# package (its bundled driver talks to /usr/bin/chromium; no `playwright install` download).
#   run_scripts/install_browser.sh     # Playwright into .venv when it exists, else the active Python
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.2}"

start=$(date +%s)
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
fi
"$PY" -m pip install -q --disable-pip-version-check "playwright==${PLAYWRIGHT_VERSION}"
echo "chromium: $(chromium --version 2>/dev/null || echo missing)"
echo "playwright: $("$PY" -c 'import importlib.metadata as m; print(m.version("playwright"))')"
echo "install took $(( $(date +%s) - start )) s"
