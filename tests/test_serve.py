"""The HTTP server end to end (tiny random model, real tokenizer): every endpoint, streaming,
stop strings and rules, several choices, and a JSON error for every kind of bad request."""

import re
import signal

import pytest

from codegeex_ms.data.languages import Languages
from codegeex_ms.humaneval.stopping import stop_index
from codegeex_ms.inference.prompts import completion_prompt, explanation_prompt, translation_prompt
from test_serve_support import sse_events, start_server, streamed_choices


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "--max-batch", "4")
    yield srv
    assert srv.stop() == -signal.SIGTERM, srv.log()[-3000:]   # drained, then ended by the signal


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer():
    from codegeex_ms.data.tokenizer import CodeGeeXTokenizer
    return CodeGeeXTokenizer.from_dir(None)


def post(client, path, **body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream(client, path, **body):
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r.iter_lines())


def test_health_models_info_and_playground_files(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["max_length"] == 256
    assert health["worker"]["max_batch"] == 4 and health["worker"]["waiting"] == 0
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    info = client.get("/v1/info").json()
    assert info["max_tokens"] == 255 and info["defaults"] == {
        "max_tokens": 48, "temperature": 0.2, "top_p": 0.95, "top_k": 0}     # tiny.yaml + defaults
    rules = {lang["name"]: lang["stop_rule"] for lang in info["languages"]}
    assert rules["Python"] and rules["C++"] and not rules["Markdown"]
    page = client.get("/")
    assert page.status_code == 200 and "<title>CodeGeeX playground</title>" in page.text
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', page.text) if a != "data:,"]
    assert sorted(assets) == ["static/playground.css", "static/playground.js"]   # nothing from elsewhere
    for asset in assets:
        r = client.get(f"/{asset}")
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text


def test_completion_and_its_stream_agree(client, tokenizer):
    body = dict(prompt="def fibonacci(n):", max_tokens=16, temperature=0)
    out = post(client, "/v1/completions", **body)
    assert out["object"] == "text_completion" and out["model"] == "tiny" and out["id"].startswith("cmpl-")
    [choice] = out["choices"]
    assert out["usage"]["prompt_tokens"] == len(tokenizer.encode(body["prompt"]))
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert choice["finish_reason"] == ("length" if out["usage"]["completion_tokens"] == 16 else "stop")
    events = stream(client, "/v1/completions", **body)
    assert len([e for e in events if e["choices"][0]["text"]]) >= 2        # arrived in pieces
    assert all(e["id"] == events[0]["id"] and e["object"] == "text_completion" for e in events)
    assert streamed_choices(events) == {0: (choice["text"], choice["finish_reason"])}


def test_stop_strings_cut_the_text_and_never_stream(client):
    body = dict(prompt="import numpy as np\n", max_tokens=24, temperature=0)
    full = post(client, "/v1/completions", **body)["choices"][0]["text"]
    middle = len(full) // 2
    stop = full[middle:middle + 3]
    assert len(stop) == 3, full
    want = full[:full.find(stop)]
    [choice] = post(client, "/v1/completions", **body, stop=[stop, "\x00never"])["choices"]
    assert (choice["text"], choice["finish_reason"]) == (want, "stop")
    events = stream(client, "/v1/completions", **body, stop=stop)
    assert streamed_choices(events) == {0: (want, "stop")}


def test_several_prompts_and_choices_with_a_seed(client, tokenizer):
    body = dict(prompt=["def add(a, b):", "// sort an array"], n=2, max_tokens=8, temperature=1.0, seed=11)
    first, again = post(client, "/v1/completions", **body), post(client, "/v1/completions", **body)
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]
    assert len({c["text"] for c in first["choices"]}) > 1
    assert first["usage"]["prompt_tokens"] == sum(len(tokenizer.encode(p)) for p in body["prompt"])
    streamed = streamed_choices(stream(client, "/v1/completions", **body))
    assert streamed == {c["index"]: (c["text"], c["finish_reason"]) for c in first["choices"]}


