"""The training step against hand-computed values: LR schedule, weight-decay groups, Adam update,
global-norm clipping, loss-scale unscaling, overflow skipping, scale growth, accumulation.

The step runs on a toy network whose loss is linear in its weights (``loss = sum(W * x) +
sum(b * x[0])``), so its gradients are exactly ``x`` and ``x[0]`` and every quantity of one
optimizer update can be written down in NumPy. Graph mode, as in training.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn

from codegeex_ms.config import CONFIG_DIR, load_config
from codegeex_ms.model import CodeGeeXWithLoss
from codegeex_ms.model.build import build_model
from codegeex_ms.model.layers import LayerNorm
from codegeex_ms.train.optimizer import build_optimizer, no_decay_names
from codegeex_ms.train.schedule import WarmupCosineLR, lr_at
from codegeex_ms.train.step import TrainStep

B1, B2, EPS = 0.9, 0.95, 1e-8


@pytest.fixture
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


class Toy(nn.Cell):
    """Loss Cell with CodeGeeXWithLoss's signature; ``loss_mask`` [2, 3] carries ``x``."""

    def __init__(self):
        super().__init__()
        self.weight = Parameter(Tensor(np.arange(6, dtype=np.float32).reshape(2, 3) / 10), name="weight")
        self.bias = Parameter(Tensor(np.array([0.5, -0.5, 1.0], np.float32)), name="bias")
        self.norm = LayerNorm(3)  # unused by the loss: present to be exempt from decay

    def construct(self, input_ids, labels, position_ids, attention_mask, loss_mask):
        return (self.weight * loss_mask).sum() + (self.bias * loss_mask[0]).sum()


def recipe(**over):
    values = dict(lr=1e-2, min_lr=1e-3, warmup_steps=2, decay_steps=10, weight_decay=0.1,
                  adam_beta1=B1, adam_beta2=B2, adam_eps=EPS, grad_clip=1.0, loss_scale=1024.0,
                  loss_scale_factor=2.0, loss_scale_window=1000, grad_accumulation=1)
    values.update(over)
    return SimpleNamespace(**values)


def batch(x):
    dummy = Tensor(np.zeros((1, 1), np.int32))
    return (dummy, dummy, dummy, Tensor(np.zeros((1, 1, 1), np.uint8)), Tensor(np.asarray(x, np.float32)))


def make_step(**over):
    net = Toy()
    train = recipe(**over)
    opt = build_optimizer(net, train)
    return net, opt, TrainStep(net, opt, train), train


def adam_reference(w, g, m, v, lr, wd):
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    return w - lr * (m / (np.sqrt(v) + EPS) + wd * w), m, v


def test_lr_schedule_hand_values():
    # CodeGeeX: warm-up to 1e-4 over 2000 updates, cosine to 1e-6 at update 200000.
    args = dict(lr=1e-4, min_lr=1e-6, warmup_steps=2000, decay_steps=200000)
    assert lr_at(1, **args) == pytest.approx(5e-8, rel=1e-12)
    assert lr_at(1000, **args) == pytest.approx(5e-5, rel=1e-12)
    assert lr_at(2000, **args) == pytest.approx(1e-4, rel=1e-12)
    assert lr_at(101000, **args) == pytest.approx(1e-6 + 0.5 * 0.99e-4, rel=1e-12)  # cos(pi/2) = 0
    assert lr_at(2000 + 49500, **args) == pytest.approx(1e-6 + 0.99e-4 * (1 + math.cos(math.pi / 4)) / 2,
                                                        rel=1e-12)
    assert lr_at(200000, **args) == pytest.approx(1e-6, rel=1e-12)
    assert lr_at(300000, **args) == pytest.approx(1e-6, rel=1e-12)
    # The graph Cell takes the count of updates already applied; FP32 arithmetic: 1e-6 relative.
    cell = WarmupCosineLR(**args)
    for update in (1, 1000, 2000, 2001, 51500, 101000, 199999, 200000, 250000):
        got = float(cell(Tensor(update - 1, ms.int32)).asnumpy())
        assert got == pytest.approx(lr_at(update, **args), rel=1e-5), update


