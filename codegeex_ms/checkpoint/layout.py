"""The CodeGeeX release layout: tensor names and shapes for given model sizes.

Names are the release's keys below ``module`` joined with dots, which are also the MindSpore
network's parameter names, e.g. ``language_model.transformer.layers.0.attention.query.weight``.
Linear weights are ``[out, in]``. Order is the release's: embeddings, decoder layers 0..L-1,
the top-query layer, the final LayerNorm.
"""

import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from .errors import LayoutMismatchError

WORD_EMBEDDINGS = "language_model.embedding.word_embeddings.weight"
POSITION_EMBEDDINGS = "language_model.embedding.position_embeddings.weight"
TOP_QUERY_EMBEDDINGS = "language_model.topQueryEmbedding.top_query_embeddings.weight"
TRANSFORMER = "language_model.transformer."
LAYER_PREFIX = TRANSFORMER + "layers."
TOP_QUERY_LAYER = TRANSFORMER + "topQueryLayer."
FINAL_LAYERNORM = TRANSFORMER + "final_layernorm."
_LAYER_INDEX = re.compile(re.escape(LAYER_PREFIX) + r"(\d+)\.")

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class ModelSizes:
    """Sizes that determine the layout (``num_attention_heads`` is metadata only).

    ``vocab_size`` is the padded number of embedding rows; ``num_layers`` counts decoder layers
    without the top-query layer (39 for CodeGeeX-13B).
    """

    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    max_position_embeddings: int
    num_attention_heads: Optional[int] = None


CODEGEEX_13B = ModelSizes(vocab_size=52224, hidden_size=5120, ffn_hidden_size=20480, num_layers=39,
                          max_position_embeddings=2048, num_attention_heads=40)


def block_layout(prefix: str, hidden: int, ffn: int) -> Dict[str, Shape]:
    """Names (``prefix`` + suffix) and shapes of one transformer block, in release order."""
    h, f = hidden, ffn
    shapes = [("input_layernorm.weight", (h,)), ("input_layernorm.bias", (h,))]
    for proj in ("query", "key", "value", "dense"):
        shapes += [(f"attention.{proj}.weight", (h, h)), (f"attention.{proj}.bias", (h,))]
    shapes += [("post_attention_layernorm.weight", (h,)), ("post_attention_layernorm.bias", (h,)),
               ("mlp.dense_h_to_4h.weight", (f, h)), ("mlp.dense_h_to_4h.bias", (f,)),
               ("mlp.dense_4h_to_h.weight", (h, f)), ("mlp.dense_4h_to_h.bias", (h,))]
    return OrderedDict((prefix + name, shape) for name, shape in shapes)


def release_layout(sizes: ModelSizes) -> Dict[str, Shape]:
    """Ordered name -> shape of every tensor of the release layout for ``sizes``."""
    h = sizes.hidden_size
    layout = OrderedDict([(WORD_EMBEDDINGS, (sizes.vocab_size, h)),
                          (POSITION_EMBEDDINGS, (sizes.max_position_embeddings, h)),
                          (TOP_QUERY_EMBEDDINGS, (sizes.max_position_embeddings, h))])
    for i in range(sizes.num_layers):
        layout.update(block_layout(f"{LAYER_PREFIX}{i}.", h, sizes.ffn_hidden_size))
    layout.update(block_layout(TOP_QUERY_LAYER, h, sizes.ffn_hidden_size))
    layout[FINAL_LAYERNORM + "weight"] = (h,)
    layout[FINAL_LAYERNORM + "bias"] = (h,)
    return layout


def num_parameters(layout: Mapping[str, Sequence[int]]) -> int:
    """Total number of elements of all tensors in ``layout``."""
    return sum(math.prod(int(n) for n in shape) for shape in layout.values())


def sizes_of(model_config) -> ModelSizes:
    """The release-layout sizes of a :class:`~codegeex_ms.config.ModelConfig`."""
    return ModelSizes(vocab_size=model_config.vocab_size, hidden_size=model_config.hidden_size,
                      ffn_hidden_size=model_config.ffn_hidden_size, num_layers=model_config.num_layers,
                      max_position_embeddings=model_config.max_position_embeddings,
                      num_attention_heads=model_config.num_heads)


def model_parameters(model_config) -> int:
    """Exact parameter count of a ``ModelConfig``'s network (tied head; layers + top-query layer)."""
    return num_parameters(release_layout(sizes_of(model_config)))


def infer_sizes(shapes: Mapping[str, Sequence[int]], num_attention_heads: Optional[int] = None) -> ModelSizes:
    """Model sizes implied by a name -> shape mapping in the release layout.

    Vocabulary and hidden size come from the word embeddings, positions from the position
    embeddings, the FFN size from a ``dense_h_to_4h`` weight, the layer count from the highest
    ``layers.<i>`` index. The shapes do not show the number of heads: ``num_attention_heads``
    is kept as given, or 40 for CodeGeeX-13B's hidden size 5120, else None (unknown).
    Raises LayoutMismatchError listing the tensors needed but absent.
    """
    ffn_keys = [k for k in shapes if k.endswith(".mlp.dense_h_to_4h.weight") and k.startswith(TRANSFORMER)]
    needed = [WORD_EMBEDDINGS, POSITION_EMBEDDINGS]
    missing = [k for k in needed if k not in shapes]
    if not ffn_keys:
        missing.append(TOP_QUERY_LAYER + "mlp.dense_h_to_4h.weight")
    if missing:
        raise LayoutMismatchError("the checkpoint (cannot infer the model sizes)", missing=missing)
    vocab, hidden = (int(n) for n in shapes[WORD_EMBEDDINGS])
    indices = [int(m.group(1)) for m in map(_LAYER_INDEX.match, shapes) if m]
    if num_attention_heads is None and hidden == CODEGEEX_13B.hidden_size:
        num_attention_heads = CODEGEEX_13B.num_attention_heads
    return ModelSizes(vocab_size=vocab, hidden_size=hidden, ffn_hidden_size=int(shapes[ffn_keys[0]][0]),
                      num_layers=max(indices) + 1 if indices else 0,
                      max_position_embeddings=int(shapes[POSITION_EMBEDDINGS][0]),
                      num_attention_heads=num_attention_heads)


def check_layout(shapes: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]],
                 what: str = "the checkpoint") -> None:
    """Raise one LayoutMismatchError listing all missing, unexpected and mis-shaped tensors."""
    missing = [n for n in expected if n not in shapes]
    unexpected = [n for n in shapes if n not in expected]
    mismatched = [(n, tuple(expected[n]), tuple(shapes[n])) for n in expected
                  if n in shapes and tuple(int(d) for d in shapes[n]) != tuple(int(d) for d in expected[n])]
    if missing or unexpected or mismatched:
        raise LayoutMismatchError(what, missing, unexpected, mismatched)


def release_key_path(name: str) -> Tuple[str, ...]:
    """Where tensor ``name`` sits in the release's nested dict.

    ``module`` -> ``language_model`` -> ... -> ``transformer``, whose keys are flat dotted names:
    ``release_key_path("language_model.transformer.layers.0.mlp.dense_4h_to_h.bias")`` is
    ``("module", "language_model", "transformer", "layers.0.mlp.dense_4h_to_h.bias")``.
    """
    if name.startswith(TRANSFORMER):
        return ("module",) + tuple(TRANSFORMER.rstrip(".").split(".")) + (name[len(TRANSFORMER):],)
    return ("module",) + tuple(name.split("."))
