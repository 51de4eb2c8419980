"""Per-operator check of a shard plan: MindSpore cannot compile semi-auto parallel on CPU.

For the full-sequence forward of a given (micro-)batch and sequence length, every Cell that owns
sharded primitives declares the input shapes of each (``shard_inputs``; a parent may declare the
shapes of a child Cell that has none, e.g. an ``nn.Dropout``). :func:`check_shard_plan` walks any
network (training or inference, including W8A16 layers) and verifies, for each primitive:

- it has a strategy when the plan is parallel (dp·mp > 1), and its shapes are declared;
- MindSpore's strategy-value rules (one split per dimension, splits divide their dimensions and the
  device count; see :func:`codegeex_ms.parallel.rules.check_strategy_values`);
- the sharding rule of its operator kind when it needs no runtime argument (MatMul, BatchMatMul,
  element-wise with broadcasting, Softmax, LayerNorm, Gather, OneHot, FastGeLU, Dropout, Custom:
  :mod:`codegeex_ms.parallel.rules`);
- parameters' splits divide their shapes.

Layout propagation between operators, and the redistributions it reveals, need the dataflow of the
training graph: :func:`codegeex_ms.parallel.validator.validate_plan`.
"""

import inspect

from codegeex_ms.parallel.rules import RULES, RuleViolation, check_strategy_values
from codegeex_ms.parallel.validator import PlanError

KIND = {"MatMul": "MatMul", "BatchMatMul": "BatchMatMul", "Add": "Arithmetic", "Sub": "Arithmetic",
        "Mul": "Arithmetic", "RealDiv": "Arithmetic", "BiasAdd": "Arithmetic", "Maximum": "Arithmetic",
        "Softmax": "Softmax", "LayerNorm": "LayerNorm", "Gather": "Gather", "OneHot": "OneHot",
        "FastGeLU": "Unary", "Dropout": "Unary", "Exp": "Unary", "Log": "Unary", "Custom": "Custom"}
"""Primitive name → rule kind (operators whose rule needs runtime arguments are value-checked only)."""

__all__ = ["PlanError", "check_shard_plan"]


def _declared_shapes(cell, batch, seq, given):
    """Shapes of ``cell``'s primitives: from its ``shard_inputs(batch, seq)`` / ``(rows)``, or,
    for an operator Cell (FastGelu, MaskedSoftmax), from the input shapes its parent gave it; a Cell
    without ``shard_inputs`` (nn.Dropout) given shapes declares them for its one sharded primitive."""
    fn = getattr(cell, "shard_inputs", None)
    if fn is None:
        prims = [attr for attr, prim in _primitives(cell) if _strategy(prim) is not None]
        return {prims[0]: given} if given is not None and len(prims) == 1 else {}
    if given is not None:
        return fn(*given)
    names = list(inspect.signature(fn).parameters)
    if names == ["rows"]:
        return fn(batch * seq)
    if names == ["batch", "seq"]:
        return fn(batch, seq)
    return {}


def _strategy(prim):
    attrs = getattr(prim, "attrs", None)
    return None if attrs is None else attrs.get("in_strategy")


def _primitives(cell):
    for attr, value in vars(cell).items():
        if hasattr(value, "attrs") and hasattr(value, "add_prim_attr"):
            yield attr, value


def _check_rule(op, prim, strategy, shapes, devices):
    """MindSpore's rule for ``prim``'s kind; returns a problem line or None."""
    kind = KIND.get(prim.name)
    strategy = tuple(tuple(s) for s in strategy)
    shapes = [tuple(s) for s in shapes]
    attrs = dict(prim.attrs)
    if kind == "OneHot":   # declared on its output [N, depth]; the rule takes the 1-D indices
        attrs["depth"] = shapes[0][-1]
        shapes = [shapes[0][:1], (), ()]
    try:
        if kind is None:
            check_strategy_values(strategy, shapes, devices)
        else:
            RULES[kind](strategy, shapes, attrs, devices)
    except RuleViolation as err:
        where = ":" if err.input_index is None else f": input {err.input_index}"
        return f"{op}{where} {err.rule} [{prim.name}, strategy {strategy}]"
    return None


def check_shard_plan(net, parallel, batch: int, seq: int) -> list:
    """Check ``net`` (after ``apply_shard_plan``) for a micro-batch of ``batch`` × ``seq`` tokens.

    ``batch`` is the per-step batch seen by the whole data-parallel group (micro-batch × dp).
    Returns a list of checked ``(operator, strategy, shapes)``; raises :class:`PlanError` listing
    every violation.
    """
    devices = parallel.data_parallel * parallel.model_parallel
    problems, checked, given = [], [], {}
    for cell_name, cell in net.cells_and_names():
        declared = _declared_shapes(cell, batch, seq, given.get(cell_name))
        for attr, shapes in declared.items():
            if hasattr(getattr(cell, attr, None), "cells_and_names"):
                given[f"{cell_name}.{attr}" if cell_name else attr] = shapes
        for attr, prim in _primitives(cell):
            op = f"{cell_name}.{attr}" if cell_name else attr
            strategy = _strategy(prim)
            if strategy is None:
                if attr in declared and devices > 1:
                    problems.append(f"{op}: no shard strategy")
                continue
            if attr not in declared:
                problems.append(f"{op}: has strategy {strategy} but its input shapes are not declared")
                continue
            shapes = declared[attr]
            problem = _check_rule(op, prim, strategy, shapes, devices)
            if problem:
                problems.append(problem)
            checked.append((op, strategy, shapes))
        for attr, split in getattr(cell, "split", {}).items():
            param = getattr(cell, attr)
            for dim, (parts, size) in enumerate(zip(split, param.shape)):
                if size % parts:
                    problems.append(f"parameter {param.name}: dimension {dim} of size {size} is not "
                                    f"divisible by its split {parts}")
    if problems:
        raise PlanError("shard plan check failed:\n  " + "\n  ".join(problems))
    return checked
