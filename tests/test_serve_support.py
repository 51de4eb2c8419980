"""Serving: request validation and batching policy without a model; helpers for the server tests.

The helpers (tiny checkpoint, server subprocess, event-stream parsing) are imported by the other
``test_serve*`` modules.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from codegeex_ms.config import load_config
from codegeex_ms.inference.sampling import SamplingParams
from codegeex_ms.env.paths import REPO_ROOT, shared_data_dir
from codegeex_ms.serve.schemas import (CodeTranslateBody, CompletionBody, Limits, RequestError,
                                       generation_options, parse_body)

TINY = ("model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64")


# ---------------------------------------------------------------------------- helpers


def require_shared_data():
    """Skip unless the tokenizer and language tags the server loads are present."""
    needed = [shared_data_dir() / "codegeex_tokenizer" / "vocab.json",
              shared_data_dir() / "codegeex_tokenizer" / "merges.txt",
              shared_data_dir() / "language_tags.json"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.skip(f"shared data missing: {', '.join(missing)}")


def save_tiny_checkpoint(path: Path, overrides=()) -> tuple:
    """Random-init tiny model saved at ``path``; returns the ``--set`` overrides that describe it."""
    import mindspore as ms

    from codegeex_ms.model import CodeGeeX
    overrides = TINY + tuple(overrides)
    cfg = load_config(str(REPO_ROOT / "ascend_configs" / "tiny.yaml"), overrides)
    ms.set_seed(0)
    ms.save_checkpoint(CodeGeeX(cfg.model), str(path))
    return overrides


class ServerProcess:
    """``python -m codegeex_ms.serve`` on a free localhost port, for one test module."""

    def __init__(self, checkpoint: Path, overrides, *extra, log_path: Path):
        sets = [arg for item in overrides for arg in ("--set", item)]
        cmd = [sys.executable, "-m", "codegeex_ms.serve", "--config", "tiny", *sets,
               "--checkpoint", str(checkpoint), "--port", "0", "--log-level", "warning", *extra]
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.proc.stdout.readline()     # blocks until the port is open or the process dies
        match = re.search(r"serving on (http://\S+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log()[-3000:]}")
        self.url = match.group(1)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM (graceful drain) and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc


def start_server(tmp_path_factory, *extra, overrides=()) -> ServerProcess:
    require_shared_data()
    root = tmp_path_factory.mktemp("serve")
    overrides = save_tiny_checkpoint(root / "tiny.ckpt", overrides)
    return ServerProcess(root / "tiny.ckpt", overrides, *extra, log_path=root / "server.log")


def sse_events(lines) -> list:
    """Parsed ``data:`` payloads of a server-sent event stream (an iterator of its lines, e.g.
    ``response.iter_lines()``, kept across calls: dropping one closes the response), up to and
    without ``[DONE]``."""
    events = []
    for line in lines:
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return events
        events.append(json.loads(line[6:]))
    raise AssertionError(f"stream ended without [DONE] after {len(events)} events")


def streamed_choices(events) -> dict:
    """index -> (concatenated text, finish_reason) from completion chunks."""
    out = {}
    for event in events:
        for choice in event["choices"]:
            text, reason = out.get(choice["index"], ("", None))
            out[choice["index"]] = (text + choice["text"], choice["finish_reason"] or reason)
    return out


# ---------------------------------------------------------------------------- validation


DEFAULTS = load_config(str(REPO_ROOT / "ascend_configs" / "tiny.yaml")).inference
LIMITS = Limits(max_length=256, max_request_rows=8)


def test_defaults_come_from_the_config_and_stop_is_normalised():
    body = parse_body(CompletionBody, b'{"prompt": "x", "stop": "\\n"}')
    opts = generation_options(body, DEFAULTS, LIMITS)
    assert opts.max_tokens == DEFAULTS.max_new_tokens == 48
    assert opts.sampling == SamplingParams(DEFAULTS.temperature, DEFAULTS.top_k, DEFAULTS.top_p)
    assert opts.stop == ("\n",) and body.prompt == ["x"] and opts.n == 1 and not opts.stream
    body = parse_body(CompletionBody, b'{"prompt": ["a", "b"], "n": 3, "temperature": 0, "max_tokens": 255}')
    opts = generation_options(body, DEFAULTS, LIMITS, prompts=2)
    assert opts.sampling.temperature == 0.0 and opts.max_tokens == 255 and opts.stop == ()


@pytest.mark.parametrize("raw, param, message", [
    (b'{"prompt": "x", "temperature": "0.5"}', "temperature", "valid number"),     # no coercion
    (b'{"prompt": "x", "n": true}', "n", "valid integer"),
    (b'{"prompt": "x", "top_p": 0}', "top_p", "greater than 0"),
    (b'{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', "stop", "at most 4 stop strings"),
    (b'{"prompt": "x", "stop": [""]}', "stop", "1..64 characters"),
    (b'{"prompt": "x", "stop": 5}', "stop", "string or a list of strings"),
    (b'{"prompt": []}', "prompt", "non-empty"),
    (b'{"prompt": ["ok", ""]}', "prompt", "must not be empty"),
    (b'{"prompt": "x", "frobnicate": true}', "frobnicate", "unknown or unsupported field"),
    (b'{"prompt": "x", "logit_bias": {"5": 1}}', "logit_bias", "not supported"),
    (b'{"prompt": "x", "stream_options": {"x": 1}}', "stream_options", "include_usage"),
    (b'{"max_tokens": 3}', "prompt", "Field required"),
    (b'[1, 2]', None, "must be a JSON object"),
    (b'{"prompt": "x",', None, "not valid JSON"),
])
def test_bad_bodies_name_the_field(raw, param, message):
    with pytest.raises(RequestError) as err:
        parse_body(CompletionBody, raw)
    assert err.value.status == 400 and err.value.param == param
    assert message in err.value.message
    assert err.value.body()["error"]["type"] == "invalid_request_error"


def test_limits_that_depend_on_the_model():
    too_long = parse_body(CompletionBody, b'{"prompt": "x", "max_tokens": 256}')
    with pytest.raises(RequestError, match=r"max_tokens: at most 255 \(got 256\)"):
        generation_options(too_long, DEFAULTS, LIMITS)
    many = parse_body(CompletionBody, b'{"prompt": ["a", "b", "c"], "n": 3}')
    with pytest.raises(RequestError, match=r"3 prompt\(s\) × n=3 = 9 completions; at most 8"):
        generation_options(many, DEFAULTS, LIMITS, prompts=3)
    big = Limits(max_length=4096)
    capped = parse_body(CompletionBody, b'{"prompt": "x", "max_tokens": 1025}')
    with pytest.raises(RequestError, match="at most 1024"):      # the demo's output limit
        generation_options(capped, DEFAULTS, big)
    with pytest.raises(RequestError, match="target_language: Field required"):
        parse_body(CodeTranslateBody, b'{"code": "x", "source_language": "c++"}')
