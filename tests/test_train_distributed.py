"""Data parallelism and gradient accumulation on CPU against one process with the whole batch:

(a) 1 worker, micro-batch 2b; (b) 2 workers started by msrun (run_scripts/run_distribute.sh
cpu 2), micro-batch b each; (c) 1 worker, micro-batch b, 2 accumulation steps. With the same
seed all three see the same 2b sequences per step (rank r of 2 reads samples r, r+2, ... of the
order that (a) reads) and start from the same weights.

Conditions for equal results: dropout off (its masks are keyed by rank and micro-step, so they
differ between layouts by design) and no EOD in the data, so every sequence has the same number
of loss tokens and the mean over 2b sequences equals the mean of two means over b.

Tolerance: the runs differ only in FP32 summation order (one mean over 2b rows vs the all-reduce /
accumulation of two means), ~1e-7 relative in the gradients. Adam divides by sqrt(v) + eps, so
for weights whose true gradient is zero (e.g. the attention key bias, which softmax ignores) the
rounding noise g ~ 1e-10 is amplified to updates up to lr·(1-β1)·|g|/eps ~ 1e-6 per step;
hence weights agree to 1e-5 absolute after 4 steps, while the weights move by ~lr per step (1e-3)
and a rank that skipped the all-reduce would be off by that much. Losses and gradient norms
(which Adam does not normalise: a sum instead of a mean would double them) agree to 1e-5
relative. Runtime ~40-70 s (three jobs at once on two cores).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from codegeex_ms.env.paths import REPO_ROOT

STEPS, SEQ, VOCAB, B = 4, 32, 128, 1

CONFIG = f"""\
extends: tiny.yaml
model: {{vocab_size: {VOCAB}, real_vocab_size: {VOCAB}, eod_token_id: {VOCAB - 1}, hidden_size: 64,
        num_layers: 1, num_heads: 4, ffn_hidden_size: 256, max_position_embeddings: 64, dropout: 0.0}}
train: {{seq_length: {SEQ}, warmup_steps: 1, decay_steps: 100, lr: 1.0e-3, train_steps: {STEPS},
        save_every: 1, log_every: 1, peak_tflops: 1.0, seed: 11}}
data: {{num_workers: 1}}
inference: {{max_length: 64}}
"""


def write_data(directory, samples=24):
    from codegeex_ms.data.mindrecord_io import ShardWriter, write_manifest
    directory.mkdir()
    rng = np.random.default_rng(1)
    writer = ShardWriter(directory, SEQ + 1, samples_per_shard=samples)
    for _ in range(samples):
        writer.write((rng.integers(0, VOCAB - 1) + 5 * np.arange(SEQ + 1)) % (VOCAB - 1))  # no EOD
    write_manifest(directory, writer.close(), seq_length=SEQ, sample_length=SEQ + 1, eod_id=VOCAB - 1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_rows(out):
    with open(out / "train_log.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load(path):
    import mindspore as ms
    # tensors only: string entries are metadata (train_meta, the model sizes of model_final.ckpt)
    return {name: p.asnumpy() for name, p in ms.load_checkpoint(str(path)).items() if not isinstance(p, str)}


def test_two_workers_and_accumulation_match_one_big_batch(tmp_path):
    if shutil.which("msrun", path=os.path.dirname(sys.executable)) is None:
        pytest.skip(f"msrun not found next to {sys.executable}")
    config = tmp_path / "dp.yaml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    write_data(data)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}

    def single(out, micro, accum):
        return subprocess.Popen(
            [sys.executable, "-m", "codegeex_ms.train", "--config", str(config), "--no-progress",
             "--set", f"data.train_path={data}", "--set", f"train.output_dir={out}",
             "--set", f"train.micro_batch_size={micro}", "--set", f"train.grad_accumulation={accum}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    jobs = {
        "big": single(tmp_path / "big", 2 * B, 1),
        "accum": single(tmp_path / "accum", B, 2),
        "dp": subprocess.Popen(
            ["bash", str(REPO_ROOT / "run_scripts" / "run_distribute.sh"), "cpu", "2", str(config),
             "--set", f"data.train_path={data}", "--set", f"train.output_dir={tmp_path / 'dp'}",
             "--set", f"train.micro_batch_size={B}", "--set", "parallel.data_parallel=2"],
            env={**env, "MASTER_PORT": str(free_port()), "LOG_DIR": str(tmp_path / "dp_logs")},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    for name, job in jobs.items():
        out, _ = job.communicate(timeout=500)
        logs = "".join(p.read_text()[-2000:] for p in sorted((tmp_path / "dp_logs").glob("worker_*.log"))) \
            if name == "dp" and (tmp_path / "dp_logs").is_dir() else ""
        assert job.returncode == 0, f"{name} failed:\n{out[-3000:]}\n{logs}"

    assert sorted(p.name for p in (tmp_path / "dp_logs").glob("worker_*.log")) == ["worker_0.log", "worker_1.log"]
    ref = log_rows(tmp_path / "big")
    ref_w = load(tmp_path / "big" / "model_final.ckpt")
    step2 = load(tmp_path / "big" / "checkpoints" / "rank_0" / "step_00000002.ckpt")
    moved = max(np.abs(ref_w[k] - step2["model." + k]).max() for k in ref_w)
    assert moved > 100 * 1e-5  # two updates move weights far more than the tolerance
    for name in ("dp", "accum"):
        rows = log_rows(tmp_path / name)
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
        for r, e in zip(rows, ref):
            assert r["loss"] == pytest.approx(e["loss"], rel=1e-5), (name, r, e)
            assert r["grad_norm"] == pytest.approx(e["grad_norm"], rel=1e-5), (name, r, e)
        got = load(tmp_path / name / "model_final.ckpt")
        assert got.keys() == ref_w.keys()
        for key in ref_w:
            np.testing.assert_allclose(got[key], ref_w[key], rtol=0, atol=1e-5, err_msg=f"{name}: {key}")
    # both data-parallel ranks hold identical state
    rank0 = load(tmp_path / "dp" / "checkpoints" / "rank_0" / f"step_{STEPS:08d}.ckpt")
    rank1 = load(tmp_path / "dp" / "checkpoints" / "rank_1" / f"step_{STEPS:08d}.ckpt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
