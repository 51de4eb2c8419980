"""Putting LoRA adapters into a CodeGeeX network, reading them out, and adapter files.

:func:`apply_lora` freezes every parameter of a built (and usually loaded) :class:`CodeGeeX` and
replaces the chosen ``Linear`` Cells of the decoder layers (and of the top-query layer when
``lora.top_query``) with :class:`~codegeex_ms.lora.layers.LoRALinear` wrappers. Which Linears:
``lora.targets`` among ``query``, ``key``, ``value``, ``dense`` (attention) and
``dense_h_to_4h``, ``dense_4h_to_h`` (MLP). The ``A`` matrices are drawn from
``numpy.random.default_rng(seed)`` in layer order, so the same seed gives the same adapters.

Adapter file (``.ckpt`` written atomically with a checksum manifest): the tensors
``<linear>.lora_a`` FP32 [rank, in] and ``<linear>.lora_b`` FP32 [out, rank], and string metadata
``lora_format`` (``codegeex_ms.lora/1``), ``lora_config`` (JSON: rank, alpha, targets, top_query)
and ``lora_base`` (JSON identity of the base checkpoint it was trained on, see
:func:`base_identity`).
"""

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np

from codegeex_ms.checkpoint.atomic import file_digest, read_manifest
from codegeex_ms.checkpoint.sources import open_weights
from codegeex_ms.checkpoint.writers import save_weights
from codegeex_ms.lora.layers import LoRALinear, init_a, mark_frozen

logger = logging.getLogger(__name__)

FORMAT = "codegeex_ms.lora/1"
ATTENTION = ("query", "key", "value", "dense")
MLP = ("dense_h_to_4h", "dense_4h_to_h")
CONFIG_KEYS = ("rank", "alpha", "targets", "top_query")


def _targets(model, lora) -> list:
    """``[(parent Cell, attribute, Linear)]`` to adapt, in layer order."""
    transformer = model.language_model.transformer
    layers = list(transformer.layers) + ([transformer.topQueryLayer] if lora.top_query else [])
    out = []
    for layer in layers:
        for attr in lora.targets:
            parent = layer.attention if attr in ATTENTION else layer.mlp
            out.append((parent, attr, getattr(parent, attr)))
    return out


def apply_lora(model, lora, seed: int = 0) -> List[LoRALinear]:
    """Freeze every parameter of ``model`` and wrap the Linears named by ``lora`` (a
    :class:`~codegeex_ms.config.LoRAConfig` or anything with its fields; ``rank > 0``).

    Base parameters keep their names; returns the wrappers in layer order.
    """
    if lora.rank <= 0:
        raise ValueError(f"lora.rank={lora.rank}: adapters need a rank >= 1")
    if find_adapters(model):
        raise ValueError("the network already holds LoRA adapters; build a fresh one")
    for param in model.get_parameters():
        mark_frozen(param)
    rng = np.random.default_rng(seed)
    wrappers = []
    for parent, attr, linear in _targets(model, lora):
        prefix = linear.weight.name[:-len(".weight")]
        names = [(p, p.name) for p in linear.get_parameters()]
        a = init_a(lora.rank, linear.in_features, lora.init, rng)
        wrapper = LoRALinear(linear, lora.rank, lora.alpha, lora.dropout, a)
        setattr(parent, attr, wrapper)
        for param, name in names:  # assigning the wrapper prefixed them with the attribute name
            param.name = name
        wrapper.lora_a.name = f"{prefix}.lora_a"
        wrapper.lora_b.name = f"{prefix}.lora_b"
        wrappers.append(wrapper)
    return wrappers


def find_adapters(model) -> List[LoRALinear]:
    """The LoRA wrappers inside ``model``, in traversal order."""
    return [cell for _, cell in _named_adapters(model)]


def _named_adapters(model) -> list:
    """``[(path of the wrapped Linear relative to the CodeGeeX model, wrapper)]``."""
    return [(name, cell) for name, cell in model.cells_and_names() if isinstance(cell, LoRALinear)]


def _adapter_params(model) -> "OrderedDict[str, object]":
    """``{<linear path>.lora_a / .lora_b: Parameter}``. Paths, not ``Parameter.name``: wrapping the
    model in another Cell (``CodeGeeXWithLoss``) renames its parameters, paths stay."""
    out = OrderedDict()
    for name, wrapper in _named_adapters(model):
        out[f"{name}.lora_a"] = wrapper.lora_a
        out[f"{name}.lora_b"] = wrapper.lora_b
    return out


def set_adapters_enabled(model, enabled: bool) -> None:
    """Switch every adapter branch on or off (before the network is first called: graph mode
    compiles the branch in or out)."""
    for wrapper in find_adapters(model):
        wrapper.enabled = bool(enabled)


def adapter_weights(model) -> "OrderedDict[str, np.ndarray]":
    """``{name: FP32 array}`` of every adapter parameter (``<linear>.lora_a`` / ``.lora_b``)."""
    return OrderedDict((name, param.asnumpy()) for name, param in _adapter_params(model).items())


