"""Command line: turn source trees and JSONL code dumps into packed MindRecord pre-training shards.

Example::

    python -m codegeex_ms.preprocess ~/src/cpython/Lib data/code.jsonl.gz --output data/shards \\
        --seq-length 2048 --workers 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codegeex_ms import cli as cli_common
from codegeex_ms.data.filters import FilterConfig
from codegeex_ms.data.pipeline import PreprocessOptions, format_summary, preprocess
from codegeex_ms.data.tokenizer import TOKENIZER_DIR_ENV


def build_parser() -> argparse.ArgumentParser:
    defaults, filt = PreprocessOptions(inputs=[], output=Path()), FilterConfig()
    p = cli_common.ArgumentParser(
        prog="python -m codegeex_ms.preprocess",
        description="Filter, deduplicate, tag, tokenize and pack code into MindRecord shards of "
                    "seq_length+1 tokens (documents separated by <|endoftext|>). Inputs: source "
                    "files, directories of them (language from the extension) and .jsonl/.jsonl.gz "
                    "files with a 'code' field and optional 'language'/'path'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="source files, directories, .jsonl or .jsonl.gz files")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="output directory (created; written atomically via <output>.partial)")
    p.add_argument("--tokenizer-dir", "--tokenizer", dest="tokenizer", default=None,
                   help=f"tokenizer directory (default: ${TOKENIZER_DIR_ENV}, else "
                        f"<shared data>/codegeex_tokenizer)")
    p.add_argument("--language-tags", default=None,
                   help="language_tags.json (default: <shared data>/language_tags.json)")
    p.add_argument("--seq-length", type=int, default=defaults.seq_length,
                   help="model sequence length; samples hold seq_length+1 tokens")
    p.add_argument("--workers", type=int, default=defaults.workers,
                   help="worker processes for reading/filtering/tokenizing (0: in-process)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the document shuffle")
    p.add_argument("--no-shuffle", action="store_true",
                   help="keep input order (sorted paths, file order within JSONL)")
    p.add_argument("--shuffle-buffer", type=int, default=defaults.shuffle_buffer,
                   help="documents held by the streaming shuffle (after the input files are "
                        "shuffled)")
    p.add_argument("--samples-per-shard", type=int, default=defaults.samples_per_shard)
    p.add_argument("--min-bytes", type=int, default=filt.min_bytes,
                   help="drop documents smaller than this (UTF-8 bytes)")
    p.add_argument("--max-bytes", type=int, default=filt.max_bytes,
                   help="drop documents larger than this (UTF-8 bytes)")
    p.add_argument("--max-avg-line-length", type=float, default=filt.max_avg_line_length,
                   help="drop documents whose mean line length exceeds this")
    p.add_argument("--min-alpha-fraction", type=float, default=filt.min_alpha_fraction,
                   help="drop documents with a smaller share of alphabetic characters")
    p.add_argument("--autogen-scan-lines", type=int, default=filt.autogen_scan_lines,
                   help="lines searched for auto-generation markers (0 disables the check)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --output")
    p.add_argument("--summary-json", type=Path, default=None,
                   help="also write the summary here (it is always in <output>/summary.json)")
    cli_common.add_quiet_arg(p, "no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = PreprocessOptions(
        inputs=args.inputs, output=args.output, tokenizer_dir=args.tokenizer,
        language_tags=args.language_tags, seq_length=args.seq_length,
        filters=FilterConfig(min_bytes=args.min_bytes, max_bytes=args.max_bytes,
                             max_avg_line_length=args.max_avg_line_length,
                             autogen_scan_lines=args.autogen_scan_lines,
                             min_alpha_fraction=args.min_alpha_fraction),
        workers=args.workers, seed=args.seed, shuffle=not args.no_shuffle,
        shuffle_buffer=args.shuffle_buffer, samples_per_shard=args.samples_per_shard,
        overwrite=args.overwrite, progress=not args.quiet)
    try:
        summary = preprocess(opts)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"shards and summary.json written to {args.output}")
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
