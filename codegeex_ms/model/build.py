"""Building the network from a config, optionally without allocating its weights, and loading it."""

import dataclasses
import logging

from mindspore.nn.utils import no_init_parameters

from codegeex_ms.model.codegeex import CodeGeeX

logger = logging.getLogger(__name__)


def build_model(model_config, allocate: bool = True) -> CodeGeeX:
    """Construct :class:`CodeGeeX`; with ``allocate=False`` parameters stay uninitialised
    (shapes and names only), so even the 13B network builds in seconds on a small machine."""
    if allocate:
        return CodeGeeX(model_config)
    with no_init_parameters():
        return CodeGeeX(model_config)


def load_model(model_config, checkpoint: str):
    """Build the network for ``model_config`` and load ``checkpoint`` into it.

    An INT8 checkpoint (written by ``codegeex_ms.quantize``) switches ``weight_quant`` to int8
    with a logged notice; with ``weight_quant: int8`` a float checkpoint is quantized while loading.
    """
    from codegeex_ms.checkpoint import load_into_network
    from codegeex_ms.quantize import checkpoint_weight_quant, load_quantized

    if model_config.weight_quant != "int8" and checkpoint_weight_quant(checkpoint) == "int8":
        logger.warning("%s is an INT8 (W8A16) checkpoint: using model.weight_quant=int8", checkpoint)
        model_config = dataclasses.replace(model_config, weight_quant="int8")
    model = build_model(model_config)
    if model_config.weight_quant == "int8":
        load_quantized(model, checkpoint)
    else:
        load_into_network(model, checkpoint)
    return model