def test_weight_decay_groups_on_codegeex():
    cfg = load_config(str(CONFIG_DIR / "tiny.yaml"), ("model.num_layers=2", "model.hidden_size=32", "model.num_heads=2",
                               "model.ffn_hidden_size=64", "model.vocab_size=64",
                               "model.real_vocab_size=64", "model.eod_token_id=63"))
    net = CodeGeeXWithLoss(build_model(cfg.model))
    exempt = no_decay_names(net)
    names = [p.name for p in net.trainable_params()]
    # Per layer (2 decoder + top-query): 2 LayerNorms x (weight, bias) + 6 projection biases;
    # plus the final LayerNorm's weight and bias.
    assert len(exempt) == 3 * (4 + 6) + 2
    for name in names:
        is_norm = "layernorm" in name
        assert (name in exempt) == (is_norm or name.endswith(".bias")), name
    assert "model.language_model.embedding.word_embeddings.weight" not in exempt
    opt = build_optimizer(net, recipe())
    decayed = {p.name for p, flag in zip(opt.parameters, opt.decay_flags) if flag}
    assert decayed == set(names) - exempt
    assert [p.name for p in opt.parameters] == names


def test_update_matches_numpy_with_clipping_and_unscaling(graph_mode):
    net, opt, step, train = make_step()
    w0, b0 = net.weight.asnumpy().copy(), net.bias.asnumpy().copy()
    x = np.array([[3.0, -1.0, 2.0], [0.5, 4.0, -2.0]], np.float32)
    loss, finite, scale, norm, lr = (o.asnumpy() for o in step.update(batch(x)))
    g_w, g_b = x, x[0]
    true_norm = np.sqrt((g_w ** 2).sum() + (g_b ** 2).sum())
    assert bool(finite) and float(scale) == 1024.0
    assert float(loss) == pytest.approx((w0 * x).sum() + (b0 * x[0]).sum(), rel=1e-6)
    assert float(norm) == pytest.approx(true_norm, rel=1e-6)  # unscaled (not x 1024)
    assert float(lr) == pytest.approx(lr_at(1, 1e-2, 1e-3, 2, 10), rel=1e-6)
    clip = 1.0 / true_norm  # norm > 1: gradients scaled to unit global norm
    w1, m_w, _ = adam_reference(w0, g_w * clip, 0, 0, float(lr), 0.1)
    b1, m_b, _ = adam_reference(b0, g_b * clip, 0, 0, float(lr), 0.0)  # bias: no decay
    # FP32 elementwise arithmetic on O(1) values: agreement to ~1e-6 relative.
    np.testing.assert_allclose(opt.moments1[0].asnumpy(), m_w, rtol=1e-5)
    np.testing.assert_allclose(opt.moments1[1].asnumpy(), m_b, rtol=1e-5)
    np.testing.assert_allclose(net.weight.asnumpy(), w1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.bias.asnumpy(), b1, rtol=1e-5, atol=1e-7)
    assert opt.global_step.asnumpy().item() == 1

    # A small gradient (norm < 1) is not clipped; second update uses lr_at(2).
    x2 = x / 100
    w2, m_w2, _ = adam_reference(w1, x2, m_w, (1 - B2) * (g_w * clip) ** 2, lr_at(2, 1e-2, 1e-3, 2, 10), 0.1)
    *_, norm2, lr2 = (o.asnumpy() for o in step.update(batch(x2)))
    assert float(norm2) == pytest.approx(true_norm / 100, rel=1e-6)
    assert float(lr2) == pytest.approx(1e-2, rel=1e-6)
    np.testing.assert_allclose(opt.moments1[0].asnumpy(), m_w2, rtol=1e-5)
    np.testing.assert_allclose(net.weight.asnumpy(), w2, rtol=1e-5, atol=1e-7)


def test_overflow_skips_update_and_halves_scale(graph_mode):
    net, opt, step, _ = make_step(loss_scale=2.0 ** 32)
    before = {p.name: p.asnumpy().copy() for p in step.state.get_parameters()}
    x = np.full((2, 3), 1e30, np.float32)  # scaled gradient 4.3e39 overflows FP32
    _, finite, scale, _, _ = (o.asnumpy() for o in step.update(batch(x)))
    assert not bool(finite) and float(scale) == 2.0 ** 32
    after = {p.name: p.asnumpy() for p in step.state.get_parameters()}
    assert float(after.pop("loss_scale.value")) == 2.0 ** 31
    before.pop("loss_scale.value")
    for name, value in before.items():  # weights, moments, update count, counter: untouched
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    # the next finite step is applied
    step.update(batch(np.ones((2, 3), np.float32)))
    assert opt.global_step.asnumpy().item() == 1
    assert not np.array_equal(net.weight.asnumpy(), before["weight"])


