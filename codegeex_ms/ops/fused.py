"""The fused kernels as trainable ``ops.Custom`` primitives, chosen by device target.

``fused_fast_gelu(mode)``, ``fused_masked_softmax(mode)``, ``fused_stateless_dropout(mode)``,
``fused_layer_norm(mode)`` and ``fused_cross_entropy(mode)`` (the last three CPU only) return a ``FusedOp`` (forward and backward primitives, the forward carrying a
``bprop``) or ``None`` when the built-in operators should be used:

- ``"off"``: always ``None``;
- ``"auto"``: the kernel of the current device target if it can be built/loaded, else ``None``
  with a one-line notice (logged once per kernel and reason);
- ``"on"``: the kernel, or ``RuntimeError`` saying why it is unavailable.

On Ascend the kernels exist only for the SoCs in ``kernel_build.ascend_socs()`` (910B, 910C);
on any other SoC (e.g. the Ascend 910 / 910A of the paper) MindSpore would fail at graph compile
looking for the operator, so the SoC (``soc.ascend_soc_version()``) is checked first: ``auto``
falls back with the notice, ``on`` names the SoC and the supported ones.

Primitives must be created in a Cell's ``__init__`` (graph mode cannot create them in
``construct``).
"""

import logging
from typing import NamedTuple, Optional

import mindspore as ms
from mindspore import ops

from codegeex_ms.ops import kernel_build, soc

MODES = ("auto", "on", "off")
FLOAT_TYPES = (ms.float16, ms.float32)
MASK_TYPES = {"CPU": (ms.float16, ms.float32, ms.uint8, ms.bool_),
              "GPU": (ms.float16, ms.float32, ms.uint8, ms.bool_),
              "Ascend": (ms.float16, ms.float32)}
"""Mask dtypes each target's masked-softmax kernel reads."""
ASCEND_OP_NAMES = {
    "fast_gelu": ("FastGeluCustom", "FastGeluGradCustom"),
    "masked_softmax": ("MaskedSoftmaxCustom", "MaskedSoftmaxGradCustom"),
}
CPU_GPU_SYMBOLS = {
    "fast_gelu": ("FastGeluForward", "FastGeluBackward"),
    "masked_softmax": ("MaskedSoftmaxForward", "MaskedSoftmaxBackward"),
}
CPU_ONLY_SYMBOLS = {
    "stateless_dropout": ("StatelessDropoutForward", "StatelessDropoutBackward"),
    "layernorm": ("LayerNormForward", "LayerNormBackward"),
    "cross_entropy": ("CrossEntropyForward", "CrossEntropyBackward"),
}
"""Training kernels with a CPU library only (``kernel_build.CPU_ONLY_KERNELS``)."""

logger = logging.getLogger("codegeex_ms")
_NOTICES = set()


class FusedOp(NamedTuple):
    """A fused kernel's forward primitive (trainable through its bprop) and backward primitive."""

    forward: ops.Custom
    backward: ops.Custom


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``MODES``, else ValueError naming it."""
    if mode not in MODES:
        raise ValueError(f"fused={mode!r} is not one of {MODES} (config key model.fused_kernels)")
    return mode


def _notice_once(message: str) -> None:
    if message not in _NOTICES:
        _NOTICES.add(message)
        logger.warning(message)


def _func_names(kernel: str, target: str) -> tuple:
    """``ops.Custom`` ``func`` strings of the kernel's forward and backward (builds on first use)."""
    location = kernel_build.locate(kernel, target)
    if target == "Ascend":
        return ASCEND_OP_NAMES[kernel]
    symbols = CPU_GPU_SYMBOLS[kernel] if kernel in CPU_GPU_SYMBOLS else CPU_ONLY_SYMBOLS[kernel]
    return tuple(f"{location}:{symbol}" for symbol in symbols)


def _device_target() -> str:
    return ms.get_context("device_target")


def check_ascend_soc() -> str:
    """This device's SoC family if the Ascend C kernels support it, else ``KernelUnavailable``
    naming it and the supported SoCs."""
    supported = kernel_build.ascend_socs()
    found = soc.ascend_soc_version()
    if found not in supported:
        names = ", ".join(soc.describe(s) for s in supported) or "none (see $CODEGEEX_ASCEND_SOC)"
        raise kernel_build.KernelUnavailable(f"this device's SoC is {soc.describe(found)}; the Ascend C "
                                             f"kernels support {names}")
    return found


