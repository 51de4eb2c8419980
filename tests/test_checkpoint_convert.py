"""Conversion between formats (round trips bit for bit), the CLI, atomic output, loading into a network."""

import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from codegeex_ms.checkpoint import (LayoutMismatchError, ModelSizes, ModelWeights, SafetensorsReader,
                                    TorchZipReader, load_into_network, load_weights, release_layout,
                                    save_weights)
from codegeex_ms.checkpoint.model_sizes import checkpoint_sizes
from codegeex_ms.convert import convert_checkpoint
from codegeex_ms.env.paths import REPO_ROOT


def _release_arrays(pt_path):
    with TorchZipReader(pt_path) as reader:
        return {name: reader.read(name) for name in reader.infos}


@pytest.mark.parametrize("middle", ["mid.ckpt", "mid.safetensors"])
def test_release_round_trip_is_bit_exact(golden, tmp_path, middle):
    convert_checkpoint(golden["pt"], tmp_path / middle, num_heads=4)
    convert_checkpoint(tmp_path / middle, tmp_path / "back.pt")
    original, back = _release_arrays(golden["pt"]), _release_arrays(tmp_path / "back.pt")
    assert list(back) == list(original)  # same names, same (release) order
    for name, array in original.items():
        assert back[name].dtype == np.float16 and back[name].tobytes() == array.tobytes(), name


def test_mindspore_reads_the_converted_files(golden, tmp_path):
    convert_checkpoint(golden["pt"], tmp_path / "w.ckpt", num_heads=4)
    convert_checkpoint(golden["pt"], tmp_path / "w.safetensors", dtype="float32", num_heads=4)
    original = {n[len("module."):]: a for n, a in _release_arrays(golden["pt"]).items()}
    ckpt = ms.load_checkpoint(str(tmp_path / "w.ckpt"))
    assert {k: ckpt.pop(k) for k in list(ckpt) if isinstance(ckpt[k], str)} == FIXTURE_RECORD
    safetensors = ms.load_checkpoint(str(tmp_path / "w.safetensors"), format="safetensors")
    assert set(ckpt) == set(safetensors) == set(original)
    for name, array in original.items():
        assert ckpt[name].dtype == ms.float16 and ckpt[name].asnumpy().tobytes() == array.tobytes()
        # FP16 -> FP32 is exact, so the FP32 file holds the same numbers.
        assert safetensors[name].dtype == ms.float32
        assert np.array_equal(safetensors[name].asnumpy(), array.astype(np.float32))


# what a conversion of the golden fixture records: the sizes in its shapes and the given heads
FIXTURE_RECORD = {"model.vocab_size": "1024", "model.hidden_size": "64", "model.num_layers": "2",
                  "model.num_heads": "4", "model.ffn_hidden_size": "256",
                  "model.max_position_embeddings": "64", "num_attention_heads": "4"}


def test_model_record_is_carried_over(golden, tmp_path):
    convert_checkpoint(golden["pt"], tmp_path / "w.ckpt", num_heads=4)
    sizes = convert_checkpoint(tmp_path / "w.ckpt", tmp_path / "w.safetensors")
    assert sizes.num_attention_heads == 4
    with SafetensorsReader(tmp_path / "w.safetensors") as reader:
        assert reader.metadata == FIXTURE_RECORD


