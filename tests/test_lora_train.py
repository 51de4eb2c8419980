"""LoRA training through the existing loop: kill -9 + --resume reproduces the uninterrupted run's
losses bit for bit (adapter-only checkpoints, base identity recorded and checked), the frozen FP16
base stays bit-identical, only the adapters and their FP32 Adam moments are trained and saved.

Data: a prompt/completion .jsonl (completion-only loss) tokenized with the CodeGeeX tokenizer.
Why bitwise: as in test_train_resume.py (restored adapters, moments, update count, loss scale, data
position; dropout masks, the adapters' own included, are a pure function of seed and micro-step).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from codegeex_ms.env.paths import REPO_ROOT, shared_data_dir

TOKENIZER = shared_data_dir() / "codegeex_tokenizer"
STEPS, SAVE_EVERY = 24, 3

CONFIG = f"""\
extends: tiny.yaml
model: {{hidden_size: 64, num_layers: 1, num_heads: 4, ffn_hidden_size: 128,
        max_position_embeddings: 64, dropout: 0.1, param_dtype: float16}}
train: {{micro_batch_size: 2, seq_length: 32, warmup_steps: 2, decay_steps: 100, lr: 0.01,
        train_steps: {STEPS}, save_every: {SAVE_EVERY}, keep_checkpoints: 3, log_every: 1,
        peak_tflops: 1.0, seed: 5}}
