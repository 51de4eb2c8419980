"""Attention probabilities: scale, additive mask and softmax, with FP32 math."""

import mindspore as ms
from mindspore import nn, ops

MASK_PENALTY = 10000.0
"""Subtracted from blocked scores, as in CodeGeeX (a fully blocked row stays finite: no NaN)."""


class MaskedSoftmax(nn.Cell):
    """``softmax(scores * scale - 10000 * (1 - mask))`` over the last axis, computed in FP32.

    Inputs: ``scores`` [B, N, S, T] (FP16 or FP32), ``mask`` [B, 1, S, T] (1 = may attend,
    0 = blocked; any float dtype). Output: probabilities [B, N, S, T] in the dtype of ``scores``.
    """

    def __init__(self, scale: float, fused: str = "auto"):
        super().__init__()
        self.scale = scale
        self.softmax = ops.Softmax(axis=-1)
        self.cast = ops.Cast()
        self.mul = ops.Mul()
        self.sub = ops.Sub()
        self.mask_sub = ops.Sub()
        self.penalty = ops.Mul()

    def shard(self, dp: int, mp: int):
        """Split by batch (``dp``) and by head (``mp``); the mask is split by batch only."""
        self.mul.shard(((dp, mp, 1, 1), ()))
        self.mask_sub.shard(((), (dp, 1, 1, 1)))
        self.penalty.shard(((dp, 1, 1, 1), ()))
        self.sub.shard(((dp, mp, 1, 1), (dp, 1, 1, 1)))
        self.softmax.shard(((dp, mp, 1, 1),))
        return self

    def shard_inputs(self, scores_shape, mask_shape):
        """Input shapes of the sharded primitives for the given scores and mask shapes."""
        return {"mul": [scores_shape, ()], "mask_sub": [(), mask_shape], "penalty": [mask_shape, ()],
                "sub": [scores_shape, mask_shape], "softmax": [scores_shape]}

    def construct(self, scores, mask):
        out_dtype = scores.dtype
        x = self.mul(self.cast(scores, ms.float32), self.scale)
        blocked = self.mask_sub(1.0, self.cast(mask, ms.float32))
        x = self.sub(x, self.penalty(blocked, MASK_PENALTY))
        return self.cast(self.softmax(x), out_dtype)