def load_adapter_weights(model, arrays: Mapping[str, np.ndarray]) -> None:
    """Set every adapter parameter of ``model`` from ``arrays``; names and shapes must match
    exactly (one ValueError naming the first problems otherwise, nothing set)."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel

    params = _adapter_params(model)
    missing = sorted(set(params) - set(arrays))
    unexpected = sorted(set(arrays) - set(params))
    shapes = [n for n in params if n in arrays and tuple(arrays[n].shape) != tuple(params[n].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {what}, e.g. {x[0]}" for x, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (shapes, "with another shape")) if x]
        raise ValueError("the adapter does not fit the network (" + "; ".join(parts) + "): use the "
                         "model config and base the adapter was trained with")
    for name, param in params.items():
        param.set_data(ms.Tensor(np.ascontiguousarray(arrays[name], np.float32)))


def base_identity(path) -> Dict[str, object]:
    """``{"file", "size", "sha256"}`` of a base checkpoint file.

    Taken from its checksum manifest when it has one whose size matches (loading such a file
    verifies it against that manifest), else computed by reading the whole file.
    """
    path = Path(path)
    record = read_manifest(path)
    size = path.stat().st_size
    if record is not None and record["size"] == size:
        return {"file": path.name, "size": size, "sha256": record["sha256"]}
    size, sha = file_digest(path)
    return {"file": path.name, "size": size, "sha256": sha}


def same_base(a: Optional[Mapping], b: Optional[Mapping]) -> bool:
    """Whether two :func:`base_identity` records name the same bytes (file names may differ)."""
    return bool(a and b) and a.get("size") == b.get("size") and a.get("sha256") == b.get("sha256")


def lora_config_record(lora) -> dict:
    """The fields of ``lora`` an adapter file records (rank, alpha, targets, top_query)."""
    return {"rank": int(lora.rank), "alpha": float(lora.alpha), "targets": list(lora.targets),
            "top_query": bool(lora.top_query)}


def save_adapter(path, model, lora, base: Optional[Mapping]) -> Path:
    """Write the adapters of ``model`` to ``path`` (.ckpt) with their config and base identity."""
    metadata = {"lora_format": FORMAT, "lora_config": json.dumps(lora_config_record(lora)),
                "lora_base": json.dumps(dict(base) if base else {})}
    save_weights(path, adapter_weights(model), fmt="ckpt", metadata=metadata)
    return Path(path)


class AdapterFile:
    """An adapter file read into memory: ``weights`` {name: FP32 array}, ``config`` (a
    namespace with rank, alpha, targets, top_query, dropout 0), ``base`` (identity dict, may be
    empty)."""

    def __init__(self, path):
        self.path = Path(path)
        with open_weights(path) as f:
            if f.metadata.get("lora_format") != FORMAT:
                raise ValueError(f"{path} is not a LoRA adapter written by codegeex_ms.lora "
                                 f"(no lora_format={FORMAT} record); give the adapter_final.ckpt "
                                 "of a LoRA run")
            self.weights = OrderedDict((name, f.read(name)) for name in f.infos)
            record = json.loads(f.metadata["lora_config"])
            self.base = json.loads(f.metadata.get("lora_base", "{}"))
        self.config = _Record(dropout=0.0, init="kaiming", **{k: record[k] for k in CONFIG_KEYS})

    def deltas(self) -> "OrderedDict[str, np.ndarray]":
        """``{"<linear>.weight": (alpha / rank) · B · A}`` FP32 [out, in], one per adapted Linear."""
        scaling = np.float32(self.config.alpha / self.config.rank)
        out = OrderedDict()
        for name, a in self.weights.items():
            if name.endswith(".lora_a"):
                prefix = name[:-len(".lora_a")]
                b = self.weights[prefix + ".lora_b"].astype(np.float32)
                out[prefix + ".weight"] = scaling * (b @ a.astype(np.float32))
        return out


class _Record:
    def __init__(self, **fields):
        self.__dict__.update(fields)


def attach_adapter(model, adapter_path, base_path=None) -> List[LoRALinear]:
    """Add the adapters of ``adapter_path`` to a loaded ``model`` (inference: no dropout).

    If ``base_path`` is given and is not the checkpoint the adapter was trained on, a warning
    says so (serving on e.g. the INT8 version of the training base is legitimate).
    """
    adapter = AdapterFile(adapter_path)
    if base_path is not None and adapter.base and not same_base(adapter.base, base_identity(base_path)):
        logger.warning("%s was trained on %s (sha256 %s…), not on %s", adapter_path,
                       adapter.base.get("file"), str(adapter.base.get("sha256"))[:12], base_path)
    wrappers = apply_lora(model, adapter.config)
    load_adapter_weights(model, adapter.weights)
    return wrappers


def load_model_with_adapter(model_config, checkpoint, adapter_path):
    """``build.load_model`` (FP16/FP32/INT8 base) plus the adapters of ``adapter_path``, unmerged."""
    from codegeex_ms.model.build import load_model  # pylint: disable=import-outside-toplevel

    model = load_model(model_config, checkpoint)
    attach_adapter(model, adapter_path, checkpoint)
    return model
