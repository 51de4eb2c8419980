"""Incremental decoding over preallocated key/value caches.

A cache holds ``num_layers + 1`` (top-query layer included) key and value tensors of shape
[B, N, L, D]. One call runs S new tokens of every row: token ``s`` of row ``b`` is written into
slot ``starts[b] + s`` in place, gets position id ``starts[b] + s - pads[b]`` and attends slots
``pads[b] .. starts[b] + s``. Masks, position ids and write indices are built inside the graph
from ``starts`` and ``pads`` (two [B] int32 vectors), so a step sends the device only those, the
token ids and which positions' logits to return, and the host builds nothing per step. Prefill
(S = prompt bucket), decode (S = 1) and speculative verification (S = k + 1) are the same Cell
with different input shapes: graph mode compiles each shape once and never again per step.

* :class:`CachedDecoder`: a static batch of left-padded rows decoding in lockstep (beam search,
  scoring); it keeps each row's padding and the write position itself.
* :class:`SlotKVCache`: a pool of rows with their own lengths (continuous batching).
"""

import numpy as np

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from codegeex_ms.model.layers import DTYPE


def _kv_parameters(cfg, prefix: str, rows: int, length: int, dtype) -> tuple:
    shape = (rows, cfg.num_heads, length, cfg.head_dim)

    def make(kind, i):
        return Parameter(Tensor(np.zeros(shape), dtype), name=f"{prefix}.{kind}.{i}",
                         requires_grad=False)

    layers = cfg.num_layers + 1
    return (ParameterTuple([make("key", i) for i in range(layers)]),
            ParameterTuple([make("value", i) for i in range(layers)]))


class _CachedStep(nn.Cell):
    """``construct(ids [B,S] int32, starts [B] int32, pads [B] int32, pick [B,Q] int32)`` → FP32
    logits [B, Q, vocab] of the tokens at sequence positions ``pick``.

    Token ``s`` of row ``b`` is written into ``key_caches``/``value_caches`` [B, N, T, D] at slot
    ``starts[b] + s``, has position id ``max(starts[b] + s - pads[b], 0)`` and attends slots
    ``pads[b] .. starts[b] + s`` (a query before ``pads[b]`` attends nothing: padding).
    ``starts[b] + S`` must not exceed T.
    """

    def __init__(self, model, key_caches, value_caches):
        super().__init__()
        self.model = model
        self.key_caches, self.value_caches = key_caches, value_caches
        rows, heads, length, _ = key_caches[0].shape
        self.slots = Tensor(np.arange(length, dtype=np.int32))
        self.rows = Tensor(np.arange(rows, dtype=np.int32))
        self.heads = Tensor(np.arange(heads, dtype=np.int32))
        self.num_heads = heads
        self.gather = ops.GatherD()
        self.broadcast = ops.BroadcastTo((-1, -1, model.config.hidden_size))
        self.expand = ops.ExpandDims()
        self.reshape = ops.Reshape()
        self.stack = ops.Stack(axis=-1)
        self.cast = ops.Cast()

    def construct(self, input_ids, starts, pads, pick):
        b, s = input_ids.shape
        n = self.num_heads
        written = self.reshape(starts, (b, 1)) + self.reshape(self.slots[:s], (1, s))     # [B, S]
        position_ids = ops.maximum(written - self.reshape(pads, (b, 1)), 0)
        keys = self.reshape(self.slots, (1, 1, -1))
        allowed = ops.logical_and(keys <= self.reshape(written, (b, s, 1)),
                                  keys >= self.reshape(pads, (b, 1, 1)))
        mask = self.cast(allowed, ms.float32)
        shape = (b, n, s)
        index = self.stack((ops.broadcast_to(self.reshape(self.rows[:b], (b, 1, 1)), shape),
                            ops.broadcast_to(self.reshape(self.heads, (1, n, 1)), shape),
                            ops.broadcast_to(self.reshape(written, (b, 1, s)), shape)))
        hidden = self.model.language_model(input_ids, position_ids, mask,
                                           self.key_caches, self.value_caches, index)
        rows = self.broadcast(self.expand(pick, 2))
        return self.model.logits(self.gather(hidden, 1, rows))


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


def _check_cache_size(cfg, rows_name: str, rows: int, length: int) -> None:
    """A cache of ``rows`` rows (named ``rows_name`` in the error) of ``length`` positions fits the model."""
    if length > cfg.max_position_embeddings:
        raise ValueError(f"cache length {length} exceeds max_position_embeddings {cfg.max_position_embeddings}")
    if rows < 1:
        raise ValueError(f"{rows_name} must be >= 1, got {rows}")


