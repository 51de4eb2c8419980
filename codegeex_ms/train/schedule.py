"""Learning-rate schedule: linear warm-up from 0, cosine decay to a floor (reference section 5)."""

import math

import mindspore as ms
from mindspore import ops
from mindspore.nn.learning_rate_schedule import LearningRateSchedule


def lr_at(update: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate of optimizer update number ``update`` (1-based), in Python floats.

    ``lr * update / warmup_steps`` while ``update <= warmup_steps``; then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with
    ``t = (update - warmup_steps) / (decay_steps - warmup_steps)``; ``min_lr`` from ``decay_steps`` on.
    """
    if update <= warmup_steps:
        return lr * update / warmup_steps
    t = min(1.0, (update - warmup_steps) / (decay_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosineLR(LearningRateSchedule):
    """:func:`lr_at` as a graph Cell: ``construct(global_step)`` → FP32 scalar.

    ``global_step`` is the optimizer's count of updates already applied (int32), so the update it
    is about to apply has number ``global_step + 1``.
    """

    def __init__(self, lr: float, min_lr: float, warmup_steps: int, decay_steps: int):
        super().__init__()
        self.lr, self.min_lr = float(lr), float(min_lr)
        self.warmup = float(max(warmup_steps, 0))
        self.decay_span = float(decay_steps - warmup_steps)

    def construct(self, global_step):
        update = ops.cast(global_step, ms.float32) + 1.0
        warm = self.lr * update / ops.maximum(self.warmup, 1.0)
        t = ops.clamp((update - self.warmup) / self.decay_span, 0.0, 1.0)
        cosine = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + ops.cos(math.pi * t))
        return ops.select(update <= self.warmup, warm, cosine).reshape(())
