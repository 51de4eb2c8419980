"""``python -m codegeex_ms.train --config C [--set section.key=value ...] [--resume]``.

Errors and exit status follow :mod:`codegeex_ms.cli` (a damaged checkpoint met by
``--resume`` is not an error: it is reported, moved aside and the newest verified one is used).
"""

import argparse
import logging
import sys

from codegeex_ms import cli as cli_common
from codegeex_ms.config import config_from_args
from codegeex_ms.env.runtime import add_runtime_args, setup


def build_parser() -> argparse.ArgumentParser:
    parser = cli_common.ArgumentParser(
        prog="python -m codegeex_ms.train",
        description="Pre-train CodeGeeX on preprocessed MindRecord shards, or fine-tune it on a "
                    "prompt/completion .jsonl (data.finetune=true; loss on the completion only). "
                    "Everything else comes from the config: see the train/data sections. For "
                    "several processes use run_scripts/run_distribute.sh.")
    cli_common.add_config_args(parser, required=True)
    add_runtime_args(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in "
                             "<train.output_dir>/checkpoints (a truncated or corrupt newest one is "
                             "skipped with a warning); without one, start from scratch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    setup(args.mode, args.device_target, seed=cfg.train.seed)
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from codegeex_ms.train.loop import run  # pylint: disable=import-outside-toplevel

    target = ms.get_context("device_target")
    summary = run(cfg, resume=args.resume, device_target=target, progress=not args.no_progress)
    last = summary["last_row"]
    if last is not None:
        print(f"trained steps {summary['start_step'] + 1}..{summary['end_step']}: loss "
              f"{summary['first_loss']:.4f} -> {last['loss']:.4f}; outputs in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
