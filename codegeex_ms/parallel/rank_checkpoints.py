"""Merge per-rank checkpoints into one, or split one into model-parallel ranks (``distributed_ckpt``).

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
"""

import fnmatch
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from codegeex_ms.checkpoint.atomic import file_digest, replace_with_manifest, verify_file, write_manifest
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
