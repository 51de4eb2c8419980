"""The model a checkpoint holds: its sizes, recorded as metadata and read back.

Writers record every key of :data:`MODEL_KEYS` as string metadata ``model.<key>`` (plus
``num_attention_heads``, the older name of ``model.num_heads``) in ``.ckpt`` and
``.safetensors`` files. Readers take the sizes from that metadata and from the tensor shapes
(vocabulary rows, hidden, FFN, layers and positions are always visible in the shapes; the number
of heads, the real vocabulary and the EOD id only in the metadata), and
:func:`apply_checkpoint_sizes` fills the config with them wherever the config does not set them.
"""

import dataclasses
from typing import Dict, Mapping, Optional

from .errors import CheckpointFormatError, LayoutMismatchError
from .layout import infer_sizes
from .sources import open_weights

MODEL_KEYS = ("vocab_size", "real_vocab_size", "hidden_size", "num_layers", "num_heads",
              "ffn_hidden_size", "max_position_embeddings", "eod_token_id")
PREFIX = "model."
HEADS_KEY = "num_attention_heads"


def sizes_metadata(sizes: Mapping[str, Optional[int]]) -> Dict[str, str]:
    """String metadata recording ``sizes`` (``MODEL_KEYS`` names; None values are left out)."""
    out = {PREFIX + key: str(int(value)) for key, value in sizes.items()
           if key in MODEL_KEYS and value is not None}
    if sizes.get("num_heads") is not None:
        out[HEADS_KEY] = str(int(sizes["num_heads"]))
    return out


def model_config_metadata(model_config) -> Dict[str, str]:
    """:func:`sizes_metadata` of a ``ModelConfig``."""
    return sizes_metadata({key: getattr(model_config, key) for key in MODEL_KEYS})


def recorded_sizes(metadata: Mapping[str, str]) -> Dict[str, int]:
    """Sizes recorded in a checkpoint's metadata (``MODEL_KEYS`` names)."""
    out = {}
    if str(metadata.get(HEADS_KEY, "")).isdigit():
        out["num_heads"] = int(metadata[HEADS_KEY])
    for key in MODEL_KEYS:
        if str(metadata.get(PREFIX + key, "")).isdigit():
            out[key] = int(metadata[PREFIX + key])
    return out


def shape_sizes(shapes) -> Dict[str, int]:
    """Sizes visible in the tensor shapes (empty if the names are not the release layout)."""
    try:
        sizes = infer_sizes(shapes)
    except LayoutMismatchError:
        return {}
    return {"vocab_size": sizes.vocab_size, "hidden_size": sizes.hidden_size,
            "num_layers": sizes.num_layers, "ffn_hidden_size": sizes.ffn_hidden_size,
            "max_position_embeddings": sizes.max_position_embeddings}


def checkpoint_sizes(path) -> Dict[str, int]:
    """Every size known of checkpoint ``path`` (metadata and shapes; they must agree)."""
    with open_weights(path) as weights:
        recorded = recorded_sizes(weights.metadata)
        seen = shape_sizes({name: info.shape for name, info in weights.infos.items()})
    clash = {k: (recorded[k], seen[k]) for k in recorded.keys() & seen.keys() if recorded[k] != seen[k]}
    if clash:
        raise CheckpointFormatError(f"{path}: its metadata and its tensors disagree on "
                                    f"{', '.join(f'{k} ({a} vs {b})' for k, (a, b) in clash.items())}")
    return {**recorded, **seen}


def apply_checkpoint_sizes(model_config, explicit, path):
    """``model_config`` with the sizes of checkpoint ``path`` for every ``MODEL_KEYS`` key the
    config does not set (``explicit``: ``{"model.<key>", ...}`` the user's config or ``--set``
    gave). A key set to another value than the checkpoint's raises a ConfigError naming both.
    Without a recorded or configured real vocabulary, every embedding row counts as real when the
    default (CodeGeeX's 50400) exceeds the checkpoint's rows."""
    from codegeex_ms.config import ConfigError  # pylint: disable=import-outside-toplevel
    found = checkpoint_sizes(path)
    values, problems = {}, []
    for key, value in found.items():
        current = getattr(model_config, key)
        if f"model.{key}" in explicit:
            if current != value:
                problems.append(f"model.{key}: the config sets {current} but {path} has {value}; "
                                "remove the setting (the checkpoint's value is used) or use the "
                                "matching checkpoint")
        else:
            values[key] = value
    if problems:
        raise ConfigError(problems)
    out = dataclasses.replace(model_config, **values)
    if ("model.real_vocab_size" not in explicit and "real_vocab_size" not in found
            and out.real_vocab_size > out.vocab_size):  # the default belongs to the 13B layout
        out = dataclasses.replace(out, real_vocab_size=out.vocab_size)
    return out
