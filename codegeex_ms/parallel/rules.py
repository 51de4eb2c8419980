"""MindSpore 2.9's sharding rules for the operators the CodeGeeX plan shards.

Sources (the constraints below paraphrase them; each rule's message names its source):

- The operator list "Usage Constraints During Operator Parallel",
  https://www.mindspore.cn/docs/en/r2.9.0/api_python/operator_list_parallel.html
  (the same table at r2.10.0 and in the docs repository's master source was read for this module).
- Where the table is silent or terse, the checks MindSpore's parallel compiler runs,
  ``mindspore/ccsrc/frontend/parallel/ops_info/`` in https://github.com/mindspore-ai/mindspore:
  ``operator_info.cc`` (``CheckStrategyByVector``: every split divides its dimension and, on a
  power-of-two device count, is a power of two; ``InferRepeatedCalcInfo``: the device matrix
  divides the device count; ``GenerateBatchStrategies``: an operator without a strategy splits
  dimension 0 of its inputs over all devices), ``matmul_info.cc``, ``arithmetic_info.cc``
  (broadcast), ``layer_norm_info.cc``, ``gather_info.cc`` (modes normal / shard-axis /
  shard-batch-and-axis), ``custom_info.cc`` (a sharded ``ops.Custom`` reads its layout from the
  ``dev_matrix_shape`` / ``inputs_tensor_map`` / ``outputs_tensor_map`` attributes).

Every rule function takes the operator's strategy, input shapes, attributes and the device count and
returns an :class:`OpSharding`: the layout each input must have, the outputs' layouts and the
collectives the operator itself performs (forward and backward). A broken rule raises
:class:`RuleViolation` naming the input and the rule.
"""

from dataclasses import dataclass, field
from math import gcd, prod
from typing import Optional, Sequence, Tuple

from codegeex_ms.parallel.layouts import Collective, Layout, collective, from_tensor_map, replicated

OPERATOR_LIST = "https://www.mindspore.cn/docs/en/r2.9.0/api_python/operator_list_parallel.html"
CUSTOM_LAYOUT_ATTRS = ("dev_matrix_shape", "inputs_tensor_map", "outputs_tensor_map")


class RuleViolation(ValueError):
    """A strategy breaks a MindSpore sharding rule; ``input_index`` is the offending input (or None)."""

    def __init__(self, input_index: Optional[int], rule: str):
        super().__init__(rule)
        self.input_index, self.rule = input_index, rule


@dataclass(frozen=True)
class Comm:
    """A collective an operator performs itself, with what it reduces or gathers."""

    collective: Collective
    what: str


