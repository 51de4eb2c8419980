"""Next-token cross-entropy in FP32 with a per-token loss mask."""

import mindspore as ms
from mindspore import nn, ops

from codegeex_ms.ops.fused import fused_cross_entropy


class CrossEntropy(nn.Cell):
    """Masked mean cross-entropy.

    ``construct(logits [N, V] FP32, labels [N] int32, mask [N] float)`` → scalar FP32:
    ``sum(mask * (logsumexp(logits) - logits[label])) / max(sum(mask), 1)``.

    ``logits[label]`` is picked with a gather (``GatherD``) on one device, and, once :meth:`shard`
    splits the rows or the vocabulary over several devices, as ``sum(logits * one_hot(label))``
    with primitives that can be split by rows (dp) and vocabulary (mp). Both give the same bits
    (adding zeros is exact), forward and backward; the gather saves building, multiplying and
    reducing a [N, V] one-hot matrix and its gradient. Unsharded, ``fused`` (auto | on | off)
    selects the CPU cross-entropy kernel (``codegeex_ms.ops.fused.fused_cross_entropy``: two passes
    over the logits forward and two backward; same value up to FP32 rounding).
    """

    def __init__(self, vocab_size, fused="off"):
        super().__init__()
        self.vocab_size = vocab_size
        kernel = fused_cross_entropy(fused)
        self.fused = kernel.forward if kernel is not None else None
        self.max = ops.ReduceMax(keep_dims=True)
        self.sub = ops.Sub()
        self.exp = ops.Exp()
        self.sum_exp = ops.ReduceSum(keep_dims=True)
        self.log = ops.Log()
        self.onehot = ops.OneHot()
        self.mul = ops.Mul()
        self.pick = ops.ReduceSum(keep_dims=True)
        self.cast = ops.Cast()
        self.on = ms.Tensor(1.0, ms.float32)
        self.off = ms.Tensor(0.0, ms.float32)
        self.gather = ops.GatherD()
        self.use_gather = True

    def shard(self, dp, mp):
        self.use_gather = dp * mp == 1
        if not self.use_gather:
            self.fused = None  # the custom kernel has no shard strategy
        self.max.shard(((dp, mp),))
        self.sub.shard(((dp, mp), (dp, 1)))
        self.exp.shard(((dp, mp),))
        self.sum_exp.shard(((dp, mp),))
        self.onehot.shard(((dp, mp), (), ()))
        self.mul.shard(((dp, mp), (dp, mp)))
        self.pick.shard(((dp, mp),))
        return self

    def shard_inputs(self, rows):
        full = (rows, self.vocab_size)
        # OneHot's strategy describes its output [rows, vocab], not its 1-D index input.
        return {"max": [full], "sub": [full, (rows, 1)], "exp": [full], "sum_exp": [full],
                "onehot": [full, (), ()], "mul": [full, full], "pick": [full]}

    def construct(self, logits, labels, mask):
        logits = self.cast(logits, ms.float32)
        mask = self.cast(mask, ms.float32).reshape(-1)
        if self.fused is not None:
            per_token = self.fused(logits, labels)
            return (per_token * mask).sum() / ops.maximum(mask.sum(), 1.0)
        m = ops.stop_gradient(self.max(logits, -1))
        shifted = self.sub(logits, m)
        lse = self.log(self.sum_exp(self.exp(shifted), -1))
        if self.use_gather:
            picked = self.gather(shifted, 1, labels.reshape(-1, 1))
        else:
            onehot = self.onehot(labels, self.vocab_size, self.on, self.off)
            picked = self.pick(self.mul(shifted, onehot), -1)
        per_token = (lse - picked).reshape(-1)
        return (per_token * mask).sum() / ops.maximum(mask.sum(), 1.0)


class CodeGeeXWithLoss(nn.Cell):
    """Training objective: ``construct(input_ids, labels, position_ids, attention_mask, loss_mask)``.

    ``input_ids``/``labels``/``position_ids`` [B, S] int32, ``attention_mask`` [B, S, S],
    ``loss_mask`` [B, S] float (0 where the input token is EOD/padding or, when fine-tuning,
    outside the completion). Returns the masked mean loss, FP32 scalar.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.loss = CrossEntropy(model.config.vocab_size, model.config.fused_kernels)

    def construct(self, input_ids, labels, position_ids, attention_mask, loss_mask):
        logits = self.model(input_ids, position_ids, attention_mask)
        vocab = logits.shape[-1]
        return self.loss(logits.reshape(-1, vocab), labels.reshape(-1), loss_mask.reshape(-1))
