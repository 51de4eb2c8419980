"""MindSpore datasets over packed MindRecord shards (pre-training) and prompt/completion JSONL."""

import json

import numpy as np
import pytest

from codegeex_ms.data.finetune_dataset import create_finetune_dataset, encode_pairs
from codegeex_ms.data.masks import eod_reset_masks
from codegeex_ms.data.mindrecord_io import MANIFEST, ShardWriter, write_manifest
from codegeex_ms.data.pretrain_dataset import COLUMNS, create_pretrain_dataset
from codegeex_ms.tokenizer_train import train_tokenizer

pytest.importorskip("mindspore")

EOD, SEQ = 99, 16


def write_shards(directory, samples, per_shard, eod_id=EOD):
    directory.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(directory, samples.shape[1], per_shard)
    for row in samples:
        writer.write(row)
    write_manifest(directory, writer.close(), seq_length=samples.shape[1] - 1,
                   sample_length=samples.shape[1], eod_id=eod_id, vocab_size=100, padding_tokens=0)
    return directory


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """23 samples of SEQ + 1 tokens over 3 shards; token 0 of sample i is i (its identity)."""
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 8, (23, SEQ + 1)).astype(np.int32) + 30
    samples[rng.random(samples.shape) < 0.15] = EOD
    samples[:, 0] = np.arange(23)
    samples[3] = np.r_[3, np.full(SEQ, EOD)]  # many EODs
    samples[4, 1:] = 40  # no EOD at all
    return samples, write_shards(tmp_path_factory.mktemp("shards"), samples, per_shard=10)


def read(dataset, column="input_ids"):
    return [b[column] for b in dataset.create_dict_iterator(output_numpy=True, num_epochs=1)]


def first_tokens(dataset):
    return [int(x) for batch in read(dataset) for x in batch[:, 0]]


def test_columns_match_numpy_reference(stored):
    samples, path = stored
    ds = create_pretrain_dataset(path, SEQ, 4, shuffle=False, eod_id=EOD, drop_remainder=False)
    batches = list(ds.create_dict_iterator(output_numpy=True, num_epochs=1))
    assert len(batches) == 6 and list(batches[0]) == list(COLUMNS)
    rows = {c: np.concatenate([b[c] for b in batches]) for c in COLUMNS}
    dtypes = {"input_ids": np.int32, "labels": np.int32, "position_ids": np.int32,
              "attention_mask": np.uint8, "loss_mask": np.float32}
    for c, dtype in dtypes.items():
        assert rows[c].dtype == dtype, c
    np.testing.assert_array_equal(rows["input_ids"], samples[:, :-1])
    np.testing.assert_array_equal(rows["labels"], samples[:, 1:])
    pos, mask, loss = eod_reset_masks(samples[:, :-1], EOD)
    np.testing.assert_array_equal(rows["position_ids"], pos)
    np.testing.assert_array_equal(rows["attention_mask"], mask)
    np.testing.assert_array_equal(rows["loss_mask"], loss)
    assert rows["attention_mask"].shape == (23, SEQ, SEQ)


def test_without_eod_reset_mask_is_causal(stored):
    _, path = stored
    batch = next(create_pretrain_dataset(path, SEQ, 2, eod_id=EOD, eod_reset=False)
                 .create_dict_iterator(output_numpy=True, num_epochs=1))
    np.testing.assert_array_equal(batch["attention_mask"][1], np.tri(SEQ, dtype=np.uint8))
    np.testing.assert_array_equal(batch["position_ids"][0], np.arange(SEQ))
    np.testing.assert_array_equal(batch["loss_mask"], (batch["input_ids"] != EOD).astype(np.float32))


def test_shuffle_is_seeded_permutation(stored):
    _, path = stored
    a = first_tokens(create_pretrain_dataset(path, SEQ, 1, seed=5, eod_id=EOD))
    assert sorted(a) == list(range(23)) and a != list(range(23))
    assert a == first_tokens(create_pretrain_dataset(path, SEQ, 1, seed=5, eod_id=EOD))
    assert a != first_tokens(create_pretrain_dataset(path, SEQ, 1, seed=6, eod_id=EOD))


