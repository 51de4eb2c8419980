"""MindSpore strategy files written from the model's shard plan.

On Ascend a semi-auto-parallel compile saves the strategy file; on CPU nothing can compile it, so
this module writes the same file (``mindspore.train.node_strategy_pb2.ParallelStrategyMap``) from
:func:`codegeex_ms.parallel.parameter_splits`. ``build_searched_strategy``,
``merge_sliced_parameter``, ``transform_checkpoints`` and ``load_distributed_checkpoint`` read it.

Layout of one parameter on ``dp × mp`` devices (rank ``r = d·mp + m``):

- ``dev_matrix = (dp, mp)``; ``tensor_map[i] = 0`` when dimension ``i`` is split over ``mp`` (the
  last device axis), ``-1`` when it is not split.
- Parallel optimizer (``optimizer_shard``), following MindSpore's own rule: the ranks that hold the
  same model-parallel slice (``dp`` of them for an ``mp``-split tensor, all ``dp·mp`` for a
  replicated one) are cut into groups of ``size`` consecutive members, and each member keeps
  ``1/size`` of the slice's first dimension. ``step`` is the rank distance between members: ``mp``
  for split tensors, ``1`` for replicated ones. A tensor whose first dimension does not divide stays
  whole (``step = size = 0``), as MindSpore leaves it.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

from mindspore.train.node_strategy_pb2 import ParallelStrategyMap

from codegeex_ms.model import CodeGeeX
from codegeex_ms.model.build import build_model
from codegeex_ms.parallel.shard_plan import apply_shard_plan, parameter_splits

WHOLE_GROUP = -1
"""``optimizer_shard_size`` meaning MindSpore's default: every rank holding the same slice."""


@dataclass(frozen=True)
class Layout:
    """Where one parameter lives: see the module docstring."""

    dev_matrix: Tuple[int, int]
    tensor_map: Tuple[int, ...]
    opt_shard_step: int = 0
    opt_shard_size: int = 0


@dataclass(frozen=True)
class PlannedParameter:
    """A network parameter: full shape and splits per dimension under the shard plan."""

    shape: Tuple[int, ...]
    splits: Tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n


def planned_parameters(model_config, parallel) -> Dict[str, PlannedParameter]:
    """``{name: PlannedParameter}`` of :class:`CodeGeeX` (names as in the release, e.g.
    ``language_model.transformer.layers.0.attention.query.weight``) under ``parallel``'s plan.
    Builds the network without allocating weights (the 13B network takes well under a second)."""
    net = build_model(model_config, allocate=False)
    if not isinstance(net, CodeGeeX):
        raise TypeError(f"build_model returned {type(net).__name__}, expected CodeGeeX")
    apply_shard_plan(net, parallel)
    splits = parameter_splits(net)
    return {p.name: PlannedParameter(tuple(p.shape), tuple(splits.get(p.name, (1,) * len(p.shape))))
            for p in net.get_parameters()}


def _opt_shard(param: PlannedParameter, dp: int, mp: int, size: int) -> Tuple[int, int]:
    """(step, size) of the parallel optimizer for one parameter; (0, 0) when it stays whole."""
    split = any(s > 1 for s in param.splits)
    holders = dp if split else dp * mp       # ranks holding the same model-parallel slice
    group = holders if size == WHOLE_GROUP else size
    if group <= 1 or holders % group:
        return 0, 0
    if param.shape[0] % (param.splits[0] * group):
        return 0, 0
    return (mp if split else 1), group


def layout_of(param: PlannedParameter, dp: int, mp: int, optimizer_shard_size: int = 0) -> Layout:
    """The layout of one parameter. ``optimizer_shard_size``: 0 = no parallel optimizer,
    ``WHOLE_GROUP`` (-1) = MindSpore's default group, k > 1 = groups of k (k must divide dp)."""
    if any(s not in (1, mp) for s in param.splits):
        raise ValueError(f"split {param.splits} of shape {param.shape}: every split must be 1 or mp={mp}")
    if any(size % s for size, s in zip(param.shape, param.splits)):
        raise ValueError(f"shape {param.shape} cannot be split {param.splits} (mp={mp})")
    tensor_map = tuple(0 if s > 1 else -1 for s in param.splits)
    step, size = (0, 0) if optimizer_shard_size == 0 else _opt_shard(param, dp, mp, optimizer_shard_size)
    return Layout((dp, mp), tensor_map, step, size)


