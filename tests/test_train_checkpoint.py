"""Training checkpoints (atomic save, keep-last-K, truncation/corruption detection), the resumable
micro-batch stream, the training log and the FLOPs/MFU arithmetic."""

import logging
import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn

from codegeex_ms.config import CONFIG_DIR, load_config
from codegeex_ms.data.sampling import sample_order
from codegeex_ms.train import metrics
from codegeex_ms.train.checkpoint import CheckpointManager, InvalidCheckpoint, read_checkpoint, restore
from codegeex_ms.train.data import micro_batches


class State(nn.Cell):
    def __init__(self, value=0.0):
        super().__init__()
        self.w = Parameter(Tensor(np.full((64, 64), value, np.float32)), name="w")
        self.count = Parameter(Tensor(3, ms.int32), name="count", requires_grad=False)


def saved(tmp_path, steps, keep=3):
    manager = CheckpointManager(tmp_path / "ckpt", keep)
    for step in steps:
        manager.save(State(float(step)), step, {"step": step, "consumed_micro_batches": 2 * step})
    return manager


def test_keeps_last_k_and_round_trips(tmp_path):
    manager = saved(tmp_path, [2, 4, 6, 8])
    assert manager.steps() == [8, 6, 4]
    assert not [p for p in manager.directory.iterdir() if p.name.startswith(".")]
    step, params, meta = manager.newest_valid(State())
    assert step == 8 and meta == {"step": 8, "consumed_micro_batches": 16}
    state = State()
    restore(state, params)
    assert (state.w.asnumpy() == 8.0).all() and state.count.asnumpy() == 3


@pytest.mark.parametrize("damage", ["truncate_half", "cut_crc_trailer", "flip_byte", "empty"])
def test_damaged_newest_is_skipped_with_warning(tmp_path, caplog, damage):
    manager = saved(tmp_path, [2, 4, 6])
    path = manager.path(6)
    os.chmod(path, 0o600)
    data = path.read_bytes()
    if damage == "truncate_half":
        data = data[:len(data) // 2]
    elif damage == "cut_crc_trailer":  # parses as a valid protobuf: only the trailer check catches it
        data = data[:-17]
    elif damage == "flip_byte":
        data = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
    else:
        data = b""
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="codegeex_ms.train"):
        step, params, _ = manager.newest_valid(State())
    assert step == 4
    assert "step_00000006.ckpt" in caplog.text
    state = State()
    restore(state, params)
    assert (state.w.asnumpy() == 4.0).all()


def test_checkpoint_of_another_state_is_rejected(tmp_path):
    manager = saved(tmp_path, [1])

    class Other(State):
        def __init__(self):
            super().__init__()
            self.extra = Parameter(Tensor(np.zeros(2, np.float32)), name="extra")

    with pytest.raises(InvalidCheckpoint, match="extra"):
        read_checkpoint(manager.path(1), [n for n in ("w", "count", "extra")])
    assert manager.newest_valid(Other()) is None


def test_leftover_temporary_file_is_ignored_and_removed(tmp_path):
    manager = saved(tmp_path, [2])
    stale = manager.directory / ".step_00000004.deadbeef.ckpt"
    stale.write_bytes(b"half a checkpoint")
    assert manager.steps() == [2]
    CheckpointManager(manager.directory, 3)
    assert not stale.exists()


def write_shards(directory, seq, n, eod):
    from codegeex_ms.data.mindrecord_io import ShardWriter, write_manifest
    directory.mkdir()
    writer = ShardWriter(directory, seq + 1, samples_per_shard=n)
    for i in range(n):
        writer.write(np.full(seq + 1, i, np.int32))  # sample i is all i: identifies its index
    write_manifest(directory, writer.close(), seq_length=seq, sample_length=seq + 1, eod_id=eod)


@pytest.mark.parametrize("ranks", [1, 2])
def test_stream_resumed_at_k_is_the_stream_without_its_first_k(tmp_path, ranks):
    write_shards(tmp_path / "data", 8, 10, eod=99)
    cfg = load_config(str(CONFIG_DIR / "tiny.yaml"), (
        f"data.train_path={tmp_path / 'data'}", "train.seq_length=8", "train.micro_batch_size=2",
        "model.eod_token_id=99", "data.num_workers=1"))
    for rank in range(ranks):
        # 10 samples / ranks per epoch, 2 per batch: 9 batches cross epoch boundaries
        full = [b[0][:, 0] for b in micro_batches(cfg, rank, ranks, 0, 9)]
        resumed = [b[0][:, 0] for b in micro_batches(cfg, rank, ranks, 4, 5)]
        np.testing.assert_array_equal(np.stack(full[4:]), np.stack(resumed))
        expected = sample_order(10, seed=cfg.train.seed, num_shards=ranks, shard_id=rank, num_epochs=4)
        np.testing.assert_array_equal(np.concatenate(full), expected[:18])
    columns = next(micro_batches(cfg, 0, 1, 0, 1))
    assert [c.dtype for c in columns] == [np.int32, np.int32, np.int32, np.uint8, np.float32]
    assert [c.shape for c in columns] == [(2, 8), (2, 8), (2, 8), (2, 8, 8), (2, 8)]


def test_log_truncated_on_resume_and_plot(tmp_path):
    row = dict.fromkeys(metrics.LOG_FIELDS, 1.0)
    log = metrics.TrainLog(tmp_path)
    for step in range(1, 6):
        log.write({**row, "step": step, "loss": 10.0 - step})
    log = metrics.TrainLog(tmp_path, resume_step=3)
    log.write({**row, "step": 4, "loss": 0.5})
    rows = metrics.read_log(tmp_path / "train_log.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 0.5)]
    assert (tmp_path / "train_log.csv").read_text().count("\n") == 5
    metrics.plot_loss(rows, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flops_per_token_matches_megatron_formula():
    # Megatron-LM (Narayanan et al. 2021), per token: 72 L h^2 (1 + s/(6h) + V/(12 h L)) with
    # f = 4h; CodeGeeX has L + 1 such layers (the top-query layer costs a decoder layer).
    cfg = load_config(str(CONFIG_DIR / "codegeex_13b.yaml"))
    h, s, v, layers = 5120, 2048, 52224, 40
    expected = 72 * layers * h * h * (1 + s / (6 * h) + v / (12 * h * layers))
    assert metrics.flops_per_token(cfg.model, s) == pytest.approx(expected, rel=1e-12)
