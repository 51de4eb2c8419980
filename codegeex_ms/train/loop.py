"""The training loop: build, resume, iterate micro-batches, log, checkpoint, export.

Output directory (``train.output_dir``): ``config.yaml`` (the resolved config),
``checkpoints/rank_<r>/step_<8 digits>.ckpt``, ``train_log.csv`` / ``train_log.jsonl`` (rank 0),
``loss_curve.png`` and ``model_final.ckpt`` (the trained weights with the release's names and the
model's sizes as metadata, rank 0, when the weights are not sharded) or, with ``lora.rank > 0``,
``adapter_final.ckpt`` (the adapters only; see ``codegeex_ms.lora``).
"""

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

import mindspore as ms

from codegeex_ms.budget.training import flops_per_token
from codegeex_ms.checkpoint.model_sizes import model_config_metadata
from codegeex_ms.config import global_batch_size
from codegeex_ms.lora.training import LoRATraining, check_base_dtype, lora_enabled
from codegeex_ms.model import CodeGeeXWithLoss
from codegeex_ms.model.build import build_model
from codegeex_ms.parallel import apply_shard_plan
from codegeex_ms.train import metrics
from codegeex_ms.train.snapshots import CheckpointManager, restore
from codegeex_ms.train.data import check_data, micro_batches
from codegeex_ms.train.distributed import Topology, all_gather_ints, init_topology, set_fusion_groups
from codegeex_ms.train.dropout import install_stateless_dropout, use_stateless
from codegeex_ms.train.optimizer import build_optimizer
from codegeex_ms.train.step import TrainStep

logger = logging.getLogger("codegeex_ms.train")
RESUME_WIDTH = 16  # newest valid checkpoints per rank compared when ranks agree on a resume step


class Trainer:
    """The network, its training step and the dropout key for one config on one device."""

    def __init__(self, cfg, topology: Topology, device_target: str):
        check_base_dtype(cfg)
        self.cfg, self.topology = cfg, topology
        self.lora = LoRATraining(cfg) if lora_enabled(cfg) else None  # frozen base + adapters
        self.model = self.lora.model if self.lora else build_model(cfg.model)
        if cfg.train.init_weights and self.lora is None:
            from codegeex_ms.checkpoint import load_into_network  # pylint: disable=import-outside-toplevel
            load_into_network(self.model, cfg.train.init_weights)
        self.loss_net = CodeGeeXWithLoss(self.model)
        apply_shard_plan(self.loss_net, cfg.parallel)
        # After the shard plan, which sets strategies on the native dropouts (CPU only swaps them).
        self.dropout_key = None
        rate = max(cfg.model.dropout, cfg.lora.dropout if self.lora is not None else 0.0)
        if rate > 0 and use_stateless(cfg.train.dropout_rng, device_target):
            self.dropout_key = install_stateless_dropout(self.model, cfg.model.fused_kernels)
        optimizer = build_optimizer(self.loss_net, cfg.train)
        set_fusion_groups(topology, len(optimizer.parameters), cfg.parallel.gradient_fusion_groups)
        self.step = TrainStep(self.loss_net, optimizer, cfg.train)

    @property
    def state(self):
        return self.step.state

    def model_weights(self) -> dict:
        """``{release name: NumPy array}`` of the model's weights (no training-only state)."""
        skip = self.dropout_key.param if self.dropout_key is not None else None
        return {name: param.asnumpy() for name, param in self.model.parameters_and_names()
                if param is not skip}

    def run_step(self, batches, first_micro_step: int) -> tuple:
        """One optimizer step over ``grad_accumulation`` NumPy micro-batches; returns
        ``(loss, finite, scale, grad_norm, lr)`` as Python numbers."""
        cfg = self.cfg
        for i, batch in enumerate(batches):
            if self.dropout_key is not None:
                self.dropout_key.set(cfg.train.seed, self.topology.data_rank, first_micro_step + i)
            tensors = tuple(ms.Tensor(column) for column in batch)
            if i < len(batches) - 1:
                self.step.accumulate(tensors)
            else:
                out = self.step.update(tensors)
        loss, finite, scale, norm, lr = (o.asnumpy() for o in out)
        return float(loss), bool(finite), float(scale), float(norm), float(lr)


def find_resume_point(manager: CheckpointManager, state, topology: Topology):
    """``(step, params, meta)`` of the newest checkpoint verified on every rank, or None (damaged
    ones are quarantined on the way; see :class:`CheckpointManager`)."""
    if topology.world == 1:
        return manager.newest_valid(state)
    valid = manager.verified_steps()[:RESUME_WIDTH]
    table = all_gather_ints(topology, valid, RESUME_WIDTH)
    common = set.intersection(*({int(s) for s in row if s >= 0} for row in table))
    if not common:
        if valid:
            logger.warning("no checkpoint step is valid on every rank; starting from scratch")
        return None
    step = max(common)
    if valid and valid[0] > step:
        logger.warning("resuming from step %d, the newest step valid on every rank (this rank "
                       "also has step %d)", step, valid[0])
    return manager.newest_valid(state, [step])


class _Window:
    """Accumulates per-step results between two log rows."""

    def __init__(self):
        self.rows = []

    def add(self, **row):
        self.rows.append(row)

    def summary(self, step, tokens_per_step, flops_per_step, devices, peak) -> dict:
        rows, timed = self.rows, [r for r in self.rows if not r["first"]] or self.rows
        finite = [r for r in rows if r["finite"]]
        seconds = sum(r["time"] for r in timed) / len(timed)
        row = {"step": step, "loss": float(np.mean([r["loss"] for r in rows])),
               "lr": rows[-1]["lr"], "loss_scale": rows[-1]["scale"],
               "grad_norm": float(np.mean([r["norm"] for r in finite])) if finite else float("nan"),
               "skipped": len(rows) - len(finite), "tokens_per_s": tokens_per_step / seconds,
               "mfu": flops_per_step / seconds / (devices * peak), "step_time_s": seconds,
               "tokens": step * tokens_per_step}
        self.rows = []
        return row


