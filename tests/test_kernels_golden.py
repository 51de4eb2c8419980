"""Golden parity (official PyTorch implementation, shared fixture) with the fused kernels on.

The same bounds as the foundation's parity tests (tests/test_golden.py), which run with the
built-in operators: FP32 logits within 1e-4 of the reference, the mean loss within 1e-5, and the
FP16 compute policy within 1e-2 with unchanged greedy choices.
"""

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.checkpoint import load_into_network
from codegeex_ms.config import load_config
from codegeex_ms.model import CodeGeeX, CodeGeeXWithLoss
from codegeex_ms.data.masks import causal_mask, positions
from codegeex_ms.env.paths import REPO_ROOT

CONFIG = str(REPO_ROOT / "ascend_configs" / "tiny_fixture.yaml")


def fused_fixture_model(golden, *overrides):
    cfg = load_config(CONFIG, ("model.fused_kernels=on",) + overrides)
    net = CodeGeeX(cfg.model)
    load_into_network(net, golden["pt"])
    net.set_train(False)
    layers = list(net.language_model.transformer.layers) + [net.language_model.transformer.topQueryLayer]
    assert all(l.mlp.activation.is_fused and l.attention.softmax.is_fused for l in layers)
    return net


@pytest.fixture(name="graph_mode")
def graph_mode_fixture():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.usefixtures("graph_mode")
def test_logits_and_loss_match_reference_with_fused_kernels(golden):
    net = fused_fixture_model(golden)
    ids = golden["input_ids"]
    b, s = ids.shape
    logits = net(ms.Tensor(ids), ms.Tensor(positions(b, s)), ms.Tensor(causal_mask(b, s))).asnumpy()
    assert np.abs(logits - golden["logits_full"]).max() < 1e-4
    loss = CodeGeeXWithLoss(net)(ms.Tensor(ids[:, :-1]), ms.Tensor(ids[:, 1:]),
                                 ms.Tensor(positions(b, s - 1)), ms.Tensor(causal_mask(b, s - 1)),
                                 ms.Tensor(np.ones((b, s - 1), np.float32)))
    assert float(loss.asnumpy()) == pytest.approx(golden["config"]["loss_next_token_mean"], abs=1e-5)


@pytest.mark.usefixtures("graph_mode")
def test_fp16_compute_with_fused_kernels_close_to_reference(golden):
    """FP16 scores and activations go through the kernels' FP16 paths (FP32 math inside)."""
    net = fused_fixture_model(golden, "model.compute_dtype=float16")
    ids = golden["input_ids"]
    b, s = ids.shape
    logits = net(ms.Tensor(ids), ms.Tensor(positions(b, s)), ms.Tensor(causal_mask(b, s))).asnumpy()
    err = np.abs(logits - golden["logits_full"]).max()
    assert 0 < err < 1e-2
    np.testing.assert_array_equal(logits.argmax(-1), golden["logits_full"].argmax(-1))
