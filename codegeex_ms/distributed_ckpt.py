"""Merge per-rank checkpoints into one, or split one into model-parallel ranks.

Both directions are MindSpore's own ``transform_checkpoints`` driven by strategy files: merging
reads the training strategy (the file a semi-auto-parallel compile saved, or one written from a
config's shard plan by :mod:`codegeex_ms.parallel.strategy_file`) and handles model-parallel and
parallel-optimizer slices and data-parallel replicas; splitting writes the layout of a
``dp=1 × mp=N`` plan. Parameters no layout mentions (``global_step``, ``learning_rate``…) are
copied from rank 0. Per-rank inputs follow MindSpore's convention ``SRC/rank_<r>/<file>.ckpt``
and hold each rank's own slices (``CheckpointConfig(integrated_save=False)``, as the original
CodeGeeX training saved them); with ``integrated_save=True`` every rank already holds the full
tensors and needs no merge.

Memory: MindSpore's transform holds every tensor it combines in host memory (the merged 13B
weights with FP32 Adam moments are ~155 GB).

    python -m codegeex_ms.distributed_ckpt merge --src ckpts/ --strategy strategy.ckpt --out merged.ckpt
    python -m codegeex_ms.distributed_ckpt merge --src ckpts/ --config pretrain_13b_1536npu --out merged.ckpt
    python -m codegeex_ms.distributed_ckpt split --src merged.ckpt --config codegeex_13b --mp 8 --out ranks/
    python -m codegeex_ms.distributed_ckpt strategy --config smoke_8npu --out strategy.ckpt
"""

import argparse
import dataclasses
import fnmatch
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from codegeex_ms import cli as cli_common
from codegeex_ms.checkpoint.atomic import file_digest, replace_with_manifest, verify_file, write_manifest
from codegeex_ms.config import ConfigError, config_from_args
from codegeex_ms.parallel.strategy_file import (check_optimizer_shard_size,
                                                optimizer_shard_size_for, planned_parameters,
                                                plan_layouts, match_names, write_strategy_file)

RANK_DIR = re.compile(r"^rank_(\d+)$")


def rank_files(src_dir, pattern: str = "*.ckpt") -> Dict[int, Path]:
    """``{rank: file}`` from ``src_dir/rank_<r>/``: exactly one file per rank must match
    ``pattern``; ranks must be 0..n-1. Raises FileNotFoundError/ValueError naming the problem."""
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"per-rank checkpoint directory not found: {src}")
    found = {}
    for sub in sorted(src.iterdir()):
        match = RANK_DIR.match(sub.name)
        if not match or not sub.is_dir():
            continue
        files = sorted(f for f in sub.iterdir() if f.is_file() and fnmatch.fnmatch(f.name, pattern))
        if len(files) != 1:
            listed = ", ".join(f.name for f in files) or "none"
            raise ValueError(f"{sub}: expected exactly one file matching {pattern!r}, found {listed}; "
                             "pass --pattern to pick one (e.g. --pattern '*-1000_*.ckpt')")
        found[int(match.group(1))] = files[0]
    if not found:
        raise FileNotFoundError(f"no rank_<r>/ directories with checkpoints in {src}")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise ValueError(f"{src}: rank directories missing for ranks {missing}")
    return found


def checkpoint_names(path) -> List[str]:
    """Tensor names stored in a MindSpore ``.ckpt`` (read from its index, no tensor data)."""
    from codegeex_ms.checkpoint.ms_ckpt import CkptReader  # pylint: disable=import-outside-toplevel
    with CkptReader(path) as reader:
        return list(reader.infos)


def _stage(files: Dict[int, Path], root: Path) -> Path:
    """Link ``files`` into ``root/rank_<r>/ckpt.ckpt`` (the layout transform_checkpoints reads)."""
    for rank, path in files.items():
        verify_file(path, required=False)  # damage is reported before MindSpore opens the file
        rank_dir = root / f"rank_{rank}"
        rank_dir.mkdir(parents=True)
        os.symlink(Path(path).resolve(), rank_dir / "ckpt.ckpt")
    return root


def merge(files: Dict[int, Path], strategy_file, out_file) -> Path:
    """Merge per-rank checkpoints ``{rank: path}`` saved under ``strategy_file`` into one
    ``.ckpt`` holding every full tensor; returns ``out_file``."""
    from mindspore.parallel import transform_checkpoints  # pylint: disable=import-outside-toplevel
    out_file = Path(out_file)
    if out_file.suffix != ".ckpt":
        raise ValueError(f"--out {out_file}: the merged checkpoint must end in .ckpt")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_file.parent, prefix=".merge_") as tmp:
        src = _stage(files, Path(tmp) / "src")
        transform_checkpoints(str(src), str(Path(tmp) / "dst"), "merged", str(strategy_file), None)
        replace_with_manifest(Path(tmp) / "dst" / "rank_0" / "merged0.ckpt", out_file)
    return out_file


def split(src_file, strategy_file, out_dir, prefix: str = "rank") -> Dict[int, Path]:
    """Split one full checkpoint into the ranks of ``strategy_file``: writes
    ``out_dir/rank_<r>/<prefix><r>.ckpt`` and returns ``{rank: path}``."""
    from mindspore.parallel import transform_checkpoints  # pylint: disable=import-outside-toplevel
    src_file, out_dir = Path(src_file), Path(out_dir)
    if not src_file.is_file():
        raise FileNotFoundError(f"checkpoint to split not found: {src_file}")
    verify_file(src_file, required=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in out_dir.iterdir() if RANK_DIR.match(p.name))
    if existing:
        raise ValueError(f"{out_dir} already holds {', '.join(existing)}: split into an empty directory")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".split_") as tmp:
        src = _stage({0: src_file}, Path(tmp) / "src")
        transform_checkpoints(str(src), str(out_dir), prefix, None, str(strategy_file))
    files = rank_files(out_dir, f"{prefix}*.ckpt")
    for path in files.values():
        write_manifest(path, *file_digest(path))
    return files


def config_strategy(cfg, names, out_file, optimizer_shard_size: Optional[int] = None) -> int:
    """Write the strategy of ``cfg``'s shard plan for checkpoint ``names`` to ``out_file``;
    returns the number of layouts. ``optimizer_shard_size`` None = the project's choice
    (:func:`optimizer_shard_size_for`)."""
    params = planned_parameters(cfg.model, cfg.parallel)
    size = optimizer_shard_size_for(params, cfg.parallel) if optimizer_shard_size is None \
        else optimizer_shard_size
    dp, mp = cfg.parallel.data_parallel, cfg.parallel.model_parallel
    check_optimizer_shard_size(dp, size)
    layouts = plan_layouts(params, dp, mp, size)
    if names is not None:
        layouts = match_names(names, layouts)
    if not layouts:
        raise ValueError("no checkpoint name matches a parameter of the config's model; is the "
                         "checkpoint from a different network (e.g. MindSpore 1.7 names)? "
                         "Pass that run's own strategy file with --strategy instead")
    write_strategy_file(out_file, layouts)
    return len(layouts)


# ---------------------------------------------------------------------------------------------
# Command line


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
