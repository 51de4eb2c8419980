"""The CodeGeeX network, its loss and incremental (KV-cache) decoding."""

from codegeex_ms.model.codegeex import CodeGeeX
from codegeex_ms.model.kv_cache import CachedDecoder
from codegeex_ms.model.loss import CodeGeeXWithLoss

__all__ = ["CodeGeeX", "CachedDecoder", "CodeGeeXWithLoss"]
