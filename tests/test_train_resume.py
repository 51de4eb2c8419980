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

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from codegeex_ms.env.paths import REPO_ROOT

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
    """The tensors of a checkpoint (its string metadata, e.g. the model's sizes, left out)."""
    import mindspore as ms
    return {name: p.asnumpy() for name, p in ms.load_checkpoint(str(path)).items()
            if not isinstance(p, str)}


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
    assert f"damaged checkpoint: {newest}: has " in r.stderr and "(truncated)" in r.stderr
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


# ---------------------------------------------------------------------------------------------
# In-process scenarios on one reference run: a damaged newest checkpoint (the exact case of
# issue 16), a full disk and a kill in the middle of a save, each followed by --resume.

SCENARIO = ("model.dropout=0.0", "train.train_steps=200", "train.save_every=20")


def scenario_config(tmp_path, out, keep):
    from codegeex_ms.config import load_config
    config = tmp_path / "train.yaml"
    if not config.exists():
        config.write_text(CONFIG)
        write_data(tmp_path / "data")
    return load_config(str(config), SCENARIO + (f"data.train_path={tmp_path / 'data'}",
                                                f"train.output_dir={out}",
                                                f"train.keep_checkpoints={keep}"))


def train_in_process(cfg, resume=False):
    from codegeex_ms.env import runtime
    from codegeex_ms.train.loop import run
    runtime.setup("graph", None, seed=cfg.train.seed)
    return run(cfg, resume=resume, progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 200-step run keeping every checkpoint: its losses are the truth."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = scenario_config(tmp, tmp / "out", keep=50)
    train_in_process(cfg)
    return tmp


def copy_run(reference, dest, steps):
    """The reference's output with only the checkpoints of ``steps`` (and their manifests)."""
    shutil.copytree(reference / "out", dest, ignore=shutil.ignore_patterns("step_*", "model_final*"))
    for step in steps:
        for suffix in ("", ".manifest.json"):
            name = f"step_{step:08d}.ckpt{suffix}"
            shutil.copy2(reference / "out" / "checkpoints" / "rank_0" / name,
                         dest / "checkpoints" / "rank_0" / name)
    return dest / "checkpoints" / "rank_0"


def verified_steps(ckpts):
    """Steps whose file verifies against its manifest, without touching anything."""
    from codegeex_ms.checkpoint.atomic import IntegrityError, verify_file
    out = []
    for path in ckpts.glob("step_????????.ckpt"):
        try:
            verify_file(path)
            out.append(int(path.name[5:13]))
        except IntegrityError:
            pass
    return sorted(out)


def watch_checkpoint_dir(monkeypatch, ckpts, invariant):
    """Check ``invariant(verified steps)`` after every rename and delete in ``ckpts``."""
    from codegeex_ms.checkpoint import atomic
    from codegeex_ms.train import snapshots
    seen = []

    def wrap(owner, name):
        real = getattr(owner, name)

        def watched(*args, **kwargs):
            result = real(*args, **kwargs)
            if any(str(ckpts) in str(a) for a in args):
                steps = verified_steps(ckpts)
                assert invariant(steps), (name, args, steps)
                seen.append(steps)
            return result
        monkeypatch.setattr(owner, name, watched)
    wrap(snapshots, "_remove")
    wrap(snapshots, "_rename")
    wrap(atomic.os, "replace")
    return seen


def assert_same_losses(reference, out, first):
    expected, got = losses(reference / "out"), losses(out)
    assert sorted(got) == sorted(expected) == list(range(1, 201))
    for step in range(first, 201):
        assert got[step] == expected[step], (step, got[step], expected[step])
    final_a = weights(reference / "out" / "model_final.ckpt")
    final_b = weights(out / "model_final.ckpt")
    for name in final_a:
        np.testing.assert_array_equal(final_a[name], final_b[name], err_msg=name)


def test_issue_scenario_bit_flipped_newest_keeps_a_verified_checkpoint(reference, tmp_path,
                                                                       monkeypatch, caplog):
    """save_every=20, keep 3, step_200 bit-flipped, --resume: step_100 (or a later verified
    checkpoint) exists at every moment, the damage is reported in the project's words."""
    out = tmp_path / "run"
    ckpts = copy_run(reference, out, [100, 200])
    newest = ckpts / "step_00000200.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10
    newest.write_bytes(bytes(data))
    seen = watch_checkpoint_dir(monkeypatch, ckpts, lambda steps: any(s >= 100 for s in steps))
    with caplog.at_level(logging.INFO, logger="codegeex_ms.train"):
        summary = train_in_process(scenario_config(tmp_path, out, keep=3), resume=True)
    monkeypatch.undo()
    assert summary["start_step"] == 100
    assert (f"damaged checkpoint: {newest}: sha256 does not match its manifest" in caplog.text)
    assert "resumed from" in caplog.text and "step_00000100.ckpt (step 100)" in caplog.text
    assert len(seen) > 10  # the invariant was checked at every save and rotation
    assert verified_steps(ckpts) == [160, 180, 200]
    assert sorted(p.name for p in ckpts.glob("*corrupt*")) == [
        "step_00000200.ckpt.corrupt-checksum", "step_00000200.ckpt.corrupt-checksum.manifest.json"]
    assert_same_losses(reference, out, 101)


def test_full_disk_then_kill_mid_save_then_resume_is_bitwise(reference, tmp_path, monkeypatch):
    """A save fails with ENOSPC (the run stops with the error, nothing half-written); the resumed
    run is killed between renaming a checkpoint and writing its manifest; a second resume
    finishes: every loss and the final weights equal the uninterrupted run's."""
    from codegeex_ms.checkpoint import atomic
    from codegeex_ms.train import snapshots

    class Killed(BaseException):
        pass

    out = tmp_path / "run"
    ckpts = copy_run(reference, out, [100])
    cfg = scenario_config(tmp_path, out, keep=3)
    real_save = snapshots.ms.save_checkpoint

    def full_at_140(params, path, **kwargs):
        if "step_00000140" in path:
            with open(path, "wb") as f:
                f.write(b"\x0a\x05part")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(params, path, **kwargs)
    monkeypatch.setattr(snapshots.ms, "save_checkpoint", full_at_140)
    with pytest.raises(OSError, match="No space"):
        train_in_process(cfg, resume=True)
    monkeypatch.undo()
    assert sorted(p.name for p in ckpts.iterdir()) == [
        f"step_00000{s}.ckpt{m}" for s in (100, 120) for m in ("", ".manifest.json")]

    real_manifest = atomic.write_manifest

    def killed_at_180(path, size, sha):
        if "step_00000180" in str(path):
            raise Killed()
        return real_manifest(path, size, sha)
    monkeypatch.setattr(atomic, "write_manifest", killed_at_180)
    with pytest.raises(Killed):
        train_in_process(cfg, resume=True)
    monkeypatch.undo()
    assert (ckpts / "step_00000180.ckpt").exists()  # renamed, but no manifest vouches for it
    assert verified_steps(ckpts) == [120, 140, 160]

    summary = train_in_process(cfg, resume=True)
    assert summary["start_step"] == 160
    assert (ckpts / "step_00000180.ckpt.corrupt-no-manifest").exists()
    assert verified_steps(ckpts) == [160, 180, 200]
    assert_same_losses(reference, out, 101)
