#!/usr/bin/env bash
# End-to-end demo on CPU (run after `bash run_scripts/setup.sh`): build a corpus from the Python
# standard library, use the CodeGeeX tokenizer (or train one when it is not available), pack the
# corpus into MindRecord shards, train a tiny CodeGeeX (200 steps, ~70 s on 2 cores; the
# loss falls), save it and print a completion from it (sampled with a fixed seed: minutes of training teach
# token statistics, and greedy decoding of such a model mostly repeats indentation).
#   bash run_scripts/demo.sh [OUT_DIR]       (default: demo_output)
# Environment: DEMO_STEPS (training steps, default 200), DEMO_PROMPT (code to complete),
# DEMO_TEMPERATURE (default 0.8 with top-p 0.95 and seed 1234; 0 = greedy).
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export GLOG_v=${GLOG_v:-3}
OUT=${1:-demo_output}
STEPS=${DEMO_STEPS:-200}
PROMPT=${DEMO_PROMPT:-"def read_lines(path):"}
TEMPERATURE=${DEMO_TEMPERATURE:-0.8}
MARKER=.codegeex_demo

if [ -e "$OUT" ]; then
  if [ ! -e "$OUT/$MARKER" ]; then
    echo "demo: $OUT exists and was not made by this demo; pass another directory" >&2
    exit 1
  fi
  rm -rf "$OUT"
fi
mkdir -p "$OUT"
touch "$OUT/$MARKER"
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

step "1/5 corpus: the Python standard library"
STDLIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
CORPUS=("$STDLIB"/*.py)
echo "${#CORPUS[@]} files in $STDLIB"

step "2/5 tokenizer"
TOK=$("$PY" -c 'from codegeex_ms.data.tokenizer import resolve_tokenizer_dir
try:
    print(resolve_tokenizer_dir())
except FileNotFoundError:
    pass')
if [ -n "$TOK" ]; then
  echo "using the CodeGeeX tokenizer in $TOK"
else
  echo "CodeGeeX tokenizer not found: training a small one on the corpus"
  "$PY" -m codegeex_ms.tokenizer_train -o "$OUT/tokenizer" --vocab-size 8000 "${CORPUS[@]}"
  TOK=$OUT/tokenizer
fi
# vocabulary rows: the CodeGeeX layout (52224) for its tokenizer, else the next multiple of 1024
read -r EOD REAL ROWS < <("$PY" -c "from codegeex_ms.data.tokenizer import CodeGeeXTokenizer
t = CodeGeeXTokenizer.from_dir('$TOK')
print(t.eod_id, t.vocab_size, 52224 if t.vocab_size == 50400 else (t.vocab_size // 1024 + 1) * 1024)")

step "3/5 preprocess: filter, tokenize and pack into 129-token samples"
"$PY" -m codegeex_ms.preprocess -o "$OUT/shards" --tokenizer "$TOK" --seq-length 128 --quiet "${CORPUS[@]}"

# A short run on little data: no dropout, a higher peak LR than the 13B recipe, half a cosine.
cat > "$OUT/demo.yaml" <<EOF
# Written by run_scripts/demo.sh: the tiny model on the demo corpus.
extends: tiny.yaml
model: {vocab_size: $ROWS, real_vocab_size: $REAL, eod_token_id: $EOD, dropout: 0.0}
train: {seq_length: 128, micro_batch_size: 4, train_steps: $STEPS, warmup_steps: 10,
        decay_steps: $(( 2 * STEPS > 20 ? 2 * STEPS : 20 )), lr: 3.0e-3, min_lr: 3.0e-4,
        save_every: 100, log_every: 10, output_dir: $OUT/train}
data: {train_path: $OUT/shards}
tokenizer: {path: $TOK}
inference: {max_new_tokens: 64}
EOF

step "4/5 train the tiny model ($STEPS steps, CPU, graph mode)"
"$PY" -m codegeex_ms.train --config "$OUT/demo.yaml"
"$PY" - "$OUT/train/train_log.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
first, last = rows[0], rows[-1]
print(f"loss {first['loss']:.3f} (step {first['step']}) -> {last['loss']:.3f} (step {last['step']}); "
      f"{last['tokens_per_s']:.0f} tokens/s")
if not last["loss"] < first["loss"] - 1.0:
    sys.exit("demo: the loss did not fall by more than 1.0")
PY
echo "weights: $OUT/train/model_final.ckpt; log and loss curve: $OUT/train/train_log.csv, loss_curve.png"

step "5/5 completion (temperature $TEMPERATURE) of: $PROMPT"
"$PY" -m codegeex_ms.generate --config "$OUT/demo.yaml" --checkpoint "$OUT/train/model_final.ckpt" \
  --language Python --temperature "$TEMPERATURE" --top-p 0.95 --seed 1234 --prompt "$PROMPT"
echo
step "done"
