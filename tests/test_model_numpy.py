"""The MindSpore model against an independent NumPy implementation of CodeGeeX (reference §1)."""

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.config import load_config
from codegeex_ms.model import CodeGeeX, CodeGeeXWithLoss


# ---------------------------------------------------------------- NumPy CodeGeeX (float64)

def np_layernorm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_fast_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


def np_attention(p, prefix, q_in, kv_in, mask, heads):
    b, s, h = q_in.shape
    d = h // heads

    def proj(name, x):
        return x @ p[f"{prefix}.{name}.weight"].T + p[f"{prefix}.{name}.bias"]

    def split(x):
        return x.reshape(b, -1, heads, d).transpose(0, 2, 1, 3)

    q, k, v = split(proj("query", q_in)), split(proj("key", kv_in)), split(proj("value", kv_in))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) - 10000.0 * (1.0 - mask[:, None])
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
    return proj("dense", ctx)


def np_layer(p, prefix, h, mask, heads, query=None):
    normed = np_layernorm(h, p[f"{prefix}.input_layernorm.weight"], p[f"{prefix}.input_layernorm.bias"])
    x = h + np_attention(p, f"{prefix}.attention", normed if query is None else query, normed, mask, heads)
    y = np_layernorm(x, p[f"{prefix}.post_attention_layernorm.weight"],
                     p[f"{prefix}.post_attention_layernorm.bias"])
    mlp = f"{prefix}.mlp"
    y = np_fast_gelu(y @ p[f"{mlp}.dense_h_to_4h.weight"].T + p[f"{mlp}.dense_h_to_4h.bias"])
    return x + y @ p[f"{mlp}.dense_4h_to_h.weight"].T + p[f"{mlp}.dense_4h_to_h.bias"]


def np_codegeex(p, ids, pos, mask, layers, heads):
    lm = "language_model"
    word = p[f"{lm}.embedding.word_embeddings.weight"]
    h = word[ids] + p[f"{lm}.embedding.position_embeddings.weight"][pos]
    for i in range(layers):
        h = np_layer(p, f"{lm}.transformer.layers.{i}", h, mask, heads)
    h = np_layernorm(h, p[f"{lm}.transformer.final_layernorm.weight"],
                     p[f"{lm}.transformer.final_layernorm.bias"])
    query = p[f"{lm}.topQueryEmbedding.top_query_embeddings.weight"][pos]
    h = np_layer(p, f"{lm}.transformer.topQueryLayer", h, mask, heads, query=query)
    return h @ word.T


def np_loss(logits, labels, loss_mask):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    return (nll * loss_mask).sum() / loss_mask.sum()


def eod_reset(ids, eod):
    """Positions restarting after each EOD and a block-diagonal causal mask (written for the test)."""
    b, s = ids.shape
    pos = np.zeros((b, s), np.int32)
    mask = np.zeros((b, s, s), np.float32)
    for r in range(b):
        start = 0
        for t in range(s):
            pos[r, t] = t - start
            mask[r, t, start:t + 1] = 1.0
            if ids[r, t] == eod:
                start = t + 1
    return pos, mask


# ---------------------------------------------------------------- tests

SHAPES = [  # (batch, seq, hidden, heads, layers, vocab)
    (2, 8, 32, 4, 1, 96),
    (1, 13, 48, 3, 2, 64),
    (3, 5, 16, 2, 1, 40),
]


def random_model(batch, seq, hidden, heads, layers, vocab, rng):
    cfg = load_config(None, (
        f"model.vocab_size={vocab}", f"model.real_vocab_size={vocab}", f"model.hidden_size={hidden}",
        f"model.num_heads={heads}", f"model.num_layers={layers}", f"model.ffn_hidden_size={4 * hidden}",
        "model.max_position_embeddings=32", "model.eod_token_id=0", "model.fused_kernels=off",
        "model.dropout=0.0", "train.seq_length=32"))
    net = CodeGeeX(cfg.model)
    params = {}
    for name, param in net.parameters_and_names():
        # LayerNorm gains around 1, everything else N(0, 0.3): large enough that errors would show.
        base = 1.0 if name.endswith("layernorm.weight") else 0.0
        value = (base + 0.3 * rng.standard_normal(param.shape)).astype(np.float32)
        param.set_data(ms.Tensor(value))
        params[name] = value.astype(np.float64)
    net.set_train(False)
    return net, params


@pytest.mark.parametrize("batch, seq, hidden, heads, layers, vocab", SHAPES)
def test_logits_and_loss_match_numpy(batch, seq, hidden, heads, layers, vocab):
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(seq * 7 + hidden)
    net, params = random_model(batch, seq, hidden, heads, layers, vocab, rng)
    ids = rng.integers(1, vocab, size=(batch, seq)).astype(np.int32)
    ids[0, seq // 3] = 0                        # one EOD in row 0 ...
    if batch > 1:
        ids[1, 1::2] = 0                        # ... many in row 1; none in any other row
    pos, mask = eod_reset(ids, eod=0)

    got = net(ms.Tensor(ids), ms.Tensor(pos), ms.Tensor(mask)).asnumpy()
    want = np_codegeex(params, ids, pos, mask, layers, heads)
    # FP32 against float64: a few hundred accumulated roundings of ~6e-8 relative on logits of
    # magnitude ~10 stay far below 1e-4.
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)

    labels = np.roll(ids, -1, axis=1)
    loss_mask = (ids != 0).astype(np.float32)   # no loss where the input token is EOD
    loss = CodeGeeXWithLoss(net)(ms.Tensor(ids), ms.Tensor(labels), ms.Tensor(pos), ms.Tensor(mask),
                                 ms.Tensor(loss_mask)).asnumpy()
    assert loss == pytest.approx(np_loss(want, labels, loss_mask), abs=1e-5)


def test_eod_reset_blocks_cross_document_attention():
    """Changing a token of document 1 must not change any logit of document 2."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    net, _ = random_model(1, 10, 32, 4, 1, 96, rng)
    ids = rng.integers(1, 96, size=(1, 10)).astype(np.int32)
    ids[0, 4] = 0
    pos, mask = eod_reset(ids, eod=0)
    before = net(ms.Tensor(ids), ms.Tensor(pos), ms.Tensor(mask)).asnumpy()
    ids2 = ids.copy()
    ids2[0, 1] = (ids[0, 1] + 1) % 95 + 1
    after = net(ms.Tensor(ids2), ms.Tensor(pos), ms.Tensor(mask)).asnumpy()
    assert np.abs(after[0, :1] - before[0, :1]).max() == 0          # earlier tokens: causal
    assert np.abs(after[0, 1:5] - before[0, 1:5]).max() > 1e-3      # same document: changes
    assert np.abs(after[0, 5:] - before[0, 5:]).max() == 0          # next document: untouched
