"""FastGELU: ``x * sigmoid(1.702 * x)``, CodeGeeX's activation (not the tanh GELU)."""

from mindspore import nn, ops


class FastGelu(nn.Cell):
    """FastGELU on a tensor of any shape; output has the input's shape and dtype."""

    def __init__(self, fused: str = "auto"):
        super().__init__()
        self.fast_gelu = ops.FastGeLU()

    def shard(self, strategy):
        """Set the shard strategy (one tuple per input dim group, e.g. ``((dp, 1, mp),)``)."""
        self.fast_gelu.shard(strategy)
        return self

    def shard_inputs(self, x_shape):
        """Input shapes of the sharded primitives for an input of ``x_shape``."""
        return {"fast_gelu": [x_shape]}

    def construct(self, x):
        return self.fast_gelu(x)
