"""CodeGeeX as MindSpore Cells, with parameter names equal to the release's flattened keys.

``CodeGeeX(cfg)`` maps token ids to FP32 logits; its parameters are named exactly like the
release checkpoint below ``module`` (``language_model.transformer.layers.0.attention.query.weight``
…), so loading the release is a rename-free copy.
"""

import mindspore as ms
from mindspore import nn, ops

from codegeex_ms.model.layers import Embedding, LayerNorm, shard_dropout
from codegeex_ms.ops.w8a16 import GEMM_MIN_ROWS, float_weight_matmul
from codegeex_ms.model.transformer import TransformerLayer


class TokenEmbedding(nn.Cell):
    """``word_embeddings[ids] + position_embeddings[pos]`` → [B, S, H], then dropout."""

    def __init__(self, cfg):
        super().__init__()
        args = (cfg.compute_dtype, cfg.param_dtype, cfg.init_std)
        self.word_embeddings = Embedding(cfg.vocab_size, cfg.hidden_size, *args)
        self.position_embeddings = Embedding(cfg.max_position_embeddings, cfg.hidden_size, *args)
        self.dropout = nn.Dropout(p=cfg.dropout)
        self.add = ops.Add()
        self.hidden = cfg.hidden_size

    def shard_sum(self, dp):
        """Split the sum of the two lookups and its dropout by batch (``dp``), like the layers."""
        self.add.shard(((dp, 1, 1), (dp, 1, 1)))
        shard_dropout(self.dropout, ((dp, 1, 1),))
        return self

    def shard_inputs(self, batch, seq):
        hidden = (batch, seq, self.hidden)
        return {"add": [hidden, hidden], "dropout": [hidden]}

    def construct(self, input_ids, position_ids):
        return self.dropout(self.add(self.word_embeddings(input_ids), self.position_embeddings(position_ids)))


class TopQueryEmbedding(nn.Cell):
    """The top-query layer's own position table: ``top_query_embeddings[pos]`` → [B, S, H]."""

    def __init__(self, cfg):
        super().__init__()
        self.top_query_embeddings = Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                              cfg.compute_dtype, cfg.param_dtype, cfg.init_std)

    def construct(self, position_ids):
        return self.top_query_embeddings(position_ids)


class Transformer(nn.Cell):
    """``num_layers`` decoder layers, the final LayerNorm, then the top-query layer."""

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.CellList([TransformerLayer(cfg) for _ in range(cfg.num_layers)])
        self.topQueryLayer = TransformerLayer(cfg, top_query=True)  # pylint: disable=invalid-name
        self.final_layernorm = LayerNorm(cfg.hidden_size, cfg.layernorm_epsilon, cfg.compute_dtype,
                                         cfg.param_dtype, cfg.fused_kernels)

    def construct(self, h, mask, query_emb, key_caches=None, value_caches=None, index=None):
        cache = None
        for i, layer in enumerate(self.layers):
            if key_caches is not None:
                cache = (key_caches[i], value_caches[i], index)
            h = layer(h, mask, None, cache)
        if key_caches is not None:
            cache = (key_caches[-1], value_caches[-1], index)
        return self.topQueryLayer(self.final_layernorm(h), mask, query_emb, cache)


class LanguageModel(nn.Cell):
    """Embeddings + transformer: ids, positions, mask [B,S,T] → hidden [B,S,H] (compute dtype)."""

    def __init__(self, cfg):
        super().__init__()
        self.embedding = TokenEmbedding(cfg)
        self.topQueryEmbedding = TopQueryEmbedding(cfg)  # pylint: disable=invalid-name
        self.transformer = Transformer(cfg)
        self.expand = ops.ExpandDims()

    def shard_mask(self, dp):
        """Split the attention mask [B, S, T] by batch (``dp``) as every layer's softmax reads it."""
        self.expand.shard(((dp, 1, 1),))
        return self

    def shard_inputs(self, batch, seq):
        return {"expand": [(batch, seq, seq)]}

    def construct(self, input_ids, position_ids, attention_mask, key_caches=None, value_caches=None,
                  index=None):
        mask = self.expand(attention_mask, 1)
        h = self.embedding(input_ids, position_ids)
        query_emb = self.topQueryEmbedding(position_ids)
        return self.transformer(h, mask, query_emb, key_caches, value_caches, index)


