"""Static check of a shard plan: MindSpore cannot compile semi-auto parallel on CPU.

For the full-sequence training forward of a given (micro-)batch and sequence length, every Cell
that owns sharded primitives declares the input shapes of each (``shard_inputs``). The checker
walks the network and verifies, for each primitive:

- it has a strategy when the plan is parallel (dp·mp > 1), and its shapes are declared;
- the strategy has one entry per input and each entry's length equals that input's rank;
- every split divides the dimension it splits, and the product of splits of an input does not
  exceed the device count;
- parameters' splits divide their shapes.
"""

import inspect


class PlanError(ValueError):
    """The shard plan is inconsistent; the message lists every problem found."""


def _declared_shapes(cell, batch, seq, given):
    """Shapes of ``cell``'s primitives: from its ``shard_inputs(batch, seq)`` / ``(rows)``, or,
    for an operator Cell (FastGelu, MaskedSoftmax), from the input shapes its parent gave it."""
    fn = getattr(cell, "shard_inputs", None)
    if fn is None:
        return {}
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
            if len(strategy) != len(shapes):
                problems.append(f"{op}: strategy has {len(strategy)} entries for {len(shapes)} inputs")
                continue
            for i, (split, shape) in enumerate(zip(strategy, shapes)):
                if len(split) != len(shape):
                    problems.append(f"{op}: input {i} has rank {len(shape)} {tuple(shape)} but "
                                    f"strategy {tuple(split)} has {len(split)} entries")
                    continue
                for dim, (parts, size) in enumerate(zip(split, shape)):
                    if size % parts:
                        problems.append(f"{op}: input {i} dimension {dim} of size {size} is not "
                                        f"divisible by its split {parts}")
                total = 1
                for parts in split:
                    total *= parts
                if devices % total:
                    problems.append(f"{op}: input {i} split {tuple(split)} uses {total} parts, "
                                    f"which does not divide {devices} devices")
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
