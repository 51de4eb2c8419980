"""Request bodies of the HTTP API, their validation, and the OpenAI-style error body.

Bodies are parsed strictly (no string-to-number coercion, unknown fields rejected); every problem
becomes a :class:`RequestError` whose message names the field and the rule it broke. Limits that
depend on the loaded model (max_tokens, prompt length, rows per request) are checked by
:func:`generation_options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codegeex_ms.inference.sampling import SamplingParams

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
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    max_tokens: Optional[int] = Field(None, ge=1, description="new tokens per choice")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="0 = greedy")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    n: int = Field(1, ge=1, description="choices per prompt")
    stop: Any = Field((), description="a string or a list of up to 4 strings")
    stream: bool = False
    seed: Optional[int] = Field(None, ge=0, lt=2**32)
    model: Optional[str] = Field(None, description="accepted for OpenAI clients; one model is served")

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


class CompletionBody(_Body):
    """``POST /v1/completions``: OpenAI's legacy completions API."""

    prompt: Any = Field(..., description="a string or a list of strings")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(p, str) for p in items):
            raise ValueError("must be a non-empty string or a non-empty list of strings")
        if not all(items):
            raise ValueError("prompts must not be empty strings")
        return items


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
        return model.model_validate_json(raw)
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


@dataclass(frozen=True)
class Limits:
    """Server-wide bounds on one request."""

    max_length: int               # prompt + new tokens, in positions
    max_request_rows: int = 8     # prompts × n
    max_new_tokens: int = MAX_NEW_TOKENS


@dataclass(frozen=True)
class GenerationOptions:
    """Everything but the prompt that the worker needs, defaults filled in and checked."""

    max_tokens: int
    sampling: SamplingParams
    n: int
    stop: tuple
    seed: Optional[int]
    stream: bool


def generation_options(body: _Body, defaults, limits: Limits, prompts: int = 1) -> GenerationOptions:
    """Fill unset fields from ``defaults`` (an ``InferenceConfig``) and check them against ``limits``."""
    max_tokens = body.max_tokens if body.max_tokens is not None else defaults.max_new_tokens
    ceiling = min(limits.max_new_tokens, limits.max_length - 1)
    if max_tokens > ceiling:
        raise RequestError(f"max_tokens: at most {ceiling} (got {max_tokens}); this model has "
                           f"{limits.max_length} positions for prompt + completion", "max_tokens")
    rows = prompts * body.n
    if rows > limits.max_request_rows:
        raise RequestError(f"n: {prompts} prompt(s) × n={body.n} = {rows} completions; at most "
                           f"{limits.max_request_rows} per request", "n")
    sampling = SamplingParams(
        defaults.temperature if body.temperature is None else body.temperature,
        defaults.top_k if body.top_k is None else body.top_k,
        defaults.top_p if body.top_p is None else body.top_p)
    return GenerationOptions(max_tokens, sampling, body.n, body.stop, body.seed, body.stream)
