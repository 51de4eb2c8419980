"""The semi-auto-parallel training step executed on a simulated ``dp × mp`` device mesh (NumPy).

MindSpore refuses semi-auto parallel on CPU, so this module executes what the compiled graph of
one training step would do on every device of a mesh, one NumPy array per device, with the
collectives MindSpore inserts done explicitly between devices:

1. **Data boundary** (:func:`graph_batch`): each rank's dataset output becomes the graph's global
   batch as ``dataset_strategy`` says ("data_parallel": the concatenation of all ranks' outputs
   in rank order; "full_batch": every rank holds the whole batch), then each device computes on
   its data-parallel slice (rows of slice ``d`` of ``dp``, replicated over the ``mp`` ranks of its
   group: the compiler's AllGather over the model-parallel group).
2. **Forward and backward** (:func:`forward_backward`) of CodeGeeX (reference section 1) with the
   parameters sliced as :func:`codegeex_ms.parallel.parameter_splits` says: Megatron column
   (q/k/v, dense_h_to_4h: output rows) and row (attention.dense, dense_4h_to_h: input columns)
   splits with an AllReduce of the row-parallel partial sums (and of the input gradients of the
   column-parallel ones in the backward), attention on the local heads, a vocabulary-parallel
   embedding (masked lookup + AllReduce) and tied head, the vocabulary-parallel loss (AllReduce MAX
   of the row maxima, SUM of the exp sums and of the picked logits) and the data-parallel sums of
   the masked loss; then the gradient AllReduce over each parameter's data-parallel replicas
   (MindSpore's ``Mirror``; SUM, since the graph's loss is already the global mean).
3. **Optimizer part** (:func:`optimizer_step`): each device's local slices (cut further by the
   parallel optimizer as ``codegeex_ms.parallel.strategy_file.layout_of`` says), the unscale, the
   overflow decision and the global-norm clip under the rules of
   :mod:`codegeex_ms.parallel.reduction` (the same rules ``codegeex_ms.train.step`` relies on), and
   one AdamW update (``nn.AdamWeightDecay``: no bias correction), then the parameters gathered back.

Rank layout: ``rank = d · mp + m`` (MindSpore's device matrix: the last strategy axis, ``mp``,
varies fastest). Arrays are NumPy in the dtype given (float32 to mirror the device, float64 to
check the sharding exactly). Parameters use the release names (``language_model.transformer.
layers.0.attention.query.weight`` …). A batch is the tuple ``(input_ids [B,S] int, labels [B,S]
int, position_ids [B,S] int, attention_mask [B,S,S] (1 = may attend), loss_mask [B,S] float)``.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import numpy as np

from codegeex_ms.data.sampling import sample_order
from codegeex_ms.parallel.reduction import OptimizerReductions, slice_holders

MASK_PENALTY = 10000.0
LM = "language_model"


@dataclass(frozen=True)
class Mesh:
    """``dp × mp`` devices, ``rank = d · mp + m``."""

    dp: int
    mp: int

    @property
    def world(self) -> int:
        return self.dp * self.mp

    def coords(self, rank: int) -> tuple:
        """``(d, m)`` of ``rank``."""
        return divmod(rank, self.mp)

    def mp_group(self, rank: int) -> List[int]:
        d = rank // self.mp
        return [d * self.mp + j for j in range(self.mp)]

    def dp_group(self, rank: int) -> List[int]:
        m = rank % self.mp
        return [i * self.mp + m for i in range(self.dp)]

    def world_group(self, rank: int) -> List[int]:  # pylint: disable=unused-argument
        return list(range(self.world))


def all_reduce(values: Dict[int, np.ndarray], group: Callable[[int], List[int]], op: str = "sum"):
    """``{rank: reduction of values over group(rank)}``, reduced in group order (so every member
    gets bitwise the same result, as a ring/tree all-reduce does)."""
    out = {}
    for rank in values:
        members = group(rank)
        acc = values[members[0]].copy()
        for other in members[1:]:
            acc = acc + values[other] if op == "sum" else np.maximum(acc, values[other])
        out[rank] = acc
    return out


# ------------------------------------------------------------------------ data boundary

def graph_batch(per_rank: Sequence[tuple], mesh: Mesh, dataset_strategy: str) -> tuple:
    """``(global batch, {rank: rows that rank computes on})`` from each rank's dataset output
    (``per_rank[r]`` = rank r's batch tuple) under ``dataset_strategy`` ("data_parallel" or
    "full_batch"; a tuple strategy is not modelled). The local rows of rank ``(d, m)`` are slice
    ``d`` of ``dp`` of the global batch."""
    if len(per_rank) != mesh.world:
        raise ValueError(f"{len(per_rank)} rank outputs for a mesh of {mesh.world} devices")
    if dataset_strategy == "data_parallel":
        whole = tuple(np.concatenate(column) for column in zip(*per_rank))
    elif dataset_strategy == "full_batch":
        whole = per_rank[0]
        for r, batch in enumerate(per_rank):
            if any(not np.array_equal(a, b) for a, b in zip(batch, whole)):
                raise ValueError(f"full_batch: rank {r} loaded a different batch than rank 0")
    else:
        raise ValueError(f"dataset_strategy {dataset_strategy!r}: the virtual mesh models "
                         "'data_parallel' and 'full_batch'")
    rows = len(whole[0])
    if rows % mesh.dp:
        raise ValueError(f"global batch of {rows} rows cannot be split over dp={mesh.dp}")
    per = rows // mesh.dp
    local = {r: tuple(c[mesh.coords(r)[0] * per:(mesh.coords(r)[0] + 1) * per] for c in whole)
             for r in range(mesh.world)}
    return whole, local


def step_samples(layout: Callable[[int], tuple], world: int, num_samples: int, steps: int,
                 seed: int, dataset_strategy: str) -> List[np.ndarray]:
    """Sample indices of the graph's global batch for each of ``steps`` micro-steps.

    ``layout(rank)`` → ``(shard_id, num_shards, batch_per_rank)`` (e.g. ``data_layout`` of
    ``codegeex_ms.train.distributed``); rank ``r`` reads ``sample_order(num_samples, shard_id,
    num_shards)`` in order, ``batch_per_rank`` indices per step, as ``codegeex_ms.train.data``
    does. The global batch is formed as :func:`graph_batch` forms it."""
    streams = []
    for rank in range(world):
        shard_id, num_shards, batch = layout(rank)
        order = sample_order(num_samples, shuffle=True, seed=seed, num_shards=num_shards,
                             shard_id=shard_id)
        if len(order) < steps * batch:
            raise ValueError(f"rank {rank} has {len(order)} samples, fewer than {steps} × {batch}")
        streams.append(order[:steps * batch].reshape(steps, batch))
    out = []
    for step in range(steps):
        if dataset_strategy == "data_parallel":
            out.append(np.concatenate([s[step] for s in streams]))
        elif dataset_strategy == "full_batch":
            if any(not np.array_equal(s[step], streams[0][step]) for s in streams):
                raise ValueError("full_batch needs every rank to read the same samples")
            out.append(streams[0][step])
        else:
            raise ValueError(f"dataset_strategy {dataset_strategy!r} is not modelled")
    return out


# ------------------------------------------------------------------------ parameters

def _split_axis(name: str, splits: tuple, mp: int):
    """The axis a parameter is split along (None = replicated); each split must be 1 or mp."""
    axes = [i for i, s in enumerate(splits) if s > 1]
    if any(s not in (1, mp) for s in splits) or len(axes) > 1:
        raise ValueError(f"parameter {name}: split {splits} is not a single mp={mp} split")
    return axes[0] if axes else None


def local_slice(full: np.ndarray, name: str, splits: tuple, mesh: Mesh, rank: int) -> np.ndarray:
    """The slice of parameter ``name`` (full array) that ``rank`` holds under ``splits``."""
    axis = _split_axis(name, splits, mesh.mp)
    if axis is None:
        return full.copy()
    m = mesh.coords(rank)[1]
    size = full.shape[axis] // mesh.mp
    return np.take(full, np.arange(m * size, (m + 1) * size), axis=axis).copy()


def assemble(local: Dict[int, np.ndarray], name: str, splits: tuple, mesh: Mesh) -> np.ndarray:
    """Full parameter from the per-rank slices; raises if replicas of a slice differ (a replica
    that drifted is exactly what a missing reduction produces)."""
    axis = _split_axis(name, splits, mesh.mp)
    pieces = []
    for m in range(mesh.mp if axis is not None else 1):
        holders = [d * mesh.mp + m for d in range(mesh.dp)] if axis is not None else range(mesh.world)
        first = local[next(iter(holders))]
        for r in holders:
            if not np.array_equal(local[r], first):
                raise AssertionError(f"{name}: rank {r}'s copy differs from its replicas")
        pieces.append(first)
    return pieces[0] if axis is None else np.concatenate(pieces, axis=axis)


def _expect(splits: Dict[str, tuple], name: str, want: tuple, what: str) -> None:
    if tuple(splits.get(name, ())) != want:
        raise ValueError(f"{name}: the virtual mesh executes a {what} split {want}, the plan "
                         f"says {splits.get(name)}")


def check_megatron_plan(splits: Dict[str, tuple], mp: int, num_layers: int) -> int:
    """Check that the plan is the one executed here; returns the vocabulary split (1 or mp)."""
    vocab = splits[f"{LM}.embedding.word_embeddings.weight"][0]
    if vocab not in (1, mp):
        raise ValueError(f"word embedding split {vocab} must be 1 or mp={mp}")
    layers = [f"{LM}.transformer.layers.{i}" for i in range(num_layers)]
    for prefix in layers + [f"{LM}.transformer.topQueryLayer"]:
        for proj in ("attention.query", "attention.key", "attention.value", "mlp.dense_h_to_4h"):
            _expect(splits, f"{prefix}.{proj}.weight", (mp, 1), "column")
            _expect(splits, f"{prefix}.{proj}.bias", (mp,), "column")
        for proj in ("attention.dense", "mlp.dense_4h_to_h"):
            _expect(splits, f"{prefix}.{proj}.weight", (1, mp), "row")
            _expect(splits, f"{prefix}.{proj}.bias", (1,), "row")
        for norm in ("input_layernorm", "post_attention_layernorm"):
            _expect(splits, f"{prefix}.{norm}.weight", (1,), "replicated")
    return vocab


# ------------------------------------------------------------------------ model pieces (one rank)

def _layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xhat = xc * rstd
    return xhat * w + b, (xhat, rstd, w)


def _layernorm_bwd(dy, cache):
    xhat, rstd, w = cache
    h = xhat.shape[-1]
    dw = (dy * xhat).reshape(-1, h).sum(0)
    db = dy.reshape(-1, h).sum(0)
    g = dy * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, dw, db


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class _Ranks:
    """Per-rank state of one step: ``p[rank]`` local parameters, ``g[rank]`` local gradients."""

    def __init__(self, mesh, params, heads, eps):
        self.mesh, self.p, self.heads, self.eps = mesh, params, heads, eps
        self.g = {r: {k: np.zeros_like(v) for k, v in params[r].items()} for r in params}
        self.log = []  # (collective, group kind, elements per rank)

    def reduce(self, values, kind, op="sum"):
        group = {"mp": self.mesh.mp_group, "dp": self.mesh.dp_group, "world": self.mesh.world_group}[kind]
        self.log.append((f"AllReduce-{op}", kind, int(np.size(next(iter(values.values()))))))
        return all_reduce(values, group, op)

    def add_grad(self, rank, name, value):
        self.g[rank][name] += value


def _linear(x, w, b):
    return x @ w.T + (0 if b is None else b)


def _attention_fwd(R, prefix, q_in, kv_in, mask):
    """Local heads of every rank; returns the AllReduced output and the caches."""
    out, caches = {}, {}
    for r in R.p:
        p = R.p[r]
        b, s, _ = q_in[r].shape
        local_heads = R.heads // R.mesh.mp
        d = p[f"{prefix}.query.weight"].shape[0] // local_heads

        def heads(x):
            return x.reshape(b, -1, local_heads, d).transpose(0, 2, 1, 3)

        q = heads(_linear(q_in[r], p[f"{prefix}.query.weight"], p[f"{prefix}.query.bias"]))
        k = heads(_linear(kv_in[r], p[f"{prefix}.key.weight"], p[f"{prefix}.key.bias"]))
        v = heads(_linear(kv_in[r], p[f"{prefix}.value.weight"], p[f"{prefix}.value.bias"]))
        scores = (q @ k.transpose(0, 1, 3, 2)) / np.sqrt(d) - MASK_PENALTY * (1.0 - mask[r][:, None])
        scores = scores - scores.max(-1, keepdims=True)
        e = np.exp(scores)
        probs = e / e.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, local_heads * d)
        out[r] = _linear(ctx, p[f"{prefix}.dense.weight"], None)   # row-parallel partial sum
        caches[r] = (q, k, v, probs, ctx, d)
    out = R.reduce(out, "mp")
    for r in out:
        out[r] = out[r] + R.p[r][f"{prefix}.dense.bias"]
    return out, caches


def _attention_bwd(R, prefix, dout, q_in, kv_in, caches):
    dq_in, dkv_in = {}, {}
    for r in R.p:
        p = R.p[r]
        q, k, v, probs, ctx, d = caches[r]
        b, s, h = dout[r].shape
        R.add_grad(r, f"{prefix}.dense.bias", dout[r].reshape(-1, h).sum(0))
        R.add_grad(r, f"{prefix}.dense.weight", dout[r].reshape(-1, h).T @ ctx.reshape(b * s, -1))
        dctx = (dout[r] @ p[f"{prefix}.dense.weight"]).reshape(b, s, -1, d).transpose(0, 2, 1, 3)
        dprobs = dctx @ v.transpose(0, 1, 3, 2)
        dv = probs.transpose(0, 1, 3, 2) @ dctx
        dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdims=True)) / np.sqrt(d)
        dq = dscores @ k
        dk = dscores.transpose(0, 1, 3, 2) @ q

        def merge(x):
            return x.transpose(0, 2, 1, 3).reshape(b * s, -1)

        parts = {}
        for name, grad, x in (("query", dq, q_in[r]), ("key", dk, kv_in[r]), ("value", dv, kv_in[r])):
            g2 = merge(grad)
            R.add_grad(r, f"{prefix}.{name}.weight", g2.T @ x.reshape(b * s, -1))
            R.add_grad(r, f"{prefix}.{name}.bias", g2.sum(0))
            parts[name] = (g2 @ p[f"{prefix}.{name}.weight"]).reshape(b, s, -1)  # partial over mp
        dq_in[r] = parts["query"]
        dkv_in[r] = parts["key"] + parts["value"]
    return R.reduce(dq_in, "mp"), R.reduce(dkv_in, "mp")


def _mlp_fwd(R, prefix, x):
    out, caches = {}, {}
    for r in R.p:
        p = R.p[r]
        a = _linear(x[r], p[f"{prefix}.dense_h_to_4h.weight"], p[f"{prefix}.dense_h_to_4h.bias"])
        sig = _sigmoid(1.702 * a)
        act = a * sig
        out[r] = _linear(act, p[f"{prefix}.dense_4h_to_h.weight"], None)
        caches[r] = (a, sig, act)
    out = R.reduce(out, "mp")
    for r in out:
        out[r] = out[r] + R.p[r][f"{prefix}.dense_4h_to_h.bias"]
    return out, caches


def _mlp_bwd(R, prefix, dout, x, caches):
    dx = {}
    for r in R.p:
        p = R.p[r]
        a, sig, act = caches[r]
        h = dout[r].shape[-1]
        d2 = dout[r].reshape(-1, h)
        R.add_grad(r, f"{prefix}.dense_4h_to_h.bias", d2.sum(0))
        R.add_grad(r, f"{prefix}.dense_4h_to_h.weight", d2.T @ act.reshape(d2.shape[0], -1))
        dact = dout[r] @ p[f"{prefix}.dense_4h_to_h.weight"]
        da = dact * (sig + 1.702 * a * sig * (1.0 - sig))
        da2 = da.reshape(d2.shape[0], -1)
        R.add_grad(r, f"{prefix}.dense_h_to_4h.weight", da2.T @ x[r].reshape(d2.shape[0], -1))
        R.add_grad(r, f"{prefix}.dense_h_to_4h.bias", da2.sum(0))
        dx[r] = da @ p[f"{prefix}.dense_h_to_4h.weight"]
    return R.reduce(dx, "mp")


def _per_rank(fn, *dicts):
    return {r: fn(r, *(d[r] for d in dicts)) for r in dicts[0]}


def _layer_fwd(R, prefix, h, mask, query=None):
    ln1 = {r: _layernorm(h[r], R.p[r][f"{prefix}.input_layernorm.weight"],
                         R.p[r][f"{prefix}.input_layernorm.bias"], R.eps) for r in h}
    normed = {r: ln1[r][0] for r in h}
    q_in = normed if query is None else query
    attn, attn_c = _attention_fwd(R, f"{prefix}.attention", q_in, normed, mask)
    x = _per_rank(lambda r, a, b: a + b, h, attn)
    ln2 = {r: _layernorm(x[r], R.p[r][f"{prefix}.post_attention_layernorm.weight"],
                         R.p[r][f"{prefix}.post_attention_layernorm.bias"], R.eps) for r in h}
    y = {r: ln2[r][0] for r in h}
    mlp, mlp_c = _mlp_fwd(R, f"{prefix}.mlp", y)
    out = _per_rank(lambda r, a, b: a + b, x, mlp)
    return out, (ln1, normed, q_in, attn_c, ln2, y, mlp_c)


def _layer_bwd(R, prefix, dout, cache, top_query):
    ln1, normed, q_in, attn_c, ln2, y, mlp_c = cache
    dy = _mlp_bwd(R, f"{prefix}.mlp", dout, y, mlp_c)
    dx = {}
    for r in dout:
        g, dw, db = _layernorm_bwd(dy[r], ln2[r][1])
        R.add_grad(r, f"{prefix}.post_attention_layernorm.weight", dw)
        R.add_grad(r, f"{prefix}.post_attention_layernorm.bias", db)
        dx[r] = dout[r] + g
    dq_in, dkv_in = _attention_bwd(R, f"{prefix}.attention", dx, q_in, normed, attn_c)
    dh, dquery = {}, None
    if top_query:
        dquery = dq_in
    for r in dout:
        dnormed = dkv_in[r] + (0 if top_query else dq_in[r])
        g, dw, db = _layernorm_bwd(dnormed, ln1[r][1])
        R.add_grad(r, f"{prefix}.input_layernorm.weight", dw)
        R.add_grad(r, f"{prefix}.input_layernorm.bias", db)
        dh[r] = dx[r] + g
    return dh, dquery


def _lookup(R, name, ids, split):
    """Embedding lookup; with a vocabulary split, masked local lookup + AllReduce over mp."""
    out = {}
    for r in ids:
        table = R.p[r][name]
        if split == 1:
            out[r] = table[ids[r]]
        else:
            off = R.mesh.coords(r)[1] * table.shape[0]
            local = ids[r] - off
            inside = (local >= 0) & (local < table.shape[0])
            out[r] = np.where(inside[..., None], table[np.where(inside, local, 0)], 0).astype(table.dtype)
    return R.reduce(out, "mp") if split > 1 else out


def _lookup_bwd(R, name, ids, dout, split):
    for r in ids:
        table = R.p[r][name]
        off = R.mesh.coords(r)[1] * table.shape[0] if split > 1 else 0
        local = ids[r] - off
        inside = (local >= 0) & (local < table.shape[0])
        grad = np.zeros_like(table)
        np.add.at(grad, local[inside], dout[r][inside])
        R.add_grad(r, name, grad)


def forward_backward(mesh: Mesh, local_params: Dict[int, dict], local_batch: Dict[int, tuple],
                     splits: Dict[str, tuple], num_layers: int, num_heads: int,
                     eps: float = 1e-5, sens: float = 1.0) -> tuple:
    """Loss and gradients of ``sens × loss`` on every device.

    ``local_params[rank]``: that rank's parameter slices (:func:`local_slice`);
    ``local_batch[rank]``: the rows it computes on (:func:`graph_batch`). Returns
    ``(loss {rank: scalar}, grads {rank: {name: local slice}}, log)``: the gradients after the
    data-parallel AllReduce, ``log`` the collectives executed as ``(op, group, elements)``.
    """
    vocab_split = check_megatron_plan(splits, mesh.mp, num_layers)
    if num_heads % mesh.mp:
        raise ValueError(f"num_heads={num_heads} does not divide over mp={mesh.mp}")
    R = _Ranks(mesh, local_params, num_heads, eps)
    ids = {r: b[0] for r, b in local_batch.items()}
    labels = {r: b[1] for r, b in local_batch.items()}
    pos = {r: b[2] for r, b in local_batch.items()}
    dtype = next(iter(local_params[0].values())).dtype
    mask = {r: b[3].astype(dtype) for r, b in local_batch.items()}
    loss_mask = {r: b[4].astype(dtype).reshape(-1) for r, b in local_batch.items()}
    word = f"{LM}.embedding.word_embeddings.weight"
    posname = f"{LM}.embedding.position_embeddings.weight"
    topq = f"{LM}.topQueryEmbedding.top_query_embeddings.weight"
    fin = f"{LM}.transformer.final_layernorm"

    # forward
    h = _per_rank(lambda r, a, b: a + b, _lookup(R, word, ids, vocab_split), _lookup(R, posname, pos, 1))
    caches = []
    for i in range(num_layers):
        h, c = _layer_fwd(R, f"{LM}.transformer.layers.{i}", h, mask)
        caches.append(c)
    lnf = {r: _layernorm(h[r], R.p[r][f"{fin}.weight"], R.p[r][f"{fin}.bias"], eps) for r in h}
    query = _lookup(R, topq, pos, 1)
    top = f"{LM}.transformer.topQueryLayer"
    hout, top_cache = _layer_fwd(R, top, {r: lnf[r][0] for r in h}, mask, query)
    hidden = hout[0].shape[-1]
    flat = {r: hout[r].reshape(-1, hidden) for r in h}
    logits = {r: flat[r] @ R.p[r][word].T for r in h}            # [rows, vocab / vocab_split]

    # vocabulary-parallel cross-entropy; rows are split by dp
    row_max = {r: logits[r].max(-1, keepdims=True) for r in h}
    if vocab_split > 1:
        row_max = R.reduce(row_max, "mp", "max")
    shifted = {r: logits[r] - row_max[r] for r in h}
    sum_exp = {r: np.exp(shifted[r]).sum(-1, keepdims=True) for r in h}
    onehot = {}
    for r in h:
        rows_v = logits[r].shape[1]
        off = mesh.coords(r)[1] * rows_v if vocab_split > 1 else 0
        onehot[r] = (labels[r].reshape(-1, 1) - off == np.arange(rows_v)[None]).astype(dtype)
    picked = {r: (shifted[r] * onehot[r]).sum(-1, keepdims=True) for r in h}
    if vocab_split > 1:
        sum_exp, picked = R.reduce(sum_exp, "mp"), R.reduce(picked, "mp")
    per_token = {r: (np.log(sum_exp[r]) - picked[r]).reshape(-1) for r in h}
    num = R.reduce({r: np.asarray((per_token[r] * loss_mask[r]).sum()) for r in h}, "dp")
    den = R.reduce({r: np.asarray(loss_mask[r].sum()) for r in h}, "dp")
    loss = {r: num[r] / np.maximum(den[r], 1.0) for r in h}

    # backward
    dflat = {}
    for r in h:
        dper = sens * loss_mask[r] / np.maximum(den[r], 1.0)
        dlogits = dper[:, None] * (np.exp(shifted[r]) / sum_exp[r] - onehot[r])
        R.add_grad(r, word, dlogits.T @ flat[r])
        dflat[r] = dlogits @ R.p[r][word]
    if vocab_split > 1:
        dflat = R.reduce(dflat, "mp")
    dh = {r: dflat[r].reshape(hout[r].shape) for r in h}
    dh, dquery = _layer_bwd(R, top, dh, top_cache, top_query=True)
    _lookup_bwd(R, topq, pos, dquery, 1)
    for r in h:
        g, dw, db = _layernorm_bwd(dh[r], lnf[r][1])
        R.add_grad(r, f"{fin}.weight", dw)
        R.add_grad(r, f"{fin}.bias", db)
        dh[r] = g
    for i in reversed(range(num_layers)):
        dh, _ = _layer_bwd(R, f"{LM}.transformer.layers.{i}", dh, caches[i], top_query=False)
    _lookup_bwd(R, word, ids, dh, vocab_split)
    _lookup_bwd(R, posname, pos, dh, 1)

    # Mirror: every parameter's gradient summed over its data-parallel replicas
    grads = {r: {} for r in h}
    for name in R.g[0]:
        reduced = R.reduce({r: R.g[r][name] for r in h}, "dp")
        for r in h:
            grads[r][name] = reduced[r]
    return loss, grads, R.log


# ------------------------------------------------------------------------ optimizer part

@dataclass(frozen=True)
class AdamW:
    """``nn.AdamWeightDecay`` hyper-parameters for one update (``lr`` already scheduled)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    clip_norm: float


