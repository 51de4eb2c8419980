"""codegeex_ms: a MindSpore 2.x port of CodeGeeX-13B."""

__version__ = "0.1.0"
