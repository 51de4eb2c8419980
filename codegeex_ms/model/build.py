"""Building the network from a config, optionally without allocating its weights."""

from mindspore.nn.utils import no_init_parameters

from codegeex_ms.model.codegeex import CodeGeeX


def build_model(model_config, allocate: bool = True) -> CodeGeeX:
    """Construct :class:`CodeGeeX`; with ``allocate=False`` parameters stay uninitialised
    (shapes and names only), so even the 13B network builds in seconds on a small machine."""
    if allocate:
        return CodeGeeX(model_config)
    with no_init_parameters():
        return CodeGeeX(model_config)
