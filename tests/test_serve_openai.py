"""The official ``openai`` Python client against a real server process (tiny random model, real
tokenizer): completions, chat, streaming, n > 1, logprobs, echo, suffix, seeds, penalties, and
the 400 for fields the server cannot honour."""

import signal

import openai
import pytest

from codegeex_ms.serve.chat import render_chat
from codegeex_ms.serve.schemas import suffix_stop
from test_serve_support import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "--max-batch", "4")
    yield srv
    assert srv.stop() == -signal.SIGTERM, srv.log()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_completions_echo_user_penalties_and_seeds(client):
    out = client.completions.create(model="tiny", prompt="def fibonacci(n):", max_tokens=10,
                                    temperature=0, user="someone", presence_penalty=0.0)
    [choice] = out.choices
    assert out.object == "text_completion" and choice.finish_reason in ("length", "stop")
    assert out.usage.completion_tokens <= 10 and out.usage.prompt_tokens > 0
    echoed = client.completions.create(model="tiny", prompt="def fibonacci(n):", max_tokens=10,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text == "def fibonacci(n):" + choice.text
    kw = dict(model="tiny", prompt="import os\n", max_tokens=8, temperature=1.0, seed=5)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text
    # A large frequency penalty changes what a greedy row repeats; the request is honoured.
    pen = client.completions.create(model="tiny", prompt="def fibonacci(n):", max_tokens=10,
                                    temperature=0, frequency_penalty=2.0)
    assert pen.choices[0].finish_reason in ("length", "stop")


def test_n_choices_and_streaming_agree(client):
    kw = dict(model="tiny", prompt="// sort an array\n", max_tokens=8, temperature=1.0, seed=3, n=3)
    whole = client.completions.create(**kw)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    assert len({c.text for c in whole.choices}) > 1
    pieces, reasons = {}, {}
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            pieces[c.index] = pieces.get(c.index, "") + c.text
            reasons[c.index] = c.finish_reason or reasons.get(c.index)
    assert pieces == {c.index: c.text for c in whole.choices}
    assert reasons == {c.index: c.finish_reason for c in whole.choices}


def test_chat_is_the_completion_of_the_rendered_messages(client):
    messages = [{"role": "system", "content": "# language: Python"},
                {"role": "user", "content": "def add(a, b):"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"

    class M:
        def __init__(self, m):
            self.role, self.content = m["role"], m["content"]
    prompt = render_chat([M(m) for m in messages])
    assert prompt == "# language: Python\ndef add(a, b):\n"
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    assert chat.choices[0].message.content == plain.choices[0].text
    streamed, roles = "", []
    for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices:
            streamed += chunk.choices[0].delta.content or ""
            roles += [chunk.choices[0].delta.role] if chunk.choices[0].delta.role else []
        else:
            usage = chunk.usage
    assert streamed == chat.choices[0].message.content and roles == ["assistant"]
    assert usage.completion_tokens == chat.usage.completion_tokens


def test_logprobs_of_completions_and_chat(client):
    out = client.completions.create(model="tiny", prompt="class Stack:\n", max_tokens=6,
                                    temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    for token, logp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and logp <= 0.0
        # Greedy picks the most likely token: its log-probability is the best of the top 3.
        assert abs(max(top.values()) - logp) < 1e-9
    if out.choices[0].finish_reason == "length":
        assert "".join(lp.tokens) == out.choices[0].text
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x = "}],
                                          max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    for entry in chat.choices[0].logprobs.content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob == entry.logprob


def test_suffix_stops_where_the_completion_reaches_it(client):
    full = client.completions.create(model="tiny", prompt="import numpy as np\n", max_tokens=24,
                                     temperature=0).choices[0].text
    middle = len(full) // 2
    suffix = full[middle:middle + 4]
    [stop] = suffix_stop(suffix) or pytest.skip(f"no visible text in the middle of {full!r}")
    out = client.completions.create(model="tiny", prompt="import numpy as np\n", max_tokens=24,
                                    temperature=0, suffix=suffix).choices[0]
    assert (out.text, out.finish_reason) == (full[:full.find(stop)], "stop")


def test_fields_that_would_change_the_result_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"frobnicate": 1})
    assert "frobnicate: unknown or unsupported field" in str(err.value)
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, logit_bias={"50": 5})
    with pytest.raises(openai.BadRequestError, match="best_of=3"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, best_of=3)
    # Accepted because they change nothing here: empty biases, best_of = n, metadata, store.
    ok = client.completions.create(model="tiny", prompt="x", max_tokens=2, logit_bias={}, best_of=1,
                                   extra_body={"metadata": {"a": "b"}, "store": False})
    assert len(ok.choices) == 1