_ITEMSIZE = {ms.float16: 2, ms.bfloat16: 2, ms.float32: 4}
HEAD_CHUNK_ROWS = 2048
"""Vocabulary rows the tied head widens at a time when the compute dtype is wider than the
table's (e.g. FP16 table, FP32 compute): 2048 × hidden 5120 × 4 B = 40 MiB live, not the whole
table's FP32 copy (1.07 GB for 13B)."""


def head_chunks(vocab_size: int, chunk_rows: int) -> tuple:
    """``(start, rows)`` spans covering ``vocab_size`` rows, each at most ``chunk_rows``."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return tuple((start, min(chunk_rows, vocab_size - start)) for start in range(0, vocab_size, chunk_rows))


class CodeGeeX(nn.Cell):
    """CodeGeeX with the output head tied to the word embedding.

    ``construct(input_ids [B,S] int32, position_ids [B,S] int32, attention_mask [B,S,S])`` →
    logits [B, S, vocab_size] FP32. The mask is 1 where a query may attend a key, 0 elsewhere.

    When the compute dtype is wider than the stored table (FP16 weights, FP32 compute: the CPU
    inference configs) no widened copy of the whole table is ever made: in inference
    (``set_train(False)``) on CPU the fused float-weight kernel (``ops.w8a16.float_weight_matmul``,
    chosen by ``fused_kernels``) reads the FP16 table itself and widens it in registers; otherwise (no
    kernel, or training: the kernel has no backward) the head multiplies by the table in chunks of
    ``HEAD_CHUNK_ROWS`` rows, each widened just before its matmul. Both equal one matmul with the
    widened table (each logit is the same dot product, FP32 sums). Otherwise (e.g. FP32 master
    weights, FP16 compute) it casts the table once and runs one matmul. An FP32 table with FP32
    compute goes through the kernel in inference for fewer than ``GEMM_MIN_ROWS`` rows (decode
    logits: the table streamed on all cores; measured faster than MindSpore's MatMul there, while
    the layers' smaller FP32 matrices are faster on MatMul).
    """

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.language_model = LanguageModel(cfg)
        self.head = ops.MatMul(transpose_b=True)
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.compute_dtype = self.language_model.embedding.word_embeddings.out_dtype
        table_dtype = self.language_model.embedding.word_embeddings.weight.dtype
        widening = _ITEMSIZE[self.compute_dtype] > _ITEMSIZE[table_dtype]
        self.head_spans = head_chunks(cfg.vocab_size, HEAD_CHUNK_ROWS) if widening else ()
        self.widening = widening
        self.head_fused = float_weight_matmul(cfg.fused_kernels) if self.compute_dtype == ms.float32 else None
        self.slice = ops.Slice()
        self.concat = ops.Concat(axis=-1)

    def shard_inputs(self, rows):
        h = self.config.hidden_size
        return {"head": [(rows, h), (self.config.vocab_size, h)]}

    def logits(self, hidden):
        """Tied head: hidden [..., H] → FP32 logits [..., vocab_size] (kernel or chunks: see the class)."""
        weight = self.language_model.embedding.word_embeddings.weight
        flat = self.reshape(self.cast(hidden, self.compute_dtype), (-1, self.config.hidden_size))
        if self.head_fused is not None and not self.training and (self.widening or flat.shape[0] < GEMM_MIN_ROWS):
            out = self.head_fused(flat, weight)
        elif self.head_spans:
            parts = ()
            for start, rows in self.head_spans:
                rows_table = self.slice(weight, (start, 0), (rows, self.config.hidden_size))
                parts = parts + (self.head(flat, self.cast(rows_table, self.compute_dtype)),)
            out = self.cast(self.concat(parts), ms.float32)
        else:
            out = self.cast(self.head(flat, self.cast(weight, self.compute_dtype)), ms.float32)
        return self.reshape(out, hidden.shape[:-1] + (self.config.vocab_size,))

    def construct(self, input_ids, position_ids, attention_mask):
        return self.logits(self.language_model(input_ids, position_ids, attention_mask))