def test_code_task_endpoints_build_the_cli_prompts(client, tokenizer):
    languages = Languages.load()
    code = "def area(r):\n"
    out = post(client, "/v1/code/complete", code=code, language="python", max_tokens=4)
    assert out["usage"]["prompt_tokens"] == len(tokenizer.encode(completion_prompt(code, "python", languages)))
    src = "int add(int a, int b) { return a + b; }"
    out = post(client, "/v1/code/translate", code=src, source_language="cpp", target_language="Python",
               target_prefix="def add(a, b):\n", max_tokens=4)
    prompt = translation_prompt(src, "cpp", "python", languages, "def add(a, b):\n")
    assert out["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt))
    out = post(client, "/v1/code/explain", code=src, language="c++", max_tokens=4)
    assert out["usage"]["prompt_tokens"] == len(tokenizer.encode(explanation_prompt(src, "c++", languages)))


@pytest.mark.parametrize("language, key", [("python", "python"), ("javascript", "js")])
def test_language_stop_rule_ends_at_the_function_end(client, language, key):
    body = dict(code="function f(x) {\n" if key == "js" else "def f(x):\n", language=language,
                max_tokens=40, temperature=0)
    full = post(client, "/v1/code/complete", **body)["choices"][0]["text"]
    end = stop_index(full, key)
    [choice] = post(client, "/v1/code/complete", **body, language_stop=True)["choices"]
    assert choice["text"] == (full if end is None else full[:end])
    assert choice["finish_reason"] == ("stop" if end is not None else "length")
    streamed = streamed_choices(stream(client, "/v1/code/complete", **body, language_stop=True))
    assert streamed == {0: (choice["text"], choice["finish_reason"])}


BAD = [
    ("/v1/completions", b'{"prompt": "x",', 400, None, "not valid JSON"),
    ("/v1/completions", {"prompt": "x", "temperature": 3}, 400, "temperature", "less than or equal to 2"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p", "less than or equal to 1"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 300}, 400, "max_tokens", "at most 255 (got 300)"),
    ("/v1/completions", {"prompt": "x = 1\n" * 60, "max_tokens": 48}, 400, "prompt",
     "240 prompt tokens + max_tokens=48 exceed the model's 256 positions: at most 208"),
    ("/v1/completions", {"prompt": ["x", "y"], "n": 5}, 400, "n", "at most 8 per request"),
    ("/v1/completions", {"prompt": "x", "echo": True, "logprobs": 2}, 400, "echo", "prompt log-probabilities"),
    ("/v1/completions", {"prompt": "x", "frobnicate": 2}, 400, "frobnicate", "unknown or unsupported field"),
    ("/v1/completions", {"prompt": [[1, 99999]]}, 400, "prompt", "token id 99999 is outside the vocabulary"),
    ("/v1/completions", {"prompt": "x", "stop": ["a"] * 5}, 400, "stop", "at most 4 stop strings"),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt", "Field required"),
    ("/v1/code/complete", {"code": "x", "language": "klingon"}, 400, "language", "unknown language 'klingon'"),
    ("/v1/code/complete", {"code": "x", "language_stop": True}, 400, "language_stop", "needs language"),
    ("/v1/code/complete", {"code": "x", "language": "markdown", "language_stop": True}, 400,
     "language_stop", "Markdown has no end-of-function rule"),
    ("/v1/code/translate", {"code": "x", "source_language": "c++"}, 400, "target_language", "Field required"),
    ("/v1/code/translate", {"code": "x", "source_language": "c++", "target_language": "go",
                            "language_stop": True}, 400, "language_stop", "needs target_prefix"),
    ("/v1/code/explain", {"code": "", "language": "go"}, 400, "code", "at least 1 character"),
    ("/v1/completions", {"prompt": "x" * 300_000}, 413, None, "exceeds the 262144-byte limit"),
]


@pytest.mark.parametrize("path, body, status, param, message", BAD)
def test_bad_requests_get_a_json_error_naming_the_problem(client, path, body, status, param, message):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == param


def test_unknown_paths_and_methods_get_json_errors(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no such endpoint or file: GET /v1/nothing-here"
    r = client.get("/v1/completions")
    assert r.status_code == 405 and "method GET is not allowed" in r.json()["error"]["message"]
    assert r.headers["allow"] == "POST"
    assert client.get("/health").json()["worker"]["failed"] == 0
