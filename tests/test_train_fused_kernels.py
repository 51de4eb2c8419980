"""The CPU training kernels of LayerNorm and cross-entropy (``codegeex_ms.ops.fused``) against
float64 NumPy references, forward and backward, and against the built-in operators they replace."""

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from codegeex_ms.model.layers import LayerNorm
from codegeex_ms.model.loss import CrossEntropy
from codegeex_ms.ops import fused, kernel_build


@pytest.fixture(scope="module", autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


class _Weighted(nn.Cell):
    """``sum(layer(x) * dy)``: its gradients are the layer's vector-Jacobian products with dy."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def construct(self, x, dy):
        return (self.layer(x) * dy).sum()


def layer_norm_reference(x, w, b, dy, eps):
    x, w, dy = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    return xhat * w + b, dx, (dy * xhat).sum(rows), dy.sum(rows)


@pytest.mark.parametrize("hidden", [64, 200])  # 200: not a multiple of the vector width
def test_layer_norm_kernel_matches_float64_and_builtin(hidden):
    rng = np.random.default_rng(hidden)
    x = (rng.standard_normal((3, 37, hidden)) * 3 + 2).astype(np.float32)  # 111 rows: partial block
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(hidden).astype(np.float32), rng.standard_normal(hidden).astype(np.float32)
    results = {}
    for mode in ("on", "off"):
        ln = LayerNorm(hidden, 1e-5, fused=mode)
        assert (ln.fused_norm is not None) == (mode == "on")
        ln.weight.set_data(Tensor(w))
        ln.bias.set_data(Tensor(b))
        net = _Weighted(ln)
        grad = ms.value_and_grad(net, 0, net.trainable_params())
        _, (dx, (dw, db)) = grad(Tensor(x), Tensor(dy))
        results[mode] = [ln(Tensor(x)).asnumpy(), dx.asnumpy(), dw.asnumpy(), db.asnumpy()]
    reference = layer_norm_reference(x, w, b, dy, 1e-5)
    for name, got, builtin, want in zip(["y", "dx", "dw", "db"], results["on"], results["off"], reference):
        scale = np.abs(want).max()
        # FP32 rounding of O(1) values (sums over <= 111 rows): ~1e-6 relative to the largest value.
        assert np.abs(got - want).max() < 2e-6 * scale, name
        assert np.abs(got - builtin).max() < 1e-5 * scale, name


def test_layer_norm_kernel_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64, 96)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    net = _Weighted(LayerNorm(96, fused="on"))
    grad = ms.value_and_grad(net, 0, net.trainable_params())
    first = [t.asnumpy() for t in grad(Tensor(x), Tensor(dy))[1][1]]
    for _ in range(3):
        again = [t.asnumpy() for t in grad(Tensor(x), Tensor(dy))[1][1]]
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("vocab", [1000, 4099])
def test_cross_entropy_kernel_matches_float64_and_builtin(vocab):
    rng = np.random.default_rng(vocab)
    n = 40
    logits = (rng.standard_normal((n, vocab)) * 5).astype(np.float32)
    labels = rng.integers(0, vocab, n).astype(np.int32)
    mask = (rng.random(n) > 0.25).astype(np.float32)
    results = {}
    for mode in ("on", "off"):
        ce = CrossEntropy(vocab, mode)
        assert (ce.fused is not None) == (mode == "on")
        loss, grad = ms.value_and_grad(ce, 0)(Tensor(logits), Tensor(labels), Tensor(mask))
        results[mode] = (float(loss.asnumpy()), grad.asnumpy())
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    per_token = lse - x[np.arange(n), labels]
    want_loss = (per_token * mask).sum() / mask.sum()
    softmax = np.exp(x - lse[:, None])
    onehot = np.eye(vocab)[labels]
    want_grad = (softmax - onehot) * (mask / mask.sum())[:, None]
    # FP32: the log-sum-exp of logits of magnitude ~20 is off by up to ~ulp(20) = 2e-6, which is
    # the relative error of every softmax value exp(x - lse) (both implementations alike).
    for loss, grad in results.values():
        assert loss == pytest.approx(want_loss, rel=2e-6)
        assert np.abs(grad - want_grad).max() < 1e-5 * np.abs(want_grad).max()
    assert results["on"][0] == pytest.approx(results["off"][0], rel=2e-6)


def test_cpu_only_kernels_export_what_the_python_side_calls():
    for kernel, symbols in fused.CPU_ONLY_SYMBOLS.items():
        sub = kernel_build.CPU_ONLY_KERNELS[kernel]
        text = "".join(p.read_text() for p in (kernel_build.KERNEL_SOURCE_DIR / sub / "cpu").glob("*.cc"))
        for symbol in symbols:
            assert f'extern "C" int {symbol}(' in text, (kernel, symbol)
        assert kernel_build.locate(kernel, "CPU").endswith(".so")
