"""The fused W8A16 and FP16-weight CPU matmuls (kernels/w8a16/cpu) against NumPy float64, directly
(for each ISA the library can be compiled for here) and inside the INT8 Linear / network.

Error budget (FP32 accumulation of K products, then one multiply by the scale): the exact
product x·q is representable (int8 widens exactly; x·q has ≤ 24 + 8 bits but is rounded once
per FMA), so |y − ref| ≤ γ_K · Σ_k |x_k q_k| · s with γ_K ≈ K · 2⁻²⁴ for any summation order
(blocked/vectorised orders only lower it), plus 2⁻²⁴|ref| for the scale multiply. FP16 outputs
add one FP16 rounding, 2⁻¹¹ |ref|. The tests use these bounds, each ×2 for slack. The FP16-weight
kernel has the same bound with scale 1 (FP16 widens to FP32 exactly).
"""

import ctypes
import dataclasses
import platform
import shutil

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.config import load_config
from codegeex_ms.model.build import build_model
from codegeex_ms.model.layers import Linear, LinearSpec, QuantizedLinear
from codegeex_ms.data.masks import causal_mask, positions
from codegeex_ms.model.quant import quantize_rows
from codegeex_ms.ops import kernel_build
from codegeex_ms.ops.kernel_build import call_aot
from codegeex_ms.ops.w8a16 import GEMM_MIN_ROWS, float_weight_matmul, w8a16_matmul
from codegeex_ms.model.quant import quantize_into

RNG = np.random.default_rng(99)
# M, K, N. Decode path (M < 16): every tile and tail, K past 1024-wide blocks, enough weight bytes
# for two threads (2, 4099, 4301: > 2 x 8 MiB). GEMM path (M >= 16): partial x panels and weight-row tiles, K tails and
# several 256-wide K blocks, more than one task of 192 weight rows and of 256 x rows (threads).
SHAPES = [(1, 1, 1), (1, 7, 3), (2, 33, 5), (3, 64, 9), (4, 17, 2), (5, 2051, 7), (1, 4099, 301), (2, 4099, 4301),
          (7, 8, 1), (8, 300, 37), (15, 129, 6), (6, 300, 4),
          (16, 1, 1), (16, 17, 2), (17, 300, 13), (33, 513, 37), (130, 40, 11), (130, 700, 391),
          (300, 600, 500)]


def case(m, k, n, dtype):
    x = RNG.standard_normal((m, k)).astype(dtype)
    q = RNG.integers(-127, 128, (n, k), dtype=np.int8)
    scale = (RNG.random(n) * 0.02).astype(np.float32)
    return x, q, scale


def bound(x, q, scale, out_dtype):
    """Per-element error bound of the module docstring (×2 slack); ``scale`` None means 1."""
    k = x.shape[1]
    scale = np.float64(1.0) if scale is None else scale
    ref = (x.astype(np.float64) @ q.T.astype(np.float64)) * scale
    mag = (np.abs(x.astype(np.float64)) @ np.abs(q.T.astype(np.float64))) * scale
    tol = (k + 1) * 2.0 ** -24 * mag
    if out_dtype == np.float16:
        tol = tol + 2.0 ** -11 * np.abs(ref) + 2.0 ** -24
    return ref, 2 * tol


ISA_FLAGS = {"avx2": "-march=x86-64-v3", "scalar": "-march=x86-64"}
"""Other builds checked on x86-64 besides the default (-march=native): the AVX2 + FMA + F16C
kernels and the portable one-lane code, by compiler flags (kernel_build's $CODEGEEX_KERNEL_CXXFLAGS)."""


@pytest.fixture(scope="module")
def lib():
    return kernel_build.locate("w8a16_matmul", "CPU")


def isa_library(isa, monkeypatch):
    if platform.machine() != "x86_64" or shutil.which("g++") is None:
        pytest.skip("ISA builds are x86-64 (g++) only")
    monkeypatch.setenv("CODEGEEX_KERNEL_CXXFLAGS", ISA_FLAGS[isa])
    return str(kernel_build.build_cpu("w8a16_matmul"))


def check_all_kernels(lib, m, k, n, dtype):
    """W8A16 on int8 weights, the float-weight kernel on FP16 and on FP32 weights."""
    x, q, scale = case(m, k, n, dtype)
    y = np.full((m, n), np.nan, dtype)
    assert call_aot(lib, "W8A16MatMul", [x, q, scale, y]) == 0
    ref, tol = bound(x, q, scale, dtype)
    assert (np.abs(y.astype(np.float64) - ref) <= tol).all()
    for w_dtype in (np.float16, np.float32):
        w = RNG.standard_normal((n, k)).astype(w_dtype)
        y = np.full((m, n), np.nan, dtype)
        assert call_aot(lib, "FloatWMatMul", [x, w, y]) == 0
        ref, tol = bound(x, w, None, dtype)
        assert (np.abs(y.astype(np.float64) - ref) <= tol).all(), w_dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_kernels_match_numpy_on_odd_shapes(lib, m, k, n, dtype):
    check_all_kernels(lib, m, k, n, dtype)