@dataclass
class OpSharding:
    """Required input layouts, output layouts and the operator's own collectives."""

    inputs: Tuple[Layout, ...]
    outputs: Tuple[Layout, ...]
    forward: Tuple[Comm, ...] = field(default_factory=tuple)
    backward: Tuple[Comm, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------- common checks


def _is_pow2(n: int) -> bool:
    return n & (n - 1) == 0


def check_strategy_values(strategy, shapes, devices: int) -> None:
    """``CheckStrategyByVector``: one entry per input, one split per dimension, splits ≥ 1 dividing
    their dimensions, powers of two when the device count is; no input uses more devices than exist."""
    if len(strategy) != len(shapes):
        raise RuleViolation(None, f"the strategy has {len(strategy)} entries for {len(shapes)} inputs "
                                  "(MindSpore: one tuple per input)")
    for i, (split, shape) in enumerate(zip(strategy, shapes)):
        if len(split) != len(shape):
            raise RuleViolation(i, f"strategy {tuple(split)} has {len(split)} entries for a rank-"
                                   f"{len(shape)} input of shape {tuple(shape)}")
        for dim, (parts, size) in enumerate(zip(split, shape)):
            if parts < 1:
                raise RuleViolation(i, f"split {parts} of dimension {dim} must be ≥ 1")
            if size % parts:
                raise RuleViolation(i, f"dimension {dim} of size {size} is not divisible by its split {parts}")
            if parts > 1 and _is_pow2(devices) and not _is_pow2(parts):
                raise RuleViolation(i, f"split {parts} of dimension {dim} is not a power of 2, which "
                                       f"MindSpore requires on a power-of-2 device count ({devices})")
        if devices % prod(split):
            raise RuleViolation(i, f"split {tuple(split)} uses {prod(split)} parts, which does not divide "
                                   f"{devices} devices")


class Mesh:
    """An operator's device matrix, with the repeated-calculation dimension MindSpore appends
    (on the right by default) when the strategy uses fewer devices than there are."""

    def __init__(self, dev: Sequence[int], devices: int, repeat_left: bool = False):
        used = prod(dev)
        if devices % used:
            raise RuleViolation(None, f"the strategy needs a device matrix {tuple(dev)} of {used} devices, "
                                      f"which does not divide {devices} devices (InferRepeatedCalcInfo)")
        self.repeat = devices // used
        self.dev = list(dev)
        self.full = ([self.repeat] + self.dev if repeat_left else self.dev + [self.repeat]) \
            if self.repeat > 1 else list(self.dev)
        self.offset = 1 if (repeat_left and self.repeat > 1) else 0

    def layout(self, index_map: Sequence[Optional[int]], shape) -> Layout:
        """Layout of a tensor whose dimension i is split by device-matrix entry ``index_map[i]``
        (an index into the strategy's device matrix, or None)."""
        n = len(self.full)
        tmap = [-1 if j is None else n - 1 - (j + self.offset) for j in index_map]
        return from_tensor_map(self.full, tmap, shape)

    def group(self, index: int) -> int:
        return self.dev[index]


def _bytes(layout: Layout, itemsize: int) -> int:
    return layout.local_numel * itemsize


# ----------------------------------------------------------------------------------- operators


def elementwise(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """Unary element-wise operators (Exp, Log, FastGeLU, Dropout, Cast): no constraint
    (operator list: "None"); the output is laid out like the input."""
    check_strategy_values(strategy, shapes, devices)
    mesh = Mesh(strategy[0], devices)
    lay = mesh.layout(range(len(shapes[0])), shapes[0])
    return OpSharding((lay,) + tuple(replicated(s) for s in shapes[1:]), (lay,))


def softmax(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """Softmax: "The logits can't be split into the dimension of axis" (operator list)."""
    check_strategy_values(strategy, shapes, devices)
    axes = attrs.get("axis", (-1,))
    rank = len(shapes[0])
    for ax in (axes if isinstance(axes, (tuple, list)) else (axes,)):
        ax %= rank
        if strategy[0][ax] != 1:
            raise RuleViolation(0, f"Softmax must not split its reduction axis {ax - rank} (split "
                                   f"{strategy[0][ax]}): the logits can't be split along axis "
                                   f"[operator list, Softmax]")
    return elementwise(strategy, shapes, attrs, devices)


def layer_norm(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """LayerNorm: gamma/beta strategies equal the input's from ``begin_params_axis`` (operator list);
    the dimensions from ``begin_norm_axis`` on cannot be split (``LayerNormInfo::CheckStrategy``)."""
    check_strategy_values(strategy, shapes, devices)
    x = strategy[0]
    begin = attrs.get("begin_norm_axis", -1) % len(x)
    for dim in range(begin, len(x)):
        if x[dim] != 1:
            raise RuleViolation(0, f"LayerNorm must not split the normalised axis {dim} (split {x[dim]}): "
                                   f"dimensions from begin_norm_axis={begin} stay whole "
                                   f"[layer_norm_info.cc CheckStrategy]")
    for i in (1, 2):
        tail = tuple(x[len(x) - len(strategy[i]):])
        if tuple(strategy[i]) != tail:
            raise RuleViolation(i, f"LayerNorm {'gamma' if i == 1 else 'beta'} strategy {tuple(strategy[i])} "
                                   f"must equal the input's trailing strategy {tail} [operator list, LayerNorm]")
    mesh = Mesh(x, devices)
    lay = mesh.layout(range(len(x)), shapes[0])
    params = tuple(mesh.layout(range(len(x) - len(s), len(x)), s) for s in shapes[1:])
    return OpSharding((lay,) + params, (lay,))


def arithmetic(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """Add/Sub/Mul/RealDiv/Maximum/BiasAdd with broadcasting: right-aligned, every dimension where
    neither input has size 1 must be split alike (``ArithmeticBase::CheckStrategy``; for BiasAdd the
    operator list asks the bias to be laid out like the last dimension of the input)."""
    check_strategy_values(strategy, shapes, devices)
    rank = max(len(s) for s in shapes)
    exp_s = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    exp_t = [(1,) * (rank - len(t)) + tuple(t) for t in strategy]
    for dim in range(rank):
        sizes = [s[dim] for s in exp_s]
        parts = [t[dim] for t in exp_t]
        if all(size != 1 for size in sizes) and len(set(parts)) > 1:
            bad = next(i for i, p in enumerate(parts) if p != parts[0])
            raise RuleViolation(bad, f"broadcast operands must split dimension {dim - rank} alike, got "
                                     f"splits {tuple(parts)} for sizes {tuple(sizes)} "
                                     f"[arithmetic_info.cc CheckStrategy]")
    dev = [max(t[d] for t in exp_t) for d in range(rank)]
    mesh = Mesh(dev, devices)
    ins = []
    for shape, t in zip(shapes, strategy):
        off = rank - len(shape)
        ins.append(mesh.layout([off + d if t[d] == dev[off + d] and t[d] > 1 else None
                                for d in range(len(shape))], shape))
    out_shape = tuple(max(s[d] for s in exp_s) for d in range(rank))
    return OpSharding(tuple(ins), (mesh.layout(range(rank), out_shape),))


def matmul(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """MatMul: with ``transpose_b`` the strategy must be ((A, B), (C, B)), else ((A, B), (B, C))
    (operator list, MatMul). A split contracted dimension B makes partial sums that the operator
    all-reduces over B devices; in backward, a split output column C does the same for dA."""
    check_strategy_values(strategy, shapes, devices)
    (a0, a1), b = strategy
    tb = attrs.get("transpose_b", False)
    b_k, b_n = (b[1], b[0]) if tb else (b[0], b[1])
    if a1 != b_k:
        form = "((A, B), (C, B))" if tb else "((A, B), (B, C))"
        raise RuleViolation(1, f"MatMul contracted dimension is split {a1} in input 0 but {b_k} in input 1; "
                               f"the strategy must have the form {form} [operator list, MatMul]")
    mesh = Mesh([a0, a1, b_n], devices)
    la = mesh.layout([0, 1], shapes[0])
    lb = mesh.layout([2, 1] if tb else [1, 2], shapes[1])
    out_shape = (shapes[0][0], shapes[1][0] if tb else shapes[1][1])
    lo = mesh.layout([0, 2], out_shape)
    fwd, bwd = [], []
    if a1 > 1:
        fwd.append(Comm(collective("AllReduce", a1, _bytes(lo, itemsize)), "partial sums of the output"))
    if b_n > 1:
        bwd.append(Comm(collective("AllReduce", b_n, _bytes(la, itemsize)), "gradient of input 0"))
    return OpSharding((la, lb), (lo,), tuple(fwd), tuple(bwd))


def batch_matmul(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """BatchMatMul: the batch dimensions of both inputs are split alike and the last two follow
    MatMul's rule (operator list, BatchMatMul; ``CheckRelevantDimension``)."""
    check_strategy_values(strategy, shapes, devices)
    a, b = strategy
    if len(a) != len(b):
        raise RuleViolation(1, "BatchMatMul inputs of different rank are not used by this network")
    if tuple(a[:-2]) != tuple(b[:-2]):
        raise RuleViolation(1, f"BatchMatMul batch dimensions are split {tuple(a[:-2])} in input 0 but "
                               f"{tuple(b[:-2])} in input 1; they must be equal [matmul_info.cc "
                               f"CheckRelevantDimension]")
    tb = attrs.get("transpose_b", False)
    b_k, b_n = (b[-1], b[-2]) if tb else (b[-2], b[-1])
    if a[-1] != b_k:
        raise RuleViolation(1, f"BatchMatMul contracted dimension is split {a[-1]} in input 0 but {b_k} "
                               f"in input 1; the last two dimensions follow MatMul's rule [operator list]")
    nb = len(a) - 2
    mesh = Mesh(list(a) + [b_n], devices)
    la = mesh.layout(range(nb + 2), shapes[0])
    lb = mesh.layout(list(range(nb)) + ([nb + 2, nb + 1] if tb else [nb + 1, nb + 2]), shapes[1])
    out_shape = tuple(shapes[0][:-1]) + (shapes[1][-2] if tb else shapes[1][-1],)
    lo = mesh.layout(list(range(nb + 1)) + [nb + 2], out_shape)
    fwd, bwd = [], []
    if a[-1] > 1:
        fwd.append(Comm(collective("AllReduce", a[-1], _bytes(lo, itemsize)), "partial sums of the output"))
    if b_n > 1:
        bwd.append(Comm(collective("AllReduce", b_n, _bytes(la, itemsize)), "gradient of input 0"))
    if a[-2] > 1:
        bwd.append(Comm(collective("AllReduce", a[-2], _bytes(lb, itemsize)), "gradient of input 1"))
    return OpSharding((la, lb), (lo,), tuple(fwd), tuple(bwd))


def transpose(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """Transpose: no constraint; the output's splits are the input's, permuted."""
    check_strategy_values(strategy, shapes, devices)
    perm = attrs["perm"]
    mesh = Mesh(strategy[0], devices)
    lin = mesh.layout(range(len(perm)), shapes[0])
    out_shape = tuple(shapes[0][p] for p in perm)
    return OpSharding((lin,), (mesh.layout(list(perm), out_shape),))


def expand_dims(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """ExpandDims: no constraint; the new axis is whole."""
    check_strategy_values(strategy, shapes, devices)
    axis = attrs["axis"] % (len(shapes[0]) + 1)
    mesh = Mesh(strategy[0], devices)
    lin = mesh.layout(range(len(shapes[0])), shapes[0])
    index = list(range(len(shapes[0])))
    index.insert(axis, None)
    out_shape = tuple(shapes[0][:axis]) + (1,) + tuple(shapes[0][axis:])
    return OpSharding((lin,), (mesh.layout(index, out_shape),))


def reduce(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """ReduceSum/ReduceMax (keep_dims): a split reduced axis is completed by an AllReduce (SUM/MAX)
    over its devices; for ReduceMax the operator list warns the result "may be inconsistent" only
    for the gradient of ties, which this network stops (the max is a ``stop_gradient`` shift)."""
    check_strategy_values(strategy, shapes, devices)
    rank = len(shapes[0])
    axes = attrs.get("axis", tuple(range(rank)))
    axes = tuple(a % rank for a in (axes if isinstance(axes, (tuple, list)) else (axes,)))
    mesh = Mesh(strategy[0], devices)
    lin = mesh.layout(range(rank), shapes[0])
    keep = attrs.get("keep_dims", False)
    if keep:
        out_shape = tuple(1 if d in axes else s for d, s in enumerate(shapes[0]))
        lo = mesh.layout([None if d in axes else d for d in range(rank)], out_shape)
    else:
        out_shape = tuple(s for d, s in enumerate(shapes[0]) if d not in axes)
        lo = mesh.layout([d for d in range(rank) if d not in axes], out_shape)
    group = prod(strategy[0][a] for a in axes)
    fwd = ()
    if group > 1:
        op = "MAX" if attrs.get("reduce") == "max" else "SUM"
        fwd = (Comm(collective("AllReduce", group, _bytes(lo, itemsize)), f"{op} over the split axis"),)
    return OpSharding((lin,), (lo,), fwd)


def gather(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """Gather(params [rows, H], indices, axis 0), ``batch_dims`` 0 (operator list, Gather;
    ``gather_info.cc``):

    - table rows not split: normal mode, any other split; output = indices' splits + params' rest;
    - rows split a ways and the 2-D indices split c ways on dimension 0 only, with a·c = all
      devices (neither alone): shard-batch-and-axis mode; each device looks up its rows and an
      AllReduce over the a devices of a row group completes the output, split c ways by batch;
    - rows split and indices not split: shard-axis mode (ReduceScatter, or AllReduce when the
      indices' first dimension does not divide by a); params must be 1-D or 2-D;
    - otherwise: "Does not support to split input_params and input_indices at the same time".
    """
    check_strategy_values(strategy, shapes, devices)
    if attrs.get("axis", 0) != 0:
        raise RuleViolation(None, "only axis 0 gathers are used by this network")
    p, ix = (tuple(s) for s in strategy)
    if p[0] == 1:
        mesh = Mesh(list(ix) + list(p), devices)
        ni = len(ix)
        lp = mesh.layout([None] + [ni + d for d in range(1, len(p))], shapes[0])
        li = mesh.layout(range(ni), shapes[1])
        out_shape = tuple(shapes[1]) + tuple(shapes[0][1:])
        lo = mesh.layout(list(range(ni)) + [ni + d for d in range(1, len(p))], out_shape)
        return OpSharding((lp, li), (lo,))
    out_shape = tuple(shapes[1]) + tuple(shapes[0][1:])
    if (len(p) == 2 and len(ix) == 2 and p[1] == 1 and ix[1] == 1 and p[0] * ix[0] == devices
            and p[0] != devices and ix[0] != devices):
        mesh = Mesh([ix[0], p[0]], devices)
        lp = mesh.layout([1, None], shapes[0])
        li = mesh.layout([0, None], shapes[1])
        lo = mesh.layout([0, None, None], out_shape)
        fwd = (Comm(collective("AllReduce", p[0], _bytes(lo, itemsize)), "rows looked up by the other vocabulary shards"),)
        return OpSharding((lp, li), (lo,), fwd)
    if prod(ix) != 1:
        raise RuleViolation(1, f"Gather with the table split along axis 0 ({p}) cannot also split the "
                               f"indices ({ix}) unless params and indices are 2-D, only their first "
                               f"dimensions are split and the two splits multiply to all {devices} devices "
                               f"[operator list, Gather: does not support to split input_params and "
                               f"input_indices at the same time; gather_info.cc ShardBatchAndAxis]")
    if len(shapes[0]) > 2:
        raise RuleViolation(0, "Gather with a split axis supports 1-D and 2-D params only [operator list]")
    if prod(p) != devices and len(p) == 2 and p[1] != 1:
        raise RuleViolation(0, "Gather splitting axis 0 and params dimension 1 does not support repeated "
                               "calculation [gather_info.cc CheckSplitAxisStrategy]")
    mesh = Mesh(list(p), devices)
    lp = mesh.layout(range(len(p)), shapes[0])
    li = mesh.layout([None] * len(shapes[1]), shapes[1])
    allreduce = shapes[1][0] % p[0] != 0
    first = [None if allreduce else 0] + [None] * (len(shapes[1]) - 1)
    lo = mesh.layout(first + list(range(1, len(p))), out_shape)
    kind = "AllReduce" if allreduce else "ReduceScatter"
    local = _bytes(lo, itemsize) * (1 if allreduce else p[0])
    return OpSharding((lp, li), (lo,), (Comm(collective(kind, p[0], local), "rows of other shards"),))


def one_hot(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """OneHot: "Only support 1-dim indices. Must configure strategy for the output and the first and
    second inputs" (operator list): the first strategy describes the output [N, depth]; the indices
    are laid out like the output's first dimension; a split depth is handled by offsets."""
    out_shape = (shapes[0][0], attrs["depth"])
    if len(shapes[0]) != 1:
        raise RuleViolation(0, f"OneHot supports 1-D indices only, got shape {tuple(shapes[0])} [operator list]")
    if len(strategy) != 3 or tuple(strategy[1]) != () or tuple(strategy[2]) != ():
        raise RuleViolation(None, "OneHot's strategy is (output [N, depth] split, (), ()) [operator list]")
    check_strategy_values(strategy[:1], [out_shape], devices)
    mesh = Mesh(strategy[0], devices)
    return OpSharding((mesh.layout([0], shapes[0]), replicated(()), replicated(())),
                      (mesh.layout([0, 1], out_shape),))


def custom(strategy, shapes, attrs, devices, itemsize=4) -> OpSharding:
    """A sharded ``ops.Custom``: MindSpore's ``CustomInfo`` takes the device matrix and tensor maps
    from the primitive's ``dev_matrix_shape`` / ``inputs_tensor_map`` / ``outputs_tensor_map``
    attributes and fails to compile without them; they must agree with the strategy. The kernel's
    own semantics (``codegeex_kernel`` attribute) add: ``masked_softmax`` must not split its last (reduced) axis and the
    mask broadcasts like an arithmetic operand; ``fast_gelu`` is element-wise."""
    missing = [a for a in CUSTOM_LAYOUT_ATTRS if attrs.get(a) is None]
    if missing:
        raise RuleViolation(None, f"sharded Custom operator lacks the {', '.join(missing)} attribute(s) "
                                  f"that MindSpore's CustomInfo reads its layout from [custom_info.cc]")
    check_strategy_values(strategy, shapes, devices)
    dev = list(attrs["dev_matrix_shape"])
    in_maps, out_maps = attrs["inputs_tensor_map"], attrs["outputs_tensor_map"]
    if len(in_maps) != len(shapes):
        raise RuleViolation(None, f"inputs_tensor_map has {len(in_maps)} maps for {len(shapes)} inputs")
    for i, (tmap, split) in enumerate(zip(in_maps, strategy)):
        implied = tuple(1 if k == -1 else dev[len(dev) - 1 - k] for k in tmap)
        if implied != tuple(split):
            raise RuleViolation(i, f"inputs_tensor_map {tuple(tmap)} on dev_matrix_shape {tuple(dev)} splits "
                                   f"{implied}, but the strategy says {tuple(split)}")
    kernel = attrs.get("codegeex_kernel")
    if kernel == "masked_softmax" and strategy[0][-1] != 1:
        raise RuleViolation(0, f"the fused masked softmax must not split its reduction (last) axis "
                               f"(split {strategy[0][-1]}), as Softmax [operator list, Softmax]")
    if kernel == "masked_softmax":
        arithmetic(strategy[:2], shapes[:2], {}, devices)
    mesh = Mesh(dev, devices)
    n = len(dev)
    ins = tuple(mesh.layout([None if k == -1 else n - 1 - k for k in tmap], s)
                for tmap, s in zip(in_maps, shapes))
    out_shape = attrs.get("out_shape", shapes[0])
    outs = tuple(mesh.layout([None if k == -1 else n - 1 - k for k in tmap], out_shape) for tmap in out_maps)
    return OpSharding(ins, outs)


def batch_parallel_strategy(shapes, devices: int) -> tuple:
    """The strategy MindSpore generates for an operator without one in SEMI_AUTO_PARALLEL
    (``GenerateBatchStrategies``): dimension 0 of every input whose dimension 0 is not a broadcast 1
    is split over all devices, reduced to the gcd of those dimensions when they do not divide."""
    share = devices
    for s in shapes:
        if s and s[0] != 1:
            share = gcd(share, s[0])
    return tuple(() if not s else ((share,) + (1,) * (len(s) - 1) if s[0] != 1 else (1,) * len(s))
                 for s in shapes)


RULES = {
    "Unary": elementwise, "Softmax": softmax, "LayerNorm": layer_norm, "Arithmetic": arithmetic,
    "MatMul": matmul, "BatchMatMul": batch_matmul, "Transpose": transpose, "ExpandDims": expand_dims,
    "ReduceSum": reduce, "ReduceMax": reduce, "Gather": gather, "OneHot": one_hot, "Custom": custom,
}
"""Rule per operator kind (the validator maps primitives to kinds)."""
