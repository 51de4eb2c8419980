"""Layout attributes a sharded ``ops.Custom`` needs under semi-auto parallel.

MindSpore's ``CustomInfo`` (``mindspore/ccsrc/frontend/parallel/ops_info/custom_info.cc``) does not
derive a Custom operator's layout from its strategy: it reads the ``dev_matrix_shape``,
``inputs_tensor_map`` and ``outputs_tensor_map`` attributes of the primitive and fails to compile
without them. :func:`annotate_custom_layouts` writes them for the fused kernels
(``codegeex_ms.ops.fused``) from the strategies the plan set: the device matrix is the first input's
strategy; an input dimension split like the device-matrix dimension it lines up with (right-aligned)
maps to it, an unsplit one to -1; the output is laid out like the first input. The primitive also
gets ``codegeex_kernel`` (``fast_gelu`` / ``masked_softmax``) so the validator applies the kernel's
own rule (:func:`codegeex_ms.parallel.rules.custom`).
"""

KERNELS = {"fast_gelu": "fast_gelu", "fast_gelu_grad": "fast_gelu",
           "fused_softmax": "masked_softmax", "fused_softmax_grad": "masked_softmax"}
"""Attribute name of a fused primitive in its Cell → kernel."""


def tensor_maps(strategy) -> tuple:
    """(dev_matrix_shape, inputs_tensor_map, outputs_tensor_map) for a Custom primitive whose
    output is laid out like its first input. Raises ValueError for a split that lines up with no
    device-matrix dimension of the same size."""
    dev = list(strategy[0])
    n = len(dev)
    maps = []
    for i, split in enumerate(strategy):
        off = n - len(split)
        tmap = []
        for d, parts in enumerate(split):
            if parts == 1:
                tmap.append(-1)
            elif off + d >= 0 and dev[off + d] == parts:
                tmap.append(n - 1 - (off + d))
            else:
                raise ValueError(f"input {i} split {tuple(split)} does not line up with the first input's "
                                 f"{tuple(dev)}; a Custom operator's inputs must share its device matrix")
        maps.append(tmap)
    return dev, maps, [list(maps[0])]


def annotate_custom_layouts(net) -> int:
    """Give every sharded fused-kernel primitive in ``net`` its layout attributes; returns how many."""
    count = 0
    for _, cell in net.cells_and_names():
        for attr, kernel in KERNELS.items():
            prim = getattr(cell, attr, None)
            strategy = None if prim is None else getattr(prim, "attrs", {}).get("in_strategy")
            if strategy is None:
                continue
            dev, ins, outs = tensor_maps(strategy)
            prim.add_prim_attr("dev_matrix_shape", dev)
            prim.add_prim_attr("inputs_tensor_map", ins)
            prim.add_prim_attr("outputs_tensor_map", outs)
            prim.add_prim_attr("codegeex_kernel", kernel)
            count += 1
    return count
