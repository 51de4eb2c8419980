"""Per-rank -> merged -> split checkpoints with hand-made strategy files, through MindSpore's APIs.

Per-rank files are cut here with NumPy from a tiny model's full tensors following the sharding of
reference section 2 (written out below, independently of the shard plan), saved with
``mindspore.save_checkpoint`` into ``rank_<r>/``, merged with the strategy written from the shard
plan, and compared byte for byte.
"""

import numpy as np
import pytest

import mindspore as ms
from mindspore.parallel import build_searched_strategy, merge_sliced_parameter

from codegeex_ms import distributed_ckpt
from codegeex_ms.config import CONFIG_DIR, load_config
from codegeex_ms.parallel.rank_checkpoints import merge, rank_files, split
from codegeex_ms.parallel.strategy_file import (WHOLE_GROUP, largest_optimizer_shard_size,
                                                match_names, plan_layouts, planned_parameters,
                                                strategy_for, write_strategy_file)

TINY = str(CONFIG_DIR / "tiny_fixture.yaml")  # hidden 64, 4 heads, 2 layers + top-query, vocab 1024
# Reference section 2: split along dim 0 / dim 1 over mp; everything else replicated.
DIM0 = ("attention.query.weight", "attention.key.weight", "attention.value.weight",
        "attention.query.bias", "attention.key.bias", "attention.value.bias",
        "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias", "word_embeddings.weight")
DIM1 = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")


def mp_dim(name):
    """The dimension reference section 2 splits over mp (None = replicated)."""
    base = name.split(".", 1)[1] if name.startswith(("adam_m.", "adam_v.")) else name
    if base.endswith(DIM0):
        return 0
    if base.endswith(DIM1):
        return 1
    return None


def rank_slice(full, name, rank, dp, mp, group=0):
    """What rank ``r = d·mp + m`` stores. ``group``: parallel-optimizer group size (0 = off,
    -1 = all ranks holding the same slice): those ranks, in rank order, are cut into consecutive
    groups and member i keeps the i-th 1/group of dimension 0 (when it divides)."""
    d, m = divmod(rank, mp)
    dim = mp_dim(name)
    x = full if dim is None else np.split(full, mp, axis=dim)[m]
    if group:
        holders, member = (dp, d) if dim is not None else (dp * mp, rank)
        g = holders if group == -1 else group
        if g > 1 and x.shape[0] % g == 0:
            x = np.split(x, g, axis=0)[member % g]
    return np.ascontiguousarray(x)


@pytest.fixture(scope="module")
def full_tensors():
    """Random full tensors of the tiny model: FP16 weights, FP32 Adam moments, a step counter."""
    cfg = load_config(TINY)
    params = planned_parameters(cfg.model, cfg.parallel)
    rng = np.random.default_rng(7)
    full = {}
    for name, p in params.items():
        full[name] = rng.standard_normal(p.shape).astype(np.float16)
        full[f"adam_m.{name}"] = rng.standard_normal(p.shape).astype(np.float32)
        full[f"adam_v.{name}"] = rng.random(p.shape).astype(np.float32)
    return full


def save_ranks(root, full, dp, mp, group=0, prefix=""):
    """Write rank_<r>/shard.ckpt for every rank; returns {rank: {name: array}}."""
    stored = {}
    for rank in range(dp * mp):
        arrays = {prefix + n: rank_slice(a, n, rank, dp, mp, group) for n, a in full.items()}
        items = [{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()]
        items.append({"name": "global_step", "data": ms.Tensor(np.array([1234], np.int32))})
        (root / f"rank_{rank}").mkdir(parents=True)
        ms.save_checkpoint(items, str(root / f"rank_{rank}" / "shard.ckpt"))
        stored[rank] = arrays
    return stored


def strategy_file(path, dp, mp, group=0):
    cfg = load_config(TINY, (f"parallel.data_parallel={dp}", f"parallel.model_parallel={mp}"))
    params = planned_parameters(cfg.model, cfg.parallel)
    layouts = plan_layouts(params, dp, mp, group)
    moments = {f"{k}.{n}": lay for n, lay in layouts.items() for k in ("adam_m", "adam_v")}
    write_strategy_file(path, {**layouts, **moments})
    return path


def assert_same(loaded, expected):
    """Every expected tensor is present with the same dtype, shape and bytes."""
    missing = sorted(set(expected) - set(loaded))
    assert not missing, f"missing tensors: {missing[:5]}"
    for name, want in expected.items():
        got = loaded[name].asnumpy()
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), f"{name} differs"


