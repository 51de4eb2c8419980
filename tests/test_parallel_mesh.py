"""The semi-auto-parallel step on a simulated device mesh against the unsharded model.

A small CodeGeeX (hidden 32, 8 heads, ffn 128, vocab 64, 1 layer + top-query layer, 8 tokens)
runs sharded on dp=2 × mp=4 and dp=1 × mp=8 (:mod:`codegeex_ms.parallel.virtual_mesh`, NumPy),
with the parameter splits of the real shard plan, the data layout of the real trainer
(``train.distributed.data_layout`` / ``dataset_context``) and the optimizer reductions the real
step uses (``parallel.reduction``). References: MindSpore's own gradients and ``TrainStep`` of the
unsharded network (FP32, CPU), and the same NumPy code on a 1 × 1 mesh in float64.

Tolerances. FP32 vs FP32: the mesh sums the same products as MindSpore in another order (the
split matmuls and all-reduces add partial sums of up to 128 terms); each rounding is ~6e-8
relative, so losses agree to ~1e-6 relative and gradients to ~1e-6 of the largest entry of their
tensor: we allow 1e-5 relative on losses and norms and 2e-5 × max|g| per gradient tensor, plus
1e-6 × the largest gradient of the network for tensors whose true gradient is 0 (the attention
key bias: softmax ignores a per-row constant, so both sides hold only rounding noise). Float64
mesh vs float64 unsharded: only summation order differs, ~1e-15 relative: we allow 1e-10.
"""

import numpy as np
import pytest

import mindspore as ms
from mindspore import ParameterTuple

from codegeex_ms.config import CONFIG_DIR, global_batch_size, load_config
from codegeex_ms.model import CodeGeeX, CodeGeeXWithLoss
from codegeex_ms.parallel import virtual_mesh as vm
from codegeex_ms.parallel.reduction import OptimizerReductions, optimizer_reductions
from codegeex_ms.parallel.strategy_file import (WHOLE_GROUP, layout_of, planned_parameters)
from codegeex_ms.train.distributed import data_layout, dataset_context
from codegeex_ms.train.optimizer import build_optimizer, no_decay_names
from codegeex_ms.train.step import ScaledGrads, TrainStep

H, HEADS, FFN, VOCAB, LAYERS, SEQ, EOD = 32, 8, 128, 64, 1, 8, 63
GLOBAL_BATCH = 8
MESHES = [(2, 4), (1, 8)]
SCALE = 1024.0
SEMI_AUTO = optimizer_reductions("semi_auto_parallel")


def config(dp=1, mp=1, micro=GLOBAL_BATCH, clip=1.0, config_path=None, extra=()):
    return load_config(config_path, (
        f"model.vocab_size={VOCAB}", f"model.real_vocab_size={VOCAB}", f"model.hidden_size={H}",
        f"model.num_heads={HEADS}", f"model.num_layers={LAYERS}", f"model.ffn_hidden_size={FFN}",
        "model.max_position_embeddings=16", f"model.eod_token_id={EOD}", "model.fused_kernels=off",
        "model.dropout=0.0", f"train.seq_length={SEQ}", f"parallel.data_parallel={dp}",
        f"parallel.model_parallel={mp}", "parallel.vocab_parallel=true",
        "parallel.optimizer_shard=true", f"train.micro_batch_size={micro}", "train.lr=1.0e-3",
        "train.warmup_steps=1", "train.decay_steps=100", f"train.loss_scale={SCALE}",
        f"train.grad_clip={clip}", *extra))


def eod_reset(ids):
    """Positions restarting after each EOD and a block-diagonal causal mask (written for the test)."""
    b, s = ids.shape
    pos = np.zeros((b, s), np.int32)
    mask = np.zeros((b, s, s), np.uint8)
    for r in range(b):
        start = 0
        for t in range(s):
            pos[r, t] = t - start
            mask[r, t, start:t + 1] = 1
            if ids[r, t] == EOD:
                start = t + 1
    return pos, mask


