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


# ---------------------------------------------------------------------------------------------
# The slot pool: per-row lengths, for iteration-level scheduling


def slot_write_index(rows: np.ndarray, heads: int, starts: np.ndarray, length: int) -> np.ndarray:
    """[B, heads, length, 3] int32 indices (rows[b], n, starts[b] + s) for ``ScatterNdUpdate``."""
    b = len(rows)
    out = np.empty((b, heads, length, 3), np.int32)
    out[..., 0] = np.asarray(rows)[:, None, None]
    out[..., 1] = np.arange(heads)[None, :, None]
    out[..., 2] = np.asarray(starts)[:, None, None] + np.arange(length)[None, None, :]
    return out


def _kv_parameters(cfg, prefix: str, rows: int, length: int, dtype) -> tuple:
    shape = (rows, cfg.num_heads, length, cfg.head_dim)

    def make(kind, i):
        return Parameter(Tensor(np.zeros(shape), dtype), name=f"{prefix}.{kind}.{i}",
                         requires_grad=False)

    layers = cfg.num_layers + 1
    return (ParameterTuple([make("key", i) for i in range(layers)]),
            ParameterTuple([make("value", i) for i in range(layers)]))


class _PickedLogits(nn.Cell):
    """``construct(ids [B,S], pos [B,S], mask [B,S,T], index [B,N,S,3], pick [B,Q])`` → FP32
    logits [B, Q, vocab] of the tokens at sequence positions ``pick``; writes the S new keys and
    values into ``key_caches``/``value_caches`` [B', N, T, D] at ``index`` and attends over T."""

    def __init__(self, model, key_caches, value_caches):
        super().__init__()
        self.model = model
        self.key_caches, self.value_caches = key_caches, value_caches
        self.gather = ops.GatherD()
        self.broadcast = ops.BroadcastTo((-1, -1, model.config.hidden_size))
        self.expand = ops.ExpandDims()

    def construct(self, input_ids, position_ids, attention_mask, index, pick):
        hidden = self.model.language_model(input_ids, position_ids, attention_mask,
                                           self.key_caches, self.value_caches, index)
        rows = self.broadcast(self.expand(pick, 2))
        return self.model.logits(self.gather(hidden, 1, rows))


class _CopyRows(nn.Cell):
    """``construct(src_rows [M], index [M,N,S,3])``: for every layer, writes source cache rows
    ``src_rows`` (each [N, S, D]) into the destination caches at ``index``."""

    def __init__(self, src_keys, src_values, dst_keys, dst_values):
        super().__init__()
        self.src = src_keys + src_values
        self.dst = dst_keys + dst_values
        self.gather = ops.Gather()
        self.scatter = ops.ScatterNdUpdate()

    def construct(self, src_rows, index):
        for src, dst in zip(self.src, self.dst):
            self.scatter(dst, index, self.gather(src, src_rows, 0))
        return src_rows


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


