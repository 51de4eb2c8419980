"""Fused CPU kernels (FastGELU, scale + mask + softmax) against NumPy float64 references.

Every test uses ``fused="on"``: a kernel that fails to build is a failure here, not a silent
fallback. References are independent of the kernels' formulas (FastGELU through tanh, softmax in
float64) and tolerances are derived in the comments from the kernels' FP32 error budget:
exp ≤ 1.2 ulp (measured, see kernels/common/cpu/cg_cpu_common.h), each + − × ÷ ≤ 0.5 ulp.
FP16 results are compared at one FP16 ulp (2^-10 relative, 2^-24 absolute for subnormals).
"""

import logging

import numpy as np
import pytest

import mindspore as ms
from mindspore import ops

from codegeex_ms.ops import FastGelu, MaskedSoftmax, fused, kernel_build

ALPHA = 1.702
FP16_RTOL, FP16_ATOL = 2.0 ** -10, 2.0 ** -24
RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------------------ references

def sigmoid(z):
    """Float64 sigmoid accurate in both tails: exp(-log(1 + exp(-z)))."""
    return np.exp(-np.logaddexp(0.0, -z))


def gelu_ref(x):
    """x * sigmoid(1.702 x) in float64."""
    x = x.astype(np.float64)
    return x * sigmoid(ALPHA * x)


def gelu_grad_ref(x, dy):
    x = x.astype(np.float64)
    z = ALPHA * x
    return dy.astype(np.float64) * (sigmoid(z) + z * sigmoid(z) * sigmoid(-z))


def softmax_logits(scores, mask, scale):
    """The FP32 logits of the specification: float32(s) * scale - (1 - m) * 10000, in FP32."""
    s = scores.astype(np.float32) * np.float32(scale)
    return s - (np.float32(1.0) - mask.astype(np.float32)) * np.float32(10000.0)


def softmax_ref(scores, mask, scale):
    x = softmax_logits(scores, mask, scale).astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_grad_ref(y, dy, scale):
    dy = dy.astype(np.float64)
    return scale * y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def attention_mask(batch, seq, eod_positions, pad):
    """[B,1,S,S] float32: causal, reset after each EOD (block diagonal), last ``pad`` tokens padding.

    A padded query attends to nothing (a fully masked row); other queries never see padded keys.
    """
    mask = np.zeros((batch, 1, seq, seq), np.float32)
    for b in range(batch):
        starts = np.zeros(seq, np.int64)
        for pos in eod_positions[b]:
            starts[pos + 1:] = pos + 1          # the token after an EOD opens a new document
        for q in range(seq - pad[b]):
            mask[b, 0, q, starts[q]:q + 1] = 1.0
    return mask


def as_tensor(a):
    return ms.Tensor(np.ascontiguousarray(a))


def assert_gelu_fp32_close(y, x):
    """FP32 FastGELU error budget: ≤ 4 ulp from exp, (1 + e), division and products, plus the
    rounding of the exp argument -1.702|x| (0.5 ulp of it, i.e. 1.702|x|·2^-24 relative in exp,
    inherent to any FP32 evaluation). Where 1.702|x| > 87 the kernel returns x or -0 exactly; the
    true value then differs by < 1e-35."""
    ref = gelu_ref(x)
    bound = np.abs(ref) * 2.0 ** -24 * (8.0 + 2.0 * np.abs(x.astype(np.float64))) + 1e-35
    err = np.abs(y.astype(np.float64) - ref)
    assert (err <= bound).all(), f"x={x.ravel()[np.argmax(err - bound)]}: excess {np.max(err - bound)}"


# -------------------------------------------------------------------------------- FastGELU

