"""Request bodies of the HTTP API, their validation, and the OpenAI-style error body.

Bodies are parsed strictly (no string-to-number coercion); every problem becomes a
:class:`RequestError` whose message names the field and the rule it broke. Fields OpenAI clients
and IDE plugins send are accepted: those that change nothing here (``user``, ``metadata``, …,
see :data:`INERT_FIELDS`) are ignored, OpenAI fields this server cannot honour (``best_of`` > n,
a non-empty ``logit_bias``, ``tools``, a non-text ``response_format``) are refused only when set
to a value that would change the result, and any other unknown field is refused by name. Limits
that depend on the loaded model (max_tokens, prompt length, rows per request) are checked by
:func:`generation_options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codegeex_ms.inference.logits import Penalties
from codegeex_ms.inference.sampling import SamplingParams

INERT_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls",
                          "tool_choice", "prediction", "reasoning_effort", "modalities"})
"""Sent by OpenAI clients; they do not change a completion here, so they are accepted and ignored."""

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
MAX_NEW_TOKENS = 1024   # the demo's output limit (reference section 6)


class RequestError(Exception):
    """A request the server will not run: HTTP ``status`` with an OpenAI-style error body."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": None}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    max_tokens: Optional[int] = Field(None, ge=1, description="new tokens per choice")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="0 = greedy")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    n: int = Field(1, ge=1, description="choices per prompt")
    stop: Any = Field((), description="a string or a list of up to 4 strings")
    stream: bool = False
    seed: Optional[int] = Field(None, ge=0, lt=2**63)
    model: Optional[str] = Field(None, description="accepted for OpenAI clients; one model is served")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream_options: Optional[dict] = Field(None, description='{"include_usage": bool}')
    logit_bias: Optional[dict] = Field(None, description="only empty: biases are not supported")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value):
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValueError("must be a string or a list of strings")
        if len(items) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(items)}")
        for s in items:
            if not s or len(s) > MAX_STOP_CHARS:
                raise ValueError(f"each stop string needs 1..{MAX_STOP_CHARS} characters, got {len(s)}")
        return tuple(items)


    @field_validator("stream_options", mode="after")
    @classmethod
    def _stream_options(cls, value):
        if value is not None and (set(value) - {"include_usage"}
                                  or not isinstance(value.get("include_usage", False), bool)):
            raise ValueError('only {"include_usage": true|false} is supported')
        return value

    def unsupported(self) -> list:
        """(field, why) for every field set to something this server cannot honour."""
        out = []
        for name, value in (self.model_extra or {}).items():
            if name in INERT_FIELDS:
                continue
            if name in ("tools", "functions") and not value:
                continue
            if name == "function_call" and value in (None, "none", "auto"):
                continue
            if name == "response_format" and value in (None, {"type": "text"}):
                continue
            out.append((name, "unknown or unsupported field"))
        if self.logit_bias:
            out.append(("logit_bias", "logit biases are not supported (send {} or leave it out)"))
        return out


def _token_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


class CompletionBody(_Body):
    """``POST /v1/completions``: OpenAI's legacy completions API.

    ``prompt``: a string, a list of strings, a list of token ids or a list of such lists.
    ``suffix``: CodeGeeX-13B was not trained for infilling, so the suffix is not shown to the
    model; instead the completion stops where it starts reproducing the suffix (at the suffix's
    first non-blank line, leading whitespace dropped).
    """

    prompt: Any = Field(..., description="a string, a list of strings, token ids, or lists of them")
    suffix: Optional[str] = None
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: Optional[int] = Field(None, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, str) or _token_list(value):
            items = [value]
        else:
            items = value
        if not isinstance(items, list) or not items or not all(
                isinstance(p, str) or _token_list(p) for p in items):
            raise ValueError("must be a non-empty string, a list of strings, a list of token ids "
                             "or a list of such lists")
        if not all(items):
            raise ValueError("prompts must not be empty strings")
        return items

    def unsupported(self) -> list:
        out = super().unsupported()
        if self.best_of is not None and self.best_of != self.n:
            out.append(("best_of", f"best_of={self.best_of} would rank extra samples; only "
                                   f"best_of = n ({self.n}) is supported"))
        if self.echo and self.logprobs is not None:
            out.append(("echo", "echo with logprobs needs prompt log-probabilities, which this "
                                "server does not compute"))
        if self.stream and self.logprobs is not None:
            out.append(("logprobs", "logprobs are not streamed; ask without stream"))
        return out


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: str
    content: Any = None
    name: Optional[str] = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value):
        if value is None or isinstance(value, str):
            return value or ""
        if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                           and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        raise ValueError("must be a string or a list of text parts")


