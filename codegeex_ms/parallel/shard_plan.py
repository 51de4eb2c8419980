"""Set a shard strategy on every operator that needs one (reference section 5).

q/k/v and ``dense_h_to_4h`` split their output features over ``mp``; ``attention.dense`` and
``dense_4h_to_h`` split their input features (the partial products are reduced); attention
scores and softmax are split by head; the word embedding table and the tied head are split by
vocabulary rows when ``vocab_parallel``; everything is split by batch over ``dp``.
Strategies only take effect under semi-auto parallel (Ascend/GPU); on CPU they are inert but
checked statically by :mod:`codegeex_ms.parallel.checker`.
"""

from codegeex_ms.model.codegeex import CodeGeeX
from codegeex_ms.model.loss import CodeGeeXWithLoss
from codegeex_ms.parallel.custom_layout import annotate_custom_layouts


def _unwrap(net):
    return net.model if isinstance(net, CodeGeeXWithLoss) else net


def apply_shard_plan(net, parallel) -> None:
    """Shard ``net`` (:class:`CodeGeeX` or :class:`CodeGeeXWithLoss`) for a ParallelConfig."""
    dp, mp = parallel.data_parallel, parallel.model_parallel
    vocab_mp = mp if parallel.vocab_parallel else 1
    model = _unwrap(net)
    if not isinstance(model, CodeGeeX):
        raise TypeError(f"expected a CodeGeeX network, got {type(net).__name__}")
    lm = model.language_model
    lm.embedding.word_embeddings.shard(dp, vocab_mp)
    lm.embedding.position_embeddings.shard(dp, 1)
    lm.embedding.shard_sum(dp)
    lm.shard_mask(dp)
    lm.topQueryEmbedding.top_query_embeddings.shard(dp, 1)
    for layer in list(lm.transformer.layers) + [lm.transformer.topQueryLayer]:
        layer.shard(dp, mp)
        if parallel.recompute:
            layer.recompute()
    lm.transformer.final_layernorm.shard(dp)
    model.head.shard(((dp, 1), (vocab_mp, 1)))
    if isinstance(net, CodeGeeXWithLoss):
        net.loss.shard(dp, vocab_mp)
    annotate_custom_layouts(net)


def parameter_splits(net) -> dict:
    """``{parameter name: splits per dim}`` after :func:`apply_shard_plan` (1 = replicated).

    Names are relative to the :class:`CodeGeeX` model, i.e. the release names.
    """
    out = {}
    for cell_name, cell in _unwrap(net).cells_and_names():
        for attr, split in getattr(cell, "split", {}).items():
            out[f"{cell_name}.{attr}"] = tuple(split)
    return out
