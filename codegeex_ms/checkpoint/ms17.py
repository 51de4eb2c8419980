"""Names of the original MindSpore 1.7 CodeGeeX training code, mapped to the release layout.

Table (CODEGEEX_REFERENCE section 2): ``backbone.blocks.{i}`` / ``backbone.top_query_layer``
blocks; LayerNorm ``gamma``/``beta`` become ``weight``/``bias``; the ``[in, out]`` weights of
``attention.projection``, ``output.mapping`` and ``output.projection`` are transposed to
``[out, in]``. Optimizer moments (``adam_m.``/``adam_v.``) and other training state outside
``backbone.`` are dropped; unknown ``backbone.`` names keep their name so that the layout check
reports them as unexpected.
"""

import re
from typing import Dict, List, Optional, Tuple

from .layout import LAYER_PREFIX, POSITION_EMBEDDINGS, TOP_QUERY_EMBEDDINGS, TOP_QUERY_LAYER, TRANSFORMER, \
    WORD_EMBEDDINGS

OPTIMIZER_PREFIXES = ("adam_m.", "adam_v.")

_FIXED = {
    "backbone.embedding.word_embedding.embedding_table": WORD_EMBEDDINGS,
    "backbone.embedding.position_embedding.embedding_table": POSITION_EMBEDDINGS,
    "backbone.top_query_embedding.embedding_table": TOP_QUERY_EMBEDDINGS,
    "backbone.layernorm.gamma": TRANSFORMER + "final_layernorm.weight",
    "backbone.layernorm.beta": TRANSFORMER + "final_layernorm.bias",
}
_BLOCK = re.compile(r"backbone\.(?:blocks\.(\d+)|top_query_layer)\.(.+)")
# block suffix -> (release suffix, transposed)
_BLOCK_SUFFIXES = {
    "layernorm1.gamma": ("input_layernorm.weight", False),
    "layernorm1.beta": ("input_layernorm.bias", False),
    "layernorm2.gamma": ("post_attention_layernorm.weight", False),
    "layernorm2.beta": ("post_attention_layernorm.bias", False),
    "attention.projection.weight": ("attention.dense.weight", True),
    "attention.projection.bias": ("attention.dense.bias", False),
    "output.mapping.weight": ("mlp.dense_h_to_4h.weight", True),
    "output.mapping.bias": ("mlp.dense_h_to_4h.bias", False),
    "output.projection.weight": ("mlp.dense_4h_to_h.weight", True),
    "output.projection.bias": ("mlp.dense_4h_to_h.bias", False),
}
for _src, _dst in (("dense1", "query"), ("dense2", "key"), ("dense3", "value")):
    for _part in ("weight", "bias"):
        _BLOCK_SUFFIXES[f"attention.{_src}.{_part}"] = (f"attention.{_dst}.{_part}", False)


def ms17_name(name: str) -> Optional[Tuple[str, bool]]:
    """``(release name, transpose?)`` for a MindSpore 1.7 name; None for training state to drop.

    An unknown ``backbone.`` name maps to itself (not transposed).
    """
    if name in _FIXED:
        return _FIXED[name], False
    match = _BLOCK.fullmatch(name)
    if match and match.group(2) in _BLOCK_SUFFIXES:
        suffix, transpose = _BLOCK_SUFFIXES[match.group(2)]
        prefix = TOP_QUERY_LAYER if match.group(1) is None else f"{LAYER_PREFIX}{int(match.group(1))}."
        return prefix + suffix, transpose
    if name.startswith("backbone."):
        return name, False
    return None


def map_ms17_names(names) -> Tuple[Dict[str, Tuple[str, bool]], List[str]]:
    """Map MindSpore 1.7 names: ``({release name: (source name, transpose?)}, dropped names)``."""
    mapped: Dict[str, Tuple[str, bool]] = {}
    dropped: List[str] = []
    for name in names:
        target = ms17_name(name)
        if target is None:
            dropped.append(name)
        else:
            mapped[target[0]] = (name, target[1])
    return mapped, dropped
