"""Generation: KV cache vs recomputation, decoding strategies, the CLI and its bad inputs."""

import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.checkpoint import load_into_network
from codegeex_ms.config import load_config
from codegeex_ms.inference.generator import Generator, PromptTooLongError
from codegeex_ms.inference.sampling import SamplingParams, filtered_probs, next_tokens
from codegeex_ms.model import CodeGeeX
from codegeex_ms.data.masks import causal_mask, positions


class IdTokenizer:
    """Token ids as text ("12 7 ..."): lets tests drive the generator without BPE files."""

    eod_id = 50256

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return "".join(f" {i}" for i in ids)


def random_model(vocab=96, hidden=32, heads=4, layers=2, seed=0):
    cfg = load_config(None, (
        f"model.vocab_size={vocab}", f"model.real_vocab_size={vocab - 6}", f"model.hidden_size={hidden}",
        f"model.num_heads={heads}", f"model.num_layers={layers}", f"model.ffn_hidden_size={4 * hidden}",
        "model.max_position_embeddings=64", "model.eod_token_id=0", "model.dropout=0.0",
        "train.seq_length=64"))
    ms.set_seed(seed)
    rng = np.random.default_rng(seed)
    net = CodeGeeX(cfg.model)
    for name, p in net.parameters_and_names():
        base = 1.0 if "layernorm.weight" in name else 0.0
        p.set_data(ms.Tensor((base + 0.2 * rng.standard_normal(p.shape)).astype(np.float32)))
    net.set_train(False)
    return net


@pytest.fixture(scope="module")
def model():
    ms.set_context(mode=ms.GRAPH_MODE)
    return random_model()


def test_cached_decoding_equals_recomputation_with_mixed_prompt_lengths(model):
    gen = Generator(model, IdTokenizer())
    prompts = [[5, 9, 13, 2, 7, 30, 11], [40, 3], [8, 8, 8, 1]]
    gen.trace = []
    out = gen.generate(prompts, max_new_tokens=6)
    for r, prompt in enumerate(prompts):
        seq = list(prompt)
        for step, cached in enumerate(gen.trace):
            ids = np.array([seq], np.int32)
            full = model(ms.Tensor(ids), ms.Tensor(positions(1, len(seq))),
                         ms.Tensor(causal_mask(1, len(seq)))).asnumpy()[0, -1]
            assert np.abs(cached[r] - full).max() < 1e-4, (r, step)
            if step < len(out[r].token_ids):
                seq.append(out[r].token_ids[step])
        assert out[r].token_ids[0] == int(np.argmax(gen.trace[0][r][:90]))


def test_cached_decoder_owns_padding_positions_and_reorder(model):
    """CachedDecoder (beam search, score): left-padded prefill, decode and a row reorder give the
    logits of a full causal forward over each row's real tokens."""
    from codegeex_ms.model.kv_cache import CachedDecoder

    def full(seq):
        ids = np.array([seq], np.int32)
        return model(ms.Tensor(ids), ms.Tensor(positions(1, len(seq))),
                     ms.Tensor(causal_mask(1, len(seq)))).asnumpy()[0, -1]

    rows = [[5, 9, 13], [40, 3, 8, 8, 1, 7]]
    dec = CachedDecoder(model, 2, 16)
    logits = dec.prefill(rows, 8)
    assert list(dec.pads) == [5, 2]
    for r, seq in enumerate(rows):
        assert np.abs(logits[r] - full(seq)).max() < 1e-4
    rows = [seq + [t] for seq, t in zip(rows, (21, 22))]
    logits = dec.decode([21, 22])
    for r, seq in enumerate(rows):
        assert np.abs(logits[r] - full(seq)).max() < 1e-4
    dec.reorder(np.array([1, 0]))            # swap the rows, padding included
    rows = [rows[1] + [3], rows[0] + [4]]
    logits = dec.decode([3, 4])
    for r, seq in enumerate(rows):
        assert np.abs(logits[r] - full(seq)).max() < 1e-4
    with pytest.raises(ValueError, match="longest prompt"):
        dec.prefill([[1] * 9, [2]], 8)


