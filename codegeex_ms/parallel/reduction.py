"""Which reductions the optimizer part of a step needs, and how much each gradient slice counts.

Under semi-auto parallel the part of a step after the backward pass (unscale, overflow check,
global-norm clip, optimizer) runs on each device's *local* gradient slices: a parameter split
over the ``mp`` model-parallel ranks (and, with the parallel optimizer, cut further over
``opt_shard_size`` data-parallel replicas) contributes a different slice on every device, while a
replicated one (LayerNorm, row-parallel bias, position tables) contributes the *same* values on
several devices. Two rules make the per-device results equal the unsharded step:

- global norm: divide each parameter's local square sum by :func:`slice_holders` (the number of
  devices holding an identical copy of that slice, i.e. the size of the group that MindSpore's
  ``Mirror`` operator reduces its gradient over) and all-reduce (SUM) over every device. This is
  the rule MindSpore's ``HandleGlobalNormScale`` pass applies when it finds the
  ``ExpandDims(grad_scale=True)`` square-sum pattern (see ``codegeex_ms.train.step``).
- overflow: all-reduce (SUM) the local 0/1 overflow flags over every device; the step overflowed
  when the sum is > 0 (a flag is not a sum of parts, so replicas need no correction). This is what
  MindSpore's loss-scale training cells do (``TrainOneStepWithLossScaleCell``).

Both the training step and the virtual mesh (``codegeex_ms.parallel.virtual_mesh``) take the
rules from here.
"""

from dataclasses import dataclass

SHARDED_MODES = ("semi_auto_parallel", "auto_parallel")


@dataclass(frozen=True)
class OptimizerReductions:
    """``norm``: local square sums are partial and must be reduced as described above;
    ``overflow``: local overflow flags must be reduced."""

    norm: bool
    overflow: bool


def optimizer_reductions(parallel_mode: str) -> OptimizerReductions:
    """The reductions the optimizer part needs under ``parallel_mode`` (a ``ms.ParallelMode``
    value). ``stand_alone`` and ``data_parallel`` see whole, already all-reduced gradients: none."""
    sharded = str(parallel_mode) in SHARDED_MODES
    return OptimizerReductions(norm=sharded, overflow=sharded)


def slice_holders(splits, dp: int, mp: int, opt_shard_size: int = 0) -> int:
    """Devices of a ``dp × mp`` mesh holding an identical copy of one parameter's optimizer-side
    slice: ``dp·mp / (∏ splits · opt_shard_size)``. ``splits``: splits per dimension under the
    shard plan (each 1 or ``mp``); ``opt_shard_size``: that parameter's parallel-optimizer group
    size (0 = whole, see ``codegeex_ms.parallel.strategy_file.layout_of``)."""
    distinct = max(1, opt_shard_size)
    for s in splits:
        distinct *= s
    if (dp * mp) % distinct:
        raise ValueError(f"splits {tuple(splits)} × optimizer shard {opt_shard_size} do not divide "
                         f"the {dp}×{mp} mesh")
    return dp * mp // distinct