class SlotKVCache:
    """A pool of ``slots`` cache rows of ``length`` positions, each holding its own sequence.

    Row ``r`` holds one sequence from cache position 0 (no padding); its position ids equal its
    cache positions. :meth:`forward` runs S new tokens for every row at per-row start positions
    (decode: S = 1; speculative verification: S = k + 1) over the whole pool — one graph per S.
    :meth:`prefill` runs prompts in a scratch cache of a bucketed (rows, length) shape with
    causal attention over the prompt only, then copies each prompt's keys/values into any number
    of pool rows (``n`` samples of one prompt prefill once). Shapes are powers of two, so a
    steady workload compiles nothing new; :attr:`shapes` records every (kind, shape) seen, the
    graph-compile count of graph mode.
    """

    def __init__(self, model, slots: int, length: int, pad_id: int, cache_dtype: str = None,
                 prefill_tokens: int = 2048):
        cfg = model.config
        if length > cfg.max_position_embeddings:
            raise ValueError(f"cache length {length} exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.model, self.cfg = model, cfg
        self.slots, self.length, self.pad_id = slots, length, pad_id
        self.prefill_tokens = prefill_tokens
        self.dtype = DTYPE[cache_dtype or cfg.compute_dtype]
        self.keys, self.values = _kv_parameters(cfg, "slot_cache", slots, length, self.dtype)
        self._step = _PickedLogits(model, self.keys, self.values)
        self._scratch = {}        # (rows, length) -> (step cell, copy cell)
        self.shapes = set()       # every (kind, shape) run: each is one compiled graph

    def compiled_graphs(self) -> int:
        """Graphs MindSpore has compiled for this cache's cells (graph mode; 0 in PyNative)."""
        cells = [self._step] + [c for pair in self._scratch.values() for c in pair]
        return sum(len(c.compile_cache) for c in cells)

    # ------------------------------------------------------------------ pool forward

    def forward(self, tokens: np.ndarray, starts: np.ndarray, pick_all: bool = False) -> np.ndarray:
        """Run ``tokens`` [slots, S] at cache positions ``starts[r] .. starts[r] + S - 1`` of every
        row (free rows: any values, their results are garbage). Returns FP32 logits [slots, V]
        of each row's last token, or [slots, S, V] with ``pick_all``.

        ``starts + S`` must not exceed the cache length.
        """
        p, s = tokens.shape
        starts = np.asarray(starts, np.int64)
        if p != self.slots or starts.shape != (p,) or (starts + s > self.length).any():
            raise ValueError(f"forward needs [{self.slots}, S] tokens within {self.length} positions")
        pos = starts[:, None] + np.arange(s)[None, :]
        mask = (np.arange(self.length)[None, None, :] <= pos[:, :, None]).astype(np.float32)
        index = slot_write_index(np.arange(p), self.cfg.num_heads, starts, s)
        pick = np.broadcast_to(np.arange(s) if pick_all else np.array([s - 1]),
                               (p, s if pick_all else 1)).astype(np.int32)
        self.shapes.add(("forward", p, s, pick.shape[1]))
        out = self._step(Tensor(tokens, ms.int32), Tensor(pos.astype(np.int32)), Tensor(mask),
                         Tensor(index), Tensor(pick)).asnumpy()
        return out if pick_all else out[:, 0, :]

    # ------------------------------------------------------------------ prefill

    def prefill_shape(self, prompt_lengths: list) -> tuple:
        """(rows, length) of the scratch batch for prompts of these lengths."""
        return (_pow2_at_least(len(prompt_lengths)),
                min(max(_pow2_at_least(max(prompt_lengths)), 16), self.length))

    def prefill_fits(self, prompt_lengths: list) -> bool:
        """Whether these prompts may share one prefill call (token budget; one prompt always)."""
        rows, length = self.prefill_shape(prompt_lengths)
        return len(prompt_lengths) == 1 or rows * length <= self.prefill_tokens

    def _scratch_cells(self, rows: int, length: int):
        key = (rows, length)
        if key not in self._scratch:
            k, v = _kv_parameters(self.cfg, f"prefill_{rows}x{length}", rows, length, self.dtype)
            self._scratch[key] = (_PickedLogits(self.model, k, v),
                                  _CopyRows(k, v, self.keys, self.values))
        return self._scratch[key]

    def prefill(self, prompts: list, dests: list) -> np.ndarray:
        """Prefill ``prompts`` (token lists) and copy prompt i's cache into pool rows ``dests[i]``.

        Returns FP32 logits [len(prompts), V] of each prompt's last token. Positions beyond a
        prompt in its rows hold garbage until the row's decoding overwrites them.
        """
        lengths = [len(t) for t in prompts]
        if min(lengths) < 1 or max(lengths) > self.length:
            raise ValueError(f"prompt lengths must be 1..{self.length}, got {lengths}")
        rows, length = self.prefill_shape(lengths)
        step, copy = self._scratch_cells(rows, length)
        ids = np.full((rows, length), self.pad_id, np.int32)
        pick = np.zeros((rows, 1), np.int32)
        for i, toks in enumerate(prompts):
            ids[i, :len(toks)] = toks
            pick[i, 0] = len(toks) - 1
        pos = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
        mask = np.broadcast_to(np.tril(np.ones((length, length), np.float32)), (rows, length, length))
        index = slot_write_index(np.arange(rows), self.cfg.num_heads, np.zeros(rows, np.int64), length)
        self.shapes.add(("prefill", rows, length))
        logits = step(Tensor(ids), Tensor(np.ascontiguousarray(pos)),
                      Tensor(np.ascontiguousarray(mask)), Tensor(index), Tensor(pick)).asnumpy()
        pairs = [(i, d) for i, ds in enumerate(dests) for d in ds]
        if pairs:
            m = _pow2_at_least(len(pairs))
            pairs += [pairs[-1]] * (m - len(pairs))     # repeats write the same values again
            src = np.array([i for i, _ in pairs], np.int32)
            dst = np.array([d for _, d in pairs], np.int64)
            self.shapes.add(("copy", m, rows, length))
            copy(Tensor(src), Tensor(slot_write_index(dst, self.cfg.num_heads,
                                                      np.zeros(m, np.int64), length)))
        return logits[:len(prompts), 0, :]