def _resolve(kernel: str, mode: str) -> Optional[tuple]:
    """``func`` strings per ``mode``, or None for the built-in operators."""
    if check_mode(mode) == "off":
        return None
    target = _device_target()
    try:
        if target == "Ascend":
            check_ascend_soc()
        return _func_names(kernel, target)
    except kernel_build.KernelUnavailable as err:
        reason = str(err).splitlines()[0]
        if mode == "on":
            raise RuntimeError(f"fused {kernel} kernel requested (fused='on') but unavailable on {target}: {err}\n"
                               "Set model.fused_kernels to 'auto' or 'off' to use built-in operators.") from err
        _notice_once(f"codegeex_ms: fused {kernel} kernel unavailable on {target} ({reason}); "
                     "using built-in operators")
        return None


# ------------------------------------------------------------------------------- FastGELU

def _elem(dtype):
    """Element type of an infer-time dtype (``Tensor[Float32]`` → ``Float32``)."""
    return dtype.element_type() if hasattr(dtype, "element_type") else dtype


def _same_shape(x_shape, *_):
    return x_shape


def _gelu_dtype(x_dtype, *_):
    if _elem(x_dtype) not in FLOAT_TYPES:
        raise TypeError(f"fused FastGELU supports float16/float32 inputs, got {x_dtype}; "
                        "use fused='off' for other dtypes")
    return x_dtype


def fused_fast_gelu(mode: str) -> Optional[FusedOp]:
    """FastGELU ``y = x * sigmoid(1.702 x)`` on any shape (FP16/FP32, FP32 math), or None."""
    names = _resolve("fast_gelu", mode)
    if names is None:
        return None
    backward = ops.Custom(names[1], out_shape=_same_shape, out_dtype=_gelu_dtype, func_type="aot")

    def bprop(x, out, dout):  # pylint: disable=unused-argument
        return (backward(x, dout),)

    forward = ops.Custom(names[0], out_shape=_same_shape, out_dtype=_gelu_dtype, func_type="aot", bprop=bprop)
    return FusedOp(forward, backward)


# ------------------------------------------------------------------------- masked softmax

def _softmax_shape(scores_shape, mask_shape, scale_shape):
    """Scores [B,N,S,T]; mask [B or 1, N or 1, S, T]; scale [1]. Unknown dims (< 0) pass."""
    if len(scores_shape) != 4 or len(mask_shape) != 4:
        raise ValueError(f"fused masked softmax needs 4-D scores [B,N,S,T] and mask [B,1,S,T], got "
                         f"{tuple(scores_shape)} and {tuple(mask_shape)}")
    for axis, (s, m) in enumerate(zip(scores_shape, mask_shape)):
        ok = s < 0 or m < 0 or m == s or (axis < 2 and m == 1)
        if not ok:
            raise ValueError(f"mask shape {tuple(mask_shape)} does not broadcast to scores "
                             f"{tuple(scores_shape)} (axis {axis}); expected [B or 1, 1, S, T]")
    if list(scale_shape) not in ([1], [-1]):
        raise ValueError(f"scale must be a [1] float32 tensor, got shape {tuple(scale_shape)}")
    return scores_shape


def _softmax_dtype(scores_dtype, mask_dtype, scale_dtype):
    if _elem(scores_dtype) not in FLOAT_TYPES:
        raise TypeError(f"fused masked softmax supports float16/float32 scores, got {scores_dtype}")
    allowed = MASK_TYPES[_device_target()]
    if _elem(mask_dtype) not in allowed:
        raise TypeError(f"fused masked softmax on {_device_target()} takes {allowed} masks, "
                        f"got {mask_dtype}; cast the mask first")
    if _elem(scale_dtype) != ms.float32:
        raise TypeError(f"scale must be float32, got {scale_dtype}")
    return scores_dtype


def _softmax_grad_shape(y_shape, dy_shape, scale_shape):  # pylint: disable=unused-argument
    return y_shape


