"""Element-wise operators of the model: FastGELU and scale + mask + softmax.

Each is a Cell so that graph mode can compile it; fused kernels (``kernels/``) plug in behind the
same interface.
"""

from codegeex_ms.ops.activation import FastGelu
from codegeex_ms.ops.softmax import MaskedSoftmax

__all__ = ["FastGelu", "MaskedSoftmax"]
