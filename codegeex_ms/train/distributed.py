"""Process topology and MindSpore's parallel context for training.

One process per device. A job is distributed when it was started by ``msrun`` (``MS_ROLE`` set)
or from an HCCL rank table (``RANK_TABLE_FILE``); otherwise it is standalone. On CPU (and for any
pure data-parallel plan) the context is DATA_PARALLEL and ``TrainStep`` all-reduces the gradients
itself; on Ascend/GPU with ``model_parallel > 1`` or optimizer sharding it is SEMI_AUTO_PARALLEL
with the model's shard plan, ZeRO-style optimizer sharding, gradient fusion groups and a saved
strategy file. Ranks are laid out ``rank = data_rank * model_parallel + model_rank``, so the ranks
of one model-parallel group read the same data.
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
    data_rank: int = 0        # which data shard this rank reads
    data_ranks: int = 1       # how many data shards there are (= data_parallel)
    mode: str = "standalone"  # standalone | data_parallel | semi_auto_parallel

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    return "MS_ROLE" in os.environ or "RANK_TABLE_FILE" in os.environ


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


def init_topology(cfg, device_target: str) -> Topology:
    """Initialise communication (if launched distributed) and set the parallel context.
    Call after ``runtime.setup`` and before building the network."""
    p = cfg.parallel
    if p.pipeline_stages > 1:
        raise ValueError("parallel.pipeline_stages > 1 is not supported by the trainer (the "
                         "CodeGeeX recipe uses no pipeline); set it to 1.")
    if not launched_distributed():
        _check_world(p, 1)
        return Topology()
    if device_target == "Ascend" and "RANK_TABLE_FILE" in os.environ and "DEVICE_ID" in os.environ:
        ms.set_device("Ascend", int(os.environ["DEVICE_ID"]))
    init()
    rank, world = get_rank(), get_group_size()
    _check_world(p, world)
    semi_auto = p.model_parallel > 1 or p.optimizer_shard
    if semi_auto and device_target == "CPU":
        raise ValueError("model parallelism and optimizer sharding need SEMI_AUTO_PARALLEL, which "
                         "MindSpore refuses on CPU; on CPU use parallel.model_parallel=1 and "
                         "parallel.optimizer_shard=false (pure data parallel).")
    if semi_auto:
        strategy = Path(cfg.train.output_dir) / "strategy" / f"strategy_rank_{rank}.ckpt"
        strategy.parent.mkdir(parents=True, exist_ok=True)
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.SEMI_AUTO_PARALLEL, device_num=world,
            gradients_mean=False, full_batch=False, enable_parallel_optimizer=p.optimizer_shard,
            strategy_ckpt_config={"save_file": str(strategy), "only_trainable_params": False})
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
                    data_ranks=p.data_parallel, mode=mode)


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
