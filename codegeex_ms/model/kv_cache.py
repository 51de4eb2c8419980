"""Incremental decoding with a preallocated static key/value cache.

The cache holds ``num_layers + 1`` (top-query layer included) key and value tensors of shape
[B, N, L, D]. A call writes the keys/values of its S new tokens into slots
``start .. start + S - 1`` in place and attends over all L slots, the mask telling which slots are
valid. Prefill (S = prompt bucket) and decode (S = 1) are the same Cell with two input shapes, so
graph mode compiles each shape once and never again per step.
"""

import numpy as np

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from codegeex_ms.model.layers import DTYPE


def cache_write_index(batch: int, heads: int, start: int, length: int) -> np.ndarray:
    """[batch, heads, length, 3] int32 indices (b, n, start + s) for ``ScatterNdUpdate``."""
    b, n, s = np.meshgrid(np.arange(batch), np.arange(heads), start + np.arange(length),
                          indexing="ij")
    return np.stack([b, n, s], axis=-1).astype(np.int32)


class CachedDecoder(nn.Cell):
    """Wraps a :class:`~codegeex_ms.model.CodeGeeX` for cached decoding.

    ``construct(input_ids [B,S], position_ids [B,S], attention_mask [B,S,L], index [B,N,S,3])``
    → FP32 logits [B, vocab] of the last of the S tokens. ``attention_mask[b, s, j]`` is 1 when
    new token s may attend cache slot j (slots written earlier or in this call, causal).
    """

    def __init__(self, model, batch_size: int, cache_length: int, cache_dtype: str = None):
        super().__init__()
        cfg = model.config
        if cache_length > cfg.max_position_embeddings:
            raise ValueError(f"cache_length {cache_length} exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        self.model = model
        self.batch_size, self.cache_length = batch_size, cache_length
        self.num_heads = cfg.num_heads
        dtype = DTYPE[cache_dtype or cfg.compute_dtype]
        shape = (batch_size, cfg.num_heads, cache_length, cfg.head_dim)

        def make(kind, i):
            return Parameter(Tensor(np.zeros(shape), dtype), name=f"kv_cache.{kind}.{i}",
                             requires_grad=False)

        layers = cfg.num_layers + 1
        self.key_caches = ParameterTuple([make("key", i) for i in range(layers)])
        self.value_caches = ParameterTuple([make("value", i) for i in range(layers)])
        self._reorder = _CacheReorder(self.key_caches, self.value_caches)

    def construct(self, input_ids, position_ids, attention_mask, index):
        hidden = self.model.language_model(input_ids, position_ids, attention_mask,
                                           self.key_caches, self.value_caches, index)
        last = hidden[:, -1:, :]
        return self.model.logits(last)[:, 0, :]

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: make cache row ``i`` a copy of row ``rows[i]`` for every layer."""
        self._reorder(Tensor(rows, ms.int32))

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
             start: int) -> np.ndarray:
        """Run one call from NumPy inputs, writing slots ``start ..``; returns logits [B, V]."""
        b, s = input_ids.shape
        index = cache_write_index(b, self.num_heads, start, s)
        out = self(Tensor(input_ids, ms.int32), Tensor(position_ids, ms.int32),
                   Tensor(attention_mask, ms.float32), Tensor(index))
        return out.asnumpy()


class _CacheReorder(nn.Cell):
    """Gathers the batch rows of every cache tensor in place."""

    def __init__(self, key_caches, value_caches):
        super().__init__()
        self.caches = key_caches + value_caches
        self.gather = ops.Gather()
        self.assign = ops.Assign()

    def construct(self, rows):
        for cache in self.caches:
            self.assign(cache, self.gather(cache, rows, 0))
        return rows
