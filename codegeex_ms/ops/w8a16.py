"""The fused weight-only matmuls (``kernels/w8a16/cpu``) as inference-only ``ops.Custom`` primitives.

``w8a16_matmul(mode)`` returns a primitive ``f(x, weight, scale) -> y`` with

- ``x`` [M, K] float32 or float16 activations,
- ``weight`` [N, K] int8 (``[out, in]``), ``scale`` [N] float32 (per output row),
- ``y`` [M, N] in ``x``'s dtype: ``y = (x · weightᵀ) · scale``, FP32 accumulation, one rounding.

``float_weight_matmul(mode)`` returns a primitive ``f(x, weight) -> y`` with the same ``x`` and
``y`` and ``weight`` [N, K] float16 or float32, ``y = x · weightᵀ`` (FP32 accumulation, no
scale): e.g. logits from an FP16 word-embedding table or an FP16 Linear with FP32 compute without
an FP32 copy of the weights, or a decode step's logits from an FP32 table on all cores.

Both return ``None`` when the built-in operators should be used (``mode`` as for the other fused
kernels: ``"off"``; ``"auto"`` off CPU or when the library cannot be built, with a one-line
notice; ``"on"`` raises instead). The weights stay int8 / FP16 in memory: the kernel widens them
in registers (decode, M < 16) or a cache-sized block at a time (prefill, a blocked GEMM), see
``kernels/w8a16/cpu/w8a16_matmul.cc``. The primitives have no backward: they are for inference,
and MindSpore refuses to differentiate them. Create them in a Cell's ``__init__``.
"""

import logging
from typing import Optional

import mindspore as ms
from mindspore import ops

from codegeex_ms.ops import kernel_build
from codegeex_ms.ops.fused import check_mode

KERNEL = "w8a16_matmul"
GEMM_MIN_ROWS = 16
"""From this many x rows the kernels run their blocked GEMM (``kGemmMinM`` in the .cc); below it
their decode path, which streams the weights on all cores."""
SYMBOL = "W8A16MatMul"
FLOAT_W_SYMBOL = "FloatWMatMul"
ACTIVATION_TYPES = (ms.float16, ms.float32)

logger = logging.getLogger("codegeex_ms")
_NOTICES = set()


def _elem(dtype):
    return dtype.element_type() if hasattr(dtype, "element_type") else dtype


def _matmul_shape(what, x_shape, w_shape):
    if len(x_shape) != 2 or len(w_shape) != 2:
        raise ValueError(f"{what} needs x [M, K] and weight [N, K]; got {tuple(x_shape)}, {tuple(w_shape)}")
    if min(x_shape[1], w_shape[1]) >= 0 and x_shape[1] != w_shape[1]:
        raise ValueError(f"{what}: x has K={x_shape[1]} columns, weight K={w_shape[1]}")
    return [x_shape[0], w_shape[0]]


def _out_shape(x_shape, w_shape, scale_shape):
    if len(scale_shape) != 1:
        raise ValueError(f"W8A16 matmul needs scale [N]; got {tuple(scale_shape)}")
    return _matmul_shape("W8A16 matmul", x_shape, w_shape)


def _out_dtype(x_dtype, w_dtype, scale_dtype):
    if _elem(x_dtype) not in ACTIVATION_TYPES or _elem(w_dtype) != ms.int8 or _elem(scale_dtype) != ms.float32:
        raise TypeError(f"W8A16 matmul takes float16/float32 x, int8 weight and float32 scale; got "
                        f"{x_dtype}, {w_dtype}, {scale_dtype}")
    return x_dtype


def _float_w_out_shape(x_shape, w_shape):
    return _matmul_shape("float-weight matmul", x_shape, w_shape)


def _float_w_out_dtype(x_dtype, w_dtype):
    if _elem(x_dtype) not in ACTIVATION_TYPES or _elem(w_dtype) not in ACTIVATION_TYPES:
        raise TypeError(f"float-weight matmul takes float16/float32 x and a float16/float32 weight; got "
                        f"{x_dtype}, {w_dtype}")
    return x_dtype


def _library(mode: str, what: str) -> Optional[str]:
    """The kernel library's path, or None (``mode`` off, or ``auto`` and unavailable)."""
    if check_mode(mode) == "off":
        return None
    target = ms.get_context("device_target")
    try:
        return kernel_build.locate(KERNEL, target)
    except kernel_build.KernelUnavailable as err:
        if mode == "on":
            raise RuntimeError(f"fused {what} requested (fused='on') but unavailable on {target}: {err}\n"
                               "Set model.fused_kernels to 'auto' or 'off' to use built-in operators.") from err
        message = (f"codegeex_ms: fused {what} unavailable on {target} ({str(err).splitlines()[0]}); "
                   "built-in operators are used")
        if message not in _NOTICES:
            _NOTICES.add(message)
            logger.warning(message)
        return None


def w8a16_matmul(mode: str) -> Optional[ops.Custom]:
    """``f(x [M,K] f32|f16, weight [N,K] int8, scale [N] f32) -> [M,N]`` in x's dtype, or None
    for the built-in operators (see the module docstring)."""
    lib = _library(mode, "W8A16 matmul")
    if lib is None:
        return None
    return ops.Custom(f"{lib}:{SYMBOL}", out_shape=_out_shape, out_dtype=_out_dtype, func_type="aot")


def float_weight_matmul(mode: str) -> Optional[ops.Custom]:
    """``f(x [M,K] f32|f16, weight [N,K] f16|f32) -> [M,N]`` in x's dtype, ``x · weightᵀ``, or
    None for the built-in operators (see the module docstring)."""
    lib = _library(mode, "float-weight matmul")
    if lib is None:
        return None
    return ops.Custom(f"{lib}:{FLOAT_W_SYMBOL}", out_shape=_float_w_out_shape, out_dtype=_float_w_out_dtype,
                      func_type="aot")