def test_scale_grows_after_window_of_finite_steps(graph_mode):
    _, _, step, _ = make_step(loss_scale=8.0, loss_scale_window=2)
    scales = []
    for _ in range(5):
        scales.append(float(step.update(batch(np.ones((2, 3), np.float32)))[2].asnumpy()))
    scales.append(float(step.state.scale_value.asnumpy()))
    assert scales == [8.0, 8.0, 16.0, 16.0, 32.0, 32.0]


def test_accumulation_averages_micro_batches(graph_mode):
    net, opt, step, _ = make_step(grad_accumulation=2, loss_scale=64.0)
    w0, b0 = net.weight.asnumpy().copy(), net.bias.asnumpy().copy()
    x1 = np.array([[0.1, 0.2, -0.3], [0.0, 0.1, 0.2]], np.float32)
    x2 = np.array([[0.3, -0.2, 0.1], [0.2, 0.0, -0.4]], np.float32)
    step.accumulate(batch(x1))
    loss, finite, _, norm, lr = (o.asnumpy() for o in step.update(batch(x2)))
    g_w, g_b = (x1 + x2) / 2, (x1[0] + x2[0]) / 2
    assert bool(finite)
    assert float(loss) == pytest.approx(((w0 * g_w).sum() + (b0 * g_b).sum()), rel=1e-6)
    assert float(norm) == pytest.approx(np.sqrt((g_w ** 2).sum() + (g_b ** 2).sum()), rel=1e-6)
    w1, m_w, _ = adam_reference(w0, g_w, 0, 0, float(lr), 0.1)  # norm < 1: no clipping
    np.testing.assert_allclose(opt.moments1[0].asnumpy(), m_w, rtol=1e-5)
    np.testing.assert_allclose(net.weight.asnumpy(), w1, rtol=1e-5, atol=1e-7)
    # accumulators are cleared for the next step
    for acc in step.state.accum_grads:
        assert not acc.asnumpy().any()


def test_fp16_codegeex_overflows_at_initial_scale_and_skips(graph_mode):
    """The recipe's initial scale 2^32 overflows FP16 gradients of the real network: the step is
    skipped (weights, moments, update count untouched) and the scale halves; at 2^31 it is again
    too large and halves again."""
    cfg = load_config(str(CONFIG_DIR / "tiny.yaml"), (
        "model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.ffn_hidden_size=64",
        "model.vocab_size=64", "model.real_vocab_size=64", "model.eod_token_id=63",
        "model.max_position_embeddings=16", "train.seq_length=8", "inference.max_length=16",
        "model.compute_dtype=float16", "model.dropout=0.0", "train.loss_scale=4294967296"))
    net = CodeGeeXWithLoss(build_model(cfg.model))
    opt = build_optimizer(net, cfg.train)
    step = TrainStep(net, opt, cfg.train)
    before = {p.name: p.asnumpy().copy() for p in step.state.get_parameters()}
    ids = (np.arange(16, dtype=np.int32).reshape(2, 8) * 7) % 63
    data = (Tensor(ids), Tensor((ids + 1) % 63), Tensor(np.tile(np.arange(8, dtype=np.int32), (2, 1))),
            Tensor(np.tile(np.tril(np.ones((8, 8), np.uint8)), (2, 1, 1))), Tensor(np.ones((2, 8), np.float32)))
    for expected_scale in (2.0 ** 32, 2.0 ** 31):
        loss, finite, scale, _, _ = (o.asnumpy() for o in step.update(data))
        assert np.isfinite(loss) and not bool(finite) and float(scale) == expected_scale
    after = {p.name: p.asnumpy() for p in step.state.get_parameters()}
    assert float(after.pop("loss_scale.value")) == 2.0 ** 30
    before.pop("loss_scale.value")
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