def _softmax_grad_dtype(y_dtype, dy_dtype, scale_dtype):  # pylint: disable=unused-argument
    if _elem(y_dtype) not in FLOAT_TYPES or _elem(dy_dtype) != _elem(y_dtype):
        raise TypeError(f"fused masked softmax grad needs matching float16/float32 y and dy, "
                        f"got {y_dtype} and {dy_dtype}")
    return y_dtype


def fused_masked_softmax(mode: str) -> Optional[FusedOp]:
    """``softmax(scores * scale - 10000 * (1 - mask))`` with FP32 math, or None.

    Forward inputs: scores [B,N,S,T] (FP16/FP32), mask [B|1, N|1, S, T] (float/uint8/bool),
    scale [1] FP32; output in the scores' dtype. Backward: (y, dy, scale) → dx. The mask and the
    scale get zero gradients.
    """
    names = _resolve("masked_softmax", mode)
    if names is None:
        return None
    backward = ops.Custom(names[1], out_shape=_softmax_grad_shape, out_dtype=_softmax_grad_dtype,
                          func_type="aot")
    zeros_like = ops.ZerosLike()

    def bprop(scores, mask, scale, out, dout):  # pylint: disable=unused-argument
        return backward(out, dout, scale), zeros_like(mask), zeros_like(scale)

    forward = ops.Custom(names[0], out_shape=_softmax_shape, out_dtype=_softmax_dtype, func_type="aot",
                         bprop=bprop)
    return FusedOp(forward, backward)


# ---------------------------------------------------------------------- stateless dropout

def _dropout_shape(x_shape, key_shape, threshold_shape, scale_shape):
    for name, shape in (("site_key", key_shape), ("threshold", threshold_shape), ("scale", scale_shape)):
        if list(shape) not in ([], [1], [-1]):
            raise ValueError(f"stateless dropout: {name} must be a scalar or [1] tensor, got {tuple(shape)}")
    return x_shape


def _dropout_dtype(x_dtype, key_dtype, threshold_dtype, scale_dtype):
    if _elem(x_dtype) != ms.float32 or _elem(scale_dtype) != ms.float32:
        raise TypeError(f"fused stateless dropout takes float32 x and scale, got {x_dtype}, {scale_dtype}")
    if _elem(key_dtype) != ms.int64 or _elem(threshold_dtype) != ms.int64:
        raise TypeError(f"fused stateless dropout takes int64 site_key and threshold, got {key_dtype}, "
                        f"{threshold_dtype}")
    return x_dtype


def fused_stateless_dropout(mode: str) -> Optional[FusedOp]:
    """The one-pass stateless dropout of ``codegeex_ms.train.dropout`` (CPU only), or None.

    Forward inputs: x (FP32, any shape), site_key int64 scalar in [0, 2**32), threshold int64 [1]
    (hash values below it drop), scale FP32 [1]; output ``(x * keep) * scale``. Backward: (dy,
    site_key, threshold, scale) → ``(dy * scale) * keep``, the mask regenerated from the hash.
    Bit-identical to the composed operators (``kernels/dropout/cpu/stateless_dropout.cc``).
    """
    names = _resolve("stateless_dropout", mode)
    if names is None:
        return None
    backward = ops.Custom(names[1], out_shape=_dropout_shape, out_dtype=_dropout_dtype, func_type="aot")
    zeros_like = ops.ZerosLike()

    def bprop(x, site_key, threshold, scale, out, dout):  # pylint: disable=unused-argument
        return (backward(dout, site_key, threshold, scale), zeros_like(site_key), zeros_like(threshold),
                zeros_like(scale))

    forward = ops.Custom(names[0], out_shape=_dropout_shape, out_dtype=_dropout_dtype, func_type="aot",
                         bprop=bprop)
    return FusedOp(forward, backward)


# ---------------------------------------------------------------------------- LayerNorm

def _layer_norm_shape(x_shape, gamma_shape, beta_shape, eps_shape):
    if len(x_shape) < 1 or len(gamma_shape) != 1 or list(beta_shape) != list(gamma_shape):
        raise ValueError(f"fused LayerNorm needs x [..., H], gamma [H], beta [H]; got {tuple(x_shape)}, "
                         f"{tuple(gamma_shape)}, {tuple(beta_shape)}")
    if min(x_shape[-1], gamma_shape[0]) >= 0 and x_shape[-1] != gamma_shape[0]:
        raise ValueError(f"fused LayerNorm: x has H={x_shape[-1]}, gamma {gamma_shape[0]}")
    if list(eps_shape) not in ([1], [-1]):
        raise ValueError(f"fused LayerNorm: eps must be a [1] tensor, got {tuple(eps_shape)}")
    return x_shape


