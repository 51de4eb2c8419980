"""INT8 weight-only quantization (W8A16) of CodeGeeX's linear weights (reference section 6).

The six linear weights of every decoder layer and of the top-query layer (``attention.query``,
``key``, ``value``, ``dense``, ``mlp.dense_h_to_4h``, ``mlp.dense_4h_to_h``; stored [out, in]) are
quantized symmetrically per output row: ``scale = absmax(row) / 127`` (FP32) and
``weight_int8 = clip(round(w / scale), -127, 127)``, so ``|w - weight_int8 · scale| ≤ scale / 2``.
Embeddings, LayerNorms and biases are left as they are. A quantized weight ``<name>.weight``
gets its scales as ``<name>.weight_scale`` [out].

The conversions are NumPy and stream one tensor at a time; ``weight_bytes`` counts a built
network's parameter bytes.
"""

from collections import OrderedDict
from typing import Iterable, Iterator, Mapping, Tuple

import mindspore as ms
import numpy as np

from codegeex_ms.checkpoint.base import TensorInfo

TRANSFORMER = "language_model.transformer."
QUANTIZED_SUFFIXES = ("attention.query.weight", "attention.key.weight", "attention.value.weight",
                      "attention.dense.weight", "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight")
SCALE_SUFFIX = "_scale"
QMAX = 127
SCALE_DTYPE = "float32"
NUMPY_DTYPES = {ms.int8: np.dtype(np.int8), ms.float16: np.dtype(np.float16),
                ms.float32: np.dtype(np.float32)}
"""NumPy dtype of each MindSpore parameter dtype a (quantized) network uses."""


def is_quantized_weight(name: str) -> bool:
    """Whether parameter ``name`` (release naming) is one of the six linear weights of a layer."""
    return name.startswith(TRANSFORMER) and name.endswith(QUANTIZED_SUFFIXES)


def scale_name(weight_name: str) -> str:
    """``...attention.query.weight`` -> ``...attention.query.weight_scale``."""
    return weight_name + SCALE_SUFFIX


def quantize_rows(weight: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-output-row symmetric INT8: float [out, in] -> (int8 [out, in], FP32 scales [out]).

    ``scale = absmax(row) / 127``; an all-zero row gets scale 0 and zeros. Computed in FP32.
    """
    if weight.ndim != 2:
        raise ValueError(f"expected a [out, in] weight, got shape {weight.shape}")
    w = weight.astype(np.float32)  # a copy: divided in place below
    scale = np.maximum(w.max(axis=1), -w.min(axis=1)) / np.float32(QMAX)
    if not np.isfinite(scale).all():
        raise ValueError("the weight holds inf or NaN values, which cannot be quantized")
    w /= np.where(scale > 0, scale, np.float32(1))[:, None]
    np.rint(w, out=w)
    np.clip(w, -QMAX, QMAX, out=w)
    q = w.astype(np.int8)
    return q, scale


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 [out, in] and scales [out] -> FP32 [out, in] ``q · scale[:, None]``."""
    return q.astype(np.float32) * scale.astype(np.float32)[:, None]


def quantized_infos(infos: Mapping[str, TensorInfo]) -> "OrderedDict[str, TensorInfo]":
    """The tensor plan after quantization: each linear weight becomes int8, directly followed by
    its FP32 scales [out]; all other tensors keep their shape and dtype."""
    out = OrderedDict()
    for name, info in infos.items():
        if is_quantized_weight(name):
            out[name] = TensorInfo(tuple(info.shape), "int8")
            out[scale_name(name)] = TensorInfo((info.shape[0],), SCALE_DTYPE)
        else:
            out[name] = info
    return out


def quantize_tensors(tensors: Iterable[Tuple[str, np.ndarray]]) -> Iterator[Tuple[str, np.ndarray]]:
    """Stream ``(name, array)`` pairs in the order of :func:`quantized_infos`: linear weights come
    out as int8 followed by their scales, everything else unchanged."""
    for name, array in tensors:
        if is_quantized_weight(name):
            try:
                q, scale = quantize_rows(array)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            yield name, q
            yield scale_name(name), scale
        else:
            yield name, array


def is_quantized_layout(names: Iterable[str]) -> bool:
    """Whether a checkpoint's (model) names hold INT8 scales, i.e. it was quantized."""
    return any(n.endswith(".weight" + SCALE_SUFFIX) for n in names)


def weight_bytes(net) -> dict:
    """Bytes of a built network's parameters: ``quantized`` (int8 linear weights), ``scales``,
    ``linear_float`` (float linear weights), ``other`` (embeddings, LayerNorms, biases), ``total``.
    Uninitialised (``allocate=False``) networks count by shape and dtype as well."""
    out = {"quantized": 0, "scales": 0, "linear_float": 0, "other": 0}
    for name, param in net.parameters_and_names():
        nbytes = int(np.prod(param.shape, dtype=np.int64)) * NUMPY_DTYPES[param.dtype].itemsize
        if name.endswith(SCALE_SUFFIX):
            out["scales"] += nbytes
        elif is_quantized_weight(name):
            out["quantized" if param.dtype == ms.int8 else "linear_float"] += nbytes
        else:
            out["other"] += nbytes
    out["total"] = sum(out.values())
    return out
