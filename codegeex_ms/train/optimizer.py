"""Adam with decoupled weight decay over two parameter groups (reference section 5).

MindSpore's ``nn.AdamWeightDecay`` is used as is: per parameter ``m = b1*m + (1-b1)*g``,
``v = b2*v + (1-b2)*g^2``, ``p -= lr * (m / (sqrt(v) + eps) + wd * p)``, with no bias correction
(the update of the original MindSpore CodeGeeX/PanGu-alpha training code). Moments are created
in the parameters' dtype, so training keeps FP32 master weights to get FP32 moments; they are
named ``adam_m.<param>`` / ``adam_v.<param>``.
"""

from mindspore import nn

from codegeex_ms.model.layers import LayerNorm
from codegeex_ms.train.schedule import WarmupCosineLR


def no_decay_names(net) -> set:
    """Names of the parameters exempt from weight decay: every LayerNorm's weight and bias, and
    every parameter whose attribute name is ``bias``."""
    names = set()
    for _, cell in net.cells_and_names():
        for attr, param in cell.parameters_and_names(expand=False):
            if isinstance(cell, LayerNorm) or attr == "bias":
                names.add(param.name)
    return names


def param_groups(params, weight_decay: float, exempt: set) -> list:
    """``nn.Optimizer`` groups: decayed params (``weight_decay``), then exempt ones (0.0),
    keeping ``params``' order for the update."""
    params = list(params)
    decay = [p for p in params if p.name not in exempt]
    no_decay = [p for p in params if p.name in exempt]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0},
              {"order_params": params}]
    return [g for g in groups if g.get("params", True)]


def build_optimizer(net, train) -> nn.AdamWeightDecay:
    """``nn.AdamWeightDecay`` over ``net.trainable_params()`` from a TrainConfig."""
    schedule = WarmupCosineLR(train.lr, train.min_lr, train.warmup_steps, train.decay_steps)
    groups = param_groups(net.trainable_params(), train.weight_decay, no_decay_names(net))
    return nn.AdamWeightDecay(groups, learning_rate=schedule, beta1=train.adam_beta1,
                              beta2=train.adam_beta2, eps=train.adam_eps)
