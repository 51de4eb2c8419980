"""FastGELU: ``x * sigmoid(1.702 * x)``, CodeGeeX's activation (not the tanh GELU)."""

from mindspore import nn, ops

from codegeex_ms.ops.fused import fused_fast_gelu


class FastGelu(nn.Cell):
    """FastGELU on a tensor of any shape; output has the input's shape and dtype.

    ``fused``: ``"auto"`` (the fused kernel of the device target when available, else the built-in
    ``ops.FastGeLU`` with a one-line notice), ``"on"`` (fused or error) or ``"off"`` (built-in).
    """

    def __init__(self, fused: str = "auto"):
        super().__init__()
        kernel = fused_fast_gelu(fused)
        self.is_fused = kernel is not None
        self.fast_gelu = kernel.forward if kernel is not None else ops.FastGeLU()
        self.fast_gelu_grad = kernel.backward if kernel is not None else None

    def shard(self, strategy):
        """Set the shard strategy (one tuple per input dim group, e.g. ``((dp, 1, mp),)``)."""
        self.fast_gelu.shard(strategy)
        if self.fast_gelu_grad is not None:
            self.fast_gelu_grad.shard((strategy[0], strategy[0]))
        return self

    def shard_inputs(self, x_shape):
        """Input shapes of the sharded primitives for an input of ``x_shape``."""
        shapes = {"fast_gelu": [x_shape]}
        if self.fast_gelu_grad is not None:
            shapes["fast_gelu_grad"] = [x_shape, x_shape]
        return shapes

    def construct(self, x):
        return self.fast_gelu(x)
