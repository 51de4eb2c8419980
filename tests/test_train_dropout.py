"""Stateless dropout: masks are a pure function of (key, site, element), equal to the NumPy
reference bit for bit, drop the requested fraction, survive recomputation, and replace every
``nn.Dropout`` of CodeGeeX."""

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from codegeex_ms.config import CONFIG_DIR, load_config
from codegeex_ms.model import CodeGeeXWithLoss
from codegeex_ms.model.build import build_model
from codegeex_ms.parallel import apply_shard_plan
from codegeex_ms.train.dropout import (DropoutKey, StatelessDropout, install_stateless_dropout,
                                       keep_mask_numpy, step_key)

SHAPE = (2, 3, 16, 16)


@pytest.fixture
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


class Sites:
    """One StatelessDropout per site sharing a key (each compiles once)."""

    def __init__(self, p):
        self.key = DropoutKey()
        self.cells = {}
        self.p = p

    def __call__(self, key_value, site, x):
        if site not in self.cells:
            self.cells[site] = StatelessDropout(self.p, site, self.key.param)
            self.cells[site].set_train(True)
        self.key.param.set_data(Tensor(key_value, ms.int64))
        return self.cells[site](Tensor(x)).asnumpy()


def test_mask_equals_numpy_reference_and_rate(graph_mode):
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    p = 0.1
    key = step_key(1234, 0, 7)
    out = Sites(p)(key, 3, x)
    keep = keep_mask_numpy(key, 3, SHAPE, p)
    np.testing.assert_array_equal(out, x * keep * np.float32(1 / (1 - p)))
    # Drop fraction: binomial with n = 1536, p = 0.1 -> sd 11.8 drops; allow 5 sd.
    n = keep.size
    assert abs((n - keep.sum()) - n * p) < 5 * np.sqrt(n * p * (1 - p))


def test_masks_differ_across_keys_and_sites_but_repeat_for_same_key(graph_mode):
    x = np.ones(SHAPE, np.float32)
    run = Sites(0.5)
    a = run(step_key(1, 0, 5), 0, x)
    assert np.array_equal(a, run(step_key(1, 0, 5), 0, x))
    for other in (run(step_key(1, 0, 6), 0, x),   # next micro-step
                  run(step_key(1, 1, 5), 0, x),   # other data-parallel rank
                  run(step_key(1, 0, 5), 1, x)):  # other site
        agree = (a == other).mean()
        assert 0.4 < agree < 0.6  # independent masks at p = 0.5 agree on ~half the elements


def test_eval_mode_is_identity():
    key = DropoutKey()
    cell = StatelessDropout(0.5, 0, key.param)
    cell.set_train(False)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(cell(Tensor(x)).asnumpy(), x)


def tiny_config(recompute):
    return load_config(str(CONFIG_DIR / "tiny.yaml"), (
        "model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.ffn_hidden_size=64",
        "model.vocab_size=64", "model.real_vocab_size=64", "model.eod_token_id=63",
        "model.max_position_embeddings=16", "train.seq_length=8", "inference.max_length=16", "model.dropout=0.5", f"parallel.recompute={recompute}"))


def test_codegeex_dropouts_replaced_and_recompute_regenerates_masks(graph_mode):
    grads = []
    reference = None
    for recompute in (False, True):
        cfg = tiny_config(recompute)
        model = build_model(cfg.model)
        if reference is None:
            reference = {n: p.asnumpy() for n, p in model.parameters_and_names()}
        else:
            for n, p in model.parameters_and_names():
                p.set_data(Tensor(reference[n]))
        key = install_stateless_dropout(model)
        kinds = [type(c) for _, c in model.cells_and_names()]
        assert nn.Dropout not in kinds
        assert kinds.count(StatelessDropout) == 1 + 3 * 2  # embedding + 3 per layer (1 + top-query)
        sites = {c.site for _, c in model.cells_and_names() if isinstance(c, StatelessDropout)}
        assert sites == set(range(7))
        net = CodeGeeXWithLoss(model)
        apply_shard_plan(net, cfg.parallel)
        net.set_train(True)
        key.set(1234, 0, 3)
        ids = np.arange(16, dtype=np.int32).reshape(2, 8) % 60
        batch = (Tensor(ids), Tensor((ids + 1) % 60), Tensor(np.tile(np.arange(8, dtype=np.int32), (2, 1))),
                 Tensor(np.tile(np.tril(np.ones((8, 8), np.uint8)), (2, 1, 1))), Tensor(np.ones((2, 8), np.float32)))
        loss, g = ops.value_and_grad(net, None, net.trainable_params())(*batch)
        grads.append([float(loss.asnumpy())] + [t.asnumpy() for t in g])
    # Recomputation replays the same masks: identical loss; gradients equal up to the
    # reordering of FP32 sums that recomputation may cause (1e-6 relative).
    assert grads[0][0] == grads[1][0]
    for a, b in zip(grads[0][1:], grads[1][1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fused_kernel_gives_the_composed_operators_bits_forward_and_backward(graph_mode):
    """The one-pass CPU kernel against the int64 operator graph it replaces: same output and
    gradient bits, signed zeros and Inf/NaN propagation included, and the NumPy mask."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 33, 70)).astype(np.float32)  # odd sizes: vector tails
    x[0, 0, 0, :4] = [np.inf, -np.inf, np.nan, -0.0]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    key = DropoutKey()
    key.set(99, 1, 12)
    out = {}
    for mode in ("on", "off"):
        cell = StatelessDropout(0.3, 5, key.param, mode)
        assert (cell.fused is not None) == (mode == "on")
        cell.set_train(True)
        y, vjp = ms.vjp(cell, Tensor(x))
        out[mode] = (y.asnumpy(), vjp(Tensor(dy))[0].asnumpy())
    for fused, composed in zip(out["on"], out["off"]):
        np.testing.assert_array_equal(fused.view(np.uint32), composed.view(np.uint32))
    keep = keep_mask_numpy(step_key(99, 1, 12), 5, x.shape, 0.3)
    scale = np.float32(1 / 0.7)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(out["on"][0][finite], x[finite] * keep[finite] * scale)
    np.testing.assert_array_equal(out["on"][1], dy * scale * keep)
