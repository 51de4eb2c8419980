"""codegeex_ms: a MindSpore 2.x port of CodeGeeX-13B."""

from codegeex_ms.env import runtime as _runtime  # noqa: F401  (sets MindSpore's log level before it loads)

__version__ = "0.1.0"
