"""Tensor layouts as MindSpore's semi-auto parallel describes them, and the redistribution between two.

MindSpore gives every sharded operator a *device matrix* (a shape whose product is the device count;
rank ``r`` is its row-major index) and every input/output a *tensor map* (for each tensor dimension,
the device-matrix dimension that splits it, counted from the right, or -1). Two operators that agree
on how a tensor is cut can have different device matrices, so a layout is normalised here to what it
means physically: for each tensor dimension, the list of *device factors* ``(stride, size)`` that split
it, outermost first, where the factor's index of rank ``r`` is ``(r // stride) % size``. Adjacent
factors that form one contiguous rank range are merged and size-1 factors dropped, so two layouts are
equal exactly when every device holds the same slice under both.

:func:`redistribution` classifies what the compiler must insert to turn one layout into another
(``AllGather``, ``AllToAll``, a local slice) and its per-device volume, counted as the bytes each
device sends with ring collectives:

- AllGather over g devices: ``(g - 1) · local_in`` (= ``(g - 1)/g`` of the gathered slice);
- ReduceScatter over g: ``(g - 1)/g · local_in``;  AllReduce over g: ``2 (g - 1)/g · local``;
- AllToAll over g: ``(g - 1)/g · local``;  a slice: nothing.
"""

from dataclasses import dataclass
from math import prod
from typing import Optional, Sequence, Tuple

Factor = Tuple[int, int]   # (stride, size)


def _merge(factors) -> Tuple[Factor, ...]:
    """Drop size-1 factors; merge an outer factor with the inner one it continues."""
    out = []
    for stride, size in factors:
        if size == 1:
            continue
        if out and out[-1][0] == stride * size:
            outer_stride, outer_size = out.pop()
            out.append((stride, outer_size * size))
        else:
            out.append((stride, size))
    return tuple(out)


@dataclass(frozen=True)
class Layout:
    """A tensor of ``shape`` cut over devices: ``dims[i]`` = the device factors splitting dimension i."""

    shape: Tuple[int, ...]
    dims: Tuple[Tuple[Factor, ...], ...]

    @property
    def splits(self) -> Tuple[int, ...]:
        """Number of slices along each dimension (MindSpore's strategy for this tensor)."""
        return tuple(prod(size for _, size in factors) for factors in self.dims)

    @property
    def local_numel(self) -> int:
        """Elements of one device's slice."""
        return prod(s // p for s, p in zip(self.shape, self.splits))

    def describe(self) -> str:
        """``(8, 1)@mp`` style: splits per dimension and the device axes they use."""
        return f"{self.splits}" + ("" if not any(self.dims) else f" on {self.dims}")


def replicated(shape: Sequence[int]) -> Layout:
    """Every device holds the whole tensor."""
    return Layout(tuple(shape), tuple(() for _ in shape))


def from_tensor_map(dev_matrix: Sequence[int], tensor_map: Sequence[int], shape: Sequence[int]) -> Layout:
    """The layout MindSpore's ``TensorLayout.InitFromVector(dev_matrix, tensor_map, shape)`` describes.

    ``tensor_map[i] = k`` splits dimension i over device-matrix dimension ``len(dev_matrix) - 1 - k``;
    -1 leaves it whole. A tuple ``k`` entry (several device dimensions) is not used by this network.
    """
    strides = [prod(dev_matrix[i + 1:]) for i in range(len(dev_matrix))]
    dims = []
    for k in tensor_map:
        if k == -1:
            dims.append(())
        else:
            j = len(dev_matrix) - 1 - k
            dims.append(_merge([(strides[j], dev_matrix[j])]))
    return Layout(tuple(shape), tuple(dims))


def with_dims(layout: Layout, shape: Sequence[int], dims) -> Layout:
    """A layout of another shape whose dimensions carry the given factors (merged)."""
    return Layout(tuple(shape), tuple(_merge(f) for f in dims))


def _atoms(*layouts: Layout) -> list:
    """Sorted rank strides at which any factor of the layouts starts or ends: cutting every factor
    at these points gives device 'digits' ``(stride, size)`` common to all the layouts."""
    points = set()
    for layout in layouts:
        for factors in layout.dims:
            for stride, size in factors:
                points.update((stride, stride * size))
    cuts = sorted(points)
    return cuts


def _split_factor(factor: Factor, cuts) -> list:
    """The factor as consecutive atoms, outermost first."""
    stride, size = factor
    inside = [c for c in cuts if stride <= c <= stride * size]
    return [(lo, hi // lo) for lo, hi in reversed(list(zip(inside, inside[1:])))]


def _atom_positions(layout: Layout, cuts) -> dict:
    """{atom: (tensor dim, position inside that dim's factor list)}."""
    out = {}
    for dim, factors in enumerate(layout.dims):
        atoms = [a for f in factors for a in _split_factor(f, cuts)]
        for pos, atom in enumerate(atoms):
            out[atom] = (dim, pos)
    return out


@dataclass(frozen=True)
class Collective:
    """One communication: kind, devices in each group and bytes each device sends."""

    kind: str           # AllGather | AllToAll | ReduceScatter | AllReduce | slice
    group: int
    bytes: int

    def __str__(self) -> str:
        if self.kind == "slice":
            return "local slice (no communication)"
        return f"{self.kind} over {self.group} devices, {self.bytes:,} B/device"


def collective(kind: str, group: int, local_bytes: int) -> Optional[Collective]:
    """A ring collective over ``group`` devices whose per-device *input* is ``local_bytes``."""
    if group <= 1:
        return None
    volume = {"AllGather": (group - 1) * local_bytes,
              "ReduceScatter": (group - 1) * local_bytes // group,
              "AllReduce": 2 * (group - 1) * local_bytes // group,
              "AllToAll": (group - 1) * local_bytes // group}[kind]
    return Collective(kind, group, volume)


def redistribution(src: Layout, dst: Layout, itemsize: int) -> Tuple[Tuple[Collective, ...], Tuple[Collective, ...]]:
    """(forward, backward) collectives that turn ``src`` into ``dst`` (same shape), empty if equal.

    Device digits that split ``src`` but not ``dst`` are gathered (backward: reduce-scattered);
    digits that move to another dimension (or reorder) are exchanged all-to-all; digits new in
    ``dst`` are a local slice (backward: all-gathered).
    """
    if src.shape != dst.shape:
        raise ValueError(f"redistribution between shapes {src.shape} and {dst.shape}")
    if src.dims == dst.dims:
        return (), ()
    cuts = _atoms(src, dst)
    a, b = _atom_positions(src, cuts), _atom_positions(dst, cuts)
    gathered = prod(atom[1] for atom in a if atom not in b)
    moved = prod(atom[1] for atom in a if atom in b and a[atom] != b[atom])
    sliced = prod(atom[1] for atom in b if atom not in a)
    item_in, item_out = src.local_numel * itemsize, dst.local_numel * itemsize
    fwd, bwd = [], []
    if moved > 1:
        fwd.append(collective("AllToAll", moved, item_in))
        bwd.append(collective("AllToAll", moved, item_out))
    if gathered > 1:
        fwd.append(collective("AllGather", gathered, item_in))
        bwd.append(collective("ReduceScatter", gathered, item_out))
    if sliced > 1:
        fwd.append(Collective("slice", sliced, 0))
        bwd.append(collective("AllGather", sliced, item_out))
    return tuple(fwd), tuple(bwd)
