"""Config loading: inheritance, overrides, and errors that name the key and the rule."""

import textwrap

import pytest

from codegeex_ms.checkpoint.layout import model_parameters
from codegeex_ms.config import ConfigError, global_batch_size, load_config


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_13b():
    cfg = load_config()
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_heads) == (39, 5120, 40)
    assert model_parameters(cfg.model) == 12_873_943_040


def test_extends_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", """
        model: {hidden_size: 64, num_heads: 4, ffn_hidden_size: 256, num_layers: 3,
                max_position_embeddings: 64}
        train: {seq_length: 32, lr: 1.0e-3, min_lr: 1.0e-5}
    """)
    child = write(tmp_path, "child.yaml", """
        extends: base.yaml
        model: {num_layers: 1}
    """)
    cfg = load_config(str(child), ("model.num_heads=8", "train.lr=2e-3", "model.compute_dtype=float16"))
    assert cfg.model.num_layers == 1          # child over base
    assert cfg.model.hidden_size == 64        # inherited
    assert cfg.model.num_heads == 8           # --set over file
    assert cfg.train.lr == pytest.approx(2e-3)  # "2e-3" parsed as a float
    assert cfg.model.compute_dtype == "float16"


def test_builtin_configs_load():
    for name in ("codegeex_13b.yaml", "tiny.yaml", "small.yaml", "tiny_fixture.yaml",
                 "infer_13b_single_npu.yaml"):
        load_config(f"ascend_configs/{name}")
    assert load_config("ascend_configs/infer_13b_single_npu.yaml").model.param_dtype == "float16"


@pytest.mark.parametrize("overrides, message", [
    (("model.num_layer=2",), "unknown key(s) in section 'model': num_layer"),
    (("modle.num_layers=2",), "unknown section(s): modle"),
    (("model.num_layers=two",), "model.num_layers: expected int, got str"),
    (("model.num_layers=true",), "model.num_layers: expected int, got a boolean"),
    (("model.num_heads=48",), "model.num_heads: must divide model.hidden_size (5120 % 48 != 0)"),
    (("parallel.model_parallel=16",), "parallel.model_parallel: must divide model.num_heads (40 % 16 != 0)"),
    (("model.ffn_hidden_size=20484", "parallel.model_parallel=8"),
     "parallel.model_parallel: must divide model.ffn_hidden_size (20484 % 8 != 0)"),
    (("model.vocab_size=52225", "parallel.model_parallel=8"),
     "must divide the vocabulary rows model.vocab_size (52225 % 8 != 0)"),
    (("train.global_batch_size=3000", "parallel.data_parallel=192"),
     "train.global_batch_size: must equal train.micro_batch_size × parallel.data_parallel"),
    (("model.compute_dtype=bfloat17",), "model.compute_dtype: must be one of"),
    (("train.seq_length=4096",), "train.seq_length: must be in [1, model.max_position_embeddings=2048]"),
    (("model.num_layers",), "expected section.key=value"),
])
def test_bad_values_name_key_and_rule(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = write(tmp_path, "bad.yaml", "model: {hidden_size: 64\n  num_heads: [")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    scalar = write(tmp_path, "scalar.yaml", "42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(scalar))
    loop = write(tmp_path, "loop.yaml", "extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(str(loop))


def test_global_batch_of_the_paper():
    cfg = load_config(None, ("parallel.data_parallel=192", "parallel.model_parallel=8",
                             "train.global_batch_size=3072"))
    assert global_batch_size(cfg) == 3072
