"""Communication per training step implied by a validated shard plan.

Phases (per optimizer step, per device; bytes are what each device sends with ring collectives, see
:mod:`codegeex_ms.parallel.layouts`):

- ``forward`` / ``backward``: the collectives operators perform themselves (row-parallel AllReduce
  after ``attention.dense`` and ``dense_4h_to_h``, the vocabulary-parallel embedding and loss
  reductions; in backward the AllReduce of the input gradient of every column-parallel matmul and
  of the head) and the redistributions the validator found; once per micro-batch;
- ``recompute``: with ``parallel.recompute`` the layers' forward collectives run again in backward
  (MindSpore recomputes a layer's model-parallel communication with it);
- ``gradients``: the data-parallel reduction of each parameter gradient, once per step: an
  AllReduce over the devices holding the same slice, or with optimizer sharding in groups of k a
  ReduceScatter over k, an AllReduce of the 1/k piece over the remaining holders and the
  AllGather of the parameter over k before its use.
"""

from collections import defaultdict
from dataclasses import replace
from math import prod
from typing import Dict, Optional, Tuple

from codegeex_ms.parallel.layouts import Collective, collective

DTYPE_BYTES = {"float16": 2, "float32": 4}


def _add(table, key, coll: Optional[Collective], times: int = 1) -> None:
    if coll is None or coll.kind == "slice":
        return
    entry = table[key]
    entry["count"] += times
    entry["bytes"] += coll.bytes * times


def communication(report, parallel, param_itemsize: int, opt_sizes: Optional[Dict[str, int]] = None,
                  micro_steps: int = 1) -> Dict[Tuple[str, str, int], dict]:
    """``{(phase, kind, group size): {"count", "bytes"}}`` for a :class:`~codegeex_ms.parallel.
    validator.PlanReport`. ``opt_sizes``: each parameter's optimizer-shard group (0 or missing =
    kept whole). ``micro_steps``: micro-batches per step (gradient accumulation)."""
    table = defaultdict(lambda: {"count": 0, "bytes": 0})
    for rec in report.ops:
        for comm in rec.forward:
            c = comm.collective
            _add(table, ("forward", c.kind, c.group), c, micro_steps)
            if parallel.recompute and rec.layer is not None:
                _add(table, ("recompute", c.kind, c.group), c, micro_steps)
        for comm in rec.backward:
            _add(table, ("backward", comm.collective.kind, comm.collective.group), comm.collective, micro_steps)
    for red in report.redistributions:
        for c in red.forward:
            _add(table, ("forward", c.kind, c.group), c, micro_steps)
        for c in red.backward:
            _add(table, ("backward", c.kind, c.group), c, micro_steps)
    for name, lay in report.parameters.items():
        holders = report.devices // prod(lay.splits)
        slice_bytes = lay.local_numel * param_itemsize
        k = (opt_sizes or {}).get(name, 0)
        if k > 1:
            _add(table, ("gradients", "ReduceScatter", k), collective("ReduceScatter", k, slice_bytes))
            _add(table, ("gradients", "AllReduce", holders // k),
                 collective("AllReduce", holders // k, slice_bytes // k))
            _add(table, ("gradients", "AllGather", k), collective("AllGather", k, slice_bytes // k))
        else:
            _add(table, ("gradients", "AllReduce", holders), collective("AllReduce", holders, slice_bytes))
    return dict(table)


def plan_communication(cfg, opt_sizes: Dict[str, int]) -> dict:
    """Validate the training plan of ``cfg`` and return its communication per step, JSON-ready:
    ``{"rows": [{"phase", "kind", "group", "count", "bytes"}], "problems": [...],
    "redistributions": [...]}``. The network is built without weights and with the built-in
    operators (the fused kernels have the same layouts)."""
    # pylint: disable=import-outside-toplevel
    from codegeex_ms.model import CodeGeeXWithLoss
    from codegeex_ms.model.build import build_model
    from codegeex_ms.parallel.shard_plan import apply_shard_plan
    from codegeex_ms.parallel.validator import check_plan
    net = CodeGeeXWithLoss(build_model(replace(cfg.model, fused_kernels="off"), allocate=False))
    apply_shard_plan(net, cfg.parallel)
    report = check_plan(net, cfg.parallel, cfg.train.micro_batch_size * cfg.parallel.data_parallel,
                        cfg.train.seq_length)
    table = communication(report, cfg.parallel, DTYPE_BYTES[cfg.model.param_dtype], opt_sizes,
                          cfg.train.grad_accumulation)
    order = {"forward": 0, "recompute": 1, "backward": 2, "gradients": 3}
    rows = [{"phase": phase, "kind": kind, "group": group, **value}
            for (phase, kind, group), value in sorted(table.items(), key=lambda kv: (order[kv[0][0]], kv[0][1:]))]
    return {"rows": rows, "problems": list(report.problems),
            "redistributions": [str(r) for r in report.redistributions]}


PHASE_LABEL = {"forward": "forward (operators + redistributions)", "recompute": "recompute (layers' forward again)",
               "backward": "backward (operators + redistributions)", "gradients": "data parallel: gradients, optimizer shards"}


def format_communication(comm: dict) -> list:
    """Report lines for :func:`plan_communication`'s result."""
    out = [f"communication per step and device (ring bytes sent; {len(comm['redistributions'])} "
           f"redistribution(s) outside the layers, {len(comm['problems'])} plan problem(s))"]
    total = 0
    for row in comm["rows"]:
        total += row["bytes"]
        out.append(f"  {PHASE_LABEL[row['phase']]:42s} {row['kind']:13s} over {row['group']:5d}: "
                   f"{row['count']:5d} calls, {row['bytes'] / 1e9:9.3f} GB")
    out.append(f"  {'total':42s} {'':13s} {'':10s} {'':8s}   {total / 1e9:9.3f} GB")
    out += [f"  redistribution outside the layers: {r}" for r in comm["redistributions"]]
    out += [f"  problem: {p}" for p in comm["problems"]]
    return out