def test_unknown_heads_are_asked_for_not_guessed(tmp_path):
    """A 4-head MindSpore checkpoint of hidden size 128 (no metadata): hidden/128 would say 1."""
    from codegeex_ms.config import load_config
    from codegeex_ms.model.build import build_model
    cfg = load_config("ascend_configs/tiny.yaml", ("model.vocab_size=1024", "model.real_vocab_size=1000",
                                                   "model.eod_token_id=999", "model.num_layers=1"))
    src = tmp_path / "four_heads.ckpt"
    ms.save_checkpoint(build_model(cfg.model), str(src))
    with pytest.raises(ValueError, match="number of attention heads .* pass --num-heads N"):
        convert_checkpoint(src, tmp_path / "out.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["four_heads.ckpt"]
    convert_checkpoint(src, tmp_path / "back.pt")  # the release format records no sizes: fine
    convert_checkpoint(src, tmp_path / "out.ckpt", num_heads=4)
    assert checkpoint_sizes(tmp_path / "out.ckpt") == {
        "vocab_size": 1024, "hidden_size": 128, "num_layers": 1, "num_heads": 4,
        "ffn_hidden_size": 512, "max_position_embeddings": 256}


def test_sizes_come_from_the_checkpoint_unless_the_config_sets_them(tmp_path, capsys):
    """score on a checkpoint that records its model, with a config that sets no size; a
    conflicting --set is refused naming both values; a trained checkpoint records every size."""
    from codegeex_ms import cli as cli_common
    from codegeex_ms import score
    from codegeex_ms.checkpoint.model_sizes import model_config_metadata
    from codegeex_ms.config import load_config
    from codegeex_ms.model.build import build_model
    cfg = load_config("ascend_configs/tiny_fixture.yaml", ("model.eod_token_id=7",
                                                           "model.real_vocab_size=1000"))
    net = build_model(cfg.model)
    ckpt = tmp_path / "trained.ckpt"
    save_weights(ckpt, {n: p.asnumpy() for n, p in net.parameters_and_names()},
                 metadata=model_config_metadata(cfg.model))
    recorded = checkpoint_sizes(ckpt)
    assert recorded == {"vocab_size": 1024, "real_vocab_size": 1000, "hidden_size": 64,
                        "num_layers": 2, "num_heads": 4, "ffn_hidden_size": 256,
                        "max_position_embeddings": 64, "eod_token_id": 7}
    plain = tmp_path / "plain.yaml"
    plain.write_text("train: {seq_length: 64}\ninference: {max_length: 64}\n")  # no model section
    np.save(tmp_path / "ids.npy", np.array([[1, 2, 3, 4]], np.int32))
    argv = ["--config", str(plain), "--checkpoint", str(ckpt), "--input-ids",
            str(tmp_path / "ids.npy"), "--output", str(tmp_path / "logits.npy")]
    assert cli_common.run(score.main, argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert np.load(tmp_path / "logits.npy").shape == (1, 4, 1024)
    os.remove(tmp_path / "logits.npy")
    assert cli_common.run(score.main, argv + ["--set", "model.hidden_size=32", "--set",
                                              "model.num_heads=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.hidden_size: the config sets 32 but ") and "has 64" in err
    assert "num_heads" not in err  # agrees with the checkpoint
    assert not (tmp_path / "logits.npy").exists()


def test_float32_detour_returns_the_same_fp16_bits(golden, tmp_path):
    convert_checkpoint(golden["pt"], tmp_path / "w32.ckpt", dtype="float32", num_heads=4)
    convert_checkpoint(tmp_path / "w32.ckpt", tmp_path / "w16.pt", dtype="float16")
    original, back = _release_arrays(golden["pt"]), _release_arrays(tmp_path / "w16.pt")
    assert all(back[n].tobytes() == a.tobytes() for n, a in original.items())


def test_failure_midway_leaves_no_output(golden, tmp_path, monkeypatch):
    calls = []
    real_read = ModelWeights.read

    def failing_read(self, name):
        calls.append(name)
        if len(calls) == 10:
            raise OSError("disk vanished")
        return real_read(self, name)

    monkeypatch.setattr(ModelWeights, "read", failing_read)
    for suffix in (".pt", ".ckpt", ".safetensors"):
        calls.clear()
        with pytest.raises(OSError, match="disk vanished"):
            convert_checkpoint(golden["pt"], tmp_path / f"out{suffix}", num_heads=4)
    assert os.listdir(tmp_path) == []  # neither outputs nor temporary files


def test_layout_mismatch_is_reported_before_writing(tmp_path):
    layout = release_layout(ModelSizes(64, 16, 64, 2, 8))
    tensors = {n: np.zeros(s, np.float16) for n, s in layout.items()}
    del tensors["language_model.transformer.layers.0.mlp.dense_4h_to_h.bias"]
    tensors["language_model.transformer.layers.1.attention.key.weight"] = np.zeros((16, 8), np.float16)
    save_weights(tmp_path / "bad.safetensors", tensors)
    with pytest.raises(LayoutMismatchError, match="1 missing, 0 unexpected, 1 with a wrong shape"):
        convert_checkpoint(tmp_path / "bad.safetensors", tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_load_weights_yields_model_names(golden):
    names = [name for name, _ in load_weights(golden["pt"])]
    assert names[0] == "language_model.embedding.word_embeddings.weight" and len(names) == 53


def test_cli_converts_and_reports_errors(golden, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = tmp_path / "cli.safetensors"
    done = subprocess.run([sys.executable, "-m", "codegeex_ms.convert", "--input", str(golden["pt"]),
                           "--output", str(out), "--quiet", "--num-heads", "4"], capture_output=True,
                          text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "2 layers + top-query layer, hidden 64" in done.stdout
    back = dict(load_weights(out))
    assert all(back[n[len("module."):]].tobytes() == a.tobytes() for n, a in _release_arrays(golden["pt"]).items())
    bad = subprocess.run([sys.executable, "-m", "codegeex_ms.convert", "--input", str(golden["pt"]),
                          "--output", str(tmp_path / "x.ckpt"), "--format", "pt"],
                         capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 2 and "error:" in bad.stderr and "extension" in bad.stderr


def _network(layout, dtype=np.float32):
    """A bare Cell tree whose parameter names are the layout's names."""
    root = nn.Cell()
    for name, shape in layout.items():
        *path, leaf = name.split(".")
        cell = root
        for key in path:
            if key not in cell._cells:  # pylint: disable=protected-access
                setattr(cell, key, nn.Cell())
            cell = cell._cells[key]  # pylint: disable=protected-access
        setattr(cell, leaf, Parameter(Tensor(np.zeros(shape, dtype)), name=name))
    return root


def _fixture_layout(config):
    return release_layout(ModelSizes(config["padded_vocab_size"], config["hidden_size"], 4 * config["hidden_size"],
                                     config["num_layers"], config["max_position_embeddings"]))


def test_load_into_network_casts_to_parameter_dtype(golden):
    net = _network(_fixture_layout(golden["config"]))
    loaded = load_into_network(net, golden["pt"])
    original = {n[len("module."):]: a for n, a in _release_arrays(golden["pt"]).items()}
    params = dict(net.parameters_and_names())
    assert sorted(loaded) == sorted(original)
    for name, array in original.items():
        assert params[name].dtype == ms.float32
        assert np.array_equal(params[name].asnumpy(), array.astype(np.float32)), name


def test_load_into_network_with_dtype_override(golden, tmp_path):
    convert_checkpoint(golden["pt"], tmp_path / "w32.safetensors", dtype="float32", num_heads=4)
    net = _network(_fixture_layout(golden["config"]))
    load_into_network(net, tmp_path / "w32.safetensors", dtype=ms.float16)
    original = {n[len("module."):]: a for n, a in _release_arrays(golden["pt"]).items()}
    for name, param in net.parameters_and_names():
        assert param.dtype == ms.float16 and param.asnumpy().tobytes() == original[name].tobytes(), name


def test_load_into_network_lists_every_problem_and_sets_nothing(golden):
    layout = dict(_fixture_layout(golden["config"]))
    del layout["language_model.transformer.final_layernorm.bias"]
    layout["language_model.transformer.layers.0.attention.dense.weight"] = (64, 32)
    layout["language_model.output_layer.weight"] = (1024, 64)
    net = _network(layout)
    with pytest.raises(LayoutMismatchError) as err:
        load_into_network(net, golden["pt"])
    assert err.value.missing == ["language_model.output_layer.weight"]
    assert err.value.unexpected == ["language_model.transformer.final_layernorm.bias"]
    assert err.value.mismatched == [("language_model.transformer.layers.0.attention.dense.weight", (64, 32), (64, 64))]
    assert all(not p.asnumpy().any() for _, p in net.parameters_and_names())
