"""Training checkpoints (atomic save with a checksum manifest, rotation over verified checkpoints,
quarantine of damaged ones, kills and full disks at every point of a save), the resumable
micro-batch stream, the training log and the FLOPs/MFU arithmetic."""

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn

from codegeex_ms.config import CONFIG_DIR, load_config
from codegeex_ms.data.sampling import sample_order
from codegeex_ms.budget.training import flops_per_token
from codegeex_ms.train import metrics
from codegeex_ms.checkpoint import atomic
from codegeex_ms.checkpoint.atomic import manifest_path
from codegeex_ms.train import snapshots
from codegeex_ms.train.snapshots import CheckpointManager, StateMismatch, read_checkpoint, restore
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


def verified(directory, keep=3):
    """Steps that verify, as a fresh process would find them (quarantining the damaged)."""
    return CheckpointManager(directory, keep).verified_steps()


def w_of(manager, step):
    state = State()
    restore(state, manager.load(step, state)[0])
    return float(state.w.asnumpy()[0, 0])


def test_keeps_last_k_and_round_trips(tmp_path):
    manager = saved(tmp_path, [2, 4, 6, 8])
    assert manager.steps() == [8, 6, 4]
    names = sorted(p.name for p in manager.directory.iterdir())
    assert names == [f"step_0000000{s}.ckpt{m}" for s in (4, 6, 8) for m in ("", ".manifest.json")]
    step, params, meta = manager.newest_valid(State())
    assert step == 8 and meta == {"step": 8, "consumed_micro_batches": 16}
    state = State()
    restore(state, params)
    assert (state.w.asnumpy() == 8.0).all() and state.count.asnumpy() == 3


