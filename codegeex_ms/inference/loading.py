"""Loading a ready generator: tokenizer, runtime, model weights (optionally a LoRA adapter)."""

from __future__ import annotations


def load_generator(cfg, checkpoint: str, tokenizer_dir: str | None = None, mode: str = "graph",
                   device_target: str | None = None, adapter: str | None = None):
    """A ready :class:`~codegeex_ms.inference.generator.Generator` for a config and checkpoint.

    ``checkpoint`` may be a MindSpore .ckpt/.safetensors, an INT8 checkpoint written by
    ``codegeex_ms.quantize``, or a release-layout .pt. ``adapter``: a LoRA adapter file applied
    over it without merging (:func:`codegeex_ms.lora.load_model_with_adapter`).
    """
    from codegeex_ms.env import runtime
    from codegeex_ms.inference.generator import Generator
    from codegeex_ms.model.build import load_model
    from codegeex_ms.data.tokenizer import CodeGeeXTokenizer

    tokenizer = CodeGeeXTokenizer.from_dir(tokenizer_dir or cfg.tokenizer.path or None)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{cfg.model.vocab_size} vocabulary rows: wrong --tokenizer-dir or config?")
    runtime.setup(mode, device_target)
    if adapter:
        from codegeex_ms.lora import load_model_with_adapter
        model = load_model_with_adapter(cfg.model, checkpoint, adapter)
    else:
        model = load_model(cfg.model, checkpoint)
    return Generator(model, tokenizer, cfg.inference.max_length)
