r"""Serve a CodeGeeX checkpoint over HTTP.

    python -m codegeex_ms.serve --config tiny --checkpoint model.ckpt --port 8000

Then open http://127.0.0.1:8000/ for the playground, or call the OpenAI-style API:

    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
        -d '{"prompt": "def fib(n):", "max_tokens": 32, "temperature": 0}'

One thread runs the model by continuous batching over --max-batch cache slots: between decode
steps waiting requests are prefilled into free slots and finished rows free theirs; up to
--max-queue requests wait for a slot (more get HTTP 429). SIGINT/SIGTERM stop accepting connections,
finish the requests in flight, then end the process with that signal. "serving on
http://HOST:PORT" is printed once the port is open (with --port 0: the port the system picked).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from codegeex_ms import cli as cli_common
from codegeex_ms.config import ConfigError


def parse_args(argv=None):
    parser = cli_common.ArgumentParser(prog="python -m codegeex_ms.serve", description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_common.add_model_args(parser)
    parser.add_argument("--language-tags", help="language_tags.json (default: shared data)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="0 = any free port (default: %(default)s)")
    parser.add_argument("--model-name", help="model id in answers (default: the checkpoint's file name)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="KV cache slots: most rows generated together; 1 turns batching off "
                             "(default: %(default)s)")
    parser.add_argument("--prefill-tokens", type=int, default=2048,
                        help="most (padded) prompt tokens prefilled in one call (default: %(default)s)")
    parser.add_argument("--speculative", type=int, default=0, metavar="K",
                        help="draft K tokens by prompt lookup and verify them in one step (exact; "
                             "0 = off, the default: on CPU it measured no faster)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests that may wait; more are answered 429 (default: %(default)s)")
    parser.add_argument("--max-request-rows", type=int, default=8,
                        help="prompts × n allowed in one request (default: %(default)s)")
    parser.add_argument("--max-body-kb", type=int, default=256, help="request body limit (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    for name in ("max_batch", "max_queue", "max_request_rows", "prefill_tokens", "max_body_kb"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.speculative < 0:
        parser.error("--speculative must be >= 0")
    return args


def build_context(args, cfg):
    """Load the model, tokenizer and language tags into a :class:`~.app.ServeContext`."""
    from codegeex_ms.data.languages import Languages
    from codegeex_ms.humaneval.stopping import language_stop
    from codegeex_ms.inference.loading import load_generator
    from codegeex_ms.serve.app import ServeContext
    from codegeex_ms.serve.schemas import Limits
    from codegeex_ms.serve.worker import ModelWorker

    languages = Languages.load(args.language_tags)
    generator = load_generator(cfg, args.checkpoint, args.tokenizer_dir, args.mode, args.device_target,
                               adapter=args.adapter)
    from codegeex_ms.inference.speculative import PromptLookup
    scheduler = generator.slot_scheduler(
        args.max_batch, prefill_tokens=args.prefill_tokens,
        speculative=PromptLookup(args.speculative) if args.speculative else None)
    worker = ModelWorker(scheduler, max_queue=args.max_queue, stop_rules=language_stop)
    return ServeContext(
        worker=worker, tokenizer=generator.tokenizer, languages=languages, defaults=cfg.inference,
        limits=Limits(generator.max_length, args.max_request_rows,
                      vocab_size=generator.tokenizer.vocab_size),
        model_name=args.model_name or Path(args.checkpoint).stem,
        stop_languages=frozenset(n for n in languages.names if language_stop(n) is not None),
        max_body_bytes=args.max_body_kb * 1024)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from codegeex_ms.serve.app import create_app
    try:
        cfg = cli_common.config_for_checkpoint(args, args.checkpoint)
        ctx = build_context(args, cfg)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    config = uvicorn.Config(create_app(ctx), host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=None)
    sock = config.bind_socket()
    sock.listen(config.backlog)
    host, port = sock.getsockname()[:2]
    print(f"serving on http://{host}:{port}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
