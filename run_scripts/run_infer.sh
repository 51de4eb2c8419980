#!/usr/bin/env bash
# Generate code with CodeGeeX: a thin wrapper over `python -m codegeex_ms.generate`.
#   bash run_scripts/run_infer.sh [generate options ...]
# Defaults come from environment variables; options given on the command line come after them
# and win (see `python -m codegeex_ms.generate --help` for all options):
#   CONFIG         config file or name in ascend_configs/ (default: infer_13b_single_npu)
#   CHECKPOINT     weights: .ckpt/.safetensors, an INT8 checkpoint from `python -m
#                  codegeex_ms.quantize` (detected automatically), or the release .pt
#                  (no default: set it or pass --checkpoint)
#   LANGUAGE       language of the prompt, adds its language tag (default: python; LANGUAGE= for none)
#   MODE           graph | pynative (default: graph)
#   DEVICE_TARGET  CPU | GPU | Ascend (default: MindSpore's choice)
# Examples:
#   CHECKPOINT=codegeex_13b_int8.ckpt bash run_scripts/run_infer.sh --prompt "def quicksort(arr):"
#   CONFIG=tiny bash run_scripts/run_infer.sh --checkpoint tiny.ckpt --prompt-file f.py --temperature 0
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$(realpath "$0")"
  exit 0
fi
cd "$(dirname "$(realpath "$0")")/.."
PYTHON=python3
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
export GLOG_v=${GLOG_v:-3}   # MindSpore C++ log: errors only
args=(--config "${CONFIG:-infer_13b_single_npu}" --mode "${MODE:-graph}")
[ -n "${CHECKPOINT:-}" ] && args+=(--checkpoint "$CHECKPOINT")
LANGUAGE=${LANGUAGE-python}
[ -n "$LANGUAGE" ] && args+=(--language "$LANGUAGE")
[ -n "${DEVICE_TARGET:-}" ] && args+=(--device-target "$DEVICE_TARGET")
exec "$PYTHON" -m codegeex_ms.generate "${args[@]}" "$@"