def make_batch(rng, rows):
    tokens = rng.integers(0, EOD, size=(rows, SEQ + 1)).astype(np.int32)
    tokens[0, 3] = tokens[rows // 2, 5] = EOD
    ids, labels = tokens[:, :-1], tokens[:, 1:]
    pos, mask = eod_reset(ids)
    return ids, labels.copy(), pos, mask, (ids != EOD).astype(np.float32)


def rank_outputs(batch, world):
    """What each rank's dataset yields under data_layout: its own consecutive rows."""
    per = len(batch[0]) // world
    return [tuple(c[r * per:(r + 1) * per] for c in batch) for r in range(world)]


@pytest.fixture(scope="module")
def reference():
    """Random weights, a global batch, MindSpore's loss and gradients (sens 1) and one TrainStep."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(7)
    cfg = config()
    net = CodeGeeX(cfg.model)
    params = {}
    for name, param in net.parameters_and_names():
        base = 1.0 if "layernorm.weight" in name else 0.0
        value = (base + 0.3 * rng.standard_normal(param.shape)).astype(np.float32)
        param.set_data(ms.Tensor(value))
        params[name] = value
    loss_net = CodeGeeXWithLoss(net)
    batch = make_batch(rng, GLOBAL_BATCH)
    tensors = tuple(ms.Tensor(c) for c in batch)
    weights = ParameterTuple(loss_net.trainable_params())
    loss, grads = ScaledGrads(loss_net, weights)(ms.Tensor(1.0, ms.float32), *tensors)
    names = [p.name.removeprefix("model.") for p in weights]
    grads = {n: g.asnumpy() for n, g in zip(names, grads)}
    norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values())))
    clip = norm / 2  # clipping is active
    tcfg = config(clip=clip)
    optimizer = build_optimizer(loss_net, tcfg.train)
    step = TrainStep(loss_net, optimizer, tcfg.train)
    out = [o.asnumpy() for o in step.update(tensors)]
    after = {p.name.removeprefix("model."): p.asnumpy() for p in optimizer.parameters}
    m1 = {p.name.removeprefix("model."): m.asnumpy() for p, m in zip(optimizer.parameters, optimizer.moments1)}
    return {"params": params, "batch": batch, "loss": float(loss.asnumpy()), "grads": grads,
            "clip": clip, "step": out, "after": after, "m": m1,
            "no_decay": {n.removeprefix("model.") for n in no_decay_names(loss_net)}}


def run_mesh(reference, dp, mp, dtype=np.float32, sens=1.0):
    cfg = config(dp, mp, micro=GLOBAL_BATCH // dp)
    mesh = vm.Mesh(dp, mp)
    planned = planned_parameters(cfg.model, cfg.parallel)
    splits = {n: p.splits for n, p in planned.items()}
    layout = [data_layout(cfg.parallel, cfg.train.micro_batch_size, r, mesh.world) for r in range(mesh.world)]
    assert all(b * mesh.world == GLOBAL_BATCH for _, _, b in layout)
    whole, local = vm.graph_batch(rank_outputs(reference["batch"], mesh.world), mesh,
                                  dataset_context()["dataset_strategy"])
    for got, want in zip(whole, reference["batch"]):
        np.testing.assert_array_equal(got, want)
    params = {r: {n: vm.local_slice(v.astype(dtype), n, splits[n], mesh, r)
                  for n, v in reference["params"].items()} for r in range(mesh.world)}
    loss, grads, log = vm.forward_backward(mesh, params, local, splits, LAYERS, HEADS, sens=sens)
    return cfg, mesh, planned, splits, params, loss, grads, log


@pytest.mark.parametrize("dp, mp", MESHES)
def test_sharded_loss_and_gradients_equal_unsharded(reference, dp, mp):
    _, mesh, _, splits, _, loss, grads, log = run_mesh(reference, dp, mp)
    for r in range(mesh.world):
        assert float(loss[r]) == pytest.approx(reference["loss"], rel=1e-5)
    assert set(grads[0]) == set(reference["grads"])
    top = max(np.abs(g).max() for g in reference["grads"].values())
    for name, want in reference["grads"].items():
        got = vm.assemble({r: grads[r][name] for r in grads}, name, splits[name], mesh)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max() + 1e-6 * top,
                                   err_msg=name)
    kinds = {(op, group) for op, group, _ in log}
    assert ("AllReduce-sum", "mp") in kinds and ("AllReduce-max", "mp") in kinds
    assert ("AllReduce-sum", "dp") in kinds     # the loss sums and the gradient Mirror


def test_float64_mesh_equals_float64_single_device(reference):
    *_, loss1, grads1, _ = run_mesh(reference, 1, 1, np.float64)
    _, mesh, _, splits, _, loss, grads, _ = run_mesh(reference, 2, 4, np.float64)
    assert float(loss[0]) == pytest.approx(float(loss1[0]), rel=1e-10)
    top = max(np.abs(g).max() for g in grads1[0].values())
    for name in grads1[0]:
        got = vm.assemble({r: grads[r][name] for r in grads}, name, splits[name], mesh)
        np.testing.assert_allclose(got, grads1[0][name], rtol=1e-10, atol=1e-12 * top, err_msg=name)


def test_a_swapped_plan_is_not_executed(reference):
    _, mesh, _, splits, params, _, _, _ = run_mesh(reference, 1, 8)
    bad = dict(splits)
    name = "language_model.transformer.layers.0.mlp.dense_4h_to_h.weight"
    bad[name] = (8, 1)
    with pytest.raises(ValueError, match="dense_4h_to_h.weight: the virtual mesh executes a row"):
        vm.forward_backward(mesh, params, {}, bad, LAYERS, HEADS)


def optimizer_inputs(reference, dp, mp):
    cfg, mesh, planned, splits, params, _, grads, _ = run_mesh(reference, dp, mp, sens=SCALE)
    opt_sizes = {n: layout_of(p, dp, mp, WHOLE_GROUP).opt_shard_size for n, p in planned.items()}
    lr = float(reference["step"][4])
    assert lr > 0
    t = cfg.train
    hp = vm.AdamW(lr, t.adam_beta1, t.adam_beta2, t.adam_eps, t.weight_decay, reference["clip"])
    return mesh, splits, params, grads, opt_sizes, hp


@pytest.mark.parametrize("dp, mp", MESHES)
def test_clip_overflow_and_adamw_on_local_slices_equal_unsharded_step(reference, dp, mp):
    mesh, splits, params, grads, opt_sizes, hp = optimizer_inputs(reference, dp, mp)
    assert any(s > 1 for s in opt_sizes.values())   # optimizer sharding is exercised
    out = vm.optimizer_step(mesh, params, grads, splits, opt_sizes, reference["no_decay"], hp,
                            SCALE, SEMI_AUTO)
    _, finite, scale, norm, _ = reference["step"]
    assert bool(finite) and all(out["finite"].values())
    assert float(scale) == SCALE
    for r in range(mesh.world):
        assert out["norm"][r] == pytest.approx(float(norm), rel=1e-5)
    assert float(norm) > hp.clip_norm   # so the clip factor (in m below) is exercised
    top = max(np.abs(m).max() for m in reference["m"].values())
    for name, want in reference["m"].items():
        got = vm.assemble({r: out["m"][r][name] for r in grads}, name, splits[name], mesh)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max() + 1e-6 * top,
                                   err_msg=name)
        new = vm.assemble({r: out["params"][r][name] for r in grads}, name, splits[name], mesh)
        if np.abs(reference["grads"][name]).max() < 1e-6 * max(np.abs(g).max() for g in reference["grads"].values()):
            # attention.key.bias: its true gradient is 0 (softmax ignores a per-row constant), so
            # Adam's first step, m/sqrt(v) ~ g/(|g| + eps), turns rounding noise into updates of
            # up to ±lr whose size depends on that noise: neither its value nor its size is checked.
            continue
        moved = np.abs(reference["after"][name] - reference["params"][name]).max()
        assert moved > 1e-4, name
        np.testing.assert_allclose(new, reference["after"][name], rtol=0, atol=1e-6, err_msg=name)


def test_without_the_reductions_devices_disagree(reference):
    """The rules are what make the step equal: without them each device clips with the norm of
    its own slices, and an overflow in one device's slice is seen by that device only."""
    mesh, splits, params, grads, opt_sizes, hp = optimizer_inputs(reference, 2, 4)
    none = OptimizerReductions(norm=False, overflow=False)
    local = vm.optimizer_step(mesh, params, grads, splits, opt_sizes, reference["no_decay"], hp,
                              SCALE, none)
    want = float(reference["step"][3])
    assert all(abs(n - want) > 1e-3 * want for n in local["norm"].values())
    bad = {r: dict(g) for r, g in grads.items()}
    name = "language_model.transformer.layers.0.mlp.dense_4h_to_h.weight"
    bad[5][name] = bad[5][name].copy()
    bad[5][name][-1, -1] = np.inf     # a row rank 5 (d=1) updates under the parallel optimizer
    ok = vm.optimizer_step(mesh, params, bad, splits, opt_sizes, reference["no_decay"], hp, SCALE, SEMI_AUTO)
    assert not any(ok["finite"].values())          # one decision: every device skips
    for r in range(mesh.world):
        for n in params[r]:
            np.testing.assert_array_equal(ok["params"][r][n], params[r][n])
    split = vm.optimizer_step(mesh, params, bad, splits, opt_sizes, reference["no_decay"], hp, SCALE, none)
    assert 0 < sum(split["finite"].values()) < mesh.world   # devices would drift apart


def test_1536_rank_layout_consumes_global_batch_distinct_samples_per_step():
    cfg = load_config(str(CONFIG_DIR / "pretrain_13b_1536npu.yaml"), ())
    p, world = cfg.parallel, cfg.parallel.data_parallel * cfg.parallel.model_parallel
    assert world == 1536
    micro = cfg.train.micro_batch_size

    def layout(rank):
        return data_layout(p, micro, rank, world)

    steps, total = 3, global_batch_size(cfg)
    batches = vm.step_samples(layout, world, 4 * total, steps, cfg.train.seed,
                              dataset_context()["dataset_strategy"])
    assert total == 3072
    for batch in batches:
        assert len(batch) == total and len(np.unique(batch)) == total
    assert len(np.unique(np.concatenate(batches))) == steps * total
    assert layout(0)[2] == micro // p.model_parallel == 2
    # each device computes on its data-parallel slice: micro_batch_size rows (what plan assumes)
    assert total // p.data_parallel == micro
    # the layout this fixes: each model-parallel group read one shard, micro rows per rank
    old = vm.step_samples(lambda r: (r // p.model_parallel, p.data_parallel, micro), world,
                          4 * total, 1, cfg.train.seed, "data_parallel")[0]
    assert len(old) == p.model_parallel * total and len(np.unique(old)) == total


def test_real_data_pipeline_feeds_distinct_rows_to_the_mesh(tmp_path):
    """micro_batches with data_layout's shards: 8 ranks of a 2 × 4 mesh read one row each,
    together micro_batch_size × dp distinct samples per micro-step."""
    from codegeex_ms.data.mindrecord_io import ShardWriter, write_manifest
    from codegeex_ms.train.data import micro_batches
    directory = tmp_path / "data"
    directory.mkdir()
    writer = ShardWriter(directory, SEQ + 1, samples_per_shard=32)
    for i in range(32):
        writer.write(np.full(SEQ + 1, i, np.int32))     # sample i is all i: identifies its index
    write_manifest(directory, writer.close(), seq_length=SEQ, sample_length=SEQ + 1, eod_id=EOD)
    cfg = config(2, 4, micro=4, extra=(f"data.train_path={directory}", "data.num_workers=1"))
    mesh = vm.Mesh(2, 4)
    seen = []
    for step in range(2):
        outs = []
        for r in range(mesh.world):
            shard, shards, batch = data_layout(cfg.parallel, 4, r, mesh.world)
            outs.append(next(micro_batches(cfg, shard, shards, step, 1, batch)))
        whole, local = vm.graph_batch(outs, mesh, dataset_context()["dataset_strategy"])
        rows = whole[0][:, 0]
        assert len(rows) == global_batch_size(cfg) == 8 and len(set(rows)) == 8
        assert all(len(local[r][0]) == 4 for r in local)
        seen.extend(rows)
    assert len(set(seen)) == 16


def test_train_step_takes_its_reductions_from_the_same_rules():
    """Under semi-auto parallel the real step all-reduces the overflow flag and computes the norm
    with the ``grad_scale`` marker MindSpore's global-norm pass needs; standalone it does neither."""
    from codegeex_ms.train import step as step_module
    assert step_module.GRAD_SCALE_EXPAND.attrs.get("grad_scale") is True
    cfg = config()
    states = {}
    for mode in (ms.ParallelMode.SEMI_AUTO_PARALLEL, ms.ParallelMode.STAND_ALONE):
        ms.set_auto_parallel_context(parallel_mode=mode)
        try:
            net = CodeGeeXWithLoss(CodeGeeX(cfg.model))
            state = step_module.TrainState(net, build_optimizer(net, cfg.train), cfg.train)
            states[mode] = (state.reductions, step_module._Update(state).reduce_overflow)  # pylint: disable=protected-access
        finally:
            ms.reset_auto_parallel_context()
    assert states[ms.ParallelMode.SEMI_AUTO_PARALLEL] == (SEMI_AUTO, True)
    assert states[ms.ParallelMode.STAND_ALONE] == (OptimizerReductions(False, False), False)


def test_data_layout_refuses_a_micro_batch_that_does_not_split_over_the_group():
    cfg = config(2, 4, micro=4)
    assert [data_layout(cfg.parallel, 4, r, 8) for r in (0, 7)] == [(0, 8, 1), (7, 8, 1)]
    with pytest.raises(ValueError, match="train.micro_batch_size a multiple of parallel.model_parallel"):
        data_layout(cfg.parallel, 2, 0, 8)