def gelu_inputs(n, dtype):
    """Normal values, values up to |x| = 1e4, exact zeros and the FP32 underflow boundary."""
    x = RNG.standard_normal(n) * 4.0
    if n >= 8:
        x[:8] = [0.0, -0.0, 1e4, -1e4, 51.0, -51.0, -52.0, 60.0]
    x[n // 2:n // 2 + n // 8] *= 2000.0
    return np.clip(x, -1e4, 1e4).astype(dtype)


@pytest.mark.parametrize("shape", [(1,), (17,), (3, 341), (2, 5, 4099), (40000,)])
def test_fast_gelu_forward_fp32(shape):
    x = gelu_inputs(int(np.prod(shape)), np.float32).reshape(shape)
    y = FastGelu(fused="on")(as_tensor(x)).asnumpy()
    assert y.dtype == np.float32 and y.shape == shape
    assert_gelu_fp32_close(y, x)


@pytest.mark.parametrize("shape", [(1,), (33,), (7, 1027), (3, 11, 1300)])
def test_fast_gelu_forward_fp16(shape):
    x = gelu_inputs(int(np.prod(shape)), np.float16).reshape(shape)
    y = FastGelu(fused="on")(as_tensor(x)).asnumpy()
    assert y.dtype == np.float16
    # FP32 result within ~1e-5 relative of exact (|x| < 60 matters), one rounding to FP16: 1 ulp.
    np.testing.assert_allclose(y.astype(np.float64), gelu_ref(x), rtol=FP16_RTOL, atol=FP16_ATOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fast_gelu_backward(dtype):
    x = gelu_inputs(5 * 1031, dtype).reshape(5, 1031)
    w = RNG.standard_normal(x.shape).astype(dtype)
    gelu = FastGelu(fused="on")

    def loss(t):
        return (gelu(t) * as_tensor(w)).sum()

    dx = ms.grad(loss)(as_tensor(x)).asnumpy()
    assert dx.dtype == dtype
    ref = gelu_grad_ref(x, w)
    if dtype == np.float32:
        # sigmoid + 1.702 x sigmoid (1 - sigmoid): terms of size ≤ ~1.1·|w| with ≤ 4 ulp each; the
        # sum cancels near x ≈ -0.75, so the bound is absolute there: 1e-6·|w| + 1e-6 relative.
        np.testing.assert_allclose(dx, ref, rtol=1e-6, atol=1e-6 * np.abs(w).max())
    else:
        np.testing.assert_allclose(dx.astype(np.float64), ref, rtol=FP16_RTOL,
                                   atol=FP16_ATOL + 1e-6 * np.abs(w).max())


def test_fast_gelu_gradient_matches_finite_differences():
    x = (RNG.standard_normal((4, 257)) * 3).astype(np.float32)
    w = RNG.standard_normal(x.shape).astype(np.float32)
    v = RNG.standard_normal(x.shape).astype(np.float32)
    gelu = FastGelu(fused="on")

    def loss_np(a):
        return float((gelu(as_tensor(a)).asnumpy().astype(np.float64) * w).sum())

    h = 1e-2
    fd = (loss_np(x + h * v) - loss_np(x - h * v)) / (2 * h)
    dx = ms.grad(lambda t: (gelu(t) * as_tensor(w)).sum())(as_tensor(x)).asnumpy()
    analytic = float((dx.astype(np.float64) * v).sum())
    # Central differences: truncation h²/6·|f'''| ~ 1e-5 relative, FP32 noise ~1e-7·√n/h ~ 2e-4
    # absolute; the directional derivative is O(10).
    assert abs(fd - analytic) <= 1e-3 * max(1.0, abs(analytic)), (fd, analytic)


def test_fast_gelu_non_contiguous_input():
    base = gelu_inputs(6 * 35, np.float32).reshape(6, 35)
    view = as_tensor(base).transpose(1, 0)[3:30]        # a strided view in PyNative
    y = FastGelu(fused="on")(view).asnumpy()
    assert_gelu_fp32_close(y, base.T[3:30])


# -------------------------------------------------------------------------- masked softmax

def softmax_case(batch, heads, seq, dtype, magnitude=1.0):
    """Scores [B,N,S,S] and an EOD-reset causal mask with padding (some rows fully masked)."""
    eods = [[seq // 3, seq // 2], [seq - 4]][:batch] + [[]] * max(0, batch - 2)
    pad = [0, 3][:batch] + [1] * max(0, batch - 2)
    mask = attention_mask(batch, seq, eods, pad)
    scores = (RNG.standard_normal((batch, heads, seq, seq)) * magnitude).astype(dtype)
    return scores, mask


@pytest.mark.parametrize("batch,heads,seq", [(1, 1, 1), (2, 3, 7), (2, 4, 33), (1, 2, 131)])
def test_masked_softmax_forward_fp32(batch, heads, seq):
    scores, mask = softmax_case(batch, heads, seq, np.float32, magnitude=3.0)
    scale = 1.0 / np.sqrt(128.0)
    y = MaskedSoftmax(scale, fused="on")(as_tensor(scores), as_tensor(mask)).asnumpy()
    assert y.dtype == np.float32 and not np.isnan(y).any()
    # Logits are bit-identical to the FP32 reference (same operations, no FMA contraction). Each
    # exp(x - max) is within 1.2 ulp + |x - max|·2^-24 (< 5e-6 at |x - max| = 87), the row sum
    # adds ≤ T/16 roundings; rtol 1e-5 covers T ≤ 2048. Probabilities below 1e-12 compare absolutely.
    np.testing.assert_allclose(y, softmax_ref(scores, mask, scale), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("mask_dtype", [np.float32, np.float16, np.uint8, np.bool_])
def test_masked_softmax_forward_fp16_and_mask_dtypes(mask_dtype):
    scores, mask = softmax_case(2, 3, 37, np.float16, magnitude=4.0)
    y = MaskedSoftmax(0.125, fused="on")(as_tensor(scores), as_tensor(mask.astype(mask_dtype))).asnumpy()
    assert y.dtype == np.float16
    # FP32 probabilities within 1e-5 relative, rounded once to FP16: 1 FP16 ulp.
    np.testing.assert_allclose(y.astype(np.float64), softmax_ref(scores, mask, 0.125),
                               rtol=FP16_RTOL, atol=FP16_ATOL)


def test_masked_softmax_large_scores_and_fully_masked_rows():
    scores, mask = softmax_case(2, 2, 19, np.float32, magnitude=3000.0)
    scores[0, 0, 5] = 1e4
    scores[1, 1, 7] = -1e4
    mask[1, 0, 4, :] = 0.0                                   # another fully masked row
    y = MaskedSoftmax(0.5, fused="on")(as_tensor(scores), as_tensor(mask)).asnumpy()
    ref = softmax_ref(scores, mask, 0.5)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-12)
    # A fully blocked row is softmax(scores * scale - 10000): finite and summing to 1.
    blocked = y[1, :, 4]
    np.testing.assert_allclose(blocked.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(blocked, ref[1, :, 4], rtol=1e-5, atol=1e-12)


def test_masked_softmax_mask_broadcast_over_batch_and_reshaped_scores():
    flat = RNG.standard_normal((2 * 3 * 9 * 9,)).astype(np.float32)
    scores = flat.reshape(3, 2, 9, 9).transpose(1, 0, 2, 3)       # reshape + transpose, then copy
    mask = attention_mask(1, 9, [[4]], [0])                         # [1,1,S,T] for every batch row
    y = MaskedSoftmax(0.7, fused="on")(as_tensor(scores), as_tensor(mask)).asnumpy()
    np.testing.assert_allclose(y, softmax_ref(scores, np.broadcast_to(mask, scores.shape), 0.7),
                               rtol=1e-5, atol=1e-12)


def test_masked_softmax_parallel_path_many_rows():
    scores, mask = softmax_case(2, 4, 96, np.float32)          # 768 rows × 96 > one chunk
    y = MaskedSoftmax(0.3, fused="on")(as_tensor(scores), as_tensor(mask)).asnumpy()
    np.testing.assert_allclose(y, softmax_ref(scores, mask, 0.3), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_masked_softmax_backward(dtype):
    scores, mask = softmax_case(2, 3, 29, dtype, magnitude=2.0)
    w = RNG.standard_normal(scores.shape).astype(dtype)
    scale = 0.25
    softmax = MaskedSoftmax(scale, fused="on")

    def loss(s):
        return (softmax(s, as_tensor(mask)) * as_tensor(w)).sum()

    dx = ms.grad(loss)(as_tensor(scores)).asnumpy()
    assert dx.dtype == dtype and np.isfinite(dx).all()
    y = softmax_ref(scores, mask, scale)
    ref = softmax_grad_ref(y, w, scale)
    wmax = np.abs(w.astype(np.float64)).max()
    if dtype == np.float32:
        # dx_j = scale·y_j·(w_j - Σ w y): y carries ≤ 1e-5 relative error and the dot ≤ 1e-5·max|w|,
        # so |error_j| ≤ scale·y_j·3e-5·max|w| (plus 1e-6 relative).
        bound = scale * y * 3e-5 * wmax + 1e-6 * np.abs(ref)
    else:
        # The kernel uses the FP16-rounded forward output (2^-11 relative) and rounds dx to FP16.
        bound = scale * y * 3 * 2.0 ** -11 * wmax + FP16_RTOL * np.abs(ref) + FP16_ATOL
    err = np.abs(dx.astype(np.float64) - ref)
    assert (err <= bound).all(), f"max excess {np.max(err - bound)}"


def test_masked_softmax_gradient_matches_finite_differences():
    scores, mask = softmax_case(1, 2, 23, np.float32, magnitude=2.0)
    w = RNG.standard_normal(scores.shape).astype(np.float32)
    v = RNG.standard_normal(scores.shape).astype(np.float32)
    softmax = MaskedSoftmax(0.5, fused="on")

    def loss_np(s):
        return float((softmax(as_tensor(s), as_tensor(mask)).asnumpy().astype(np.float64) * w).sum())

    h = 1e-2
    fd = (loss_np(scores + h * v) - loss_np(scores - h * v)) / (2 * h)
    dx = ms.grad(lambda s: (softmax(s, as_tensor(mask)) * as_tensor(w)).sum())(as_tensor(scores)).asnumpy()
    analytic = float((dx.astype(np.float64) * v).sum())
    # Truncation ~h²·|third derivative| (scale 0.5, O(1) logits) and FP32 noise ~1e-7·√n/h.
    assert abs(fd - analytic) <= 1e-3 * max(1.0, abs(analytic)), (fd, analytic)


def test_fused_matches_builtin_in_graph_mode():
    """Both kernels inside one compiled graph, forward and gradient, against fused='off'."""
    scores, mask = softmax_case(2, 2, 16, np.float32)
    x = RNG.standard_normal(scores.shape).astype(np.float32)
    results = {}
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        for mode in ("on", "off"):
            net = _GeluSoftmaxNet(mode)
            grad = ms.grad(net, grad_position=(0, 1))
            loss = net(as_tensor(x), as_tensor(scores), as_tensor(mask)).asnumpy()
            gx, gs = grad(as_tensor(x), as_tensor(scores), as_tensor(mask))
            results[mode] = (loss, gx.asnumpy(), gs.asnumpy())
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    for on, off in zip(results["on"], results["off"]):
        # Both are FP32 evaluations of the same formulas: agreement to a few FP32 ulps of the sums.
        np.testing.assert_allclose(on, off, rtol=2e-5, atol=1e-6)


class _GeluSoftmaxNet(ms.nn.Cell):
    def __init__(self, mode):
        super().__init__()
        self.gelu = FastGelu(fused=mode)
        self.softmax = MaskedSoftmax(0.5, fused=mode)

    def construct(self, x, scores, mask):
        return (self.softmax(self.gelu(scores), mask) * x).sum()


# ------------------------------------------------------------------------- modes and builds

def test_modes_select_fused_or_builtin_and_reject_unknown():
    assert FastGelu(fused="on").is_fused and MaskedSoftmax(0.5, fused="on").is_fused
    assert not FastGelu(fused="off").is_fused and not MaskedSoftmax(0.5, fused="off").is_fused
    assert isinstance(FastGelu(fused="off").fast_gelu, ops.FastGeLU)
    with pytest.raises(ValueError, match="fused='yes'"):
        FastGelu(fused="yes")


def test_unavailable_kernel_falls_back_once_in_auto_and_raises_in_on(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CODEGEEX_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(kernel_build, "_RESULTS", {})
    monkeypatch.setattr(fused, "_NOTICES", set())
    with caplog.at_level(logging.WARNING, logger="codegeex_ms"):
        cells = [FastGelu(fused="auto") for _ in range(3)]
    assert not any(c.is_fused for c in cells)
    notices = [r.message for r in caplog.records if "fast_gelu" in r.message]
    assert len(notices) == 1 and "using built-in operators" in notices[0] and "\n" not in notices[0]
    x = RNG.standard_normal(10).astype(np.float32)
    np.testing.assert_allclose(cells[0](as_tensor(x)).asnumpy(), gelu_ref(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="fused='on'.*not found"):
        MaskedSoftmax(0.5, fused="on")


def test_cpu_library_is_cached_by_source_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("CODEGEEX_KERNEL_DIR", str(tmp_path))
    first = kernel_build.build_cpu("fast_gelu")
    assert first.parent == tmp_path and first.name.startswith("fast_gelu-cpu-")
    stamp = first.stat().st_mtime_ns
    assert kernel_build.build_cpu("fast_gelu") == first and first.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown kernel"):
        kernel_build.locate("layer_norm", "CPU")


@pytest.fixture(autouse=True)
def _pynative_mode():
    """These tests differentiate Python lambdas, which only PyNative accepts: do not inherit the
    graph mode an earlier test module may have set."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