@pytest.mark.parametrize("shuffle", [True, False])
def test_data_parallel_shards_disjoint_and_covering(stored, shuffle):
    _, path = stored
    for ranks in (1, 2, 3):
        parts = [first_tokens(create_pretrain_dataset(path, SEQ, 1, shuffle=shuffle, seed=1,
                                                      num_shards=ranks, shard_id=r, eod_id=EOD))
                 for r in range(ranks)]
        union = [x for p in parts for x in p]
        assert all(len(p) == 23 // ranks for p in parts)
        assert len(set(union)) == len(union) == 23 - 23 % ranks
    # with 23 % 1 == 0 the single rank covers everything
    assert sorted(first_tokens(create_pretrain_dataset(path, SEQ, 1, eod_id=EOD))) == list(range(23))


def test_skip_equals_read_and_drop(stored):
    _, path = stored
    common = dict(seed=3, num_shards=2, shard_id=1, eod_id=EOD, num_epochs=2)
    full = first_tokens(create_pretrain_dataset(path, SEQ, 1, **common))
    assert len(full) == 22
    for skip in (1, 5, 13):
        assert first_tokens(create_pretrain_dataset(path, SEQ, 1, skip_samples=skip, **common)) == full[skip:]
    batched = read(create_pretrain_dataset(path, SEQ, 4, skip_samples=4, **common), "labels")
    np.testing.assert_array_equal(np.concatenate(batched)[:, 0], [
        int(x) for x in np.concatenate(read(create_pretrain_dataset(path, SEQ, 1, **common), "labels"))[4:20, 0]])


def test_corrupt_and_mismatched_shards(stored, tmp_path):
    samples, _ = stored
    path = write_shards(tmp_path / "s", samples, per_shard=10)
    with pytest.raises(ValueError, match="seq_length"):
        create_pretrain_dataset(path, SEQ + 1, 2, eod_id=EOD)
    with pytest.raises(ValueError, match="EOD id 99"):
        create_pretrain_dataset(path, SEQ, 2, eod_id=50256)
    shard = path / "pretrain-00001.mindrecord"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="pretrain-00001.mindrecord.*truncated"):
        create_pretrain_dataset(path, SEQ, 2, eod_id=EOD)
    with pytest.raises(ValueError, match="pretrain-00001.mindrecord.*not a readable MindRecord"):
        create_pretrain_dataset([path / "pretrain-00000.mindrecord", shard], SEQ, 2, eod_id=EOD)
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="SHA-256"):
        create_pretrain_dataset(path, SEQ, 2, eod_id=EOD, verify_checksums=True)
    (path / "pretrain-00002.mindrecord.db").unlink()
    with pytest.raises(FileNotFoundError, match="pretrain-00002.mindrecord.db"):
        create_pretrain_dataset(path, SEQ, 2, eod_id=EOD)
    with pytest.raises(FileNotFoundError, match="neither"):
        create_pretrain_dataset(tmp_path, SEQ, 2)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format"] = "something-else"
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a codegeex-ms"):
        create_pretrain_dataset(path, SEQ, 2, eod_id=EOD)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    corpus = ["def f(x):\n    return x * 2\n", "print('hello world')\n", "for i in range(3):\n    pass\n"]
    return train_tokenizer(corpus * 10, 290, tmp_path_factory.mktemp("tok"))


def test_finetune_loss_mask_on_completion_only(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    pairs = [("def f(x):\n", "    return x * 2\n"), ("print(", "'hello')\n"),
             ("", "pass\n"), ("# long prompt\n" * 20, "    return 1\n")]
    path = tmp_path / "ft.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    seq = 24
    tokens, mask, truncated = encode_pairs([p for p, _ in pairs], [c for _, c in pairs], tok, seq)
    assert truncated == 1
    ds = create_finetune_dataset(path, tok, seq, 4, shuffle=False, drop_remainder=False)
    batch = next(ds.create_dict_iterator(output_numpy=True, num_epochs=1))
    assert list(batch) == list(COLUMNS) and batch["attention_mask"].shape == (4, seq, seq)
    for i, (prompt, completion) in enumerate(pairs):
        labels, loss = batch["labels"][i], batch["loss_mask"][i]
        completion_ids = tok.encode(completion) + [tok.eod_id]
        # with an empty prompt nothing precedes (so nothing predicts) the first completion token
        want = completion_ids[1:] if not prompt else completion_ids
        assert labels[loss == 1].tolist() == want
        if i < 3:  # untruncated: the inputs start with the whole prompt
            n = len(tok.encode(prompt))
            assert tok.decode(batch["input_ids"][i][:n]) == prompt
            assert loss[:max(n - 1, 0)].sum() == 0
        else:  # the prompt lost its start, the completion is intact and ends the sample
            row = np.r_[batch["input_ids"][i], labels[-1]]
            assert tok.decode(row).endswith(completion + "<|endoftext|>")
            assert tok.decode(row) != prompt + completion + "<|endoftext|>"
    pos = batch["position_ids"][0]
    n_real = len(tok.encode(pairs[0][0])) + len(tok.encode(pairs[0][1])) + 1
    np.testing.assert_array_equal(pos[:n_real], np.arange(n_real))
    assert batch["attention_mask"][0][n_real - 1, :n_real].all()


def test_finetune_bad_records(tiny_tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        create_finetune_dataset(path, tiny_tokenizer, 8, 1)
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        create_finetune_dataset(tmp_path / "absent.jsonl", tiny_tokenizer, 8, 1)


def test_several_epochs_on_one_rank_reshuffle_and_cover_each_epoch(stored):
    """More reads than stored samples (3 epochs, 1 rank): each epoch is a new permutation."""
    _, path = stored
    tokens = first_tokens(create_pretrain_dataset(path, SEQ, 1, seed=2, eod_id=EOD, num_epochs=3))
    epochs = [tokens[i * 23:(i + 1) * 23] for i in range(3)]
    assert len(tokens) == 69 and all(sorted(e) == list(range(23)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    resumed = first_tokens(create_pretrain_dataset(path, SEQ, 1, seed=2, eod_id=EOD, num_epochs=3,
                                                    skip_samples=30))
    assert resumed == tokens[30:]
