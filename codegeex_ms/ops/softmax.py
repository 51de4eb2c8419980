"""Attention probabilities: scale, additive mask and softmax, with FP32 math."""

import mindspore as ms
from mindspore import nn, ops

from codegeex_ms.ops.fused import fused_masked_softmax

MASK_PENALTY = 10000.0
"""Subtracted from blocked scores, as in CodeGeeX (a fully blocked row stays finite: no NaN)."""


class MaskedSoftmax(nn.Cell):
    """``softmax(scores * scale - 10000 * (1 - mask))`` over the last axis, computed in FP32.

    Inputs: ``scores`` [B, N, S, T] (FP16 or FP32), ``mask`` [B, 1, S, T] (1 = may attend,
    0 = blocked; any float dtype, or uint8/bool). Output: probabilities [B, N, S, T] in the dtype
    of ``scores``. ``fused``: ``"auto"`` (one fused kernel pass when the device target has one,
    else the composed built-in operators with a one-line notice), ``"on"`` (fused or error) or
    ``"off"`` (built-in).
    """

    def __init__(self, scale: float, fused: str = "auto"):
        super().__init__()
        self.scale = scale
        kernel = fused_masked_softmax(fused)
        self.is_fused = kernel is not None
        self.fused_softmax = kernel.forward if kernel is not None else None
        self.fused_softmax_grad = kernel.backward if kernel is not None else None
        self.scale_tensor = ms.Tensor([scale], ms.float32)
        self.softmax = ops.Softmax(axis=-1)
        self.cast = ops.Cast()
        self.mul = ops.Mul()
        self.sub = ops.Sub()
        self.mask_sub = ops.Sub()
        self.penalty = ops.Mul()

    def shard(self, dp: int, mp: int):
        """Split by batch (``dp``) and by head (``mp``); the mask is split by batch only."""
        if self.is_fused:
            self.fused_softmax.shard(((dp, mp, 1, 1), (dp, 1, 1, 1), (1,)))
            self.fused_softmax_grad.shard(((dp, mp, 1, 1), (dp, mp, 1, 1), (1,)))
        self.mul.shard(((dp, mp, 1, 1), ()))
        self.mask_sub.shard(((), (dp, 1, 1, 1)))
        self.penalty.shard(((dp, 1, 1, 1), ()))
        self.sub.shard(((dp, mp, 1, 1), (dp, 1, 1, 1)))
        self.softmax.shard(((dp, mp, 1, 1),))
        return self

    def shard_inputs(self, scores_shape, mask_shape):
        """Input shapes of the sharded primitives for the given scores and mask shapes."""
        shapes = {"mul": [scores_shape, ()], "mask_sub": [(), mask_shape], "penalty": [mask_shape, ()],
                  "sub": [scores_shape, mask_shape], "softmax": [scores_shape]}
        if self.is_fused:
            shapes["fused_softmax"] = [scores_shape, mask_shape, (1,)]
            shapes["fused_softmax_grad"] = [scores_shape, scores_shape, (1,)]
        return shapes

    def construct(self, scores, mask):
        if self.is_fused:
            return self.fused_softmax(scores, mask, self.scale_tensor)
        out_dtype = scores.dtype
        x = self.mul(self.cast(scores, ms.float32), self.scale)
        blocked = self.mask_sub(1.0, self.cast(mask, ms.float32))
        x = self.sub(x, self.penalty(blocked, MASK_PENALTY))
        return self.cast(self.softmax(x), out_dtype)
