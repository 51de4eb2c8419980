"""The Starlette application: OpenAI-style completions, code task endpoints, health, playground.

Routes:

* ``POST /v1/completions`` -- OpenAI's completions API (prompt as text or token ids, suffix,
  max_tokens, temperature, top_p, top_k, n, stop, stream, stream_options, seed, logprobs, echo,
  presence/frequency penalty, best_of = n, user); ``stream: true`` answers with server-sent
  events ending in ``data: [DONE]``.
* ``POST /v1/chat/completions`` -- OpenAI's chat API; the chat is rendered into a code prompt
  (:mod:`codegeex_ms.serve.chat`), logprobs/top_logprobs as OpenAI's.
* ``POST /v1/code/complete | /v1/code/translate | /v1/code/explain`` -- the three CodeGeeX tasks;
  the same answer format.
* ``GET /health``, ``GET /v1/models``, ``GET /v1/info`` (languages, defaults and limits).
* ``GET /`` -- the playground; ``GET /static/...`` its files (shipped in this package).

Every error answers ``{"error": {"message", "type", "param", "code"}}``: 400 bad input, 404/405,
413 body too large, 429 queue full, 503 shutting down, 500 generation failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from codegeex_ms.config import InferenceConfig
from codegeex_ms.data.languages import Languages
from codegeex_ms.data.tokenizer import CodeGeeXTokenizer
from codegeex_ms.inference.prompts import (completion_prompt, explanation_prompt,
                                           resolve_language, translation_prompt)
from codegeex_ms.serve.chat import render_chat
from codegeex_ms.serve.schemas import (ChatBody, CodeCompleteBody, CodeExplainBody,
                                       CodeTranslateBody, CompletionBody, GenerationOptions, Limits,
                                       RequestError, generation_options, parse_body)
from codegeex_ms.serve.worker import (DoneEvent, ErrorEvent, Job, ModelWorker, QueueFull, ShuttingDown,
                                      TextEvent)

STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass
class ServeContext:
    """What the handlers share: the worker (which owns the generator) and request policy."""

    worker: ModelWorker
    tokenizer: CodeGeeXTokenizer
    languages: Languages
    defaults: InferenceConfig
    limits: Limits
    model_name: str
    stop_languages: frozenset = frozenset()   # display names that have an end-of-function rule
    max_body_bytes: int = 256 * 1024


def create_app(ctx: ServeContext) -> Starlette:
    """The ASGI app; its lifespan starts the worker and, at shutdown, lets it finish its queue."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        ctx.worker.start()
        yield
        await run_in_threadpool(ctx.worker.close)

    routes = [
        Route("/health", partial(health, ctx), methods=["GET"]),
        Route("/v1/models", partial(models, ctx), methods=["GET"]),
        Route("/v1/info", partial(info, ctx), methods=["GET"]),
        Route("/v1/completions", partial(completions, ctx), methods=["POST"]),
        Route("/v1/chat/completions", partial(chat_completions, ctx), methods=["POST"]),
        Route("/v1/code/complete", partial(code_complete, ctx), methods=["POST"]),
        Route("/v1/code/translate", partial(code_translate, ctx), methods=["POST"]),
        Route("/v1/code/explain", partial(code_explain, ctx), methods=["POST"]),
        Route("/", playground, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    handlers = {RequestError: request_error, HTTPException: http_error, Exception: server_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


# ---------------------------------------------------------------------------- errors


async def request_error(_request, exc: RequestError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 429 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def http_error(request, exc: HTTPException) -> JSONResponse:
    messages = {404: f"no such endpoint or file: {request.method} {request.url.path}",
                405: f"method {request.method} is not allowed on {request.url.path}"}
    message = messages.get(exc.status_code, exc.detail)
    return JSONResponse(RequestError(message, status=exc.status_code).body(),
                        status_code=exc.status_code, headers=exc.headers)


async def server_error(_request, exc: Exception) -> JSONResponse:
    err = RequestError(f"internal error: {type(exc).__name__}: {exc}", status=500, kind="server_error")
    return JSONResponse(err.body(), status_code=500)


# ---------------------------------------------------------------------------- informational


async def playground(_request) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


async def health(ctx: ServeContext, _request) -> JSONResponse:
    state = ctx.worker.snapshot()
    return JSONResponse({"status": "draining" if state["draining"] else "ok", "model": ctx.model_name,
                         "max_length": ctx.limits.max_length, "worker": state})


async def models(ctx: ServeContext, _request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [
        {"id": ctx.model_name, "object": "model", "created": 0, "owned_by": "codegeex-ms"}]})


async def info(ctx: ServeContext, _request) -> JSONResponse:
    d, lim = ctx.defaults, ctx.limits
    return JSONResponse({
        "model": ctx.model_name, "max_length": lim.max_length,
        "max_tokens": min(lim.max_new_tokens, lim.max_length - 1),
        "max_request_rows": lim.max_request_rows,
        "defaults": {"max_tokens": d.max_new_tokens, "temperature": d.temperature,
                     "top_p": d.top_p, "top_k": d.top_k},
        "languages": [{"name": name, "stop_rule": name in ctx.stop_languages}
                      for name in ctx.languages.names]})


# ---------------------------------------------------------------------------- generation


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes exceeds the {limit}-byte limit", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body exceeds the {limit}-byte limit", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _language(ctx: ServeContext, name: str, param: str) -> str:
    try:
        return resolve_language(ctx.languages, name)
    except ValueError as e:
        raise RequestError(f"{param}: {e}", param) from None


async def completions(ctx: ServeContext, request: Request) -> Response:
    body = parse_body(CompletionBody, await read_body(request, ctx.max_body_bytes))
    opts = generation_options(body, ctx.defaults, ctx.limits, prompts=len(body.prompt))
    fmt = CompletionFormat(ctx.tokenizer, body.echo)
    return await generate(ctx, request, body.prompt, opts, None, "prompt", fmt)


async def chat_completions(ctx: ServeContext, request: Request) -> Response:
    body = parse_body(ChatBody, await read_body(request, ctx.max_body_bytes))
    opts = generation_options(body, ctx.defaults, ctx.limits)
    return await generate(ctx, request, [render_chat(body.messages)], opts, None, "messages",
                          ChatFormat(ctx.tokenizer))


async def code_complete(ctx: ServeContext, request: Request) -> Response:
    body = parse_body(CodeCompleteBody, await read_body(request, ctx.max_body_bytes))
    opts = generation_options(body, ctx.defaults, ctx.limits)
    language = _language(ctx, body.language, "language") if body.language else None
    if body.language_stop and not language:
        raise RequestError("language_stop: needs language (whose end-of-function rule to use)",
                           "language_stop")
    prompt = completion_prompt(body.code, language, ctx.languages)
    return await generate(ctx, request, [prompt], opts, _stop_rule(ctx, body.language_stop, language), "code")


async def code_translate(ctx: ServeContext, request: Request) -> Response:
    body = parse_body(CodeTranslateBody, await read_body(request, ctx.max_body_bytes))
    opts = generation_options(body, ctx.defaults, ctx.limits)
    source = _language(ctx, body.source_language, "source_language")
    target = _language(ctx, body.target_language, "target_language")
    if body.language_stop and not body.target_prefix:
        raise RequestError("language_stop: needs target_prefix (the rule ends the function that "
                           "the prefix opens)", "language_stop")
    prompt = translation_prompt(body.code, source, target, ctx.languages, body.target_prefix)
    return await generate(ctx, request, [prompt], opts, _stop_rule(ctx, body.language_stop, target), "code")


async def code_explain(ctx: ServeContext, request: Request) -> Response:
    body = parse_body(CodeExplainBody, await read_body(request, ctx.max_body_bytes))
    opts = generation_options(body, ctx.defaults, ctx.limits)
    prompt = explanation_prompt(body.code, _language(ctx, body.language, "language"), ctx.languages)
    return await generate(ctx, request, [prompt], opts, None, "code")


def _stop_rule(ctx: ServeContext, wanted: bool, language):
    if not wanted:
        return None
    if language not in ctx.stop_languages:
        raise RequestError(f"language_stop: {language} has no end-of-function rule (those that do: "
                           f"{', '.join(sorted(ctx.stop_languages))})", "language_stop")
    return language


async def generate(ctx: ServeContext, request: Request, prompts: list, opts: GenerationOptions,
                   stop_rule, param: str, fmt=None) -> Response:
    """Tokenize and check ``prompts`` (strings or token id lists), queue the job, answer as JSON
    or as an event stream in ``fmt`` (default: completions)."""
    fmt = fmt or CompletionFormat(ctx.tokenizer)
    texts = [p for p in prompts if isinstance(p, str)]
    encoded = iter(await run_in_threadpool(ctx.tokenizer.encode_batch, texts) if texts else [])
    token_lists = [next(encoded) if isinstance(p, str) else list(p) for p in prompts]
    for i, ids in enumerate(token_lists):
        if max(ids) >= ctx.limits.vocab_size:
            raise RequestError(f"{param} {i}: token id {max(ids)} is outside the vocabulary "
                               f"(0..{ctx.limits.vocab_size - 1})", param)
    room = ctx.limits.max_length - opts.max_tokens
    for i, ids in enumerate(token_lists):
        if len(ids) > room:
            which = f"{param} {i}" if len(prompts) > 1 else param
            raise RequestError(
                f"{which}: {len(ids)} prompt tokens + max_tokens={opts.max_tokens} exceed the model's "
                f"{ctx.limits.max_length} positions: at most {room} prompt tokens fit; shorten the "
                f"{param} or lower max_tokens", param)
    job = Job(rows=[ids for ids in token_lists for _ in range(opts.n)], options=opts, stop_rule=stop_rule)
    try:
        ctx.worker.submit(job)
    except QueueFull as e:
        raise RequestError(f"server is busy: {e}; retry later", status=429, kind="overloaded_error") from None
    except ShuttingDown as e:
        raise RequestError(str(e), status=503, kind="unavailable_error") from None
    meta = {"id": f"{fmt.id_prefix}-{uuid.uuid4().hex}", "object": fmt.object,
            "created": int(time.time()), "model": ctx.model_name}
    prompt_tokens = sum(len(ids) for ids in token_lists)
    prompt_texts = [p if isinstance(p, str) else None for p in prompts]
    rows_prompt = [prompt_texts[i // opts.n] if prompt_texts[i // opts.n] is not None
                   else token_lists[i // opts.n] for i in range(len(job.rows))]
    if opts.stream:
        return JobEventStream(ctx.worker, job, _events(job, meta, fmt, rows_prompt,
                                                       prompt_tokens if opts.include_usage else None))
    event = await _outcome_or_disconnect(ctx.worker, job, request)
    if event is None:   # the client left; nobody reads this answer
        return Response(status_code=499)
    if isinstance(event, ErrorEvent):
        raise RequestError(event.message, status=500, kind="server_error")
    outs = event.completions
    return JSONResponse({**meta, "choices": [fmt.choice(i, c, rows_prompt[i]) for i, c in enumerate(outs)],
                         "usage": _usage(prompt_tokens, outs)})


def _usage(prompt_tokens: int, outs) -> dict:
    completion_tokens = sum(len(c.token_ids) for c in outs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _reason(completion) -> str:
    """OpenAI's ``finish_reason``: "length", else "stop" (EOS, stop string or rule)."""
    return "length" if completion.finish_reason == "length" else "stop"


class CompletionFormat:
    """Choices and chunks of ``/v1/completions`` (and the code task endpoints)."""

    id_prefix, object = "cmpl", "text_completion"

    def __init__(self, tokenizer, echo: bool = False):
        self.tokenizer, self.echo = tokenizer, echo

    def _prompt_text(self, prompt) -> str:
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)

    def choice(self, index: int, completion, prompt) -> dict:
        text = (self._prompt_text(prompt) if self.echo else "") + completion.text
        logprobs = None
        if completion.logprobs is not None:
            tokens = [self.tokenizer.decode([t]) for t, _, _ in completion.logprobs]
            offsets, at = [], 0
            for tok in tokens:
                offsets.append(at)
                at += len(tok)
            logprobs = {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in completion.logprobs],
                        "top_logprobs": [{self.tokenizer.decode([i]): v for i, v in top.items()}
                                         for _, _, top in completion.logprobs] if any(
                            top for _, _, top in completion.logprobs) else None,
                        "text_offset": offsets}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": _reason(completion)}

    def chunk(self, index: int, text: str) -> dict:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": None}

    def opening(self, index: int, prompt):
        """The first chunk of choice ``index``: the prompt with ``echo``, else nothing."""
        return self.chunk(index, self._prompt_text(prompt)) if self.echo else None

    def final(self, index: int, completion) -> dict:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": _reason(completion)}


class ChatFormat:
    """Choices and chunks of ``/v1/chat/completions``."""

    id_prefix, object = "chatcmpl", "chat.completion"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def _entry(self, token: int, logp: float) -> dict:
        text = self.tokenizer.decode([token])
        return {"token": text, "logprob": logp, "bytes": list(text.encode("utf-8"))}

    def choice(self, index: int, completion, _prompt) -> dict:
        logprobs = None
        if completion.logprobs is not None:
            logprobs = {"content": [{**self._entry(t, lp), "top_logprobs": [
                self._entry(i, v) for i, v in top.items()]} for t, lp, top in completion.logprobs]}
        return {"index": index, "message": {"role": "assistant", "content": completion.text},
                "logprobs": logprobs, "finish_reason": _reason(completion)}

    def chunk(self, index: int, text: str) -> dict:
        return {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}

    def opening(self, index: int, _prompt) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}

    def final(self, index: int, completion) -> dict:
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": _reason(completion)}


def _sse(payload) -> str:
    return f"data: {json.dumps(payload) if not isinstance(payload, str) else payload}\n\n"


class JobEventStream(StreamingResponse):
    """A server-sent event stream that cancels its job however the response ends: a client that
    disconnects (even before the first event) frees its place in the queue or its batch rows."""

    def __init__(self, worker: ModelWorker, job: Job, events):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.worker, self.job = worker, job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.worker.cancel(self.job)   # no effect once the job has finished


async def _events(job: Job, meta: dict, fmt, rows_prompt: list, usage_prompt_tokens=None):
    """The job's events as chunks of ``fmt`` (an opening chunk per choice where the format has
    one, text chunks, a final chunk per choice), a usage chunk when ``usage_prompt_tokens`` is
    given, then ``[DONE]``."""
    if fmt.object == "chat.completion":
        meta = {**meta, "object": "chat.completion.chunk"}
    for i, prompt in enumerate(rows_prompt):
        first = fmt.opening(i, prompt)
        if first is not None:
            yield _sse({**meta, "choices": [first]})
    while True:
        event = await job.events.get()
        if isinstance(event, TextEvent):
            yield _sse({**meta, "choices": [fmt.chunk(event.row, event.text)]})
        elif isinstance(event, DoneEvent):
            for i, c in enumerate(event.completions):
                yield _sse({**meta, "choices": [fmt.final(i, c)]})
            if usage_prompt_tokens is not None:
                yield _sse({**meta, "choices": [], "usage": _usage(usage_prompt_tokens, event.completions)})
            break
        else:
            yield _sse(RequestError(event.message, status=500, kind="server_error").body())
            break
    yield _sse("[DONE]")


async def _outcome_or_disconnect(worker: ModelWorker, job: Job, request: Request):
    """The job's final event, or None (job cancelled) if the client disconnects first."""
    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    outcome = asyncio.ensure_future(job.events.get())
    gone = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({outcome, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not outcome.done():
            outcome.cancel()
            worker.cancel(job)
    return outcome.result() if outcome.done() and not outcome.cancelled() else None
