"""The release layout: names, shapes, the 13B parameter count, size inference, mismatch reports."""

import pytest

from codegeex_ms.checkpoint import CODEGEEX_13B, LayoutMismatchError, ModelSizes, check_layout, infer_sizes, \
    num_parameters, release_layout
from codegeex_ms.checkpoint.layout import release_key_path


def test_13b_layout_has_the_published_parameter_count():
    layout = release_layout(CODEGEEX_13B)
    assert num_parameters(layout) == 12_873_943_040
    assert len(layout) == 3 + 40 * 16 + 2  # embeddings, 39 layers + top-query layer, final LayerNorm


def test_13b_layout_names_and_shapes():
    layout = release_layout(CODEGEEX_13B)
    names = list(layout)
    assert names[:3] == ["language_model.embedding.word_embeddings.weight",
                         "language_model.embedding.position_embeddings.weight",
                         "language_model.topQueryEmbedding.top_query_embeddings.weight"]
    assert names[3] == "language_model.transformer.layers.0.input_layernorm.weight"
    assert names[-19] == "language_model.transformer.layers.38.mlp.dense_4h_to_h.bias"
    assert names[-18] == "language_model.transformer.topQueryLayer.input_layernorm.weight"
    assert names[-2:] == ["language_model.transformer.final_layernorm.weight",
                          "language_model.transformer.final_layernorm.bias"]
    assert layout["language_model.embedding.word_embeddings.weight"] == (52224, 5120)
    assert layout["language_model.topQueryEmbedding.top_query_embeddings.weight"] == (2048, 5120)
    assert layout["language_model.transformer.layers.7.attention.value.weight"] == (5120, 5120)
    assert layout["language_model.transformer.layers.7.mlp.dense_h_to_4h.weight"] == (20480, 5120)
    assert layout["language_model.transformer.topQueryLayer.mlp.dense_4h_to_h.weight"] == (5120, 20480)
    assert layout["language_model.transformer.topQueryLayer.mlp.dense_4h_to_h.bias"] == (5120,)


@pytest.mark.parametrize("sizes", [CODEGEEX_13B, ModelSizes(1024, 64, 256, 2, 64), ModelSizes(96, 24, 40, 0, 8)])
def test_sizes_are_inferred_from_shapes(sizes):
    inferred = infer_sizes(release_layout(sizes))
    assert (inferred.vocab_size, inferred.hidden_size, inferred.ffn_hidden_size, inferred.num_layers,
            inferred.max_position_embeddings) == (sizes.vocab_size, sizes.hidden_size, sizes.ffn_hidden_size,
                                                  sizes.num_layers, sizes.max_position_embeddings)


def test_heads_default_to_hidden_over_128_or_the_given_value():
    assert infer_sizes(release_layout(CODEGEEX_13B)).num_attention_heads == 40
    assert infer_sizes(release_layout(ModelSizes(1024, 64, 256, 2, 64))).num_attention_heads is None
    assert infer_sizes(release_layout(ModelSizes(1024, 64, 256, 2, 64)), 4).num_attention_heads == 4


def test_inference_without_embeddings_names_what_is_missing():
    shapes = dict(release_layout(ModelSizes(1024, 64, 256, 2, 64)))
    del shapes["language_model.embedding.word_embeddings.weight"]
    with pytest.raises(LayoutMismatchError, match="word_embeddings") as err:
        infer_sizes(shapes)
    assert err.value.missing == ["language_model.embedding.word_embeddings.weight"]


def test_all_problems_are_reported_in_one_error():
    expected = release_layout(ModelSizes(1024, 64, 256, 2, 64))
    shapes = dict(expected)
    del shapes["language_model.transformer.layers.1.attention.key.bias"]
    del shapes["language_model.transformer.final_layernorm.weight"]
    shapes["language_model.transformer.layers.0.attention.query.weight"] = (64, 32)
    shapes["language_model.output_layer.weight"] = (1024, 64)
    with pytest.raises(LayoutMismatchError) as err:
        check_layout(shapes, expected, what="my.ckpt")
    e = err.value
    assert e.missing == ["language_model.transformer.final_layernorm.weight",
                         "language_model.transformer.layers.1.attention.key.bias"]
    assert e.unexpected == ["language_model.output_layer.weight"]
    assert e.mismatched == [("language_model.transformer.layers.0.attention.query.weight", (64, 64), (64, 32))]
    message = str(e)
    assert message.startswith("my.ckpt does not match the expected layout: 2 missing, 1 unexpected, 1 with")
    for name in e.missing + e.unexpected + ["layers.0.attention.query.weight: (64, 64) vs (64, 32)"]:
        assert name in message


def test_matching_layout_passes():
    expected = release_layout(ModelSizes(1024, 64, 256, 2, 64))
    check_layout({n: list(s) for n, s in expected.items()}, expected)


def test_release_nesting_paths():
    assert release_key_path("language_model.embedding.word_embeddings.weight") == \
        ("module", "language_model", "embedding", "word_embeddings", "weight")
    assert release_key_path("language_model.transformer.layers.3.mlp.dense_4h_to_h.bias") == \
        ("module", "language_model", "transformer", "layers.3.mlp.dense_4h_to_h.bias")
