"""Memory and FLOPs budgets, by formula: ``training`` (per device under the parallel plan, and the
model's FLOPs), ``lora`` (LoRA fine-tuning on one device) and ``inference`` (the whole model on one
device). ``python -m codegeex_ms.plan`` prints them."""