def test_fixture_greedy_continuation_through_generate(golden):
    cfg = load_config("ascend_configs/tiny_fixture.yaml")
    net = CodeGeeX(cfg.model)
    load_into_network(net, golden["pt"])
    gen = Generator(net, IdTokenizer())
    prompts = [list(map(int, row)) for row in golden["decode_prompt_ids"]]
    want = golden["decode_greedy_ids"].tolist()
    assert [c.token_ids for c in gen.generate(prompts, 12)] == want
    top1 = gen.generate(prompts, 12, SamplingParams(temperature=1.0, top_k=1), seed=1)
    assert [c.token_ids for c in top1] == want
    cold = gen.generate(prompts, 12, SamplingParams(temperature=1e-3), seed=2)
    assert [c.token_ids for c in cold] == want
    assert gen.generate(prompts[:1], 12, num_beams=1)[0].token_ids == want[0]


def test_sampling_is_seeded_and_beams_score_at_least_greedy(model):
    gen = Generator(model, IdTokenizer())
    params = SamplingParams(temperature=0.9, top_p=0.9)
    a = gen.generate([[3, 4, 5]] * 4, 8, params, seed=7)
    b = gen.generate([[3, 4, 5]] * 4, 8, params, seed=7)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert len({tuple(x.token_ids) for x in a}) > 1       # samples differ from each other
    beam = gen.generate([[3, 4, 5]], 6, num_beams=4, length_penalty=0.0)[0]
    greedy = gen.generate([[3, 4, 5]], 6)[0]
    gen.trace = []
    forced = gen.generate([[3, 4, 5]], 6)  # log-probability of the greedy path, from its trace
    logp = 0.0
    for step, tok in enumerate(greedy.token_ids):
        row = gen.trace[step][0][:90].astype(np.float64)
        logp += row[tok] - np.log(np.exp(row - row.max()).sum()) - row.max()
    assert forced[0].token_ids == greedy.token_ids
    # The beam ran at batch 4 and the greedy path at batch 1: FP32 results of different shapes
    # differ by ~1e-6 relative per logit, ~1e-5 over six steps; 1e-4 leaves room, no more.
    assert beam.score >= logp - 1e-4


def test_stop_strings_and_padding_rows(model):
    gen = Generator(model, IdTokenizer())
    full = gen.generate([[3, 4, 5]], 8)[0]
    assert max(full.token_ids) < 90                 # padded rows 90..95 never produced
    stop = full.text[3:6]                           # a string that appears in the text
    cut = gen.generate([[3, 4, 5]], 8, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.find(stop)]
    streamed = []
    gen.generate([[3, 4, 5]], 8, stop=[stop], on_text=lambda r, t: streamed.append(t))
    assert "".join(streamed) == cut.text


def test_prompt_limits(model):
    gen = Generator(model, IdTokenizer())
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        gen.generate([[]], 4)
    with pytest.raises(PromptTooLongError, match="prompt 0 has 70 tokens"):
        gen.generate([list(range(1, 71))], 4)
    out = gen.generate([list(range(1, 71))], 4, truncate="left")[0]
    assert out.prompt_tokens == 60 and len(out.token_ids) == 4


def test_sampling_filters_against_hand_computation():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    # top-k = 3 keeps 0.5, 0.2, 0.15 renormalised
    np.testing.assert_allclose(filtered_probs(logits, SamplingParams(1.0, 3, 1.0)),
                               [[0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0]], atol=1e-12)
    # top-p = 0.7: 0.5 < 0.7, 0.5 + 0.2 reaches it: keep two
    np.testing.assert_allclose(filtered_probs(logits, SamplingParams(1.0, 0, 0.7)),
                               [[0.5 / 0.7, 0.2 / 0.7, 0, 0, 0]], atol=1e-12)
    # temperature 0.5 squares the odds before filtering
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05]) ** 2
    np.testing.assert_allclose(filtered_probs(logits, SamplingParams(0.5, 0, 1.0))[0], p / p.sum())
    rng = np.random.default_rng(0)
    picks = [next_tokens(logits, SamplingParams(1.0, 0, 0.7), rng, 5)[0] for _ in range(2000)]
    assert set(picks) == {0, 1} and abs(np.mean(np.array(picks) == 0) - 5 / 7) < 0.04
    huge = np.zeros((1, 8)); huge[0, 6:] = 100.0    # padding rows have the best logits
    assert next_tokens(huge, SamplingParams(), rng, real_vocab_size=6)[0] < 6