def check_optimizer_shard_size(dp: int, size: int) -> None:
    """Raise ValueError unless ``size`` is 0, -1 or a divisor of ``dp``."""
    if size in (0, WHOLE_GROUP):
        return
    if size < 1 or dp % size:
        raise ValueError(f"optimizer shard size {size} must divide data_parallel={dp} "
                         f"(or be 0 for none, -1 for MindSpore's default group)")


def largest_optimizer_shard_size(params: Dict[str, PlannedParameter], dp: int, mp: int) -> int:
    """The largest divisor ``k`` of ``dp`` for which the parallel optimizer splits every parameter
    (MindSpore needs each tensor's first dimension divisible by its split × k). 1 if none > 1."""
    for k in sorted((k for k in range(2, dp + 1) if dp % k == 0), reverse=True):
        if all(_opt_shard(p, dp, mp, k) != (0, 0) for p in params.values()):
            return k
    return 1


def optimizer_shard_size_for(params: Dict[str, PlannedParameter], parallel) -> int:
    """The parallel-optimizer group size this project uses for ``parallel``: 0 when
    ``optimizer_shard`` is off, else :func:`largest_optimizer_shard_size` (MindSpore's default
    group, all data-parallel replicas, leaves most CodeGeeX-13B tensors whole at dp=192 because
    e.g. 5120 / 8 = 640 rows do not divide into 192 pieces). Training passes it to
    ``optimizer_weight_shard_size``. A positive ``parallel.optimizer_shard_size`` is used as is."""
    if not parallel.optimizer_shard:
        return 0
    if parallel.optimizer_shard_size:
        check_optimizer_shard_size(parallel.data_parallel, parallel.optimizer_shard_size)
        return parallel.optimizer_shard_size
    return largest_optimizer_shard_size(params, parallel.data_parallel, parallel.model_parallel)


def plan_layouts(params: Dict[str, PlannedParameter], dp: int, mp: int,
                 optimizer_shard_size: int = 0) -> Dict[str, Layout]:
    """Layouts of every planned parameter (see :func:`layout_of`)."""
    check_optimizer_shard_size(dp, optimizer_shard_size)
    out = {}
    for name, param in params.items():
        try:
            out[name] = layout_of(param, dp, mp, optimizer_shard_size)
        except ValueError as e:
            raise ValueError(f"parameter {name}: {e}") from None
    return out


def match_names(names: Iterable[str], layouts: Dict[str, Layout]) -> Dict[str, Layout]:
    """Layouts for checkpoint names: a name gets the layout of the planned parameter it ends with
    (``model.language_model…`` from the training wrapper, ``adam_m.…``/``adam_v.…`` optimizer
    moments). Names that match nothing (``global_step``, ``learning_rate``, loss scale) are left out:
    MindSpore's transform copies those from rank 0."""
    out = {}
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            layout = layouts.get(".".join(parts[i:]))
            if layout is not None:
                out[name] = layout
                break
    return out


def write_strategy_file(path, layouts: Dict[str, Layout]) -> None:
    """Write ``layouts`` as a protobuf strategy file (the format a MindSpore compile saves)."""
    if not layouts:
        raise ValueError("no parameter layouts to write: the strategy file would be empty")
    strategy = ParallelStrategyMap()
    strategy.current_stage = 0
    for name, layout in layouts.items():
        item = strategy.parallel_layout_item.add()
        item.param_name = name
        pl = item.parallel_layouts
        pl.dev_matrix.add().dim.extend(layout.dev_matrix)
        pl.tensor_map.add().dim.extend(layout.tensor_map)
        pl.param_split_shape.add()   # even splits: present but empty
        pl.indices_offset.add()
        pl.field = 0
        pl.opt_weight_shard_step = layout.opt_shard_step
        pl.opt_weight_shard_size = layout.opt_shard_size
    with open(path, "wb") as f:
        f.write(strategy.SerializeToString())


def strategy_for(model_config, parallel, names: Optional[Iterable[str]] = None,
                 optimizer_shard_size: int = 0) -> Dict[str, Layout]:
    """Layouts for a config's shard plan, keyed by the planned names or, given ``names``, by the
    checkpoint names that match them (see :func:`match_names`)."""
    params = planned_parameters(model_config, parallel)
    layouts = plan_layouts(params, parallel.data_parallel, parallel.model_parallel,
                           optimizer_shard_size)
    return layouts if names is None else match_names(names, layouts)
