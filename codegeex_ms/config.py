"""Typed configuration loaded from YAML, with ``extends:`` inheritance and ``--set`` overrides.

A config file is a mapping with the sections below (all optional). ``extends: other.yaml`` (a path
relative to the file, or a bare name found in ``ascend_configs/``) loads that file first and merges
this one over it, section by section. ``--set model.num_layers=2`` overrides one key; its value is
parsed as YAML (``--set train.lr=1e-4``, ``--set model.compute_dtype=float16``).

Every unknown key, wrong type or impossible combination raises :class:`ConfigError` naming the key
and the rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "ascend_configs"
DTYPES = ("float16", "float32")
DTYPE_BYTES = {"float16": 2, "float32": 4}  # bytes per element of each of DTYPES


class ConfigError(ValueError):
    """One or more configuration keys are unknown, mistyped or inconsistent.

    ``problems`` lists every problem found (one line each); the message holds them all.
    """

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            super().__init__(f"{len(self.problems)} problems:\n  " + "\n  ".join(self.problems))


@dataclass
class ModelConfig:
    """Sizes and numerics of the network (defaults: CodeGeeX-13B)."""

    vocab_size: int = 52224           # embedding rows (padded); ids >= real_vocab_size are padding
    real_vocab_size: int = 50400      # tokens the tokenizer can produce
    hidden_size: int = 5120
    num_layers: int = 39              # decoder layers, not counting the top-query layer
    num_heads: int = 40
    ffn_hidden_size: int = 20480
    max_position_embeddings: int = 2048
    layernorm_epsilon: float = 1e-5
    dropout: float = 0.1              # embeddings, attention probabilities, residual branches
    compute_dtype: str = "float32"    # matmuls; LayerNorm, softmax, logits and loss are FP32
    param_dtype: str = "float32"      # FP32 master weights, or float16
    fused_kernels: str = "auto"       # auto | on | off
    weight_quant: str = "none"        # none | int8 (W8A16: the six linear weights of every layer)
    eod_token_id: int = 50256
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class ParallelConfig:
    """How the network is split across devices (Megatron-style; reference section 5)."""

    data_parallel: int = 1
    model_parallel: int = 1
    vocab_parallel: bool = True       # split the embedding table (and tied head) by rows over mp
    pipeline_stages: int = 1
    micro_batches: int = 1
    recompute: bool = False           # recompute every layer's activations in backward
    optimizer_shard: bool = False     # shard optimizer states over dp (ZeRO-2 style)
    optimizer_shard_size: int = 0     # parallel-optimizer group size; 0 = largest that shards all
    gradient_fusion_groups: int = 4


@dataclass
class TrainConfig:
    """The optimisation recipe (defaults: reference section 5)."""

    micro_batch_size: int = 16        # sequences per data-parallel rank per micro-step
    seq_length: int = 2048
    grad_accumulation: int = 1
    global_batch_size: int = 0        # 0 = micro_batch_size × data_parallel × grad_accumulation
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_steps: int = 2000
    decay_steps: int = 200000
    train_steps: int = 213000
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    loss_scale: float = 4294967296.0  # 2**32, dynamic
    loss_scale_factor: float = 2.0
    loss_scale_window: int = 1000
    seed: int = 1234
    save_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    output_dir: str = "output"
    init_weights: str = ""            # weights to start from (any checkpoint format), e.g. for fine-tuning
    dropout_rng: str = "auto"         # auto | stateless (resume-exact masks) | native (nn.Dropout)
    peak_tflops: float = 0.0          # per-device peak for MFU; 0 = measure a matmul at start-up


@dataclass
class DataConfig:
    """Where the training data is and how it is read."""

    train_path: str = ""              # MindRecord shards (file or directory) or fine-tuning .jsonl
    finetune: bool = False            # prompt/completion .jsonl with completion-only loss
    eod_reset: bool = True
    shuffle: bool = True
    num_workers: int = 2


@dataclass
class TokenizerConfig:
    path: str = ""                    # directory with vocab.json/merges.txt; "" = default lookup


@dataclass
class InferenceConfig:
    """Defaults of the generator (reference section 6); ``SamplingParams.from_config`` reads them."""

    max_new_tokens: int = 128
    temperature: float = 0.2
    top_k: int = 0
    top_p: float = 0.95
    batch_size: int = 1
    max_length: int = 0               # prompt + new tokens limit; 0 = model.max_position_embeddings


LORA_TARGETS = ("query", "key", "value", "dense", "dense_h_to_4h", "dense_4h_to_h")
LORA_INITS = ("kaiming", "gaussian")


@dataclass
class LoRAConfig:
    """Low-rank adapters on the decoder's linear layers (``codegeex_ms.lora``); rank 0 = off.

    With ``rank > 0`` training freezes the base loaded from ``train.init_weights`` (FP16, FP32 or
    INT8) and trains only the FP32 adapters ``W + (alpha / rank) · B · A``.
    """

    rank: int = 0                     # r; 0 = no adapters (full training)
    alpha: float = 16.0               # the update is scaled by alpha / rank
    dropout: float = 0.05             # on the adapter's input only
    targets: list = field(default_factory=lambda: ["query", "key", "value", "dense"])
    top_query: bool = True            # also adapt the top-query layer's linears
    init: str = "kaiming"             # A: kaiming (uniform, a=sqrt(5)) | gaussian (N(0, 1/r)); B = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Loading


def _resolve_extends(name: str, base_dir: Path) -> Path:
    for candidate in (base_dir / name, CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"extends: {name!r} not found next to the config or in {CONFIG_DIR.name}/")


def _read_yaml(path: Path, chain: tuple = ()) -> dict:
    """Read one config file with its ``extends`` chain merged in (base first)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: circular 'extends'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml(_resolve_extends(str(parent), path.parent), chain + (path.resolve(),))
    return _merge(base, data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(data: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: key must be section.key, e.g. model.num_layers")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    section = data.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"--set {item!r}: section {parts[0]!r} is not a mapping")
    section[parts[1]] = value


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation (int, float, bool, str, Optional)."""
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        annotation = args[0]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # PyYAML reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if annotation is str and isinstance(value, bool):  # YAML 1.1 reads on/off as booleans
        return "on" if value else "off"
    if isinstance(value, bool) and annotation is not bool:
        raise ConfigError(f"{key}: expected {annotation.__name__}, got a boolean ({value})")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} ({value!r})")
    return value


def _build_section(name: str, cls: type, values: Any, problems: list):
    """The section's dataclass; unknown keys and wrong types are appended to ``problems`` (the
    offending keys keep their defaults so that every problem is found in one pass)."""
    if not isinstance(values, dict):
        problems.append(f"section {name!r} must be a mapping, got {type(values).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        problems.append(f"unknown key(s) in section {name!r}: {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(known))})")
    kwargs = {}
    for key in sorted(set(values) & known):
        try:
            kwargs[key] = _coerce(f"{name}.{key}", values[key], hints[key])
        except ConfigError as err:
            problems.extend(err.problems)
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from a plain mapping of sections; one ConfigError
    lists every unknown key and wrong type, or else every violated rule."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    problems = []
    unknown = sorted(set(data) - set(sections))
    if unknown:
        problems.append(f"unknown section(s): {', '.join(unknown)} (known: {', '.join(sections)})")
    hints = typing.get_type_hints(Config)
    cfg = Config(**{name: _build_section(name, hints[name], data.get(name, {}), problems)
                    for name in sections})
    if problems:
        raise ConfigError(problems)
    validate(cfg)
    return cfg


def load_config(path: Optional[str] = None, overrides: tuple = ()) -> Config:
    """Load ``path`` (or the built-in defaults when None), apply ``section.key=value`` overrides."""
    data = _read_yaml(Path(path)) if path else {}
    for item in overrides:
        _apply_override(data, item)
    return config_from_dict(data)


# ---------------------------------------------------------------------------------------------
# Validation


def validate(cfg: Config) -> None:
    """Raise one :class:`ConfigError` listing every impossible combination."""
    problems = []

    def _require(cond: bool, key: str, rule: str) -> None:
        if not cond:
            problems.append(f"{key}: {rule}")

    m, p, t = cfg.model, cfg.parallel, cfg.train
    for key in ("vocab_size", "real_vocab_size", "hidden_size", "num_layers", "num_heads",
                "ffn_hidden_size", "max_position_embeddings"):
        _require(getattr(m, key) > 0, f"model.{key}", "must be positive")
    _require(m.real_vocab_size <= m.vocab_size, "model.real_vocab_size",
             f"must not exceed model.vocab_size ({m.vocab_size})")
    _require(0 <= m.eod_token_id < m.real_vocab_size, "model.eod_token_id",
             f"must be a real token id (< model.real_vocab_size={m.real_vocab_size})")
    _require(m.hidden_size % m.num_heads == 0, "model.num_heads",
             f"must divide model.hidden_size ({m.hidden_size} % {m.num_heads} != 0)")
    _require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    _require(m.layernorm_epsilon > 0, "model.layernorm_epsilon", "must be positive")
    _require(m.compute_dtype in DTYPES, "model.compute_dtype", f"must be one of {DTYPES}")
    _require(m.param_dtype in DTYPES, "model.param_dtype", f"must be one of {DTYPES}")
    _require(m.fused_kernels in ("auto", "on", "off"), "model.fused_kernels", "must be auto, on or off")
    _require(m.weight_quant in ("none", "int8"), "model.weight_quant", "must be none or int8")

    for key in ("data_parallel", "model_parallel", "pipeline_stages", "micro_batches",
                "gradient_fusion_groups"):
        _require(getattr(p, key) >= 1, f"parallel.{key}", "must be >= 1")
    _require(p.optimizer_shard_size >= 0, "parallel.optimizer_shard_size", "must be >= 0 (0 = automatic)")
    _require(p.optimizer_shard_size == 0 or p.data_parallel % p.optimizer_shard_size == 0,
             "parallel.optimizer_shard_size", f"must divide parallel.data_parallel ({p.data_parallel})")
    mp = p.model_parallel
    _require(m.num_heads % mp == 0, "parallel.model_parallel",
             f"must divide model.num_heads ({m.num_heads} % {mp} != 0)")
    _require(m.ffn_hidden_size % mp == 0, "parallel.model_parallel",
             f"must divide model.ffn_hidden_size ({m.ffn_hidden_size} % {mp} != 0)")
    if p.vocab_parallel:
        _require(m.vocab_size % mp == 0, "parallel.model_parallel",
                 f"must divide the vocabulary rows model.vocab_size ({m.vocab_size} % {mp} != 0) "
                 "when parallel.vocab_parallel is true")
    _require((m.num_layers + 1) % p.pipeline_stages == 0 if p.pipeline_stages > 1 else True,
             "parallel.pipeline_stages",
             f"must divide the {m.num_layers + 1} layers (decoder + top-query)")
    _require(p.micro_batches >= p.pipeline_stages if p.pipeline_stages > 1 else True,
             "parallel.micro_batches", "must be >= parallel.pipeline_stages")

    _require(t.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1")
    _require(1 <= t.seq_length <= m.max_position_embeddings, "train.seq_length",
             f"must be in [1, model.max_position_embeddings={m.max_position_embeddings}]")
    _require(t.micro_batch_size % p.micro_batches == 0 if p.pipeline_stages > 1 else True,
             "train.micro_batch_size", f"must be divisible by parallel.micro_batches ({p.micro_batches})")
    _require(t.grad_accumulation >= 1, "train.grad_accumulation", "must be >= 1")
    per_step = t.micro_batch_size * p.data_parallel * t.grad_accumulation
    _require(t.global_batch_size in (0, per_step), "train.global_batch_size",
             f"must equal train.micro_batch_size × parallel.data_parallel × train.grad_accumulation "
             f"= {t.micro_batch_size} × {p.data_parallel} × {t.grad_accumulation} = {per_step} "
             f"(or be 0 to derive it)")
    _require(0 <= t.min_lr <= t.lr, "train.min_lr", f"must be in [0, train.lr={t.lr}]")
    _require(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    _require(t.decay_steps > t.warmup_steps, "train.decay_steps",
             f"must exceed train.warmup_steps ({t.warmup_steps})")
    _require(t.loss_scale >= 1, "train.loss_scale", "must be >= 1")
    _require(t.loss_scale_factor > 1, "train.loss_scale_factor", "must be > 1")
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
    _require(t.train_steps >= 1, "train.train_steps", "must be >= 1")
    _require(t.save_every >= 0, "train.save_every", "must be >= 0 (0 = only at the end)")
    _require(t.log_every >= 1, "train.log_every", "must be >= 1")
    _require(t.loss_scale_factor.is_integer(), "train.loss_scale_factor",
             "must be a whole number (MindSpore's DynamicLossScaler)")
    _require(t.loss_scale_window >= 1, "train.loss_scale_window", "must be >= 1")
    _require(t.grad_clip > 0, "train.grad_clip", "must be positive")
    _require(0 <= t.adam_beta1 < 1 and 0 <= t.adam_beta2 < 1, "train.adam_beta1/adam_beta2",
             "must be in [0, 1)")
    _require(t.adam_eps > 0, "train.adam_eps", "must be positive")
    _require(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _require(t.dropout_rng in ("auto", "stateless", "native"), "train.dropout_rng",
             "must be auto, stateless or native")
    _require(t.peak_tflops >= 0, "train.peak_tflops", "must be >= 0 (0 = measure)")

    lo = cfg.lora
    _require(lo.rank >= 0, "lora.rank", "must be >= 0 (0 = no adapters)")
    _require(lo.alpha > 0, "lora.alpha", "must be positive")
    _require(0.0 <= lo.dropout < 1.0, "lora.dropout", "must be in [0, 1)")
    _require(lo.init in LORA_INITS, "lora.init", f"must be one of {LORA_INITS}")
    bad = [x for x in lo.targets if x not in LORA_TARGETS]
    _require(not bad and len(set(lo.targets)) == len(lo.targets), "lora.targets",
             f"must be distinct names among {', '.join(LORA_TARGETS)} (got {lo.targets})")
    _require(lo.rank == 0 or lo.targets, "lora.targets", "must name at least one layer when lora.rank > 0")
    _require(lo.rank <= min(m.hidden_size, m.ffn_hidden_size), "lora.rank",
             f"must not exceed model.hidden_size ({m.hidden_size})")

    inf = cfg.inference
    _require(0 <= inf.max_length <= m.max_position_embeddings, "inference.max_length",
             f"must be in [0, model.max_position_embeddings={m.max_position_embeddings}]")
    _require(inf.temperature >= 0, "inference.temperature", "must be >= 0")
    _require(0 < inf.top_p <= 1, "inference.top_p", "must be in (0, 1]")
    if problems:
        raise ConfigError(problems)


def global_batch_size(cfg: Config) -> int:
    """Sequences per optimizer step: micro-batch × data-parallel × accumulation."""
    return cfg.train.global_batch_size or (
        cfg.train.micro_batch_size * cfg.parallel.data_parallel * cfg.train.grad_accumulation)


# ---------------------------------------------------------------------------------------------
# Command line


def add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """Add ``--config`` and ``--set`` (repeatable) to an entry point's parser."""
    parser.add_argument("--config", required=required,
                        help="YAML config file (see ascend_configs/); a bare name like 'tiny' is "
                             "looked up in ascend_configs/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key, e.g. --set model.num_layers=2 (repeatable)")


def _config_path(name: Optional[str]) -> Optional[str]:
    """The file ``--config name`` means: a path, or a name in ``ascend_configs/``."""
    if not name or Path(name).is_file():
        return name
    found = [c for c in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml") if c.is_file()]
    if not found:
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"--config {name}: no such file, nor {Path(name).stem}.yaml in "
                          f"{CONFIG_DIR.name}/; give a path or one of: {names}")
    return str(found[0])


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config named by ``--config`` with ``--set`` overrides applied."""
    return load_config(_config_path(args.config), tuple(args.overrides))


def explicit_keys(args: argparse.Namespace) -> set:
    """``{"section.key"}`` set by the ``--config`` file (with its ``extends`` chain) or ``--set``,
    as opposed to left at the built-in defaults."""
    path = _config_path(args.config)
    data = _read_yaml(Path(path)) if path else {}
    for item in args.overrides:
        _apply_override(data, item)
    return {f"{section}.{key}" for section, values in data.items() if isinstance(values, dict)
            for key in values}
