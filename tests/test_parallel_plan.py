"""The static shard-plan checker and validator on the 13B network and on broken plans."""

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.config import ParallelConfig, load_config
from codegeex_ms.model import CodeGeeXWithLoss
from codegeex_ms.model.build import build_model
from codegeex_ms.parallel import PlanError, apply_shard_plan, check_shard_plan, parameter_splits
from codegeex_ms.parallel import rules
from codegeex_ms.parallel.communication import communication
from codegeex_ms.parallel.custom_layout import tensor_maps
from codegeex_ms.parallel.graph import training_graph
from codegeex_ms.parallel.layouts import from_tensor_map, redistribution, with_dims
from codegeex_ms.parallel.validator import validate_plan


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
    # nn.Dropout with p = 0 (this config) is the identity: its sharded primitive is never called.
    declared = {name: shapes for name, shapes in declared.items() if not name.endswith("dropout.dropout")}
    assert set(seen) == set(declared)
    for name, shapes in declared.items():
        real = seen[name]
        if name.endswith("onehot"):  # OneHot's strategy is declared on its output shape
            real = [(batch * seq, cfg.model.vocab_size)] + real[1:]
        assert real == shapes, name
    # The validator's graph lists the same primitives with the same input shapes (its dataflow is
    # written from the model's construct methods; this keeps the two from drifting apart).
    graph = {node.prim: [graph_tensors.shape for graph_tensors in
                         (training_graph(net, batch, seq).tensors[t] for t in node.inputs)]
             for node in training_graph(net, batch, seq).nodes if node.prim}
    for name, shapes in seen.items():
        assert graph[name] == shapes, name


# --------------------------------------------------------------------------------------------
# The validator: MindSpore's operator rules, layout propagation, redistributions, communication

DP, MP = 2, 2
L0 = "model.language_model.transformer.layers.0"
WORDS = "model.language_model.embedding.word_embeddings"


def tiny_plan():
    """The fixture-sized network (3 layers, H 64, 4 heads, V 1024) on dp 2 × mp 2 = 4 devices."""
    cfg = load_config("ascend_configs/tiny_fixture.yaml", ("model.fused_kernels=off",))
    net = CodeGeeXWithLoss(build_model(cfg.model, allocate=False))
    plan = ParallelConfig(data_parallel=DP, model_parallel=MP)
    apply_shard_plan(net, plan)
    return cfg, net, plan


def cell(net, path):
    obj = net
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _swap_column_row(net):
    cell(net, f"{L0}.attention.query").shard_row(DP, MP)
    cell(net, f"{L0}.attention.dense").shard_column(DP, MP)