data: {{finetune: true, num_workers: 1}}
inference: {{max_length: 64}}
lora: {{rank: 4, alpha: 8.0, dropout: 0.1, targets: [query, value, dense_h_to_4h], top_query: true}}
"""

PAIRS = [(f"# add {i} to x\ndef f(x):\n", f"    return x + {i}\n") for i in range(12)]


@pytest.fixture
def setup(tmp_path):
    if not (TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"CodeGeeX tokenizer missing in {TOKENIZER}")
    from codegeex_ms.checkpoint import save_weights
    from codegeex_ms.config import load_config
    from codegeex_ms.model.build import build_model
    (tmp_path / "pairs.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    (tmp_path / "lora.yaml").write_text(CONFIG)
    cfg = load_config(str(tmp_path / "lora.yaml"))
    rng = np.random.default_rng(0)
    base = {n: (0.02 * rng.standard_normal(p.shape)).astype(np.float16)
            for n, p in build_model(cfg.model, allocate=False).parameters_and_names()}
    save_weights(tmp_path / "base.ckpt", base)
    return tmp_path


def overrides(tmp, out, base="base.ckpt"):
    return [f"data.train_path={tmp / 'pairs.jsonl'}", f"tokenizer.path={TOKENIZER}",
            f"train.init_weights={tmp / base}", f"train.output_dir={out}"]


def train_cmd(tmp, out, *extra):
    cmd = [sys.executable, "-m", "codegeex_ms.train", "--config", str(tmp / "lora.yaml"), "--no-progress"]
    for item in overrides(tmp, out):
        cmd += ["--set", item]
    return cmd + list(extra)


def env():
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3"}


def losses(out):
    with open(out / "train_log.jsonl", encoding="utf-8") as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f)}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lora_kill_resume_is_bitwise_with_adapter_only_checkpoints(setup):
    from codegeex_ms.checkpoint import open_weights
    from codegeex_ms.lora import AdapterFile
    tmp = setup
    base_sha = sha(tmp / "base.ckpt")
    full, killed = tmp / "full", tmp / "killed"
    ckpts = killed / "checkpoints" / "rank_0"
    a = subprocess.Popen(train_cmd(tmp, full), env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    b = subprocess.Popen(train_cmd(tmp, killed), env=env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not (ckpts / "step_00000006.ckpt.manifest.json").exists():
        assert b.poll() is None, "the run to be killed ended early"
        assert time.time() < deadline, "no step-6 checkpoint in time"
        time.sleep(0.02)
    b.send_signal(signal.SIGKILL)
    assert b.wait() == -signal.SIGKILL
    out_a, _ = a.communicate(timeout=400)
    assert a.returncode == 0, out_a[-3000:]

    saved = sorted(int(p.name[5:13]) for p in ckpts.glob("step_*.ckpt"))
    assert saved and 6 <= saved[-1] < STEPS, saved
    r = subprocess.run(train_cmd(tmp, killed, "--resume"), env=env(), capture_output=True,
                       text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"step_{saved[-1]:08d}.ckpt (step {saved[-1]})" in r.stderr

    expected, got = losses(full), losses(killed)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in range(saved[-1] + 1, STEPS + 1):
        assert got[step] == expected[step], (step, got[step], expected[step])
    assert np.mean([expected[s] for s in range(STEPS - 3, STEPS + 1)]) < np.mean(
        [expected[s] for s in range(1, 5)])  # lr 0.01 on 12 repeated pairs: the adapters learn

    # adapter-only checkpoints: adapters, their FP32 moments and the step state; no base weight
    with open_weights(ckpts / f"step_{STEPS:08d}.ckpt") as f:
        names = set(f.infos)
        meta = json.loads(f.metadata["train_meta"])
        assert all(f.infos[n].dtype == "float32" for n in names if "lora_" in n)
    params = {n for n in names if n.endswith((".lora_a", ".lora_b")) and n.startswith("model.")}
    assert len(params) == 2 * 3 * 2  # a/b × 3 targets × (1 layer + top-query)
    assert {n for n in names if n.startswith("adam_m.")} == {f"adam_m.{n}" for n in params}
    assert not any("language_model." in n and "lora_" not in n for n in names)
    assert meta["lora_base"]["sha256"] == base_sha and meta["lora"]["rank"] == 4

    final_a, final_b = AdapterFile(full / "adapter_final.ckpt"), AdapterFile(killed / "adapter_final.ckpt")
    assert final_a.weights.keys() == final_b.weights.keys() and final_a.base["sha256"] == base_sha
    for name in final_a.weights:
        np.testing.assert_array_equal(final_a.weights[name], final_b.weights[name], err_msg=name)
    assert not (full / "model_final.ckpt").exists() and (killed / "loss_curve.png").stat().st_size > 0
    assert sha(tmp / "base.ckpt") == base_sha


def test_trained_base_stays_bit_identical_and_resume_checks_the_base(setup):
    """In process: after a few LoRA steps every base parameter equals the file bit for bit and
    every adapter B moved; resuming against a different base file is refused in one line."""
    from codegeex_ms.env import runtime
    from codegeex_ms.checkpoint import open_weights, save_weights
    from codegeex_ms.config import load_config
    from codegeex_ms.lora import is_frozen
    from codegeex_ms.train.data import micro_batches
    from codegeex_ms.train.distributed import init_topology
    from codegeex_ms.train.loop import Trainer, run

    tmp = setup
    cfg = load_config(str(tmp / "lora.yaml"), tuple(overrides(tmp, tmp / "run")) + (
        "train.train_steps=3", "train.save_every=3"))
    runtime.setup("graph", None, seed=cfg.train.seed)
    trainer = Trainer(cfg, init_topology(cfg, "CPU"), "CPU")
    batches = micro_batches(cfg, 0, 1, 0, 3)
    for i in range(3):
        trainer.run_step([next(batches)], i)
    with open_weights(tmp / "base.ckpt") as f:
        # paths of the wrapped Linears' own parameters run through the wrapper's "base" attribute
        frozen = {path.replace(".base.", "."): p for path, p in trainer.model.parameters_and_names()
                  if is_frozen(p)}
        assert set(frozen) == set(f.infos)
        for name, p in frozen.items():
            assert p.asnumpy().dtype == np.float16, name
            assert p.asnumpy().tobytes() == f.read(name).tobytes(), name
    assert trainer.model.trainable_params()
    for p in trainer.model.trainable_params():
        assert p.name.endswith((".lora_a", ".lora_b"))
        if p.name.endswith(".lora_b"):
            assert np.abs(p.asnumpy()).max() > 0, p.name  # B left zero: moved by training

    run(cfg, progress=False)
    with open_weights(tmp / "base.ckpt") as f:
        other = {n: f.read(n) for n in f.infos}
    other["language_model.transformer.final_layernorm.bias"] = other[
        "language_model.transformer.final_layernorm.bias"] + np.float16(0.5)
    save_weights(tmp / "other.ckpt", other)
    cfg2 = load_config(str(tmp / "lora.yaml"), tuple(overrides(tmp, tmp / "run", "other.ckpt")) + (
        "train.train_steps=6",))
    with pytest.raises(ValueError, match="trained on base base.ckpt .* resume with the original base"):
        run(cfg2, resume=True, progress=False)


def test_lora_trains_over_an_int8_base(setup):
    """W8A16 base (quantized from the FP16 one): a few steps run with finite, falling-or-not but
    finite losses, the int8 weights and FP32 scales stay bit-identical to the INT8 file, and the
    adapters are FP32 and move."""
    from codegeex_ms.env import runtime
    from codegeex_ms.checkpoint import open_weights
    from codegeex_ms.config import load_config
    from codegeex_ms.lora import is_frozen
    from codegeex_ms.quantize import quantize_checkpoint
    from codegeex_ms.train.data import micro_batches
    from codegeex_ms.train.distributed import init_topology
    from codegeex_ms.train.loop import Trainer

    tmp = setup
    quantize_checkpoint(tmp / "base.ckpt", tmp / "base_int8.ckpt")
    cfg = load_config(str(tmp / "lora.yaml"), tuple(overrides(tmp, tmp / "run8", "base_int8.ckpt")) + (
        "model.weight_quant=int8",))
    runtime.setup("graph", None, seed=cfg.train.seed)
    trainer = Trainer(cfg, init_topology(cfg, "CPU"), "CPU")
    batches = micro_batches(cfg, 0, 1, 0, 3)
    results = [trainer.run_step([next(batches)], i) for i in range(3)]
    assert all(np.isfinite(r[0]) and r[1] for r in results), results
    with open_weights(tmp / "base_int8.ckpt") as f:
        frozen = {path.replace(".base.", "."): p for path, p in trainer.model.parameters_and_names()
                  if is_frozen(p)}
        assert set(frozen) == set(f.infos)
        q = "language_model.transformer.layers.0.attention.query.weight"
        assert frozen[q].asnumpy().dtype == np.int8 and frozen[q + "_scale"].asnumpy().dtype == np.float32
        for name, p in frozen.items():
            assert p.asnumpy().tobytes() == f.read(name).astype(p.asnumpy().dtype).tobytes(), name
    moved = [p for p in trainer.model.trainable_params() if p.name.endswith(".lora_b")]
    assert moved and all(p.asnumpy().dtype == np.float32 and np.abs(p.asnumpy()).max() > 0 for p in moved)
