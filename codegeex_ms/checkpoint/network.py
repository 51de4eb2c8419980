"""Loading checkpoint weights into a MindSpore network."""

from typing import List, Optional

import numpy as np

from .dtypes import np_dtype_of
from .layout import check_layout
from .sources import open_weights


def load_into_network(net, path, dtype=None, from_ms17: Optional[bool] = None) -> List[str]:
    """Set every parameter of ``net`` from checkpoint ``path`` (any supported format).

    Names and shapes are checked against ``net.parameters_and_names()`` first; all missing,
    unexpected and mis-shaped tensors are reported in one LayoutMismatchError and nothing is set.
    Each tensor is cast to its parameter's dtype, or, if ``dtype`` (a MindSpore dtype) is given,
    the parameter is changed to ``dtype`` and the tensor cast to it. Returns the names set.
    """
    import mindspore as ms  # pylint: disable=import-outside-toplevel

    params = dict(net.parameters_and_names())
    with open_weights(path, from_ms17) as weights:
        check_layout({n: i.shape for n, i in weights.infos.items()},
                     {n: tuple(p.shape) for n, p in params.items()},
                     what=f"{path} (against the network's parameters)")
        for name, param in params.items():
            if dtype is not None and param.dtype != dtype:
                param.set_dtype(dtype)
            target = np_dtype_of(param.dtype)
            array = weights.read(name).astype(target, copy=False)
            param.set_data(ms.Tensor.from_numpy(np.ascontiguousarray(array)))
    return list(params)