@pytest.mark.parametrize("dp,mp,group", [(2, 2, 0), (4, 2, WHOLE_GROUP), (4, 2, 2)])
def test_per_rank_merge_split_round_trip(tmp_path, full_tensors, dp, mp, group):
    stored = save_ranks(tmp_path / "ranks", full_tensors, dp, mp, group)
    strategy = strategy_file(tmp_path / "train_strategy.ckpt", dp, mp, group)
    if group:  # the optimizer-sharded ranks really hold smaller pieces than the mp slices
        q = "language_model.transformer.layers.0.attention.query.weight"
        assert stored[0][q].shape[0] < 64 // mp

    merged = merge(rank_files(tmp_path / "ranks"), strategy, tmp_path / "merged.ckpt")
    loaded = ms.load_checkpoint(str(merged))
    assert_same(loaded, full_tensors)
    assert int(loaded["global_step"].asnumpy()[0]) == 1234  # not in the strategy: copied from rank 0

    # Split back into the training layout: every rank's file reproduces what that rank saved.
    back = split(merged, strategy, tmp_path / "back", prefix="shard")
    assert sorted(back) == list(range(dp * mp))
    for rank, path in back.items():
        assert_same(ms.load_checkpoint(str(path)), stored[rank])


@pytest.mark.parametrize("mp", [2, 4])
def test_split_full_checkpoint_into_model_parallel_ranks(tmp_path, full_tensors, mp):
    save_ranks(tmp_path / "one", full_tensors, 1, 1)
    strategy = strategy_file(tmp_path / f"mp{mp}.ckpt", 1, mp)
    files = split(rank_files(tmp_path / "one")[0], strategy, tmp_path / "out")
    assert sorted(files) == list(range(mp))
    for rank, path in files.items():
        expected = {n: rank_slice(a, n, rank, 1, mp) for n, a in full_tensors.items()}
        assert_same(ms.load_checkpoint(str(path)), expected)
    # Spot check against the reference's sharding: rank 1 of mp holds rows 64/mp.. of q.
    q = "language_model.transformer.layers.1.attention.query.weight"
    got = ms.load_checkpoint(str(files[1]))[q].asnumpy()
    assert np.array_equal(got, full_tensors[q][64 // mp: 2 * 64 // mp])


def test_strategy_file_is_read_by_mindspore_and_merge_sliced_parameter(tmp_path, full_tensors):
    strategy = build_searched_strategy(str(strategy_file(tmp_path / "s.ckpt", 1, 2)))
    base = "language_model.transformer.layers.0."
    q, dense, ln = base + "attention.query.weight", base + "attention.dense.weight", \
        base + "input_layernorm.weight"
    assert list(strategy[q].dev_matrix[0].dim) == [1, 2]
    assert list(strategy[q].tensor_map[0].dim) == [0, -1]
    assert list(strategy[dense].tensor_map[0].dim) == [-1, 0]
    assert list(strategy[ln].tensor_map[0].dim) == [-1]
    for name in (q, dense):
        slices = [ms.Parameter(ms.Tensor(rank_slice(full_tensors[name], name, r, 1, 2)), name)
                  for r in range(2)]
        merged = merge_sliced_parameter(slices, strategy).asnumpy()
        assert merged.tobytes() == full_tensors[name].tobytes()


def test_13b_optimizer_shard_groups():
    """MindSpore shards a tensor only when dimension 0 divides by (its mp split × group)."""
    cfg = load_config(str(CONFIG_DIR / "codegeex_13b.yaml"),
                      ("parallel.data_parallel=192", "parallel.model_parallel=8"))
    params = planned_parameters(cfg.model, cfg.parallel)
    default = plan_layouts(params, 192, 8, WHOLE_GROUP)
    # q rows per mp slice 5120/8 = 640 do not split into 192; only the vocabulary slice
    # 52224/8 = 6528 = 34·192 does; replicated tensors would need 1536 | dim 0.
    assert [n for n, lay in default.items() if lay.opt_shard_size] == \
        ["language_model.embedding.word_embeddings.weight"]
    # Every tensor's dim-0 piece divides by gcd(640, 2560, 5120, 6528, 2048) = 128, and the group
    # must divide dp = 192 = 64·3: the largest group is 64.
    assert largest_optimizer_shard_size(params, 192, 8) == 64
    layouts = plan_layouts(params, 192, 8, 64)
    base = "language_model.transformer.layers.5."
    q = layouts[base + "attention.query.weight"]
    assert (q.dev_matrix, q.tensor_map, q.opt_shard_step, q.opt_shard_size) == ((192, 8), (0, -1), 8, 64)
    ln = layouts[base + "post_attention_layernorm.bias"]
    assert (ln.tensor_map, ln.opt_shard_step, ln.opt_shard_size) == ((-1,), 1, 64)
    assert all(lay.opt_shard_size == 64 for lay in layouts.values())


def test_checkpoint_names_match_planned_parameters():
    cfg = load_config(TINY, ("parallel.model_parallel=2",))
    names = ["model.language_model.transformer.layers.1.mlp.dense_4h_to_h.weight",
             "adam_v.model.language_model.embedding.word_embeddings.weight",
             "language_model.transformer.final_layernorm.bias", "global_step", "scale_sense"]
    layouts = strategy_for(cfg.model, cfg.parallel, names)
    assert sorted(layouts) == sorted(names[:3])
    assert layouts[names[0]].tensor_map == (-1, 0)
    assert layouts[names[1]].tensor_map == (0, -1)
    assert match_names(["foo.bar"], layouts) == {}


def test_cli_merge_with_config_then_split(tmp_path, full_tensors, capsys):
    # Names as the training wrapper saves them ("model." prefix); layouts are found by suffix.
    named = {(n.replace(".", ".model.", 1) if n.startswith("adam") else f"model.{n}"): a
             for n, a in full_tensors.items()}
    save_ranks(tmp_path / "ranks", named, 2, 2, group=2)
    rc = distributed_ckpt.main(["merge", "--src", str(tmp_path / "ranks"), "--config", "tiny_fixture",
                                "--set", "parallel.data_parallel=2", "--set", "parallel.model_parallel=2",
                                "--set", "parallel.optimizer_shard=true", "--optimizer-shard-size", "2",
                                "--out", str(tmp_path / "m.ckpt")])
    assert rc == 0, capsys.readouterr().err
    assert_same(ms.load_checkpoint(str(tmp_path / "m.ckpt")), named)

    rc = distributed_ckpt.main(["split", "--src", str(tmp_path / "m.ckpt"), "--config", "tiny_fixture",
                                "--mp", "4", "--out", str(tmp_path / "s")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "s" / "strategy.ckpt").is_file()
    for rank in range(4):
        got = ms.load_checkpoint(str(tmp_path / "s" / f"rank_{rank}" / f"rank{rank}.ckpt"))
        assert_same(got, {n: rank_slice(a, n, rank, 1, 4) for n, a in named.items()})


def test_cli_errors_name_the_problem(tmp_path, full_tensors, capsys):
    save_ranks(tmp_path / "ranks", full_tensors, 2, 1)
    out = str(tmp_path / "m.ckpt")
    (tmp_path / "ranks" / "rank_2").mkdir()
    rc = distributed_ckpt.main(["merge", "--src", str(tmp_path / "ranks"), "--config", "tiny_fixture",
                                "--out", out])
    assert rc == 2
    assert "rank_2: expected exactly one file matching '*.ckpt', found none" in capsys.readouterr().err
    (tmp_path / "ranks" / "rank_2").rmdir()
    rc = distributed_ckpt.main(["merge", "--src", str(tmp_path / "ranks"), "--config", "tiny_fixture",
                                "--set", "parallel.data_parallel=2", "--set", "parallel.model_parallel=2",
                                "--out", out])
    assert rc == 2
    assert "data_parallel × model_parallel = 4 ranks but" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        distributed_ckpt.main(["merge", "--src", str(tmp_path / "ranks"), "--out", out])
    assert "exactly one of --strategy FILE or --config CONFIG" in capsys.readouterr().err


def test_cli_strategy_file_then_merge_with_it(tmp_path, full_tensors, capsys):
    save_ranks(tmp_path / "ranks", full_tensors, 1, 2)
    strategy = tmp_path / "s.ckpt"
    rc = distributed_ckpt.main(["strategy", "--config", "tiny_fixture", "--set", "parallel.model_parallel=2",
                                "--names-from", str(tmp_path / "ranks" / "rank_0" / "shard.ckpt"),
                                "--out", str(strategy)])
    assert rc == 0, capsys.readouterr().err
    layouts = build_searched_strategy(str(strategy))
    assert len(layouts) == len(full_tensors)          # weights and both moments; not global_step
    rc = distributed_ckpt.main(["merge", "--src", str(tmp_path / "ranks"), "--strategy", str(strategy),
                                "--out", str(tmp_path / "m.ckpt")])
    assert rc == 0, capsys.readouterr().err
    assert_same(ms.load_checkpoint(str(tmp_path / "m.ckpt")), full_tensors)
