"""Kill -9 a CPU training run after a checkpoint, damage its newest checkpoint, resume: the resumed
steps reproduce an uninterrupted run with the same seed bit for bit (losses and final weights),
dropout included.

Why bitwise: everything a step depends on is restored or re-derived exactly — weights, Adam
moments, update count (LR), loss scale, data position (the sample stream is a pure function of
seed and position) and the dropout masks (a pure function of seed, rank and micro-step; see
``codegeex_ms.train.dropout``) — and the same graph compiled in a fresh process runs the same
CPU kernels in the same order.

Both runs start together (2 cores); the second is killed as soon as its step-6 checkpoint
exists, i.e. a few steps later, long before its last step. Runtime ~40-60 s.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from codegeex_ms.paths import REPO_ROOT

STEPS, SAVE_EVERY, SEQ, VOCAB = 30, 3, 32, 128
EOD = VOCAB - 1

CONFIG = f"""\
extends: tiny.yaml
model: {{vocab_size: {VOCAB}, real_vocab_size: {VOCAB}, eod_token_id: {EOD}, hidden_size: 64,
        num_layers: 1, num_heads: 4, ffn_hidden_size: 256, max_position_embeddings: 64, dropout: 0.1}}
train: {{micro_batch_size: 2, seq_length: {SEQ}, warmup_steps: 3, decay_steps: 100,
        train_steps: {STEPS}, save_every: {SAVE_EVERY}, keep_checkpoints: 3, log_every: 1,
        peak_tflops: 1.0, seed: 7}}
data: {{num_workers: 1}}
inference: {{max_length: 64}}
"""


def write_data(directory, samples=48):
    from codegeex_ms.data.mindrecord_io import ShardWriter, write_manifest
    directory.mkdir()
    rng = np.random.default_rng(0)
    writer = ShardWriter(directory, SEQ + 1, samples_per_shard=samples)
    for _ in range(samples):
        row = (rng.integers(0, EOD) + 3 * np.arange(SEQ + 1)) % EOD
        row[rng.integers(0, SEQ + 1, size=2)] = EOD  # documents separated by EOD
        writer.write(row)
    write_manifest(directory, writer.close(), seq_length=SEQ, sample_length=SEQ + 1, eod_id=EOD)


def train_cmd(config, data, out, *extra):
    return [sys.executable, "-m", "codegeex_ms.train", "--config", str(config), "--no-progress",
            "--set", f"data.train_path={data}", "--set", f"train.output_dir={out}", *extra]


def env():
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3"}


def losses(out):
    with open(out / "train_log.jsonl", encoding="utf-8") as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f)}


def weights(path):
    import mindspore as ms
    return {name: p.asnumpy() for name, p in ms.load_checkpoint(str(path)).items()}


def test_kill_damage_resume_is_bitwise(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(CONFIG)
    write_data(tmp_path / "data")
    full, killed = tmp_path / "full", tmp_path / "killed"
    ckpts = killed / "checkpoints" / "rank_0"
    a = subprocess.Popen(train_cmd(config, tmp_path / "data", full), env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    b = subprocess.Popen(train_cmd(config, tmp_path / "data", killed), env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not (ckpts / "step_00000006.ckpt").exists():
        assert b.poll() is None, "the run to be killed ended early"
        assert time.time() < deadline, "no step-6 checkpoint in time"
        time.sleep(0.02)
    b.send_signal(signal.SIGKILL)
    assert b.wait() == -signal.SIGKILL
    out_a, _ = a.communicate(timeout=400)
    assert a.returncode == 0, out_a[-3000:]

    saved = sorted(int(p.name[5:13]) for p in ckpts.glob("step_*.ckpt"))
    assert saved and 6 <= saved[-1] < STEPS - SAVE_EVERY, saved
    newest = ckpts / f"step_{saved[-1]:08d}.ckpt"
    os.chmod(newest, 0o600)
    newest.write_bytes(newest.read_bytes()[:newest.stat().st_size // 3])  # truncated newest
    resume_from = saved[-2]

    r = subprocess.run(train_cmd(config, tmp_path / "data", killed, "--resume"), env=env(),
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"skipping checkpoint: {newest}" in r.stderr
    assert f"step_{resume_from:08d}.ckpt (step {resume_from})" in r.stderr

    expected, got = losses(full), losses(killed)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in range(resume_from + 1, STEPS + 1):
        assert got[step] == expected[step], (step, got[step], expected[step])
    final_a, final_b = weights(full / "model_final.ckpt"), weights(killed / "model_final.ckpt")
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        np.testing.assert_array_equal(final_a[name], final_b[name], err_msg=name)
    assert (killed / "loss_curve.png").stat().st_size > 0
