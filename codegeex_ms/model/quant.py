"""INT8 weight-only quantization (W8A16) of CodeGeeX's linear weights (reference section 6).

The six linear weights of every decoder layer and of the top-query layer (``attention.query``,
``key``, ``value``, ``dense``, ``mlp.dense_h_to_4h``, ``mlp.dense_4h_to_h``; stored [out, in]) are
quantized symmetrically per output row: ``scale = absmax(row) / 127`` (FP32) and
``weight_int8 = clip(round(w / scale), -127, 127)``, so ``|w - weight_int8 · scale| ≤ scale / 2``.
Embeddings, LayerNorms and biases are left as they are. A quantized weight ``<name>.weight``
gets its scales as ``<name>.weight_scale`` [out].

The conversions are NumPy and stream one tensor at a time; ``weight_bytes`` counts a built
network's parameter bytes; ``load_quantized`` (a file), ``load_quantized_mmap`` (INT8 safetensors,
memory-mapped) and ``quantize_into`` (float arrays) set an INT8 network.
"""

from collections import OrderedDict
from typing import Iterable, Iterator, Mapping, Tuple

import mindspore as ms
import numpy as np

from codegeex_ms.checkpoint import (LayoutMismatchError, TensorInfo, check_layout, dtypes, load_into_network,
                                    open_weights)

TRANSFORMER = "language_model.transformer."
QUANTIZED_SUFFIXES = ("attention.query.weight", "attention.key.weight", "attention.value.weight",
                      "attention.dense.weight", "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight")
SCALE_SUFFIX = "_scale"
QMAX = 127
SCALE_DTYPE = "float32"
METADATA_KEY = "weight_quant"     # file metadata: "int8" marks a checkpoint quantize wrote
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


def checkpoint_weight_quant(path) -> str:
    """``"int8"`` if checkpoint ``path`` was written by this quantizer (metadata or scale
    tensors), else ``"none"``."""
    with open_weights(path) as weights:
        if weights.metadata.get(METADATA_KEY) == "int8" or is_quantized_layout(weights.infos):
            return "int8"
    return "none"


def load_quantized(net, path) -> list:
    """Set every parameter of an INT8 network (``model.weight_quant=int8``) from ``path``: an INT8
    checkpoint is loaded as is; a float checkpoint is quantized while loading, one tensor at a
    time. Names and shapes are checked first (one LayoutMismatchError listing every problem)."""
    if checkpoint_weight_quant(path) == "int8":
        return load_into_network(net, path)
    with open_weights(path) as weights:
        check_layout({n: i.shape for n, i in quantized_infos(weights.infos).items()},
                     {n: tuple(p.shape) for n, p in net.parameters_and_names()},
                     what=f"{path} after quantization (against the network's parameters)")
        return quantize_into(net, ((n, weights.read(n)) for n in weights.infos))


def map_safetensors(path) -> dict:
    """Name -> NumPy view of each tensor of safetensors file ``path``, memory-mapped copy-on-write:
    nothing is read until used, the pages are the page cache's (no private copy), and a write to
    a view (e.g. a training step on a parameter) copies only the page it touches, never the file.

    A file this project wrote is checked against its manifest first (size always; the sha256 of
    the whole file unless a stamp of an earlier full check still matches the file's size, mtime
    and inode: ``checkpoint.atomic.verify_file(stamp=True)``), raising IntegrityError on damage.
    """
    from ..checkpoint.atomic import verify_file  # pylint: disable=import-outside-toplevel
    from ..checkpoint.safetensors_io import SafetensorsReader  # pylint: disable=import-outside-toplevel
    verify_file(path, required=False, stamp=True)
    with SafetensorsReader(path) as reader:   # validates the header against the file size
        infos = dict(reader.infos)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    data = np.memmap(path, np.uint8, "c")
    views, offset = {}, 8 + header_len
    for name, info in infos.items():   # stored back to back in this order (checked by the reader)
        nbytes = info.numel * dtypes.itemsize(info.dtype)
        views[name] = data[offset:offset + nbytes].view(dtypes.np_dtype(info.dtype)).reshape(info.shape)
        offset += nbytes
    return views


def load_quantized_mmap(net, path) -> int:
    """Point every parameter of an INT8 network at the memory-mapped tensors of the INT8
    safetensors checkpoint ``path``: one copy of the weights (the file's pages), read on first use.

    Names and shapes are checked first (one LayoutMismatchError listing every problem). A tensor
    whose stored dtype differs from its parameter's is cast (that tensor alone is then copied).
    Returns the bytes mapped without a copy.
    """
    import mindspore as ms  # pylint: disable=import-outside-toplevel

    params = dict(net.parameters_and_names())
    views = map_safetensors(path)
    check_layout({n: v.shape for n, v in views.items()}, {n: tuple(p.shape) for n, p in params.items()},
                 what=f"{path} (against the network's parameters)")
    mapped = 0
    for name, param in params.items():
        array = views[name]
        target = NUMPY_DTYPES[param.dtype]
        if array.dtype == target:
            mapped += array.nbytes
        else:
            array = array.astype(target)
        param.set_data(ms.Tensor.from_numpy(array))
    return mapped


def quantize_into(net, tensors: Iterable[Tuple[str, np.ndarray]]) -> list:
    """Set an INT8 network from float ``(name, array)`` pairs (model naming, e.g. a float
    network's parameters), quantizing the linear weights on the way. Every parameter must be
    set exactly once. Returns the names set."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel

    params = dict(net.parameters_and_names())
    done = []
    for name, array in quantize_tensors(tensors):
        if name not in params:
            raise LayoutMismatchError("the quantized tensors (against the network's parameters)",
                                      unexpected=[name])
        param = params[name]
        if tuple(array.shape) != tuple(param.shape):
            raise LayoutMismatchError("the quantized tensors (against the network's parameters)",
                                      mismatched=[(name, tuple(param.shape), tuple(array.shape))])
        array = array.astype(NUMPY_DTYPES[param.dtype], copy=False)
        param.set_data(ms.Tensor.from_numpy(np.ascontiguousarray(array)))
        done.append(name)
    missing = set(params) - set(done)
    if missing or len(done) != len(set(done)):
        raise LayoutMismatchError("the quantized tensors (against the network's parameters)",
                                  missing=sorted(missing))
    return done
