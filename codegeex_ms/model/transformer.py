"""The CodeGeeX decoder: attention, MLP, the pre-LN layer and the top-query layer.

Shapes: B batch, S query tokens, T key slots (T = S for a full forward, the cache length when
decoding), H hidden, N heads, D = H / N. Attention masks are [B, S, T] with 1 = may attend and
0 = blocked; blocked scores get ``-10000`` before an FP32 softmax (reference section 1).
"""

import math

from mindspore import nn, ops

from codegeex_ms.model.layers import LayerNorm, LinearSpec, linear, shard_dropout
from codegeex_ms.ops import FastGelu, MaskedSoftmax


class Attention(nn.Cell):
    """Multi-head attention with q/k/v/dense projections (all with bias).

    ``construct(q_in [B,S,H], kv_in [B,S,H], mask [B,1,S,T], cache=None)`` → [B,S,H] in the
    compute dtype. With ``cache = (key_cache, value_cache, index)`` (caches [B,N,T,D] Parameters,
    index [B,N,S,3] int32 slots to write), the new keys/values are written into the caches in
    place and attention runs over all T cached slots.
    """

    def __init__(self, cfg):
        super().__init__()
        h, spec = cfg.hidden_size, LinearSpec.of_model(cfg)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.query, self.key, self.value, self.dense = (linear(h, h, spec) for _ in range(4))
        self.softmax = MaskedSoftmax(1.0 / math.sqrt(self.head_dim), fused=cfg.fused_kernels)
        self.dropout = nn.Dropout(p=cfg.dropout)
        self.scores = ops.BatchMatMul(transpose_b=True)
        self.context = ops.BatchMatMul()
        self.transpose = ops.Transpose()
        self.merge_transpose = ops.Transpose()
        self.reshape = ops.Reshape()
        self.write_key = ops.ScatterNdUpdate()
        self.write_value = ops.ScatterNdUpdate()

    def shard(self, dp, mp):
        for proj in (self.query, self.key, self.value):
            proj.shard_column(dp, mp)
        self.dense.shard_row(dp, mp)
        self.transpose.shard(((dp, 1, mp, 1),))
        self.merge_transpose.shard(((dp, mp, 1, 1),))
        self.scores.shard(((dp, mp, 1, 1), (dp, mp, 1, 1)))
        self.context.shard(((dp, mp, 1, 1), (dp, mp, 1, 1)))
        self.softmax.shard(dp, mp)
        shard_dropout(self.dropout, ((dp, mp, 1, 1),))
        return self

    def shard_inputs(self, batch, seq):
        n, d = self.num_heads, self.head_dim
        heads = (batch, n, seq, d)
        scores = (batch, n, seq, seq)
        return {"transpose": [(batch, seq, n, d)], "merge_transpose": [heads],
                "scores": [heads, heads], "context": [scores, heads],
                "softmax": [scores, (batch, 1, seq, seq)], "dropout": [scores]}

    def _split_heads(self, x):
        b, s, _ = x.shape
        return self.transpose(self.reshape(x, (b, s, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def construct(self, q_in, kv_in, mask, cache=None):
        q = self._split_heads(self.query(q_in))
        k = self._split_heads(self.key(kv_in))
        v = self._split_heads(self.value(kv_in))
        if cache is not None:
            key_cache, value_cache, index = cache
            k = self.write_key(key_cache, index, k.astype(key_cache.dtype)).astype(q.dtype)
            v = self.write_value(value_cache, index, v.astype(value_cache.dtype)).astype(q.dtype)
        probs = self.dropout(self.softmax(self.scores(q, k), mask))
        ctx = self.merge_transpose(self.context(probs, v), (0, 2, 1, 3))
        b, s = ctx.shape[0], ctx.shape[1]
        return self.dense(self.reshape(ctx, (b, s, self.num_heads * self.head_dim)))


class MLP(nn.Cell):
    """``dense_4h_to_h(fast_gelu(dense_h_to_4h(x)))``: [B,S,H] → [B,S,H]."""

    def __init__(self, cfg):
        super().__init__()
        h, f, spec = cfg.hidden_size, cfg.ffn_hidden_size, LinearSpec.of_model(cfg)
        self.dense_h_to_4h, self.dense_4h_to_h = linear(h, f, spec), linear(f, h, spec)
        self.activation = FastGelu(fused=cfg.fused_kernels)

    def shard(self, dp, mp):
        self.dense_h_to_4h.shard_column(dp, mp)
        self.dense_4h_to_h.shard_row(dp, mp)
        self.activation.shard(((dp, 1, mp),))
        return self

    def shard_inputs(self, batch, seq):
        return {"activation": [(batch, seq, self.dense_h_to_4h.out_features)]}

    def construct(self, x):
        return self.dense_4h_to_h(self.activation(self.dense_h_to_4h(x)))


class TransformerLayer(nn.Cell):
    """Pre-LN block: ``x = h + Attn(LN1(h)); out = x + MLP(LN2(x))``.

    For the top-query layer (``top_query=True``) the attention queries come from ``query_emb``
    (the raw top-query position embedding) while keys and values come from ``LN1(h)``.
    """

    def __init__(self, cfg, top_query=False):
        super().__init__()
        h, eps, dt, pdt = cfg.hidden_size, cfg.layernorm_epsilon, cfg.compute_dtype, cfg.param_dtype
        self.top_query = top_query
        self.input_layernorm = LayerNorm(h, eps, dt, pdt, cfg.fused_kernels)
        self.attention = Attention(cfg)
        self.post_attention_layernorm = LayerNorm(h, eps, dt, pdt, cfg.fused_kernels)
        self.mlp = MLP(cfg)
        self.attn_dropout = nn.Dropout(p=cfg.dropout)
        self.mlp_dropout = nn.Dropout(p=cfg.dropout)
        self.attn_residual = ops.Add()
        self.mlp_residual = ops.Add()

    def shard(self, dp, mp):
        self.input_layernorm.shard(dp)
        self.post_attention_layernorm.shard(dp)
        self.attention.shard(dp, mp)
        self.mlp.shard(dp, mp)
        # The residual stream stays split by batch only: without a strategy MindSpore would split
        # these over all devices and gather them back before every LayerNorm.
        for op in (self.attn_residual, self.mlp_residual):
            op.shard(((dp, 1, 1), (dp, 1, 1)))
        for drop in (self.attn_dropout, self.mlp_dropout):
            shard_dropout(drop, ((dp, 1, 1),))
        return self

    def shard_inputs(self, batch, seq):
        hidden = (batch, seq, self.input_layernorm.hidden)
        return {"attn_residual": [hidden, hidden], "mlp_residual": [hidden, hidden],
                "attn_dropout": [hidden], "mlp_dropout": [hidden]}

    def construct(self, h, mask, query_emb=None, cache=None):
        normed = self.input_layernorm(h)
        q_in = query_emb if self.top_query else normed
        x = self.attn_residual(h, self.attn_dropout(self.attention(q_in, normed, mask, cache)))
        return self.mlp_residual(x, self.mlp_dropout(self.mlp(self.post_attention_layernorm(x))))