def damage(path, how):
    """Damage checkpoint ``path`` the way disks and people do."""
    os.chmod(path, 0o600)
    data = path.read_bytes()
    if how == "deleted":
        path.unlink()
        return
    if how == "manifest_deleted":
        manifest_path(path).unlink()
        return
    if how == "truncate_half":
        data = data[:len(data) // 2]
    elif how == "cut_crc_trailer":  # still parses as a valid protobuf
        data = data[:-17]
    elif how == "empty":
        data = b""
    elif how == "appended":
        data += b"\0"
    else:  # flip one bit at a seeded position in each third of the file (header, tensors, trailer)
        rng = np.random.default_rng(int(how.split("_")[1]))
        data = bytearray(data)
        for third in range(3):
            pos = int(rng.integers(third * len(data) // 3, (third + 1) * len(data) // 3))
            data[pos] ^= 1 << int(rng.integers(0, 8))
        data = bytes(data)
    path.write_bytes(data)


REASONS = {"truncate_half": "truncated", "cut_crc_trailer": "truncated", "empty": "truncated",
           "appended": "size", "flip_0": "checksum", "flip_1": "checksum", "flip_2": "checksum",
           "deleted": "missing", "manifest_deleted": "no-manifest"}


@pytest.mark.parametrize("how", sorted(REASONS))
def test_damaged_newest_is_quarantined_and_reported(tmp_path, caplog, how):
    manager = saved(tmp_path, [2, 4, 6])
    path = manager.path(6)
    damage(path, how)
    manager = CheckpointManager(manager.directory, 3)  # a new process
    with caplog.at_level(logging.WARNING, logger="codegeex_ms.train"):
        step, params, _ = manager.newest_valid(State())
    assert step == 4
    quarantined = f"step_00000006.ckpt.corrupt-{REASONS[how]}"
    assert f"damaged checkpoint: {path}: " in caplog.text and quarantined in caplog.text
    assert manager.steps() == [4, 2]  # the damaged file no longer has a checkpoint's name
    left = {p.name for p in manager.directory.iterdir()}
    assert (quarantined in left) == (how != "deleted")
    assert (quarantined + ".manifest.json" in left) == (how != "manifest_deleted")
    state = State()
    restore(state, params)
    assert (state.w.asnumpy() == 4.0).all()


def test_rotation_counts_only_verified_checkpoints(tmp_path):
    manager = saved(tmp_path, [2, 4, 6])
    damage(manager.path(6), "flip_0")
    damage(manager.path(4), "truncate_half")
    manager = CheckpointManager(manager.directory, 3)
    manager.save(State(8.0), 8, {"step": 8})
    # 2 is the oldest but verified: it stays while only two verified checkpoints exist
    assert manager.steps() == [8, 2] and verified(manager.directory) == [8, 2]
    manager.save(State(10.0), 10, {"step": 10})
    manager.save(State(12.0), 12, {"step": 12})
    assert manager.steps() == [12, 10, 8]
    assert [w_of(manager, s) for s in (12, 10, 8)] == [12.0, 10.0, 8.0]
    assert sorted(p.name for p in manager.directory.glob("*.corrupt-*")) == [
        "step_00000004.ckpt.corrupt-truncated", "step_00000004.ckpt.corrupt-truncated.manifest.json",
        "step_00000006.ckpt.corrupt-checksum", "step_00000006.ckpt.corrupt-checksum.manifest.json"]


def test_checkpoint_of_another_state_is_refused_not_quarantined(tmp_path):
    manager = saved(tmp_path, [1])

    class Other(State):
        def __init__(self):
            super().__init__()
            self.extra = Parameter(Tensor(np.zeros(2, np.float32)), name="extra")

    with pytest.raises(StateMismatch, match="extra"):
        read_checkpoint(manager.path(1), ["w", "count", "extra"])
    with pytest.raises(StateMismatch, match="a different model or recipe"):
        manager.newest_valid(Other())
    assert verified(manager.directory) == [1]  # intact, so kept


def test_leftover_temporary_file_is_ignored_and_removed(tmp_path):
    manager = saved(tmp_path, [2])
    stale = manager.directory / ".step_00000004.deadbeef.ckpt"
    stale.write_bytes(b"half a checkpoint")
    assert manager.steps() == [2]
    CheckpointManager(manager.directory, 3)
    assert not stale.exists()


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler of the code under test catches it."""


def _partial_save(*args, **kwargs):
    with open(args[1], "wb") as f:  # half a file, as a process killed mid-write leaves it
        f.write(b"\x0a\x05partial")
    raise Killed()


# Every primitive of the save sequence: serialization, fsyncs, the hash, unlinks (old manifest,
# rotation) and renames (data, manifest). Each call of each is a point where a kill can land.
PRIMITIVES = [(os, "fsync"), (os, "replace"), (atomic, "file_digest"), (Path, "unlink")]


def _count_calls(monkeypatch, tmp_path):
    manager = saved(tmp_path / "count", [2, 4, 6])
    counts = {}
    for owner, name in PRIMITIVES:
        real = getattr(owner, name)

        def counting(*a, _real=real, _name=name, **k):
            counts[_name] = counts.get(_name, 0) + 1
            return _real(*a, **k)
        monkeypatch.setattr(owner, name, counting)
    manager.save(State(8.0), 8, {"step": 8})
    monkeypatch.undo()
    return counts


def test_kill_at_every_point_of_the_save_sequence_loses_nothing(tmp_path, monkeypatch):
    counts = _count_calls(monkeypatch, tmp_path)
    assert counts["replace"] >= 2 and counts["fsync"] >= 3 and counts["unlink"] >= 3, counts
    points = [("save_checkpoint", 0)] + [(n, k) for _, n in PRIMITIVES for k in range(counts[n])]
    outcomes = set()
    for i, (name, k) in enumerate(points):
        manager = saved(tmp_path / f"p{i}", [2, 4, 6])
        calls = [0]
        if name == "save_checkpoint":
            monkeypatch.setattr(snapshots.ms, "save_checkpoint", _partial_save)
        else:
            owner = next(o for o, n in PRIMITIVES if n == name)
            real = getattr(owner, name)

            def dying(*a, _real=real, **kw):
                calls[0] += 1
                if calls[0] == k + 1:
                    raise Killed()
                return _real(*a, **kw)
            monkeypatch.setattr(owner, name, dying)
        with pytest.raises(Killed):
            manager.save(State(8.0), 8, {"step": 8})
        monkeypatch.undo()
        # the restarted process: nothing unverified under a checkpoint's name, nothing lost
        after = verified(manager.directory)
        assert after in ([8, 6, 4], [8, 6, 4, 2], [6, 4, 2]), (name, k, after)
        restarted = CheckpointManager(manager.directory, 3)
        assert restarted.steps() == after
        assert not [p for p in manager.directory.iterdir() if p.name.startswith(".")]
        step = restarted.newest_valid(State())[0]
        assert step == after[0] and w_of(restarted, step) == float(step)
        outcomes.add(tuple(after))
    assert {(6, 4, 2), (8, 6, 4)} <= outcomes  # kills both before and after the new one counts


@pytest.mark.parametrize("where", ["data", "manifest"])
def test_full_disk_leaves_the_previous_checkpoints(tmp_path, monkeypatch, where):
    manager = saved(tmp_path, [2, 4, 6])

    def no_space(*args, **kwargs):
        if where == "data":
            with open(args[1], "wb") as f:
                f.write(b"\x0a\x05partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    if where == "data":
        monkeypatch.setattr(snapshots.ms, "save_checkpoint", no_space)
    else:
        monkeypatch.setattr(atomic, "write_manifest", no_space)
    with pytest.raises(OSError, match="No space"):
        manager.save(State(8.0), 8, {"step": 8})
    monkeypatch.undo()
    assert sorted(p.name for p in manager.directory.iterdir()) == sorted(
        f"step_0000000{s}.ckpt{m}" for s in (2, 4, 6) for m in ("", ".manifest.json"))
    assert verified(manager.directory) == [6, 4, 2]


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
    assert flops_per_token(cfg.model, s) == pytest.approx(expected, rel=1e-12)