@pytest.mark.parametrize("isa", sorted(ISA_FLAGS))
def test_other_isa_builds_match_numpy(isa, monkeypatch):
    """The AVX2 and portable builds (other vector widths, so other tile and panel sizes) on a
    decode and two GEMM shapes with tails."""
    lib = isa_library(isa, monkeypatch)
    fn = ctypes.CDLL(lib).W8A16Isa
    fn.restype = ctypes.c_char_p
    assert fn().decode() == isa
    for m, k, n in [(3, 70, 9), (17, 300, 13), (130, 530, 203)]:
        for dtype in (np.float32, np.float16):
            check_all_kernels(lib, m, k, n, dtype)


def test_empty_reduction_gives_zeros(lib):
    x, y = np.empty((3, 0), np.float32), np.full((3, 4), np.nan, np.float32)
    assert call_aot(lib, "W8A16MatMul", [x, np.empty((4, 0), np.int8), np.ones(4, np.float32), y]) == 0
    assert (y == 0).all()


def test_kernel_rejects_bad_arguments(lib):
    x, q, scale = case(2, 8, 3, np.float32)
    y = np.empty((2, 3), np.float32)
    assert call_aot(lib, "W8A16MatMul", [x, q, scale]) == 1                                         # arity
    assert call_aot(lib, "W8A16MatMul", [x, q.astype(np.float32), scale, y]) == 2                   # int8 w
    assert call_aot(lib, "W8A16MatMul", [x, q, scale.astype(np.float16), y]) == 2                   # f32 scale
    assert call_aot(lib, "W8A16MatMul", [x, q, scale, np.empty((2, 3), np.float16)]) == 2       # y dtype = x's
    assert call_aot(lib, "W8A16MatMul", [x[:, :7].copy(), q, scale, y]) == 3                        # K differs
    assert call_aot(lib, "W8A16MatMul", [x, q, scale[:2].copy(), y]) == 3                          # scale rows
    assert call_aot(lib, "W8A16MatMul", [x, q, scale, np.empty((2, 4), np.float32)]) == 3           # y shape
    w16 = q.astype(np.float16)
    assert call_aot(lib, "FloatWMatMul", [x, w16, scale, y]) == 1                                     # arity
    assert call_aot(lib, "FloatWMatMul", [x, q, y]) == 2                                              # f16 w
    assert call_aot(lib, "FloatWMatMul", [x, w16.astype(np.float64), y]) == 2                         # f16/f32 w
    assert call_aot(lib, "FloatWMatMul", [x, w16, np.empty((2, 3), np.float16)]) == 2                 # y dtype
    assert call_aot(lib, "FloatWMatMul", [x, w16[:, :5].copy(), y]) == 3                              # K differs
    assert call_aot(lib, "FloatWMatMul", [x, w16, np.empty((3, 3), np.float32)]) == 3                 # y shape


@pytest.mark.parametrize("x_dtype", ["float32", "float16"])
@pytest.mark.parametrize("w_dtype", ["float16", "float32"])
def test_float_weight_primitive_matches_numpy(x_dtype, w_dtype):
    """The ops.Custom primitive of the float-weight kernel, as a model calls it (PyNative)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    f = float_weight_matmul("on")
    x = RNG.standard_normal((5, 70)).astype(x_dtype)
    w = RNG.standard_normal((33, 70)).astype(w_dtype)
    y = f(ms.Tensor(x), ms.Tensor(w)).asnumpy()
    assert y.shape == (5, 33) and y.dtype == np.dtype(x_dtype)
    ref, tol = bound(x, w, None, np.dtype(x_dtype).type)
    assert (np.abs(y.astype(np.float64) - ref) <= tol).all()
    assert float_weight_matmul("off") is None


@pytest.mark.parametrize("compute_dtype", ["float32", "float16"])
def test_int8_linear_uses_the_kernel_and_matches_numpy(compute_dtype):
    """The INT8 Linear on CPU runs the fused kernel (its weight stays an int8 Parameter) and
    equals x · (q·s)ᵀ + b within the kernel's bound plus the bias add's rounding."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    layer = QuantizedLinear(37, 21, LinearSpec(compute_dtype, "float32", weight_quant="int8", fused="on"))
    assert layer.fused_matmul is not None and layer.weight.dtype == ms.int8
    q, scale = quantize_rows(0.05 * RNG.standard_normal((21, 37)))
    bias = (0.1 * RNG.standard_normal(21)).astype(np.float32)
    layer.weight.set_data(ms.Tensor(q))
    layer.weight_scale.set_data(ms.Tensor(scale))
    layer.bias.set_data(ms.Tensor(bias))
    x = RNG.standard_normal((2, 3, 37)).astype(compute_dtype)
    y = layer(ms.Tensor(x)).asnumpy()
    assert y.shape == (2, 3, 21) and y.dtype == np.dtype(compute_dtype)
    ref, tol = bound(x.reshape(6, 37), q, scale, np.dtype(compute_dtype).type)
    ref = ref + bias.astype(np.dtype(compute_dtype)).astype(np.float64)
    # the bias add rounds once more in the compute dtype
    tol = tol + (2.0 ** -11 if compute_dtype == "float16" else 2.0 ** -23) * np.abs(ref)
    assert (np.abs(y.reshape(6, 21) - ref) <= tol).all()


