"""The fused W8A16 matmul (``kernels/w8a16/cpu``) as an inference-only ``ops.Custom`` primitive.

``w8a16_matmul(mode)`` returns a primitive ``f(x, weight, scale) -> y`` with

- ``x`` [M, K] float32 or float16 activations,
- ``weight`` [N, K] int8 (``[out, in]``), ``scale`` [N] float32 (per output row),
- ``y`` [M, N] in ``x``'s dtype: ``y = (x · weightᵀ) · scale``, FP32 accumulation, one rounding,

or ``None`` when the built-in operators should be used (``mode`` as for the other fused kernels:
``"off"``; ``"auto"`` off CPU or when the library cannot be built, with a one-line notice;
``"on"`` raises instead). The weights stay int8 in memory: the kernel widens them in registers.
The primitive has no backward: it is for inference, and MindSpore refuses to differentiate it.
Create it in a Cell's ``__init__``.
"""

import logging
from typing import Optional

import mindspore as ms
from mindspore import ops

from codegeex_ms.ops import kernel_build
from codegeex_ms.ops.fused import check_mode

KERNEL = "w8a16_matmul"
SYMBOL = "W8A16MatMul"
ACTIVATION_TYPES = (ms.float16, ms.float32)

logger = logging.getLogger("codegeex_ms")
_NOTICES = set()


def _elem(dtype):
    return dtype.element_type() if hasattr(dtype, "element_type") else dtype


def _out_shape(x_shape, w_shape, scale_shape):
    if len(x_shape) != 2 or len(w_shape) != 2 or len(scale_shape) != 1:
        raise ValueError(f"W8A16 matmul needs x [M, K], weight [N, K], scale [N]; got {tuple(x_shape)}, "
                         f"{tuple(w_shape)}, {tuple(scale_shape)}")
    if min(x_shape[1], w_shape[1]) >= 0 and x_shape[1] != w_shape[1]:
        raise ValueError(f"W8A16 matmul: x has K={x_shape[1]} columns, weight K={w_shape[1]}")
    return [x_shape[0], w_shape[0]]


def _out_dtype(x_dtype, w_dtype, scale_dtype):
    if _elem(x_dtype) not in ACTIVATION_TYPES or _elem(w_dtype) != ms.int8 or _elem(scale_dtype) != ms.float32:
        raise TypeError(f"W8A16 matmul takes float16/float32 x, int8 weight and float32 scale; got "
                        f"{x_dtype}, {w_dtype}, {scale_dtype}")
    return x_dtype


def w8a16_matmul(mode: str) -> Optional[ops.Custom]:
    """The fused primitive, or None for the built-in operators (see the module docstring)."""
    if check_mode(mode) == "off":
        return None
    target = ms.get_context("device_target")
    try:
        lib = kernel_build.locate(KERNEL, target)
    except kernel_build.KernelUnavailable as err:
        if mode == "on":
            raise RuntimeError(f"fused W8A16 matmul requested (fused='on') but unavailable on {target}: {err}\n"
                               "Set model.fused_kernels to 'auto' or 'off' to use built-in operators.") from err
        message = (f"codegeex_ms: fused W8A16 matmul unavailable on {target} ({str(err).splitlines()[0]}); "
                   "INT8 layers use built-in operators")
        if message not in _NOTICES:
            _NOTICES.add(message)
            logger.warning(message)
        return None
    return ops.Custom(f"{lib}:{SYMBOL}", out_shape=_out_shape, out_dtype=_out_dtype, func_type="aot")
