"""EOD-reset masks, packing and data-parallel sample order against plain NumPy references."""

import numpy as np
import pytest

from codegeex_ms.data.masks import eod_reset_masks
from codegeex_ms.data.packing import Packer
from codegeex_ms.data.sampling import sample_order

EOD = 7


def reference_masks(tokens, eod, reset=True):
    """The original PanGu-alpha/CodeGeeX loop: block everything up to each EOD for later tokens
    and shift later positions back to 0."""
    size = len(tokens)
    position = np.arange(size)
    mask = np.tril(np.ones((size, size), dtype=np.uint8))
    if reset:
        prev = 0
        for i in np.flatnonzero(tokens == eod):
            mask[i + 1:, :i + 1] = 0
            position[i + 1:] -= i + 1 - prev
            prev = i + 1
    return position, mask, (tokens != eod).astype(np.float32)


def rows_with_eods(rng, size):
    yield "no EOD", rng.integers(8, 50, size)
    one = rng.integers(8, 50, size)
    one[size // 3] = EOD
    yield "one EOD", one
    many = rng.integers(0, 12, size)  # ids 0..11: EOD (7) in ~1/12 of places, some adjacent
    yield "many EODs", many
    edges = rng.integers(8, 50, size)
    edges[[0, min(1, size - 1), size - 1]] = EOD
    yield "EOD at both ends, adjacent", edges
    yield "all EOD", np.full(size, EOD)


@pytest.mark.parametrize("size", [1, 2, 17, 64])
def test_masks_match_reference(size):
    rng = np.random.default_rng(size)
    for name, row in rows_with_eods(rng, size):
        for reset in (True, False):
            pos, mask, loss = eod_reset_masks(row, EOD, reset)
            ref_pos, ref_mask, ref_loss = reference_masks(row, EOD, reset)
            assert pos.dtype == np.int32 and mask.dtype == np.uint8 and loss.dtype == np.float32
            np.testing.assert_array_equal(pos, ref_pos, err_msg=f"{name}, reset={reset}")
            np.testing.assert_array_equal(mask, ref_mask, err_msg=f"{name}, reset={reset}")
            np.testing.assert_array_equal(loss, ref_loss, err_msg=f"{name}, reset={reset}")


def test_masks_semantics_on_a_hand_example():
    row = np.array([5, 6, EOD, 8, 9, EOD, EOD, 10])
    pos, mask, loss = eod_reset_masks(row, EOD)
    np.testing.assert_array_equal(pos, [0, 1, 2, 0, 1, 2, 0, 0])
    assert mask[2, :3].tolist() == [1, 1, 1]  # the EOD belongs to the document it ends
    assert mask[3].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]  # nothing at or before the last EOD
    assert mask[7].tolist() == [0] * 7 + [1]
    np.testing.assert_array_equal(loss, [1, 1, 0, 1, 1, 0, 0, 1])


def test_masks_batched_equals_rowwise():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 12, (4, 33))
    pos, mask, loss = eod_reset_masks(batch, EOD)
    assert pos.shape == (4, 33) and mask.shape == (4, 33, 33) and loss.shape == (4, 33)
    for b in range(4):
        for got, want in zip((pos[b], mask[b], loss[b]), reference_masks(batch[b], EOD)):
            np.testing.assert_array_equal(got, want)


def pack_reference(docs, length, eod):
    stream = np.concatenate([np.append(np.asarray(d, dtype=np.int64), eod) for d in docs])
    padding = (-len(stream)) % length
    return np.append(stream, np.full(padding, eod)).reshape(-1, length), padding


@pytest.mark.parametrize("length", [2, 5, 16])
def test_packer_matches_concatenate_and_reshape(length):
    rng = np.random.default_rng(length)
    docs = [rng.integers(8, 100, int(n)) for n in rng.integers(0, 40, 30)]
    docs.append(np.arange(length - 1) + 8)  # doc + EOD exactly fills what is left or a sample
    packer = Packer(length, EOD)
    samples = [s for d in docs for s in packer.add(d)]
    last, padding = packer.finish()
    if last is not None:
        samples.append(last)
    want, want_padding = pack_reference(docs, length, EOD)
    np.testing.assert_array_equal(np.stack(samples), want)
    assert padding == want_padding
    assert all(s.dtype == np.int32 for s in samples)


def test_packer_no_padding_when_stream_ends_on_boundary():
    packer = Packer(4, EOD)
    assert [s.tolist() for s in packer.add([1, 2, 3])] == [[1, 2, 3, EOD]]
    assert packer.finish() == (None, 0)


@pytest.mark.parametrize("n, shards", [(12, 3), (10, 3), (7, 1), (9, 4)])
def test_sample_order_shards_are_disjoint_equal_and_cover(n, shards):
    for shuffle in (True, False):
        parts = [sample_order(n, shuffle=shuffle, seed=3, num_shards=shards, shard_id=r)
                 for r in range(shards)]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == n // shards
        union = np.concatenate(parts)
        assert len(set(union.tolist())) == len(union)  # disjoint
        assert len(union) == n - n % shards  # only the remainder is left out
        if n % shards == 0:
            assert sorted(union.tolist()) == list(range(n))


def test_sample_order_seed_epochs_and_skip():
    a = sample_order(50, seed=1)
    assert sorted(a.tolist()) == list(range(50)) and a.tolist() != list(range(50))
    np.testing.assert_array_equal(a, sample_order(50, seed=1))
    assert a.tolist() != sample_order(50, seed=2).tolist()
    two = sample_order(50, seed=1, num_epochs=2)
    np.testing.assert_array_equal(two[:50], a)
    assert two[50:].tolist() != a.tolist() and sorted(two[50:].tolist()) == list(range(50))
    for skip in (0, 1, 24, 49):
        np.testing.assert_array_equal(
            sample_order(50, seed=1, num_epochs=2, num_shards=2, shard_id=1, skip_samples=skip),
            sample_order(50, seed=1, num_epochs=2, num_shards=2, shard_id=1)[skip:])
    np.testing.assert_array_equal(sample_order(5, shuffle=False), np.arange(5))


def test_sample_order_errors():
    with pytest.raises(ValueError, match="shard_id"):
        sample_order(10, num_shards=2, shard_id=2)
    with pytest.raises(ValueError, match="cannot be split"):
        sample_order(3, num_shards=4, shard_id=0)
    with pytest.raises(ValueError, match="leaves nothing"):
        sample_order(10, skip_samples=10)
