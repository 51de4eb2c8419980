"""HumanEval-X end to end with a real (tiny, untrained) model: generate → execute → score."""

import json
import subprocess
import sys

import pytest

import mindspore as ms

from codegeex_ms.config import load_config
from codegeex_ms.model import CodeGeeX
from codegeex_ms.env.paths import shared_data_dir

SIZES = ("model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64")


def test_tiny_model_evaluation_writes_reports_and_resumes(tmp_path):
    if not (shared_data_dir() / "humaneval-x" / "humaneval_python.jsonl.gz").exists():
        pytest.skip(f"HumanEval-X data missing in {shared_data_dir() / 'humaneval-x'}")
    if not (shared_data_dir() / "codegeex_tokenizer" / "vocab.json").exists():
        pytest.skip(f"tokenizer missing in {shared_data_dir() / 'codegeex_tokenizer'}")
    ms.set_context(mode=ms.GRAPH_MODE)
    ckpt = tmp_path / "tiny.ckpt"
    ms.save_checkpoint(CodeGeeX(load_config("ascend_configs/tiny.yaml", SIZES).model), str(ckpt))
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "codegeex_ms.evaluate", "--output-dir", str(out),
           "--config", "tiny", *[a for s in SIZES for a in ("--set", s)], "--checkpoint", str(ckpt),
           "--languages", "python", "--limit-problems", "2", "--samples-per-problem", "3",
           "--max-new-tokens", "12", "--temperature", "0.8", "--top-p", "0.95", "--seed", "1",
           "--batch-size", "3", "--ks", "1", "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {s["task_id"] for s in samples} == {"Python/0", "Python/1"}
    results = (out / "results.jsonl").read_text().splitlines()
    assert len(results) == 6
    for name in ("pass_at_k.json", "pass_at_k.md", "pass_at_k.png", "per_problem.csv"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "pass_at_k.json").read_text())
    python = report["tracks"]["python"]
    assert (python["problems"], python["samples_min"], python["samples_max"]) == (2, 3, 3)
    # an untrained model solves nothing: every sample fails and pass@1 is exactly 0
    assert python["status_counts"] == {"failed": 6} and python["pass@1"] == 0.0

    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "generate: 0 new samples" in again.stdout
    assert len((out / "samples.jsonl").read_text().splitlines()) == 6