class _Counting:
    """Wraps a primitive, counting calls (PyNative)."""

    def __init__(self, prim):
        self.prim, self.calls = prim, 0

    def __call__(self, *args):
        self.calls += 1
        return self.prim(*args)


@pytest.mark.parametrize("param_dtype", ["float32", "float16"])
def test_float_linear_runs_the_kernel_on_fp16_weights(param_dtype):
    """FP32-compute Linear: the float-weight kernel in inference for FP16 weights (no FP32 copy
    of them), MatMul in training and for FP32 weights. Both equal x · Wᵀ + b within the kernel's
    bound plus the bias add's rounding."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    layer = Linear(37, 21, LinearSpec("float32", param_dtype, fused="on"))
    assert (layer.fused_matmul is not None) == (param_dtype == "float16")
    w = RNG.standard_normal((21, 37)).astype(param_dtype)
    bias = (0.1 * RNG.standard_normal(21)).astype(np.float32)
    layer.weight.set_data(ms.Tensor(w))
    layer.bias.set_data(ms.Tensor(bias.astype(param_dtype)))
    if layer.fused_matmul is not None:
        layer.fused_matmul = counting = _Counting(layer.fused_matmul)
    expected_calls = 0
    for training in (False, True):
        layer.set_train(training)
        x = RNG.standard_normal((3, 37)).astype(np.float32)
        y = layer(ms.Tensor(x)).asnumpy()
        if layer.fused_matmul is not None:
            expected_calls += not training
            assert counting.calls == expected_calls, training
        ref, tol = bound(x, w, None, np.float32)
        ref = ref + bias.astype(param_dtype).astype(np.float64)
        assert (np.abs(y - ref) <= tol + 2.0 ** -23 * np.abs(ref)).all()


def test_shard_switches_the_layer_to_builtin_operators():
    float_layer = Linear(8, 4, LinearSpec("float32", "float16", fused="on"))
    assert float_layer.fused_matmul is not None
    float_layer.shard_row(1, 2)
    assert float_layer.fused_matmul is None
    layer = QuantizedLinear(8, 4, LinearSpec(weight_quant="int8", fused="on"))
    assert layer.fused_matmul is not None
    layer.shard_column(1, 2)
    assert layer.fused_matmul is None


def test_fused_off_and_non_cpu_targets_get_no_kernel():
    assert w8a16_matmul("off") is None
    with pytest.raises(kernel_build.KernelUnavailable, match="CPU only"):
        kernel_build.locate("w8a16_matmul", "GPU")


def test_int8_network_logits_equal_with_and_without_the_kernel():
    """A small INT8 CodeGeeX (FP32 compute): fused and built-in paths compute the same
    x · qᵀ · s + b per layer, differing only by FP32 summation order (relative ~1e-6); the logits
    agree to 1e-4 of their spread over 3 layers."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = load_config("ascend_configs/tiny.yaml").model
    cfg = dataclasses.replace(cfg, weight_quant="int8", dropout=0.0, compute_dtype="float32")
    float_net = build_model(dataclasses.replace(cfg, weight_quant="none", fused_kernels="off"))
    nets = {}
    for fused in ("on", "off"):
        net = build_model(dataclasses.replace(cfg, fused_kernels=fused), allocate=False)
        quantize_into(net, ((n, p.asnumpy()) for n, p in float_net.parameters_and_names()))
        net.set_train(False)
        nets[fused] = net
    ids = RNG.integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
    args = (ms.Tensor(ids), ms.Tensor(positions(2, 9)), ms.Tensor(causal_mask(2, 9)))
    on, off = (nets[f](*args).asnumpy().astype(np.float64) for f in ("on", "off"))
    assert np.abs(on - off).max() <= 1e-4 * (off.max() - off.min())


def test_fp32_head_runs_the_kernel_for_decode_rows_only():
    """An FP32 table with FP32 compute: the tied head uses the float-weight kernel in inference for
    fewer than GEMM_MIN_ROWS rows (decode logits), MatMul for more; both equal h · tableᵀ."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = dataclasses.replace(load_config("ascend_configs/tiny.yaml").model, dropout=0.0, fused_kernels="on",
                              param_dtype="float32", compute_dtype="float32")
    net = build_model(cfg)
    net.set_train(False)
    net.head_fused = counting = _Counting(net.head_fused)
    table = net.language_model.embedding.word_embeddings.weight.asnumpy()
    for rows, calls in ((3, 1), (GEMM_MIN_ROWS, 1)):
        h = RNG.standard_normal((1, rows, cfg.hidden_size)).astype(np.float32)
        logits = net.logits(ms.Tensor(h)).asnumpy()
        assert counting.calls == calls, rows
        ref, tol = bound(h[0], table, None, np.float32)
        assert (np.abs(logits[0] - ref) <= tol).all()
