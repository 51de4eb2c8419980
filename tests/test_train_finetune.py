"""Fine-tuning through the CLI: prompt/completion .jsonl, completion-only loss, start weights from
``train.init_weights``. With lr = 0 the exported weights must equal the start weights bit for
bit, and the logged step-1 loss must equal the loss of the start model on the first batch of the
stream, with loss only on completion tokens (the prompts are not learned)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from codegeex_ms.env.paths import REPO_ROOT, shared_data_dir

TOKENIZER = shared_data_dir() / "codegeex_tokenizer"

CONFIG = """\
extends: tiny.yaml
model: {hidden_size: 32, num_layers: 1, num_heads: 2, ffn_hidden_size: 64,
        max_position_embeddings: 64, dropout: 0.0}
train: {micro_batch_size: 2, seq_length: 48, warmup_steps: 1, decay_steps: 10, lr: 0.0, min_lr: 0.0,
        train_steps: 2, save_every: 0, log_every: 1, peak_tflops: 1.0}
data: {finetune: true, num_workers: 1}
inference: {max_length: 64}
"""

PAIRS = [("def add(a, b):\n", "    return a + b\n"),
         ("def sub(a, b):\n", "    return a - b\n"),
         ("# print hello\n", "print('hello')\n"),
         ("class Point:\n", "    def __init__(self, x, y):\n        self.x, self.y = x, y\n")]


def test_finetune_cli_completion_loss_from_init_weights(tmp_path):
    if not (TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"CodeGeeX tokenizer missing in {TOKENIZER}")
    import mindspore as ms
    from mindspore import Tensor

    from codegeex_ms.checkpoint import save_weights
    from codegeex_ms.config import load_config
    from codegeex_ms.model import CodeGeeXWithLoss
    from codegeex_ms.model.build import build_model
    from codegeex_ms.train.data import micro_batches

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    config = tmp_path / "ft.yaml"
    config.write_text(CONFIG)
    overrides = (f"data.train_path={data}", f"tokenizer.path={TOKENIZER}",
                 f"train.init_weights={tmp_path / 'init.ckpt'}", f"train.output_dir={tmp_path / 'out'}")
    cfg = load_config(str(config), overrides)
    ms.set_seed(3)
    model = build_model(cfg.model)
    init = {name: p.asnumpy() for name, p in model.parameters_and_names()}
    save_weights(tmp_path / "init.ckpt", init)

    cmd = [sys.executable, "-m", "codegeex_ms.train", "--config", str(config), "--no-progress"]
    for item in overrides:
        cmd += ["--set", item]
    run = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3"},
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]

    loaded = ms.load_checkpoint(str(tmp_path / "out" / "model_final.ckpt"))
    final = {name: value for name, value in loaded.items() if not isinstance(value, str)}
    assert final.keys() == init.keys()
    assert loaded["model.hidden_size"] == str(cfg.model.hidden_size)   # the checkpoint carries its model
    for name, value in init.items():
        np.testing.assert_array_equal(final[name].asnumpy(), value, err_msg=name)

    batch = next(micro_batches(cfg, 0, 1, 0, 1))
    _, labels, _, _, loss_mask = batch
    # prompt tokens are real (non-EOD) labels that carry no loss
    assert 0 < loss_mask.sum() < (labels != cfg.model.eod_token_id).sum()
    expected = float(CodeGeeXWithLoss(model)(*(Tensor(c) for c in batch)).asnumpy())
    with open(tmp_path / "out" / "train_log.jsonl", encoding="utf-8") as f:
        logged = json.loads(f.readline())["loss"]
    # graph (CLI) vs PyNative (here) FP32 forward of the same weights and batch: ~1e-6 relative
    assert logged == pytest.approx(expected, rel=1e-5)