# ---------------------------------------------------------------- the CLI

def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "codegeex_ms.generate", *args], input=stdin,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config("ascend_configs/tiny.yaml", ("model.num_layers=1", "model.hidden_size=32",
                                                   "model.ffn_hidden_size=64"))
    net = CodeGeeX(cfg.model)
    path = tmp_path_factory.mktemp("gen") / "tiny.ckpt"
    ms.save_checkpoint(net, str(path))
    return path


TINY = ("--config", "tiny", "--set", "model.num_layers=1", "--set", "model.hidden_size=32",
        "--set", "model.ffn_hidden_size=64")


def test_cli_generates_and_rejects_bad_input(tiny_checkpoint, tmp_path):
    ok = cli(*TINY, "--checkpoint", str(tiny_checkpoint), "--language", "python", "--prompt",
             "def add(a, b):", "--max-new-tokens", "5", "--temperature", "0", "--no-language-stop")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "decode steps" in ok.stderr and ok.stdout.strip()

    piped = cli(*TINY, "--checkpoint", str(tiny_checkpoint), "--task", "translate",
                "--source-language", "c++", "--language", "python", "--num-samples", "2",
                "--max-new-tokens", "3", "--temperature", "0.8", "--seed", "1", "--no-language-stop",
                stdin="int add(int a, int b) { return a + b; }\n")
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert piped.stdout.count("----- sample") == 2

    bad = cli(*TINY, "--checkpoint", str(tiny_checkpoint), "--prompt", "   ")
    assert bad.returncode != 0 and "the prompt is empty" in bad.stderr
    bad = cli(*TINY, "--checkpoint", str(tiny_checkpoint), "--language", "klingon", "--prompt", "x")
    assert bad.returncode != 0 and "unknown language 'klingon'" in bad.stderr
    long_prompt = "x = 1\n" * 300
    bad = cli(*TINY, "--checkpoint", str(tiny_checkpoint), "--prompt", long_prompt)
    assert bad.returncode != 0 and "at most" in bad.stderr and "positions" in bad.stderr
    bad = cli(*TINY, "--checkpoint", str(tiny_checkpoint), "--prompt", "x", "--tokenizer-dir", str(tmp_path))
    assert bad.returncode != 0 and "vocab.json" in bad.stderr
    bad = cli("--config", "tiny", "--checkpoint", str(tiny_checkpoint), "--prompt", "x")
    assert bad.returncode == 2 and "model.num_layers: the config sets 2 but" in bad.stderr \
        and "has 1" in bad.stderr   # checkpoint has 1 layer, config 2: both values named


def test_cli_pynative_mode_decodes_like_graph_mode(tiny_checkpoint):
    """``--mode pynative`` (operators on the calling thread, only the decode step compiled, the
    13B-on-CPU path) gives the greedy tokens of graph mode."""
    args = (*TINY, "--checkpoint", str(tiny_checkpoint), "--language", "python", "--prompt",
            "def add(a, b):", "--max-new-tokens", "8", "--temperature", "0", "--no-language-stop")
    graph, pynative = cli(*args, "--mode", "graph"), cli(*args, "--mode", "pynative")
    assert graph.returncode == 0 and pynative.returncode == 0, pynative.stderr[-2000:]
    assert graph.stdout.strip() and pynative.stdout == graph.stdout


def test_streaming_holds_back_stop_prefixes_and_split_characters():
    from codegeex_ms.inference.generator import _stable_length
    assert _stable_length("abc def", 0) == 7
    assert _stable_length("abc def", 3) == 4               # may start a 3-char stop string
    assert _stable_length("naïve \ufffd", 0) == 6         # the rest of a UTF-8 character is coming
    assert _stable_length("\ufffd\ufffd", 0) == 0
    assert _stable_length("ab", 5) == 0