def _save(manager, trainer, step, consumed, cfg, topology):
    meta = {"step": step, "consumed_micro_batches": consumed, "seed": cfg.train.seed,
            "rank": topology.rank, "world": topology.world, "data_rank": topology.data_rank,
            "dropout_rng": "stateless" if trainer.dropout_key is not None else "native",
            "model": model_config_metadata(cfg.model)}
    if trainer.lora is not None:
        meta.update(trainer.lora.meta())
    return manager.save(trainer.state, step, meta)


def _resume_point(manager, trainer, topology, cfg, resume: bool) -> tuple:
    """``(step, consumed micro-batches)`` to start from, restoring the state when resuming."""
    if not resume:
        if manager.steps():
            raise FileExistsError(f"{manager.directory} already holds checkpoints; pass --resume "
                                  "to continue that run, or use another train.output_dir.")
        return 0, 0
    found = find_resume_point(manager, trainer.state, topology)
    if found is None:
        logger.warning("--resume: no verified checkpoint in %s; starting from scratch", manager.directory)
        return 0, 0
    step, params, meta = found
    if meta.get("world", 1) != topology.world:
        raise ValueError(f"{manager.path(step)} was written by a job of {meta.get('world')} "
                         f"process(es), this one has {topology.world}: resume with the same "
                         "layout (the data position is counted per rank).")
    if trainer.lora is not None:
        trainer.lora.check_resume(meta, manager.path(step))
    restore(trainer.state, params)
    if meta.get("seed") != cfg.train.seed:
        logger.warning("checkpoint was made with train.seed=%s, config has %s: dropout and data "
                       "order follow the config", meta.get("seed"), cfg.train.seed)
    logger.info("resumed from %s (step %d)", manager.path(step), step)
    return meta["step"], meta["consumed_micro_batches"]


def _finish(out: Path, trainer, topology, log) -> dict:
    """Loss plot and exported weights (main rank); returns the output paths."""
    paths = {}
    if not topology.is_main:
        return paths
    rows = metrics.read_log(log.jsonl_path)
    if rows:
        metrics.plot_loss(rows, out / "loss_curve.png")
        paths["plot"] = str(out / "loss_curve.png")
    if trainer.lora is not None:  # adapters only (replicated on every rank)
        paths["adapter"] = str(trainer.lora.export(out))
    elif topology.mode != "semi_auto_parallel":  # sharded weights: merge with codegeex_ms.distributed_ckpt
        from codegeex_ms.checkpoint import save_weights  # pylint: disable=import-outside-toplevel
        save_weights(out / "model_final.ckpt", trainer.model_weights(),
                     metadata=model_config_metadata(trainer.cfg.model))
        paths["weights"] = str(out / "model_final.ckpt")
    return paths


def run(cfg, resume: bool = False, device_target: str = "CPU", progress: bool = True) -> dict:
    """Train per ``cfg``; returns a summary (steps run, first/last logged loss, output paths)."""
    t, out = cfg.train, Path(cfg.train.output_dir)
    check_data(cfg)
    topology = init_topology(cfg, device_target)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, topology, device_target)
    manager = CheckpointManager(out / "checkpoints" / f"rank_{topology.rank}", t.keep_checkpoints)
    start, consumed = _resume_point(manager, trainer, topology, cfg, resume)
    log = None
    if topology.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        log = metrics.TrainLog(out, resume_step=start or None)

    accum = t.grad_accumulation
    tokens_per_step = global_batch_size(cfg) * t.seq_length
    flops_per_step = flops_per_token(cfg.model, t.seq_length) * tokens_per_step
    peak = t.peak_tflops * 1e12 or metrics.measure_matmul_peak(cfg.model.compute_dtype)
    stream = micro_batches(cfg, topology.shard_id, topology.num_shards, consumed,
                           (t.train_steps - start) * accum, topology.batch_per_rank)
    window, first, last_row = _Window(), None, None
    bar = tqdm(range(start + 1, t.train_steps + 1), initial=start, total=t.train_steps,
               desc="train", unit="step", disable=not (progress and topology.is_main))
    for step in bar:
        batches = [next(stream) for _ in range(accum)]
        begin = time.perf_counter()
        loss, finite, scale, norm, lr = trainer.run_step(batches, consumed)
        consumed += accum
        window.add(loss=loss, finite=finite, scale=scale, norm=norm, lr=lr,
                   time=time.perf_counter() - begin, first=step == start + 1)
        first = loss if first is None else first
        if not finite:
            logger.warning("step %d: gradients overflowed at loss scale %g; update skipped", step, scale)
        if step % t.log_every == 0 or step == t.train_steps:
            last_row = window.summary(step, tokens_per_step, flops_per_step, topology.world, peak)
            if log is not None:
                log.write(last_row)
            bar.set_postfix(loss=f"{last_row['loss']:.4f}", lr=f"{lr:.2e}",
                            tok_s=f"{last_row['tokens_per_s']:.0f}")
        if (t.save_every and step % t.save_every == 0) or step == t.train_steps:
            _save(manager, trainer, step, consumed, cfg, topology)
    return {"start_step": start, "end_step": t.train_steps, "first_loss": first,
            "last_row": last_row, "output_dir": str(out), **_finish(out, trainer, topology, log)}
