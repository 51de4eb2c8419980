"""LoRA fine-tuning of CodeGeeX: adapters on the decoder's Linears over a frozen FP16/INT8 base.

Modules: ``layers`` (the :class:`LoRALinear` Cell), ``adapters`` (putting adapters into a network,
adapter files), ``training`` (the train loop's hooks), ``merge`` (streaming base + adapter →
checkpoint); its memory plan is ``codegeex_ms.budget.lora``. Command line:
``python -m codegeex_ms.lora merge ...``.

Why our own Cells rather than ``mindpet`` (MindSpore's parameter-efficient tuning package,
``mindpet==1.0.4``, whose ``mindpet.delta.lora.LoRADense`` we read):

* ``LoRADense`` *is* an ``nn.Dense`` (it subclasses it and owns the base matmul), so it cannot
  wrap this project's ``Linear``: the release's ``weight``/``bias`` names and [out, in] layout,
  the INT8 weight + FP32 row-scale path (W8A16) and the fused W8A16 kernel would all have to be
  re-implemented inside a copy of ``nn.Dense``, and a frozen INT8 base is the point of this work.
* It casts the adapters to the compute dtype (FP16) and computes the low-rank branch there; we
  want the adapters, their gradients and Adam moments in FP32 and the branch summed in FP32.
* It imports private MindSpore APIs (``mindspore._checkparam``) behind a version switch, declares
  Python 3.7–3.9 and MindSpore ≥ 1.8, and has had no release since 2023; its parameter names
  (``mindpet_delta_lora_A``) would leak into our adapter files.
The Cell needed here is ~60 lines (``layers.py``); owning it costs less than adapting those.
"""

from codegeex_ms.lora.adapters import (AdapterFile, adapter_weights, apply_lora, attach_adapter,
                                       base_identity, find_adapters, load_adapter_weights,
                                       load_model_with_adapter, save_adapter, set_adapters_enabled)
from codegeex_ms.lora.layers import LoRALinear, is_frozen

__all__ = ["AdapterFile", "LoRALinear", "adapter_weights", "apply_lora", "attach_adapter",
           "base_identity", "find_adapters", "is_frozen", "load_adapter_weights",
           "load_model_with_adapter", "save_adapter", "set_adapters_enabled"]