class ChatBody(_Body):
    """``POST /v1/chat/completions``: the messages are rendered into one code prompt (see
    :func:`codegeex_ms.serve.chat.render_chat`); the answer is the model's continuation."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)

    def unsupported(self) -> list:
        out = super().unsupported()
        if self.stream and self.logprobs:
            out.append(("logprobs", "logprobs are not streamed; ask without stream"))
        if self.top_logprobs is not None and not self.logprobs:
            out.append(("top_logprobs", "needs logprobs: true"))
        return out


class CodeCompleteBody(_Body):
    """``POST /v1/code/complete``: continue ``code``, with the language tag when given."""

    code: str = Field(..., min_length=1)
    language: Optional[str] = None
    language_stop: bool = Field(False, description="end at the close of the function the code opened")


class CodeTranslateBody(_Body):
    """``POST /v1/code/translate``: the HumanEval-X translation prompt."""

    code: str = Field(..., min_length=1)
    source_language: str
    target_language: str
    target_prefix: str = Field("", description="the start of the target program, e.g. its signature")
    language_stop: bool = Field(False, description="end at the close of the function target_prefix opened")


class CodeExplainBody(_Body):
    """``POST /v1/code/explain``: an explanation comment for ``code``."""

    code: str = Field(..., min_length=1)
    language: str


def parse_body(model: type[_Body], raw: bytes) -> _Body:
    """Validate JSON ``raw`` against ``model``; RequestError naming every bad field."""
    try:
        body = model.model_validate_json(raw)
    except ValidationError as e:
        problems, param = [], None
        for err in e.errors():
            loc = ".".join(str(part) for part in err["loc"])
            param = param or loc or None
            if err["type"] == "json_invalid":
                problems.append(f"request body is not valid JSON ({err['ctx']['error']})")
            elif err["type"] == "model_type":
                problems.append("request body must be a JSON object")
            elif err["type"] == "extra_forbidden":
                known = ", ".join(sorted(model.model_fields))
                problems.append(f"{loc}: unknown or unsupported field (accepted: {known})")
            else:
                problems.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise RequestError("; ".join(problems), param) from None
    bad = body.unsupported()
    if bad:
        known = ", ".join(sorted(model.model_fields))
        problems = [f"{name}: {why}" + (f" (accepted: {known})" if why == "unknown or unsupported field" else "")
                    for name, why in bad]
        raise RequestError("; ".join(problems), bad[0][0])
    return body


@dataclass(frozen=True)
class Limits:
    """Server-wide bounds on one request."""

    max_length: int               # prompt + new tokens, in positions
    max_request_rows: int = 8     # prompts × n
    max_new_tokens: int = MAX_NEW_TOKENS
    vocab_size: int = 2 ** 31     # token ids in prompts must be below this


@dataclass(frozen=True)
class GenerationOptions:
    """Everything but the prompt that the worker needs, defaults filled in and checked."""

    max_tokens: int
    sampling: SamplingParams
    n: int = 1
    stop: tuple = ()
    seed: Optional[int] = None
    stream: bool = False
    penalties: Penalties = Penalties()
    logprobs: Optional[int] = None       # top-k per token (None: off)
    include_usage: bool = False


def suffix_stop(suffix: Optional[str]) -> tuple:
    """The stop string standing for ``suffix``: its first non-blank line without leading
    whitespace (empty when there is none)."""
    for line in (suffix or "").split("\n"):
        if line.strip():
            return (line.strip(),)
    return ()


def generation_options(body: _Body, defaults, limits: Limits, prompts: int = 1) -> GenerationOptions:
    """Fill unset fields from ``defaults`` (an ``InferenceConfig``) and check them against ``limits``."""
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    max_tokens = max_tokens if max_tokens is not None else defaults.max_new_tokens
    ceiling = min(limits.max_new_tokens, limits.max_length - 1)
    if max_tokens > ceiling:
        raise RequestError(f"max_tokens: at most {ceiling} (got {max_tokens}); this model has "
                           f"{limits.max_length} positions for prompt + completion", "max_tokens")
    rows = prompts * body.n
    if rows > limits.max_request_rows:
        raise RequestError(f"n: {prompts} prompt(s) × n={body.n} = {rows} completions; at most "
                           f"{limits.max_request_rows} per request", "n")
    sampling = SamplingParams.from_config(defaults, body.temperature, body.top_k, body.top_p)
    logprobs = getattr(body, "logprobs", None)
    if isinstance(body, ChatBody):
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
    stop = body.stop + (suffix_stop(body.suffix) if isinstance(body, CompletionBody) else ())
    return GenerationOptions(max_tokens, sampling, body.n, stop, body.seed, body.stream,
                             Penalties(body.presence_penalty, body.frequency_penalty), logprobs,
                             bool((body.stream_options or {}).get("include_usage")))
