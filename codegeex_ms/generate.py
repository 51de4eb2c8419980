"""Generate code with CodeGeeX: complete, translate or explain.

    python -m codegeex_ms.generate --config tiny --checkpoint model.ckpt --language python \
        --prompt "def fibonacci(n):"
    echo "int add(int a, int b) { return a + b; }" | python -m codegeex_ms.generate \
        --config tiny --checkpoint model.ckpt --task translate --source-language c++ \
        --language python

The prompt comes from --prompt, --prompt-file or standard input. With one sample the completion
streams to the terminal as tokens arrive; several samples are printed one after another.
"""

from __future__ import annotations

import argparse
import sys

from codegeex_ms import cli as cli_common
from codegeex_ms.humaneval.stopping import language_stop
from codegeex_ms.inference.loading import load_generator
from codegeex_ms.inference.prompts import TASKS


def build_prompt(args, code: str) -> str:
    """The model input for ``--task`` from the user's code."""
    from codegeex_ms.data.languages import Languages
    from codegeex_ms.inference.prompts import completion_prompt, explanation_prompt, translation_prompt
    languages = Languages.load(args.language_tags)
    if args.task == "translate":
        if not (args.source_language and args.language):
            raise SystemExit("--task translate needs --source-language and --language (the target)")
        return translation_prompt(code, args.source_language, args.language, languages)
    if args.task == "explain":
        if not args.language:
            raise SystemExit("--task explain needs --language (the language of the code)")
        return explanation_prompt(code, args.language, languages)
    return completion_prompt(code, args.language, languages)


def read_prompt(args) -> str:
    if args.prompt is not None:
        text = args.prompt
    elif args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"--prompt-file {args.prompt_file}: {e}") from None
    elif not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        raise SystemExit("no prompt: give --prompt, --prompt-file, or pipe it on standard input")
    if not text.strip():
        raise SystemExit("the prompt is empty")
    return text


def parse_args(argv=None):
    parser = cli_common.ArgumentParser(prog="python -m codegeex_ms.generate", description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_common.add_model_args(parser)
    parser.add_argument("--language-tags", help="language_tags.json (default: shared data)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="the code to start from")
    src.add_argument("--prompt-file", help="read the code from this file")
    parser.add_argument("--task", choices=TASKS, default="complete")
    parser.add_argument("--language", help="language of the code (complete/explain) or the target "
                                           "language (translate); adds the language tag")
    parser.add_argument("--source-language", help="translate: the language of the given code")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: inference.max_new_tokens")
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy (default: inference.temperature)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--num-beams", type=int, default=1, help="> 1: beam search")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--no-language-stop", action="store_true",
                        help="do not stop at the end of the function (HumanEval-X rules)")
    parser.add_argument("--truncate-left", action="store_true",
                        help="drop the oldest prompt tokens if prompt + new tokens exceed the limit")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-stream", action="store_true", help="print only when done")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = cli_common.config_for_checkpoint(args, args.checkpoint)
    inf = cfg.inference
    from codegeex_ms.inference.sampling import SamplingParams
    try:
        sampling = SamplingParams.from_config(inf, args.temperature, args.top_k, args.top_p)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.num_samples < 1:
        raise SystemExit("--num-samples must be >= 1")
    try:
        prompt = build_prompt(args, read_prompt(args))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    stop_fn = None
    if args.task in ("complete", "translate") and args.language and not args.no_language_stop:
        stop_fn = language_stop(args.language)

    try:
        generator = load_generator(cfg, args.checkpoint, args.tokenizer_dir, args.mode, args.device_target,
                                   adapter=args.adapter)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    stream = args.num_samples == 1 and args.num_beams == 1 and not args.no_stream

    def on_text(_row, text):
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        results = generator.generate(
            [prompt] * args.num_samples, args.max_new_tokens or inf.max_new_tokens, sampling,
            num_beams=args.num_beams, length_penalty=args.length_penalty, stop=args.stop,
            stop_fn=stop_fn, seed=args.seed, truncate="left" if args.truncate_left else "error",
            on_text=on_text if stream else None)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if stream:
        sys.stdout.write("\n")
    else:
        for i, result in enumerate(results):
            if args.num_samples > 1:
                print(f"----- sample {i + 1} ({result.finish_reason}) -----")
            print(result.text)
    t = generator.timing
    print(f"[prefill {t.prefill_tokens} tokens in {t.prefill_s:.2f} s | {t.decode_steps} decode steps "
          f"in {t.decode_s:.2f} s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
