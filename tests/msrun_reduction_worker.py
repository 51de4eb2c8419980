"""Worker for tests/test_parallel_msrun.py: one process of a 2 × 2 (dp × mp) mesh under msrun.

Each process holds its optimizer-side slices of a fixed set of gradients (slices as
``codegeex_ms.parallel.virtual_mesh`` cuts them), computes the global norm and the overflow
decision with real CPU collectives, and writes what it found to ``$OUT/rank_<r>.json``:

- ``norm_world``: local square sums ÷ ``reduction.slice_holders``, AllReduce(SUM) over all ranks
  (the rule MindSpore's global-norm pass applies);
- ``norm_groups``: the same sums reduced in two stages, over this rank's model-parallel group then
  its data-parallel group (groups made with ``create_group``);
- ``norm_naive``: without the ÷ holders correction (what a step that ignores replication gets);
- ``finite``: ``all_finite`` of the local slices, 0/1 flags AllReduce(SUM) over all ranks and over
  the groups.

Both are computed twice: ``clean`` gradients, and ``planted`` ones where rank 3 has an inf in one of
its slices.
"""

import json
import os
import sys

import numpy as np

import mindspore as ms
from mindspore import ops
from mindspore.amp import all_finite
from mindspore.communication import create_group, get_rank, get_group_size, init

from codegeex_ms.parallel import virtual_mesh as vm
from codegeex_ms.parallel.reduction import slice_holders

# name: (shape, splits, parallel-optimizer group size)
GRADS = {"col.weight": ((8, 4), (2, 1), 2), "col.bias": ((8,), (2,), 0),
         "row.weight": ((4, 8), (1, 2), 2), "row.bias": ((4,), (1,), 0),
         "norm.weight": ((4,), (1,), 4), "emb.weight": ((6, 4), (2, 1), 0)}


def full_gradients():
    rng = np.random.default_rng(3)
    return {n: rng.standard_normal(shape).astype(np.float32) for n, (shape, _, _) in GRADS.items()}


def local_gradients(mesh, rank):
    out = {}
    for name, full in full_gradients().items():
        _, splits, opt = GRADS[name]
        piece = vm.local_slice(full, name, splits, mesh, rank)
        out[name] = piece[vm.optimizer_rows(name, piece.shape, splits, mesh, rank, opt)]
    return out


def main(out_dir):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    init()
    rank, world = get_rank(), get_group_size()
    mesh = vm.Mesh(2, 2)
    assert world == mesh.world, world
    mp_group, dp_group = f"mp_{rank // 2}", f"dp_{rank % 2}"
    create_group(mp_group, mesh.mp_group(rank))
    create_group(dp_group, mesh.dp_group(rank))
    world_sum, mp_sum, dp_sum = ops.AllReduce(), ops.AllReduce(group=mp_group), ops.AllReduce(group=dp_group)
    result = {"rank": rank}
    for case in ("clean", "planted"):
        grads = local_gradients(mesh, rank)
        if case == "planted" and rank == 3:
            grads["row.weight"][0, 0] = np.inf
        corrected = sum(float(np.sum(g.astype(np.float64) ** 2)) /
                        slice_holders(GRADS[n][1], 2, 2, GRADS[n][2]) for n, g in grads.items())
        naive = sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values())
        local = ms.Tensor(np.array([corrected], np.float32))
        flag = ops.cast(ops.logical_not(all_finite(tuple(ms.Tensor(g) for g in grads.values()))),
                        ms.float32).reshape(1)
        result[case] = {
            "norm_world": float(ops.sqrt(world_sum(local)).asnumpy()[0]),
            "norm_groups": float(ops.sqrt(dp_sum(mp_sum(local))).asnumpy()[0]),
            "norm_naive": float(ops.sqrt(world_sum(ms.Tensor(np.array([naive], np.float32)))).asnumpy()[0]),
            "local_finite": bool(flag.asnumpy()[0] == 0),
            "finite_world": bool(world_sum(flag).asnumpy()[0] == 0),
            "finite_groups": bool(dp_sum(mp_sum(flag)).asnumpy()[0] == 0),
        }
    with open(os.path.join(out_dir, f"rank_{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