def optimizer_rows(name, shape, splits, mesh, rank, opt_size) -> slice:
    """Rows of the local (mp) slice's first dimension (``shape`` is the local slice's) that
    ``rank`` updates under the parallel optimizer (strategy_file.layout_of's rule: the holders of
    a slice cut into groups of ``opt_size`` consecutive members)."""
    if opt_size <= 1:
        return slice(None)
    axis = _split_axis(name, splits, mesh.mp)
    d, _ = mesh.coords(rank)
    position = d if axis is not None else rank
    rows = shape[0] // opt_size
    j = position % opt_size
    return slice(j * rows, (j + 1) * rows)


def optimizer_step(mesh: Mesh, params: Dict[int, dict], grads: Dict[int, dict],
                   splits: Dict[str, tuple], opt_sizes: Dict[str, int], no_decay: set,
                   hp: AdamW, scale: float, reductions: OptimizerReductions,
                   moments: Dict[int, dict] = None) -> dict:
    """One loss-scaled, clipped AdamW step on every device's optimizer-side slices.

    ``grads[rank]``: local (mp-sliced, dp-reduced) gradients of ``scale × loss``;
    ``opt_sizes[name]``: the parallel-optimizer group of each parameter (0 = whole);
    ``reductions``: which cross-device reductions the step applies
    (:func:`codegeex_ms.parallel.reduction.optimizer_reductions`). Returns
    ``{"finite": {rank: bool}, "norm": {rank: float}, "params"/"m"/"v": {rank: {name: local
    slice}}}``: the new parameters and Adam moments, reassembled from the optimizer shards (the
    AllGather before the next forward). Moments start at zero unless ``moments`` (``{rank: {name: (m, v)}}``) is given.
    """
    names = list(params[0])
    shard = {r: {n: grads[r][n][optimizer_rows(n, grads[r][n].shape, splits[n], mesh, r,
                                           opt_sizes.get(n, 0))] / scale for n in names}
             for r in params}
    local_overflow = {r: np.asarray(float(not all(np.isfinite(g).all() for g in shard[r].values())))
                      for r in params}
    overflow = all_reduce(local_overflow, mesh.world_group) if reductions.overflow else local_overflow
    finite = {r: bool(overflow[r] == 0) for r in params}
    squares = {}
    for r in params:
        total = np.zeros((), dtype=np.float64)
        for n in names:
            sq = np.sum(np.square(shard[r][n].astype(np.float64)))
            if reductions.norm:
                sq = sq / slice_holders(splits[n], mesh.dp, mesh.mp, opt_sizes.get(n, 0))
            total = total + sq
        squares[r] = total
    if reductions.norm:
        squares = all_reduce(squares, mesh.world_group)
    norm = {r: float(np.sqrt(squares[r])) for r in params}
    new, m_out, v_out = {}, {}, {}
    for r in params:
        factor = hp.clip_norm / max(norm[r], hp.clip_norm)
        new[r], m_out[r], v_out[r] = {}, {}, {}
        for n in names:
            rows = optimizer_rows(n, grads[r][n].shape, splits[n], mesh, r, opt_sizes.get(n, 0))
            p = params[r][n][rows]
            m0, v0 = (moments[r][n] if moments else (np.zeros_like(p), np.zeros_like(p)))
            m, v = m0, v0
            if finite[r]:
                g = shard[r][n] * factor
                m = hp.beta1 * m0 + (1 - hp.beta1) * g
                v = hp.beta2 * v0 + (1 - hp.beta2) * g * g
                update = m / (np.sqrt(v) + hp.eps)
                if n not in no_decay:
                    update = update + hp.weight_decay * p
                p = p - hp.lr * update
            new[r][n], m_out[r][n], v_out[r][n] = p, m, v
    return {"finite": finite, "norm": norm,
            "params": _gather_opt(new, splits, opt_sizes, mesh),
            "m": _gather_opt(m_out, splits, opt_sizes, mesh),
            "v": _gather_opt(v_out, splits, opt_sizes, mesh)}


def _gather_opt(shards: Dict[int, dict], splits, opt_sizes, mesh: Mesh) -> Dict[int, dict]:
    """The parallel optimizer's AllGather: each rank's local (mp) slices from the optimizer
    shards of its group."""
    out = {r: {} for r in shards}
    for n in shards[0]:
        size = opt_sizes.get(n, 0)
        for r in shards:
            if size <= 1:
                out[r][n] = shards[r][n]
                continue
            m = mesh.coords(r)[1]
            holders = ([i * mesh.mp + m for i in range(mesh.dp)]
                       if _split_axis(n, splits[n], mesh.mp) is not None else list(range(mesh.world)))
            start = (holders.index(r) // size) * size
            out[r][n] = np.concatenate([shards[h][n] for h in holders[start:start + size]])
    return out
