"""The static shard-plan checker on the 13B network and on broken plans."""

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.config import ParallelConfig, load_config
from codegeex_ms.model import CodeGeeXWithLoss
from codegeex_ms.model.build import build_model
from codegeex_ms.parallel import PlanError, apply_shard_plan, check_shard_plan, parameter_splits


def build_13b(dp, mp):
    cfg = load_config("ascend_configs/codegeex_13b.yaml",
                      (f"parallel.data_parallel={dp}", f"parallel.model_parallel={mp}"))
    net = CodeGeeXWithLoss(build_model(cfg.model, allocate=False))
    apply_shard_plan(net, cfg.parallel)
    return cfg, net


def test_13b_network_without_weights_matches_release_count():
    cfg, net = build_13b(1, 1)
    assert sum(p.size for p in net.get_parameters()) == 12_873_943_040
    names = [name for name, _ in net.model.parameters_and_names()]
    assert len(names) == 3 + 40 * 16 + 2
    assert "language_model.transformer.layers.38.mlp.dense_4h_to_h.weight" in names
    assert "language_model.transformer.topQueryLayer.attention.query.bias" in names


def test_13b_dp192_mp8_plan_passes():
    cfg, net = build_13b(192, 8)
    checked = check_shard_plan(net, cfg.parallel, batch=16 * 192, seq=2048)
    ops = {name: strategy for name, strategy, _ in checked}
    layer = "model.language_model.transformer.layers.7"
    assert ops[f"{layer}.attention.query.matmul"] == ((192, 1), (8, 1))        # column parallel
    assert ops[f"{layer}.mlp.dense_4h_to_h.matmul"] == ((192, 8), (1, 8))      # row parallel
    assert ops[f"{layer}.attention.scores"] == ((192, 8, 1, 1), (192, 8, 1, 1))  # by head
    assert ops["model.head"] == ((192, 1), (8, 1))                              # vocab parallel
    # Every matmul, batched matmul and softmax of all 40 layers is covered.
    assert sum(name.endswith(".matmul") for name in ops) == 40 * 6
    assert sum(name.endswith("softmax.softmax") for name in ops) == 40
    splits = parameter_splits(net)
    assert splits["language_model.embedding.word_embeddings.weight"] == (8, 1)
    assert splits[f"{layer[6:]}.attention.dense.weight"] == (1, 8)


def test_indivisible_plan_is_rejected_naming_operator_and_dimension():
    cfg = load_config("ascend_configs/tiny_fixture.yaml")
    net = CodeGeeXWithLoss(build_model(cfg.model, allocate=False))
    # 4 heads cannot be split 3 ways; ParallelConfig is built directly to bypass config validation.
    plan = ParallelConfig(data_parallel=2, model_parallel=3)
    apply_shard_plan(net, plan)
    with pytest.raises(PlanError) as err:
        check_shard_plan(net, plan, batch=4, seq=16)
    msg = str(err.value)
    assert ("model.language_model.transformer.layers.0.attention.query.matmul: input 1 dimension 0 "
            "of size 64 is not divisible by its split 3") in msg
    assert "attention.scores: input 0 dimension 1 of size 4 is not divisible by its split 3" in msg
    assert "does not divide 6 devices" not in msg


def test_batch_not_divisible_by_dp_is_rejected():
    cfg = load_config("ascend_configs/tiny_fixture.yaml")
    net = CodeGeeXWithLoss(build_model(cfg.model, allocate=False))
    plan = ParallelConfig(data_parallel=4, model_parallel=1)
    apply_shard_plan(net, plan)
    with pytest.raises(PlanError, match="embedding.word_embeddings.gather: input 1 dimension 0 of size 6"):
        check_shard_plan(net, plan, batch=6, seq=16)


def test_declared_shapes_are_the_real_ones():
    """Record every sharded primitive's real input shapes in a PyNative forward of a tiny model and
    compare them with what the cells declare to the checker."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = load_config("ascend_configs/tiny_fixture.yaml", ("model.fused_kernels=off",))
    net = CodeGeeXWithLoss(build_model(cfg.model))
    net.set_train(False)
    plan = ParallelConfig(data_parallel=2, model_parallel=2)
    apply_shard_plan(net, plan)
    batch, seq = 2, 8
    declared = {name: [tuple(s) for s in shapes] for name, _, shapes in check_shard_plan(net, plan, batch, seq)}

    seen = {}

    class Recorder:
        def __init__(self, name, prim):
            self.name, self.prim = name, prim

        def __call__(self, *args):
            # Axes, permutations and depths (ints, tuples) are attributes, not strategy inputs.
            shaped = [a for a in args if not isinstance(a, (int, tuple))]
            seen[self.name] = [tuple(a.shape) if hasattr(a, "shape") else () for a in shaped]
            return self.prim(*args)

    for cell_name, cell in net.cells_and_names():
        for attr, value in list(vars(cell).items()):
            if hasattr(value, "attrs") and value.attrs.get("in_strategy") is not None:
                object.__setattr__(cell, attr, Recorder(f"{cell_name}.{attr}", value))
    ids = np.ones((batch, seq), np.int32)
    mask = np.tril(np.ones((seq, seq), np.float32))[None].repeat(batch, 0)
    pos = np.arange(seq, dtype=np.int32)[None].repeat(batch, 0)
    net(ms.Tensor(ids), ms.Tensor(ids), ms.Tensor(pos), ms.Tensor(mask), ms.Tensor(mask[:, 0]))
    assert set(seen) == set(declared)
    for name, shapes in declared.items():
        real = seen[name]
        if name.endswith("onehot"):  # OneHot's strategy is declared on its output shape
            real = [(batch * seq, cfg.model.vocab_size)] + real[1:]
        assert real == shapes, name