class CachedDecoder:
    """A static batch of ``batch_size`` rows decoding in lockstep over ``cache_length`` slots.

    :meth:`prefill` left-pads the prompts to one length (so every row's next token goes to the
    same slot) and remembers each row's padding; :meth:`decode` feeds one token per row and
    returns the logits after it. Callers pass only token ids: the decoder keeps the write
    position, the padding, and so the position ids and masks. Row ``b``'s position ids count
    from its first real token and its padding slots are never attended.
    """

    def __init__(self, model, batch_size: int, cache_length: int, cache_dtype: str = None):
        cfg = model.config
        _check_cache_size(cfg, "batch_size", batch_size, cache_length)
        self.batch_size, self.cache_length, self.pad_id = batch_size, cache_length, cfg.eod_token_id
        keys, values = _kv_parameters(cfg, "kv_cache", batch_size, cache_length,
                                      DTYPE[cache_dtype or cfg.compute_dtype])
        self._step = _CachedStep(model, keys, values)
        self._reorder = _CacheReorder(keys, values)
        self._last = Tensor(np.zeros((batch_size, 1), np.int32))
        self.pads = np.zeros(batch_size, np.int32)
        self.length = 0            # slots written so far (padding included)

    def prefill(self, prompts: list, length: int = 0) -> np.ndarray:
        """Start over with ``prompts`` (``batch_size`` token lists), left-padded to ``length``
        slots (default: the longest prompt). Returns FP32 logits [B, V] after each prompt."""
        longest = max(len(t) for t in prompts)
        length = length or longest
        if len(prompts) != self.batch_size or min(len(t) for t in prompts) < 1:
            raise ValueError(f"prefill needs {self.batch_size} non-empty prompts, got "
                             f"{[len(t) for t in prompts]} tokens")
        if not longest <= length <= self.cache_length:
            raise ValueError(f"prefill length {length} must hold the longest prompt ({longest}) "
                             f"within the cache's {self.cache_length} slots")
        ids = np.full((self.batch_size, length), self.pad_id, np.int32)
        for b, toks in enumerate(prompts):
            ids[b, length - len(toks):] = toks
        self.pads = np.array([length - len(t) for t in prompts], np.int32)
        self.length = 0
        return self._run(ids)

    def decode(self, tokens) -> np.ndarray:
        """Feed one token per row (``tokens`` [B] ints) at the next slot; returns logits [B, V]."""
        if self.length == 0:
            raise ValueError("decode before prefill: call prefill first")
        if self.length >= self.cache_length:
            raise ValueError(f"the cache's {self.cache_length} slots are full")
        return self._run(np.asarray(tokens, np.int32).reshape(self.batch_size, 1))

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: make row ``i`` a copy of row ``rows[i]`` (its cache and its padding)."""
        rows = np.asarray(rows, np.int32)
        self._reorder(Tensor(rows))
        self.pads = self.pads[rows]

    def _run(self, ids: np.ndarray) -> np.ndarray:
        b, s = ids.shape
        starts = np.full(b, self.length, np.int32)
        pick = self._last if s == 1 else Tensor(np.full((b, 1), s - 1, np.int32))
        out = self._step(Tensor(ids), Tensor(starts), Tensor(self.pads), pick)
        self.length += s
        return out.asnumpy()[:, 0, :]


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


class _CopyRows(nn.Cell):
    """``construct(src_rows [M], index [M,N,S,3])``: for every layer, writes source cache rows
    ``src_rows`` (each [N, S, D]; with ``length``, their first S = ``length`` positions) into the
    destination caches at ``index``."""

    def __init__(self, src_keys, src_values, dst_keys, dst_values, length: int = None):
        super().__init__()
        self.src = src_keys + src_values
        self.dst = dst_keys + dst_values
        self.length = length
        self.gather = ops.Gather()
        self.scatter = ops.ScatterNdUpdate()

    def construct(self, src_rows, index):
        for src, dst in zip(self.src, self.dst):
            rows = self.gather(src, src_rows, 0)
            if self.length is not None:
                rows = rows[:, :, :self.length, :]
            self.scatter(dst, index, rows)
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
    of pool rows (``n`` samples of one prompt prefill once); a prompt whose first tokens a pool
    row already holds starts from a copy of them and computes only the rest. Shapes are powers of two, so a
    steady workload compiles nothing new; :attr:`shapes` records every (kind, shape) seen, the
    graph-compile count of graph mode. ``jit_decode`` (default: in PyNative mode, where prefill
    keeps less memory than a graph): compile only the pool step (decode and verification) as a
    graph, which removes the per-operator dispatch of every decode step.
    """

    def __init__(self, model, slots: int, length: int, pad_id: int, cache_dtype: str = None,
                 prefill_tokens: int = 2048, jit_decode: bool = None):
        cfg = model.config
        _check_cache_size(cfg, "slots", slots, length)
        self.model, self.cfg = model, cfg
        self.slots, self.length, self.pad_id = slots, length, pad_id
        self.prefill_tokens = prefill_tokens
        self.dtype = DTYPE[cache_dtype or cfg.compute_dtype]
        self.keys, self.values = _kv_parameters(cfg, "slot_cache", slots, length, self.dtype)
        self._step = _CachedStep(model, self.keys, self.values)
        if jit_decode is None:
            jit_decode = ms.get_context("mode") == ms.PYNATIVE_MODE
        if jit_decode:           # PyNative: the pool step (decode, verify) as one graph, prefill not
            self._step.construct = ms.jit(self._step.construct)
        self._zeros = Tensor(np.zeros(slots, np.int32))      # no padding in the pool
        self._picks = {}          # (S, all) -> pick Tensor
        self._scratch = {}        # (rows, length) -> (step cell, copy-out cell, copy-in cell)
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
        key = (s, pick_all)
        if key not in self._picks:
            pick = np.arange(s) if pick_all else np.array([s - 1])
            self._picks[key] = Tensor(np.broadcast_to(pick, (p, len(pick))).astype(np.int32))
            self.shapes.add(("forward", p, s, len(pick)))
        out = self._step(Tensor(tokens, ms.int32), Tensor(starts.astype(np.int32)), self._zeros,
                         self._picks[key]).asnumpy()
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
            self._scratch[key] = (_CachedStep(self.model, k, v),
                                  _CopyRows(k, v, self.keys, self.values),
                                  _CopyRows(self.keys, self.values, k, v, length))
        return self._scratch[key]

    def prefill(self, prompts: list, dests: list, prefixes: list = None) -> np.ndarray:
        """Prefill ``prompts`` (token lists) and copy prompt i's cache into pool rows ``dests[i]``.

        ``prefixes[i]`` (optional): None, or ``(row, m)`` when pool row ``row`` holds the keys and
        values of ``prompts[i][:m]`` at positions 0..m-1 (1 <= m < len(prompts[i])): they are
        copied, and only the last tokens are computed — a window of a power-of-two length W
        (at least 16) shared by the call, right-aligned on each prompt, so at most ``len - W``
        tokens are copied and up to ``W - (len - m)`` copied ones are computed again. Every
        source row is read before any destination row is written (a source may also be a
        destination). Returns FP32 logits [len(prompts), V] of each prompt's last token.
        Positions beyond a prompt in its rows hold garbage until the row's decoding overwrites them.
        """
        lengths = [len(t) for t in prompts]
        if min(lengths) < 1 or max(lengths) > self.length:
            raise ValueError(f"prompt lengths must be 1..{self.length}, got {lengths}")
        prefixes = list(prefixes) if prefixes is not None else [None] * len(prompts)
        for n, pre in zip(lengths, prefixes):
            if pre is not None and not (0 <= pre[0] < self.slots and 1 <= pre[1] < n):
                raise ValueError(f"prefix {pre} must name a pool row < {self.slots} and 1 <= m < "
                                 f"the prompt's {n} tokens")
        rows, length = self.prefill_shape(lengths)
        step, copy, load = self._scratch_cells(rows, length)
        todo = max(n - (pre[1] if pre else 0) for n, pre in zip(lengths, prefixes))
        window = min(max(_pow2_at_least(todo), 16), length)
        starts = np.zeros(rows, np.int32)
        ids = np.full((rows, window), self.pad_id, np.int32)
        pick = np.zeros((rows, 1), np.int32)
        for i, toks in enumerate(prompts):
            starts[i] = max(0, len(toks) - window)
            ids[i, :len(toks) - starts[i]] = toks[starts[i]:]
            pick[i, 0] = len(toks) - 1 - starts[i]
        loads = [(i, pre[0]) for i, pre in enumerate(prefixes) if pre is not None]
        if loads:
            m = _pow2_at_least(len(loads))
            loads += [loads[-1]] * (m - len(loads))     # repeats write the same values again
            self.shapes.add(("load", m, rows, length))
            load(Tensor(np.array([src for _, src in loads], np.int32)),
                 Tensor(slot_write_index(np.array([i for i, _ in loads]), self.cfg.num_heads,
                                         np.zeros(m, np.int64), length)))
        self.shapes.add(("prefill", rows, length, window))
        logits = step(Tensor(ids), Tensor(starts), Tensor(np.zeros(rows, np.int32)),
                      Tensor(pick)).asnumpy()
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
