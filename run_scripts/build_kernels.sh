#!/usr/bin/env bash
# Build the fused kernels (FastGELU, masked softmax) that this machine can build, into the kernel
# cache the package reads ($CODEGEEX_KERNEL_DIR, default ~/.cache/codegeex_ms/kernels):
#   CPU     always (g++; -march=native unless $CODEGEEX_KERNEL_CXXFLAGS says otherwise)
#   GPU     when nvcc is found (PATH or $CUDA_HOME); SM list from $CODEGEEX_CUDA_ARCHS if set
#   Ascend  when CANN is set up ($ASCEND_HOME_PATH, i.e. CANN's set_env.sh was sourced);
#           SoCs from $CODEGEEX_ASCEND_SOC (default "ascend910b;ascend910_93")
# Prints one line per target and kernel: ready (with the path), skipped or FAILED (with why).
# Exits non-zero only when a build that had its tools failed. Running it is optional: the
# package builds a missing kernel on first use. Extra arguments go to the builder
# (e.g. --targets CPU GPU, --json report.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=${PYTHON:-python3}
exec "$PY" -m codegeex_ms.build_kernels "$@"
