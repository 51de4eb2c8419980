"""Merge per-rank checkpoints into one, or split one into model-parallel ranks.

The merge/split logic and its memory note: :mod:`codegeex_ms.parallel.rank_checkpoints`.

    python -m codegeex_ms.distributed_ckpt merge --src ckpts/ --strategy strategy.ckpt --out merged.ckpt
    python -m codegeex_ms.distributed_ckpt merge --src ckpts/ --config pretrain_13b_1536npu --out merged.ckpt
    python -m codegeex_ms.distributed_ckpt split --src merged.ckpt --config codegeex_13b --mp 8 --out ranks/
    python -m codegeex_ms.distributed_ckpt strategy --config smoke_8npu --out strategy.ckpt
"""

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from codegeex_ms import cli as cli_common
from codegeex_ms.config import ConfigError, config_from_args
from codegeex_ms.parallel.rank_checkpoints import checkpoint_names, config_strategy, merge, rank_files, split


def _opt_size_arg(parser):
    parser.add_argument("--optimizer-shard-size", type=int, default=None,
                        help="parallel-optimizer group size of the layout: 0 = none, -1 = MindSpore's "
                             "default (all replicas), k = groups of k (must divide data_parallel); "
                             "default: what `python -m codegeex_ms.plan` reports for the config")


def build_parser() -> argparse.ArgumentParser:
    parser = cli_common.ArgumentParser(prog="python -m codegeex_ms.distributed_ckpt",
                                       description=__doc__.split("\n\n")[0],
                                       epilog="examples:\n" + __doc__.split("\n\n")[-1],
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("merge", help="per-rank checkpoints -> one checkpoint with full tensors")
    m.add_argument("--src", required=True, help="directory with rank_0/, rank_1/, … each holding a .ckpt")
    m.add_argument("--pattern", default="*.ckpt", help="file name pattern in each rank directory")
    m.add_argument("--strategy", help="strategy file saved by the training compile (protobuf or .json)")
    cli_common.add_config_args(m)
    _opt_size_arg(m)
    m.add_argument("--out", required=True, help="merged .ckpt to write")

    s = sub.add_parser("split", help="one checkpoint -> mp model-parallel ranks (dp=1)")
    s.add_argument("--src", required=True, help="full (merged) .ckpt")
    s.add_argument("--strategy", help="destination strategy file (default: from --config with dp=1)")
    cli_common.add_config_args(s)
    s.add_argument("--mp", type=int, help="model-parallel ranks (default: the config's model_parallel)")
    s.add_argument("--prefix", default="rank", help="file prefix: rank_<r>/<prefix><r>.ckpt")
    s.add_argument("--out", required=True, help="output directory (rank_<r>/ and strategy.ckpt)")

    w = sub.add_parser("strategy", help="write the strategy file of a config's shard plan")
    cli_common.add_config_args(w, required=True)
    _opt_size_arg(w)
    w.add_argument("--names-from", help="a checkpoint whose tensor names the file should use "
                                        "(default: the model's parameter names)")
    w.add_argument("--out", required=True, help="strategy file to write")
    return parser


def _need_one(args, parser):
    if bool(args.strategy) == bool(args.config):
        parser.error(f"{args.command}: give exactly one of --strategy FILE or --config CONFIG")


def _run_merge(args, parser):
    _need_one(args, parser)
    files = rank_files(args.src, args.pattern)
    print(f"merging {len(files)} rank checkpoints from {args.src}")
    with tempfile.TemporaryDirectory() as tmp:
        strategy = args.strategy
        if strategy is None:
            cfg = config_from_args(args)
            devices = cfg.parallel.data_parallel * cfg.parallel.model_parallel
            if devices != len(files):
                raise ValueError(f"config has data_parallel × model_parallel = {devices} ranks but "
                                 f"{args.src} holds {len(files)}; fix --config/--set")
            strategy = os.path.join(tmp, "strategy.ckpt")
            count = config_strategy(cfg, checkpoint_names(files[0]), strategy, args.optimizer_shard_size)
            print(f"strategy written from the config's shard plan: {count} layouts")
        out = merge(files, strategy, args.out)
    print(f"wrote {out}")


def _run_split(args, parser):
    _need_one(args, parser)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    strategy = args.strategy
    if strategy is None:
        cfg = config_from_args(args)
        mp = args.mp or cfg.parallel.model_parallel
        cfg.parallel = dataclasses.replace(cfg.parallel, data_parallel=1, model_parallel=mp,
                                           optimizer_shard=False)
        strategy = out_dir / "strategy.ckpt"
        count = config_strategy(cfg, checkpoint_names(args.src), strategy, 0)
        print(f"strategy for dp=1 × mp={mp}: {count} layouts -> {strategy}")
    files = split(args.src, strategy, out_dir, args.prefix)
    print(f"wrote {len(files)} ranks under {out_dir}")


def _run_strategy(args, parser):  # pylint: disable=unused-argument
    cfg = config_from_args(args)
    names = checkpoint_names(args.names_from) if args.names_from else None
    count = config_strategy(cfg, names, args.out, args.optimizer_shard_size)
    print(f"wrote {args.out}: {count} layouts for dp={cfg.parallel.data_parallel} × "
          f"mp={cfg.parallel.model_parallel}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runner = {"merge": _run_merge, "split": _run_split, "strategy": _run_strategy}[args.command]
    try:
        runner(args, parser)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
