"""The LoRA Cell: a frozen :class:`~codegeex_ms.model.layers.Linear` plus a trainable low-rank update.

``LoRALinear(base, rank, alpha, dropout, init)`` computes, for ``x`` [..., in]::

    y = base(x) + (alpha / rank) · dropout(x) · Aᵀ · Bᵀ

with ``A`` (``lora_a``) FP32 [rank, in] and ``B`` (``lora_b``) FP32 [out, rank]. The base Linear is
used as it is (FP16/FP32 weight or INT8 weight with FP32 scales, its own matmul path), so the
adapter does not depend on how the base computes. The low-rank branch runs in FP32; the sum is
formed in FP32 and cast to the base's compute dtype. ``B`` starts at zero, so a fresh adapter
leaves every output equal to the base's. With ``enabled = False`` (set before the first call:
graph mode compiles the branch in or out) the Cell returns ``base(x)`` itself, bit for bit.

Parameters are named after the wrapped Linear: ``<linear>.lora_a`` and ``<linear>.lora_b``
(e.g. ``language_model.transformer.layers.0.attention.query.lora_a``); the base keeps its own
release names.
"""

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

FROZEN_ATTR = "lora_frozen_base"


def mark_frozen(param) -> None:
    """Freeze a base parameter: no gradient, and not part of (adapter-only) training checkpoints."""
    param.requires_grad = False
    setattr(param, FROZEN_ATTR, True)


def is_frozen(param) -> bool:
    """Whether ``param`` is a base weight frozen under LoRA (see :func:`mark_frozen`)."""
    return bool(getattr(param, FROZEN_ATTR, False))


def init_a(rank: int, in_features: int, init: str, rng: np.random.Generator) -> np.ndarray:
    """Initial ``A`` [rank, in] FP32.

    ``kaiming``: uniform in ``±1/sqrt(in)``, i.e. Kaiming-uniform with a = sqrt(5) (bound =
    sqrt(2 / (1 + a²)) · sqrt(3 / in)), the usual LoRA choice; ``gaussian``: N(0, σ²) with σ = 1/rank.
    """
    if init == "kaiming":
        bound = 1.0 / math.sqrt(in_features)
        return rng.uniform(-bound, bound, size=(rank, in_features)).astype(np.float32)
    if init == "gaussian":
        return rng.normal(0.0, 1.0 / rank, size=(rank, in_features)).astype(np.float32)
    raise ValueError(f"lora.init={init!r}: must be kaiming or gaussian")


class LoRALinear(nn.Cell):
    """A frozen ``base`` Linear plus ``(alpha / rank) · B · A`` (see the module docstring).

    ``a_init`` is the initial ``A`` [rank, in] (FP32 NumPy); ``B`` starts at zero.
    Input [..., in] any float dtype → output [..., out] in the base's compute dtype.
    """

    def __init__(self, base, rank: int, alpha: float, dropout: float, a_init: np.ndarray):
        super().__init__(auto_prefix=False)
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = rank
        self.scaling = float(alpha) / rank
        self.lora_a = Parameter(Tensor(np.ascontiguousarray(a_init, np.float32)), name="lora_a")
        self.lora_b = Parameter(Tensor(np.zeros((self.out_features, rank), np.float32)), name="lora_b")
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else None
        self.enabled = True
        self.down = ops.MatMul(transpose_b=True)
        self.up = ops.MatMul(transpose_b=True)
        self.add = ops.Add()
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()

    # Sharding: the base is split as before; the adapters (a few MB) stay replicated and their
    # matmuls are split by batch only.
    def shard_column(self, dp, mp):
        self.base.shard_column(dp, mp)
        return self._shard_adapter(dp)

    def shard_row(self, dp, mp):
        self.base.shard_row(dp, mp)
        return self._shard_adapter(dp)

    def _shard_adapter(self, dp):
        self.down.shard(((dp, 1), (1, 1)))
        self.up.shard(((dp, 1), (1, 1)))
        self.add.shard(((dp, 1), (dp, 1)))
        if isinstance(self.dropout, nn.Dropout):  # not once swapped for the CPU stateless dropout
            self.dropout.dropout.shard(((dp, 1),))
        self.split = self.base.split
        return self

    def shard_inputs(self, rows):
        return self.base.shard_inputs(rows)

    def delta(self) -> np.ndarray:
        """The merged update ``(alpha / rank) · B · A`` [out, in] FP32 (NumPy)."""
        a = self.lora_a.asnumpy().astype(np.float32)
        b = self.lora_b.asnumpy().astype(np.float32)
        return np.float32(self.scaling) * (b @ a)

    def construct(self, x):
        y = self.base(x)
        if not self.enabled:
            return y
        out_shape = y.shape
        h = self.reshape(self.cast(x, ms.float32), (-1, self.in_features))
        if self.dropout is not None:
            h = self.dropout(h)
        h = self.up(self.down(h, self.lora_a), self.lora_b) * self.scaling
        y32 = self.reshape(self.cast(y, ms.float32), (-1, self.out_features))
        return self.reshape(self.cast(self.add(y32, h), y.dtype), out_shape)