# (mistake, how to plant it, what the error must say: operator, input, rule)
MISTAKES = [
    ("column and row matmul strategies swapped", _swap_column_row,
     [f"unplanned redistribution: {L0}.attention.transpose: input 0",
      f"unplanned redistribution: {L0}.attention.dense.matmul: input 0", "forward AllGather over 2 devices"]),
    ("bias split unlike its matmul output",
     lambda net: cell(net, f"{L0}.attention.query.bias_add").shard(((DP, MP), (1,))),
     [f"{L0}.attention.query.bias_add: input 1", "broadcast operands must split dimension -1 alike"]),
    ("softmax split along its reduction axis",
     lambda net: cell(net, f"{L0}.attention.softmax.softmax").shard(((DP, 1, 1, MP),)),
     [f"{L0}.attention.softmax.softmax: input 0", "Softmax must not split its reduction axis -1"]),
    ("LayerNorm split along the normalised axis",
     lambda net: cell(net, f"{L0}.input_layernorm.norm").shard(((DP, 1, MP), (MP,), (MP,))),
     [f"{L0}.input_layernorm.norm: input 0", "LayerNorm must not split the normalised axis 2"]),
    ("attention scores split by sequence instead of heads",
     lambda net: cell(net, f"{L0}.attention.scores").shard(((DP, 1, MP, 1), (DP, 1, 1, 1))),
     [f"unplanned redistribution: {L0}.attention.scores: input 0", "forward AllToAll over 2 devices",
      f"unplanned redistribution: {L0}.attention.softmax.mul: input 0"]),
    ("inconsistent split in the loss",
     lambda net: cell(net, "loss.mul").shard(((DP, MP), (DP, 1))),
     ["loss.mul: input 1 (output of loss.onehot)", "broadcast operands must split dimension -1 alike"]),
    ("embedding table and ids split at once",
     lambda net: cell(net, f"{WORDS}.gather").shard(((MP, 1), (1, MP))),
     [f"{WORDS}.gather: input 1 (input_ids)", "cannot also split the indices",
      "does not support to split input_params and input_indices at the same time"]),
    ("transpose split inconsistent with its input",
     lambda net: cell(net, f"{L0}.attention.transpose").shard(((DP, MP, 1, 1),)),
     [f"unplanned redistribution: {L0}.attention.transpose: input 0",
      "arrives split (2, 1, 2, 1)", "needs (2, 2, 1, 1)"]),
    ("batch split differs between the inputs of a batched matmul",
     lambda net: cell(net, f"{L0}.attention.context").shard(((DP, MP, 1, 1), (1, MP, 1, 1))),
     [f"{L0}.attention.context: input 1", "BatchMatMul batch dimensions are split (2, 2) in input 0 but (1, 2)"]),
    ("contracted dimension split unequally",
     lambda net: cell(net, f"{L0}.mlp.dense_4h_to_h.matmul").shard(((DP, MP), (1, 1))),
     [f"{L0}.mlp.dense_4h_to_h.matmul: input 1", "MatMul contracted dimension is split 2 in input 0 but 1",
      "((A, B), (C, B))"]),
    ("residual add left without a strategy",
     lambda net: cell(net, f"{L0}.attn_residual").del_prim_attr("in_strategy"),
     [f"{L0}.attn_residual [Arithmetic] inside language_model.transformer.layers.0 has no shard strategy",
      f"unplanned redistribution: {L0}.post_attention_layernorm.norm: input 0"]),
    ("strategy using more devices than exist",
     lambda net: cell(net, f"{L0}.mlp.activation.fast_gelu").shard(((DP, 1, 2 * MP),)),
     [f"{L0}.mlp.activation.fast_gelu: input 0", "uses 8 parts, which does not divide 4 devices"]),
    ("tied embedding split differently by the lookup and the head",
     lambda net: cell(net, f"{WORDS}.gather").shard(((1, 1), (DP, 1))),
     ["unplanned redistribution: model.head: input 1 (language_model.embedding.word_embeddings.weight)",
      "parameter language_model.embedding.word_embeddings.weight: its operator slices it (1, 1)"]),
]


def test_tiny_plan_passes_with_only_the_loss_tail_redistributed():
    _, net, plan = tiny_plan()
    report = validate_plan(net, plan, batch=4, seq=16)
    # Only the loss's scalar tail (Python operators, MindSpore's default batch split over all 4
    # devices) takes a slice of the dp-split per-token values: no communication forward.
    assert sorted((r.op, r.input_index) for r in report.redistributions) == [
        ("loss.count", 0), ("loss.log", 0), ("loss.lse_minus_picked", 1), ("loss.masked", 1)]
    assert all(not r.unplanned and [c.kind for c in r.forward] == ["slice"] for r in report.redistributions)
    # Every parameter is sliced the way the strategy file records it.
    splits = parameter_splits(net)
    assert {name: lay.splits for name, lay in report.parameters.items()} == splits


