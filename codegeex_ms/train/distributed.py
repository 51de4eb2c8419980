"""Process topology and MindSpore's parallel context for training.

One process per device. A job is distributed when it was started by ``msrun`` (``MS_ROLE`` set)
or from an HCCL rank table (``RANK_TABLE_FILE``); otherwise it is standalone. On CPU (and for any
pure data-parallel plan) the context is DATA_PARALLEL and ``TrainStep`` all-reduces the gradients
itself; on Ascend/GPU with ``model_parallel > 1`` or optimizer sharding it is SEMI_AUTO_PARALLEL
with the model's shard plan, ZeRO-style optimizer sharding, gradient fusion groups and a saved
strategy file. Ranks are laid out ``rank = data_rank * model_parallel + model_rank`` (MindSpore's
device matrix puts the last strategy axis, here ``mp``, on consecutive ranks).

How the data reaches the graph (:func:`data_layout`, :func:`dataset_context`): every rank reads
its own distinct samples, ``num_shards = world``, ``shard_id = rank``, ``micro_batch_size ×
data_parallel / world`` of them per micro-step (``micro_batch_size / model_parallel``), and the
context sets ``dataset_strategy="data_parallel"`` (the documented equivalent of
``full_batch=False``): the graph's global batch is the concatenation of all ranks' outputs in rank
order, ``micro_batch_size × data_parallel`` rows, and the compiler gathers each model-parallel
group's ``model_parallel`` pieces into the ``micro_batch_size`` rows its data-parallel slice
computes on. Chosen over ``full_batch`` (every rank would read, and build the [B, S, S] masks of,
the whole global batch) and over a tuple ``dataset_strategy`` with each model-parallel group
reading the same rows (8× the reading and mask building, and one more setting that must match
the inputs' order): it is MindSpore's default and what the original CodeGeeX training code did.
Under DATA_PARALLEL (``model_parallel = 1``) this is the usual one shard per rank of
``micro_batch_size`` samples.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import mindspore as ms
from mindspore import ops
from mindspore.communication import get_group_size, get_rank, init


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world: int = 1
    data_rank: int = 0        # data-parallel index (rank // model_parallel): keys dropout masks
    data_ranks: int = 1       # data_parallel
    mode: str = "standalone"  # standalone | data_parallel | semi_auto_parallel
    shard_id: int = 0         # the dataset shard this rank reads (see data_layout)
    num_shards: int = 1       # how many dataset shards there are
    batch_per_rank: int = 0   # samples this rank reads per micro-step (0 = train.micro_batch_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """Started by msrun, from an HCCL rank table, or as one simulated rank of MindSpore's DryRun
    (``MS_SIMULATION_LEVEL`` with ``RANK_SIZE``; ``init()`` then skips its launcher checks)."""
    env = os.environ
    return ("MS_ROLE" in env or "RANK_TABLE_FILE" in env
            or ("MS_SIMULATION_LEVEL" in env and "RANK_SIZE" in env))


def _check_world(parallel, world: int) -> None:
    need = parallel.data_parallel * parallel.model_parallel * parallel.pipeline_stages
    if need != world:
        raise ValueError(
            f"the config asks for parallel.data_parallel × model_parallel × pipeline_stages = "
            f"{parallel.data_parallel} × {parallel.model_parallel} × {parallel.pipeline_stages} = "
            f"{need} devices but {world} process(es) were launched; launch {need} (see "
            f"run_scripts/run_distribute.sh) or change parallel.*.")


def fusion_indices(num_params: int, groups: int) -> list:
    """``all_reduce_fusion_config`` splitting ``num_params`` gradients into ``groups`` groups."""
    groups = max(1, min(groups, num_params))
    return [num_params * i // groups for i in range(1, groups)]


def data_layout(parallel, micro_batch_size: int, rank: int, world: int) -> tuple:
    """``(shard_id, num_shards, batch_per_rank)`` of the data ``rank`` of ``world`` reads: every
    rank its own shard, ``micro_batch_size × data_parallel / world`` samples per micro-step, so
    that one micro-step of all ranks is ``micro_batch_size × data_parallel`` distinct samples."""
    total = micro_batch_size * parallel.data_parallel
    if total % world:
        raise ValueError(f"train.micro_batch_size × parallel.data_parallel = {total} samples per "
                         f"micro-step cannot be split evenly over {world} devices: make "
                         f"train.micro_batch_size a multiple of parallel.model_parallel "
                         f"({parallel.model_parallel}).")
    return rank, world, total // world


def dataset_context() -> dict:
    """``set_auto_parallel_context`` settings for the data under semi-auto parallel: each rank's
    dataset output is its own slice of the global batch (see the module docstring)."""
    return {"dataset_strategy": "data_parallel"}


def init_topology(cfg, device_target: str) -> Topology:
    """Initialise communication (if launched distributed) and set the parallel context.
    Call after ``runtime.setup`` and before building the network."""
    p = cfg.parallel
    if p.pipeline_stages > 1:
        raise ValueError("parallel.pipeline_stages > 1 is not supported by the trainer (the "
                         "CodeGeeX recipe uses no pipeline); set it to 1.")
    if not launched_distributed():
        _check_world(p, 1)
        return Topology(batch_per_rank=cfg.train.micro_batch_size)
    if device_target == "Ascend" and "RANK_TABLE_FILE" in os.environ and "DEVICE_ID" in os.environ:
        ms.set_device("Ascend", int(os.environ["DEVICE_ID"]))
    init()
    rank, world = get_rank(), get_group_size()
    _check_world(p, world)
    semi_auto = p.model_parallel > 1 or p.optimizer_shard
    shard_id, num_shards, batch = data_layout(p, cfg.train.micro_batch_size, rank, world)
    if semi_auto and device_target == "CPU":
        raise ValueError("model parallelism and optimizer sharding need SEMI_AUTO_PARALLEL, which "
                         "MindSpore refuses on CPU; on CPU use parallel.model_parallel=1 and "
                         "parallel.optimizer_shard=false (pure data parallel).")
    if semi_auto and cfg.train.grad_accumulation > 1:
        raise ValueError("train.grad_accumulation > 1 is not supported with model parallelism or "
                         "optimizer sharding: MindSpore's global-norm reduction (see "
                         "codegeex_ms.train.step) only follows a gradient straight from the "
                         "backward pass; set train.grad_accumulation=1 and raise "
                         "train.micro_batch_size or parallel.data_parallel instead.")
    if semi_auto:
        strategy = Path(cfg.train.output_dir) / "strategy" / f"strategy_rank_{rank}.ckpt"
        strategy.parent.mkdir(parents=True, exist_ok=True)
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.SEMI_AUTO_PARALLEL, device_num=world,
            gradients_mean=False, enable_parallel_optimizer=p.optimizer_shard,
            strategy_ckpt_config={"save_file": str(strategy), "only_trainable_params": False},
            **dataset_context())
        if p.optimizer_shard:
            from codegeex_ms.parallel.strategy_file import (  # pylint: disable=import-outside-toplevel
                optimizer_shard_size_for, planned_parameters)
            size = optimizer_shard_size_for(planned_parameters(cfg.model, p), p)
            ms.set_auto_parallel_context(parallel_optimizer_config={
                "gradient_accumulation_shard": False, "optimizer_weight_shard_size": size or -1})
        mode = "semi_auto_parallel"
    else:
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, device_num=world,
                                     gradients_mean=True)
        mode = "data_parallel"
    return Topology(rank=rank, world=world, data_rank=rank // p.model_parallel,
                    data_ranks=p.data_parallel, mode=mode, shard_id=shard_id,
                    num_shards=num_shards, batch_per_rank=batch)


def set_fusion_groups(topology: Topology, num_params: int, groups: int) -> None:
    """Fuse the gradient all-reduces into ``groups`` communication groups (reference section 5)."""
    if topology.world > 1 and groups > 1:
        ms.set_auto_parallel_context(all_reduce_fusion_config=fusion_indices(num_params, groups))


def all_gather_ints(topology: Topology, values: list, width: int) -> np.ndarray:
    """``[world, width]`` int32: every rank's ``values`` padded with -1 to ``width``."""
    row = np.full((1, width), -1, dtype=np.int32)
    row[0, :len(values[:width])] = values[:width]
    if topology.world == 1:
        return row
    return ops.AllGather()(ms.Tensor(row)).asnumpy()
