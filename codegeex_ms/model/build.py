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
    An INT8 ``.safetensors`` is memory-mapped (``quant.load_quantized_mmap``: the parameters
    are copy-on-write views of the file's pages, so the 13B model needs its 13.2 GB once, read
    on first use); other checkpoints are read into allocated parameters.
    """
    from codegeex_ms.checkpoint import load_into_network
    from codegeex_ms.checkpoint.sources import detect_format
    from codegeex_ms.model.quant import checkpoint_weight_quant, load_quantized, load_quantized_mmap

    int8_file = checkpoint_weight_quant(checkpoint) == "int8"
    if model_config.weight_quant != "int8" and int8_file:
        logger.warning("%s is an INT8 (W8A16) checkpoint: using model.weight_quant=int8", checkpoint)
        model_config = dataclasses.replace(model_config, weight_quant="int8")
    if int8_file and detect_format(checkpoint) == "safetensors":
        model = build_model(model_config, allocate=False)
        load_quantized_mmap(model, checkpoint)
        return model
    model = build_model(model_config)
    if model_config.weight_quant == "int8":
        load_quantized(model, checkpoint)
    else:
        load_into_network(model, checkpoint)
    return model
