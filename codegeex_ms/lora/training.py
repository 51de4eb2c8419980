"""What the training loop does differently when ``lora.rank > 0`` (its hooks call this class).

* Build: the base from ``train.init_weights`` through ``build.load_model`` (so an FP16, FP32 or
  INT8 checkpoint gives an FP16/FP32/INT8 frozen base per ``model.param_dtype`` /
  ``model.weight_quant``), the fused W8A16 kernel switched off (it has no backward, and the
  gradient must flow through every frozen Linear to the adapters below it), then
  :func:`~codegeex_ms.lora.adapters.apply_lora` with ``train.seed``. The optimizer is built over
  ``trainable_params()``, i.e. the FP32 adapters only, so its Adam moments are FP32 too.
* Checkpoints: frozen base parameters are left out of training checkpoints
  (``train.snapshots.state_parameters`` skips :func:`~codegeex_ms.lora.layers.is_frozen`), and
  :meth:`meta` adds the base's identity, which :meth:`check_resume` compares on ``--resume``.
* Export: ``adapter_final.ckpt`` (see :mod:`codegeex_ms.lora.adapters`) instead of the full weights.
"""

import logging
from pathlib import Path

from codegeex_ms.lora.adapters import apply_lora, base_identity, lora_config_record, same_base, save_adapter

logger = logging.getLogger("codegeex_ms.train")

ADAPTER_FILE = "adapter_final.ckpt"


def lora_enabled(cfg) -> bool:
    """Whether the config trains LoRA adapters instead of the whole network."""
    return cfg.lora.rank > 0


class LoRATraining:
    """The frozen base with its adapters for one training config (``cfg.lora.rank > 0``).

    ``model`` is the network to train; ``base`` the base checkpoint's identity.
    """

    def __init__(self, cfg):
        from codegeex_ms.model.build import load_model  # pylint: disable=import-outside-toplevel

        if not cfg.train.init_weights:
            raise ValueError("lora.rank > 0 trains adapters on a frozen base: set train.init_weights "
                             "to the base checkpoint (e.g. the release .pt or its INT8 .ckpt)")
        self.cfg = cfg
        path = Path(cfg.train.init_weights)
        if not path.is_file():
            raise FileNotFoundError(f"train.init_weights={path}: no such file; give the base checkpoint")
        self.base = base_identity(path)
        self.model = load_model(cfg.model, str(path))
        for _, cell in self.model.cells_and_names():
            if getattr(cell, "fused_matmul", None) is not None:
                cell.fused_matmul = None  # built-in operators have the backward the adapters need
        self.adapters = apply_lora(self.model, cfg.lora, seed=cfg.train.seed)
        logger.info("LoRA: %d adapted Linears, %d trainable parameters; base %s frozen",
                    len(self.adapters), sum(int(p.size) for p in self.model.trainable_params()), path)

    def meta(self) -> dict:
        """Entries added to every training checkpoint's meta record."""
        return {"lora_base": self.base, "lora": lora_config_record(self.cfg.lora)}

    def check_resume(self, meta: dict, path) -> None:
        """Refuse to resume adapters trained on another base or with another adapter layout."""
        if not same_base(meta.get("lora_base"), self.base):
            found = meta.get("lora_base") or {}
            raise ValueError(f"{path} holds adapters trained on base {found.get('file')} "
                             f"({found.get('size')} bytes, sha256 {str(found.get('sha256'))[:16]}…), "
                             f"but train.init_weights is {self.cfg.train.init_weights} (sha256 "
                             f"{self.base['sha256'][:16]}…): resume with the original base")
        if meta.get("lora") != lora_config_record(self.cfg.lora):
            raise ValueError(f"{path} was written with lora settings {meta.get('lora')}, the config "
                             f"has {lora_config_record(self.cfg.lora)}: resume with the same lora section")

    def export(self, out_dir) -> Path:
        """Write ``<out_dir>/adapter_final.ckpt``; returns its path."""
        return save_adapter(Path(out_dir) / ADAPTER_FILE, self.model, self.cfg.lora, self.base)


def check_base_dtype(cfg) -> None:
    """Full training needs FP32 master weights; a frozen LoRA base may be FP16."""
    if cfg.model.param_dtype != "float32" and not lora_enabled(cfg):
        raise ValueError("training keeps FP32 master weights and FP32 Adam moments: set "
                         "model.param_dtype=float32 (use model.compute_dtype=float16 for FP16 "
                         "matmuls), or train LoRA adapters on a frozen FP16 base (lora.rank > 0).")