def _layer_norm_dtype(*dtypes):
    if any(_elem(d) != ms.float32 for d in dtypes):
        raise TypeError(f"fused LayerNorm takes float32 tensors only, got {dtypes}")
    return dtypes[0]


def _layer_norm_grad_shape(x_shape, gamma_shape, dy_shape, eps_shape):  # pylint: disable=unused-argument
    return [x_shape, gamma_shape, gamma_shape]


def _layer_norm_grad_dtype(*dtypes):
    _layer_norm_dtype(*dtypes)
    return [dtypes[0], dtypes[0], dtypes[0]]


def fused_layer_norm(mode: str) -> Optional[FusedOp]:
    """LayerNorm over the last axis in FP32 (CPU only), or None.

    Forward inputs: x [..., H], gamma [H], beta [H], eps [1], all FP32; output ``(x - mean) * rstd *
    gamma + beta``. Backward: (x, gamma, dy, eps) → (dx, dgamma, dbeta), statistics recomputed from
    x; deterministic for any thread count (``kernels/layernorm/cpu/layernorm.cc``).
    """
    names = _resolve("layernorm", mode)
    if names is None:
        return None
    backward = ops.Custom(names[1], out_shape=_layer_norm_grad_shape, out_dtype=_layer_norm_grad_dtype,
                          func_type="aot")
    zeros_like = ops.ZerosLike()

    def bprop(x, gamma, beta, eps, out, dout):  # pylint: disable=unused-argument
        dx, dgamma, dbeta = backward(x, gamma, dout, eps)
        return dx, dgamma, dbeta, zeros_like(eps)

    forward = ops.Custom(names[0], out_shape=_layer_norm_shape, out_dtype=_layer_norm_dtype, func_type="aot",
                         bprop=bprop)
    return FusedOp(forward, backward)


# ------------------------------------------------------------------------ cross-entropy

def _ce_shape(logits_shape, labels_shape):
    if len(logits_shape) < 1 or list(labels_shape) != list(logits_shape[:-1]):
        raise ValueError(f"fused cross-entropy needs logits [..., V] and labels [...]; got "
                         f"{tuple(logits_shape)}, {tuple(labels_shape)}")
    return labels_shape


def _ce_dtype(logits_dtype, labels_dtype):
    if _elem(logits_dtype) != ms.float32 or _elem(labels_dtype) != ms.int32:
        raise TypeError(f"fused cross-entropy takes float32 logits and int32 labels, got {logits_dtype}, "
                        f"{labels_dtype}")
    return logits_dtype


def _ce_grad_shape(logits_shape, labels_shape, dloss_shape):  # pylint: disable=unused-argument
    return logits_shape


def _ce_grad_dtype(logits_dtype, labels_dtype, dloss_dtype):  # pylint: disable=unused-argument
    return _ce_dtype(logits_dtype, labels_dtype)


def fused_cross_entropy(mode: str) -> Optional[FusedOp]:
    """Per-token softmax cross-entropy ``logsumexp(logits) - logits[label]`` (CPU only), or None.

    Forward inputs: logits [..., V] FP32, labels [...] int32; output loss [...] FP32. Backward:
    (logits, labels, dloss) → ``(softmax(logits) - one_hot(label)) * dloss``, the log-sum-exp
    recomputed (``kernels/cross_entropy/cpu/cross_entropy.cc``).
    """
    names = _resolve("cross_entropy", mode)
    if names is None:
        return None
    backward = ops.Custom(names[1], out_shape=_ce_grad_shape, out_dtype=_ce_grad_dtype, func_type="aot")
    zeros_like = ops.ZerosLike()

    def bprop(logits, labels, out, dout):  # pylint: disable=unused-argument
        return backward(logits, labels, dout), zeros_like(labels)

    forward = ops.Custom(names[0], out_shape=_ce_shape, out_dtype=_ce_dtype, func_type="aot", bprop=bprop)
    return FusedOp(forward, backward)
