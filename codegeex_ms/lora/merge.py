"""Folding an adapter into its base checkpoint, one tensor at a time.

For every adapted Linear, ``W' = W + (alpha / rank) · B · A`` in FP32, where ``W`` is the base
weight in FP32 (an INT8 base is dequantized first: ``q · scale``). Output dtypes:

* ``float16`` / ``float32``: every float tensor cast to it (the release is FP16);
* ``int8``: the six linear weights of every layer re-quantized per output row
  (``codegeex_ms.model.quant``, the scheme of ``codegeex_ms.quantize``), other tensors FP16,
  metadata ``weight_quant=int8`` so ``generate``/``serve`` build the INT8 network by themselves.

Memory: the adapter (a few MB) plus about two copies of the largest tensor in FP32.
The output appears only when complete, with its checksum manifest.
"""

import logging
import os

import numpy as np

from codegeex_ms.checkpoint import dtypes
from codegeex_ms.checkpoint.base import TensorInfo
from codegeex_ms.checkpoint.sources import open_weights
from codegeex_ms.checkpoint.writers import output_format, write_checkpoint
from codegeex_ms.lora.adapters import AdapterFile, base_identity, same_base
from codegeex_ms.model.quant import (dequantize_rows, is_quantized_layout, is_quantized_weight,
                                     quantize_rows, quantized_infos, scale_name)

logger = logging.getLogger(__name__)
OUTPUT_DTYPES = ("float16", "float32", "int8")


def merge_adapter(base_path, adapter_path, out_path, dtype: str = "float16",
                  progress: bool = False) -> dict:
    """Write ``base + adapter`` to ``out_path`` (.ckpt or .safetensors) in ``dtype``.

    Returns ``{"merged": number of weights changed, "tensors": tensors written}``. Raises
    ValueError when the adapter names Linears the base lacks or has other shapes (nothing is
    written then).
    """
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(OUTPUT_DTYPES)}")
    fmt = output_format(out_path)
    if fmt == "pt" and dtype == "int8":
        raise ValueError(f"{out_path}: INT8 checkpoints are written as .ckpt or .safetensors")
    if os.path.exists(out_path) and os.path.samefile(base_path, out_path):
        raise ValueError(f"--out {out_path} is the base checkpoint; write the merged model elsewhere")
    adapter = AdapterFile(adapter_path)
    if adapter.base and not same_base(adapter.base, base_identity(base_path)):
        logger.warning("%s was trained on %s (sha256 %s…), not on %s: merging anyway", adapter_path,
                       adapter.base.get("file"), str(adapter.base.get("sha256"))[:12], base_path)
    deltas = adapter.deltas()
    with open_weights(base_path) as base:
        int8_base = is_quantized_layout(base.infos)
        float_infos = {}  # the merged tensors before the output quantization, in file order
        for name, info in base.infos.items():
            if int8_base and name.endswith(".weight_scale"):
                continue
            float_infos[name] = TensorInfo(tuple(info.shape), "float32" if dtype == "float32" else "float16")
        bad = [n for n in deltas if n not in float_infos or tuple(float_infos[n].shape) != deltas[n].shape]
        if bad:
            raise ValueError(f"{adapter_path} adapts {len(bad)} Linear(s) that {base_path} lacks or "
                             f"holds with another shape, e.g. {bad[0]}: give the base it was trained on")
        infos = quantized_infos(float_infos) if dtype == "int8" else float_infos

        def merged():
            for name in float_infos:
                array = base.read(name)
                if int8_base and name.endswith(".weight") and scale_name(name) in base.infos:
                    array = dequantize_rows(array, base.read(scale_name(name)))
                if name in deltas:
                    array = array.astype(np.float32) + deltas[name]
                if dtype == "int8" and is_quantized_weight(name):
                    q, scale = quantize_rows(array)
                    yield name, q
                    yield scale_name(name), scale
                else:
                    yield name, array.astype(dtypes.np_dtype(float_infos[name].dtype), copy=False)

        metadata = {"weight_quant": "int8"} if dtype == "int8" else {}
        metadata["lora_merged_from"] = str(adapter_path)
        write_checkpoint(out_path, infos, merged(), fmt, metadata if fmt != "pt" else None, progress)
    return {"merged": len(deltas), "tensors": len(infos)}
