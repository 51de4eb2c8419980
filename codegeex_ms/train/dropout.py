"""Dropout whose masks are a pure function of (seed, rank, micro-step, site, element).

MindSpore's ``nn.Dropout`` keeps a random-number state inside each kernel that cannot be read or
restored, so a resumed run would draw different masks from an uninterrupted one. Training on CPU
therefore swaps every ``nn.Dropout`` of the network for :class:`StatelessDropout`: the host sets
one 32-bit key per micro-step (:func:`step_key`), each dropout site mixes its own index into it,
and each element's keep bit comes from an integer hash of its flat index. The masks then depend
only on values stored in a checkpoint (seed, step), recomputation in the backward pass
regenerates the same mask, and data-parallel ranks draw different masks.

The hash is two multiply/xor-shift rounds on 32-bit values. Composed of MindSpore operators
(held in int64, so no product overflows) it costs about five times a native dropout on CPU and
needs the flat index of every element, which is too much memory for the 13B model's attention
probabilities, so on Ascend the native dropout is kept (``train.dropout_rng: auto``) and resume
there is exact up to the dropout masks. On CPU, FP32 inputs go through one fused kernel
(``codegeex_ms.ops.fused.fused_stateless_dropout``, chosen by ``fused``: auto | on | off) that
hashes, masks and scales in one pass and regenerates the mask in the backward; it gives the same
bits as the composed operators, which remain the path for other dtypes and ``fused="off"``.
"""

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from codegeex_ms.ops.fused import fused_stateless_dropout

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x2C1B3C6D        # odd multipliers < 2**31: products of 32-bit values fit int64
_GOLDEN = 0x9E3779B9                      # spreads site indices over the key space


def _mix(h):
    """32-bit avalanche hash of int64 values in [0, 2**32): xorshift-multiply, twice."""
    h = ops.bitwise_xor(h, ops.bitwise_right_shift(h, 16))
    h = ops.bitwise_and(h * _M1, MASK32)
    h = ops.bitwise_xor(h, ops.bitwise_right_shift(h, 15))
    h = ops.bitwise_and(h * _M2, MASK32)
    return ops.bitwise_xor(h, ops.bitwise_right_shift(h, 16))


def mix_numpy(h: np.ndarray) -> np.ndarray:
    """:func:`_mix` in NumPy (uint64 arithmetic), the reference for tests."""
    h = np.asarray(h, dtype=np.uint64)
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(_M1)) & np.uint64(MASK32)
    h = h ^ (h >> np.uint64(15))
    h = (h * np.uint64(_M2)) & np.uint64(MASK32)
    return h ^ (h >> np.uint64(16))


def step_key(seed: int, rank: int, micro_step: int) -> int:
    """The 32-bit dropout key of one micro-step of one data-parallel rank."""
    return int(np.random.SeedSequence([seed, rank, micro_step]).generate_state(1)[0])


def keep_mask_numpy(key: int, site: int, shape, p: float) -> np.ndarray:
    """The keep mask :class:`StatelessDropout` draws for ``key``/``site`` (float32, NumPy)."""
    site_key = mix_numpy((key + site * _GOLDEN) & MASK32)
    idx = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    return (mix_numpy(idx ^ site_key) >= np.uint64(threshold(p))).astype(np.float32)


def threshold(p: float) -> int:
    """Hash values below this are dropped: ``round(p * 2**32)``."""
    return int(round(p * 2.0 ** 32))


class StatelessDropout(nn.Cell):
    """Inverted dropout with rate ``p``: ``x * keep / (1 - p)`` in training, identity otherwise.

    ``key`` is the shared int64 scalar Parameter holding the current micro-step's key; ``site``
    distinguishes the dropout layers of one network. Any input shape and float dtype; ``fused``
    (auto | on | off) selects the one-pass CPU kernel for FP32 inputs.
    """

    def __init__(self, p: float, site: int, key: Parameter, fused: str = "auto"):
        super().__init__()
        self.p, self.site, self.key = float(p), int(site), key
        self.threshold = threshold(self.p)
        self.scale = 1.0 / (1.0 - self.p)
        kernel = fused_stateless_dropout(fused) if self.p > 0.0 else None
        self.fused = kernel.forward if kernel is not None else None
        self.threshold_tensor = Tensor([self.threshold], ms.int64)
        self.scale_tensor = Tensor([self.scale], ms.float32)

    def construct(self, x):
        if not self.training or self.p == 0.0:
            return x
        site_key = _mix(ops.bitwise_and(self.key + self.site * _GOLDEN, MASK32))
        if self.fused is not None and x.dtype == ms.float32:
            return self.fused(x, site_key, self.threshold_tensor, self.scale_tensor)
        last = x.shape[-1]
        rows = x.size // last
        idx = ops.arange(rows, dtype=ms.int64).reshape(rows, 1) * last + ops.arange(last, dtype=ms.int64)
        keep = _mix(ops.bitwise_xor(idx, site_key)) >= self.threshold
        keep = ops.stop_gradient(keep.reshape(x.shape).astype(x.dtype))
        return x * keep * self.scale


class DropoutKey:
    """The key Parameter shared by every :class:`StatelessDropout` of a network."""

    NAME = "train_dropout_key"

    def __init__(self):
        self.param = Parameter(Tensor(0, ms.int64), name=self.NAME, requires_grad=False)

    def set(self, seed: int, rank: int, micro_step: int) -> None:
        self.param.set_data(Tensor(step_key(seed, rank, micro_step), ms.int64))


def use_stateless(mode: str, device_target: str) -> bool:
    """Whether ``train.dropout_rng`` (auto | stateless | native) selects the stateless dropout."""
    return mode == "stateless" or (mode == "auto" and device_target == "CPU")


def install_stateless_dropout(net, fused: str = "auto") -> DropoutKey:
    """Replace every ``nn.Dropout`` inside ``net`` by a :class:`StatelessDropout` of the same
    rate (sites numbered in traversal order, ``fused`` as there); returns the shared key holder."""
    key = DropoutKey()
    targets = []
    for _, cell in net.cells_and_names():
        for attr, child in cell.name_cells().items():
            if isinstance(child, nn.Dropout):
                targets.append((cell, attr, child))
    for site, (cell, attr, child) in enumerate(targets):
        rate = child.p if child.p is not None else 1.0 - child.keep_prob
        setattr(cell, attr, StatelessDropout(rate, site, key.param, fused))
    return key