@pytest.mark.parametrize("mistake, plant, expected", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_planted_mistake_is_rejected_naming_operator_input_and_rule(mistake, plant, expected):
    _, net, plan = tiny_plan()
    plant(net)
    with pytest.raises(PlanError) as err:
        validate_plan(net, plan, batch=4, seq=16)
    for part in expected:
        assert part in str(err.value), (mistake, part)


def test_mp_not_dividing_the_heads_is_rejected_by_the_validator():
    cfg = load_config("ascend_configs/tiny_fixture.yaml", ("model.fused_kernels=off",))
    net = CodeGeeXWithLoss(build_model(cfg.model, allocate=False))
    plan = ParallelConfig(data_parallel=2, model_parallel=3)   # 4 heads, 64 hidden: 3 divides neither
    apply_shard_plan(net, plan)
    with pytest.raises(PlanError) as err:
        validate_plan(net, plan, batch=4, seq=16)
    assert (f"{L0}.attention.query.matmul: input 1 (language_model.transformer.layers.0.attention.query.weight)"
            " dimension 0 of size 64 is not divisible by its split 3") in str(err.value)


def test_default_dataset_layout_gathers_the_ids_at_the_model_input():
    """``full_batch=False`` without a ``dataset_strategy``: each of the 4 ranks holds its own quarter
    of the batch, so the embedding lookup (ids split by dp only) must all-gather them over mp and
    the attention mask is gathered once at its ExpandDims; nothing inside the layers changes."""
    _, net, plan = tiny_plan()
    report = validate_plan(net, plan, batch=4, seq=16, dataset_strategy="data_parallel")
    gathers = {(r.op, r.tensor): [str(c) for c in r.forward] for r in report.redistributions
               if any(c.kind == "AllGather" for c in r.forward)}
    ids_bytes = 1 * 16 * 4        # one sample of 16 int32 ids per device, gathered from 1 peer
    assert gathers == {
        (f"{WORDS}.gather", "input_ids"): [f"AllGather over 2 devices, {ids_bytes} B/device"],
        ("model.language_model.embedding.position_embeddings.gather", "position_ids"):
            [f"AllGather over 2 devices, {ids_bytes} B/device"],
        ("model.language_model.topQueryEmbedding.top_query_embeddings.gather", "position_ids"):
            [f"AllGather over 2 devices, {ids_bytes} B/device"],
        ("model.language_model.expand", "attention_mask"): [f"AllGather over 2 devices, {16 * 16 * 4:,} B/device"],
        ("loss.onehot", "output of loss.flatten_labels"): [f"AllGather over 2 devices, {ids_bytes} B/device"],
    }
    assert not any(r.unplanned for r in report.redistributions)


def test_13b_dp192_mp8_plan_passes_the_validator():
    cfg, net = build_13b(192, 8)
    report = validate_plan(net, cfg.parallel, batch=16 * 192, seq=2048)
    assert not [r for r in report.redistributions if r.unplanned]
    assert all(r.op.startswith("loss.") for r in report.redistributions)
    dense = report.op("model.language_model.transformer.layers.7.mlp.dense_4h_to_h.matmul")
    # Row parallel: partial sums of [16·2048, 5120] FP16 all-reduced over the 8 mp devices.
    assert [str(c.collective) for c in dense.forward] == [
        f"AllReduce over 8 devices, {2 * 7 * (16 * 2048 * 5120 * 2) // 8:,} B/device"]
    query = report.op("model.language_model.transformer.layers.7.attention.query.matmul")
    assert query.forward == () and len(query.backward) == 1     # column parallel: dX all-reduced
    assert {name: lay.splits for name, lay in report.parameters.items()} == parameter_splits(net)


def test_communication_of_the_tiny_plan_by_hand():
    """dp 2 × mp 2, global batch 4 × 16 tokens, FP32: every collective counted by hand."""
    cfg, net, plan = tiny_plan()
    m = cfg.model
    h, f, v, p, layers = m.hidden_size, m.ffn_hidden_size, m.vocab_size, m.max_position_embeddings, m.num_layers + 1
    report = validate_plan(net, plan, batch=4, seq=16)
    comm = communication(report, plan, param_itemsize=4)
    rows = 2 * 16                  # tokens per device (batch split by dp)
    act = rows * h * 4             # one [rows, H] FP32 activation slice
    ring2 = lambda n: 2 * (2 - 1) * n // 2   # AllReduce over 2 devices
    ring4 = lambda n: 2 * (4 - 1) * n // 4   # AllReduce over 4 devices
    # Forward over mp: 2 row-parallel outputs per layer, the word-embedding lookup [2, 16, H],
    # and the loss's max, sum of exp and picked logit ([rows, 1] each).
    assert comm[("forward", "AllReduce", 2)] == {"count": 2 * layers + 1 + 3,
                                                 "bytes": (2 * layers + 1) * ring2(act) + 3 * ring2(rows * 4)}
    # The loss total and token count: scalars reduced over all 4 devices.
    assert comm[("forward", "AllReduce", 4)] == {"count": 2, "bytes": 2 * ring4(4)}
    # Backward over mp: input gradients of q, k, v, dense_h_to_4h in every layer and of the head.
    assert comm[("backward", "AllReduce", 2)] == {"count": 4 * layers + 1, "bytes": (4 * layers + 1) * ring2(act)}
    # Backward of the loss tail's slices: gather [16, 1] per device from one peer, 4 times.
    assert comm[("backward", "AllGather", 2)] == {"count": 4, "bytes": 4 * 16 * 4}
    # Gradients: mp-split tensors are all-reduced over the 2 dp replicas of their slice, replicated
    # ones over all 4 devices.
    split = layers * (4 * h * h + 3 * h + 2 * h * f + f) + v * h
    replicated_tensors = layers * [h] * 6 + [p * h, p * h, h, h]
    assert comm[("gradients", "AllReduce", 2)] == {"count": 10 * layers + 1, "bytes": ring2(split * 4 // MP)}
    assert comm[("gradients", "AllReduce", 4)] == {"count": len(replicated_tensors),
                                                   "bytes": sum(ring4(n * 4) for n in replicated_tensors)}
    assert set(comm) == {("forward", "AllReduce", 2), ("forward", "AllReduce", 4), ("backward", "AllReduce", 2),
                         ("backward", "AllGather", 2), ("gradients", "AllReduce", 2), ("gradients", "AllReduce", 4)}


def test_optimizer_sharded_gradients_by_hand():
    """Optimizer shards of 2 (= dp): each split gradient is reduce-scattered between the 2 replicas
    and its parameter all-gathered back; nothing is left to all-reduce across groups."""
    cfg, net, plan = tiny_plan()
    report = validate_plan(net, plan, batch=4, seq=16)
    name = "language_model.transformer.layers.0.mlp.dense_h_to_4h.weight"     # [F, H], split (2, 1)
    comm = communication(report, plan, 4, opt_sizes={name: 2})
    slice_bytes = cfg.model.ffn_hidden_size * cfg.model.hidden_size * 4 // MP
    assert comm[("gradients", "ReduceScatter", 2)] == {"count": 1, "bytes": slice_bytes // 2}
    assert comm[("gradients", "AllGather", 2)] == {"count": 1, "bytes": slice_bytes // 2}
    assert ("gradients", "AllReduce", 1) not in comm


# -------------------------------------------------------------------------------- rule units


def test_gather_vocab_and_batch_split_needs_all_devices():
    shapes = [(1024, 64), (8, 16)]
    # dp 2 × mp 4 = 8 devices: rows split 4 and ids split 2 is MindSpore's shard-batch-and-axis mode.
    ok = rules.gather(((4, 1), (2, 1)), shapes, {}, 8)
    assert ok.outputs[0].splits == (2, 1, 1) and ok.forward[0].collective.group == 4
    with pytest.raises(rules.RuleViolation, match="multiply to all 16 devices"):
        rules.gather(((4, 1), (2, 1)), shapes, {}, 16)


def test_power_of_two_splits_on_power_of_two_device_counts():
    with pytest.raises(rules.RuleViolation, match="split 3 of dimension 0 is not a power of 2"):
        rules.check_strategy_values(((3, 1),), [(6, 4)], 8)
    rules.check_strategy_values(((3, 1),), [(6, 4)], 6)     # 6 devices: no power-of-2 rule


def test_custom_operator_needs_its_layout_attributes():
    strategy, shapes = ((2, 2, 1, 1), (2, 1, 1, 1), (1,)), [(4, 4, 8, 8), (4, 1, 8, 8), (1,)]
    with pytest.raises(rules.RuleViolation, match="lacks the dev_matrix_shape, inputs_tensor_map"):
        rules.custom(strategy, shapes, {"codegeex_kernel": "masked_softmax"}, 4)
    dev, ins, outs = tensor_maps(strategy)
    assert (dev, ins, outs) == ([2, 2, 1, 1], [[3, 2, -1, -1], [3, -1, -1, -1], [-1]], [[3, 2, -1, -1]])
    attrs = {"dev_matrix_shape": dev, "inputs_tensor_map": ins, "outputs_tensor_map": outs,
             "codegeex_kernel": "masked_softmax"}
    assert rules.custom(strategy, shapes, attrs, 4).outputs[0].splits == (2, 2, 1, 1)
    bad = ((2, 1, 1, 2), (2, 1, 1, 1), (1,))
    dev, ins, outs = tensor_maps(bad)
    with pytest.raises(rules.RuleViolation, match="must not split its reduction"):
        rules.custom(bad, shapes, {"dev_matrix_shape": dev, "inputs_tensor_map": ins,
                                   "outputs_tensor_map": outs, "codegeex_kernel": "masked_softmax"}, 4)


def test_redistribution_volumes():
    # [8, 6] split (2, 2) over devices (stride 2, stride 1) -> split (2, 1): gather the columns.
    src = from_tensor_map([2, 2], [1, 0], (8, 6))
    dst = from_tensor_map([2, 2], [1, -1], (8, 6))
    fwd, bwd = redistribution(src, dst, 4)
    assert [(c.kind, c.group, c.bytes) for c in fwd] == [("AllGather", 2, 1 * (4 * 3 * 4))]
    assert [(c.kind, c.group, c.bytes) for c in bwd] == [("ReduceScatter", 2, (4 * 6 * 4) // 2)]
    # The same device axis moved from the columns to the rows: an all-to-all.
    moved = from_tensor_map([2, 2], [1, 0], (8, 6))
    rows = with_dims(moved, (8, 6), [((2, 2), (1, 2)), ()])
    fwd, _ = redistribution(moved, rows, 4)
    assert [(c.kind, c.group) for c in fwd] == [("AllToAll", 2)]
    assert redistribution(src, src, 4) == ((), ())


def test_fused_kernels_carry_the_layout_mindspore_reads():
    """With the fused kernels (ops.Custom) the plan passes because apply_shard_plan writes the
    attributes MindSpore's CustomInfo needs; without them each Custom operator is rejected."""
    cfg = load_config("ascend_configs/tiny_fixture.yaml", ("model.fused_kernels=on",))
    net = CodeGeeXWithLoss(build_model(cfg.model, allocate=False))
    plan = ParallelConfig(data_parallel=DP, model_parallel=MP)
    apply_shard_plan(net, plan)
    report = validate_plan(net, plan, batch=4, seq=16)
    custom = [r for r in report.ops if r.kind == "Custom"]
    assert len(custom) == 2 * (cfg.model.num_layers + 1)        # softmax and FastGELU per layer
    softmax = cell(net, f"{L0}.attention.softmax.fused_softmax")
    assert softmax.attrs["inputs_tensor_map"] == [[3, 2, -1, -1], [3, -1, -1, -1], [-1]]
    softmax.del_prim_attr("dev_matrix_shape")
    with pytest.raises(PlanError, match=f"{L0}.attention.softmax.fused_softmax: sharded Custom operator "
                                        "lacks the dev_matrix_shape attribute"):
        validate_plan(net, plan, batch=4, seq=16)
