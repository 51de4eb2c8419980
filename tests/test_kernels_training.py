"""The tiny CodeGeeX trained 20 steps with fused kernels on and off: the loss curves agree.

Same initial weights, same batches (EOD-reset causal masks with padding), no dropout, FP32,
graph mode. The fused kernels differ from the built-in operators by a few FP32 ulps per call;
Adam turns that into relative parameter differences of the same order, so after 20 steps the
losses agree to ~1e-5 relative (measured: < 2e-6). A wrong kernel (e.g. a mask or gradient
error) changes the loss at the 1e-2 level or more within a few steps.
"""

import dataclasses

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from codegeex_ms.config import load_config
from codegeex_ms.model import CodeGeeXWithLoss
from codegeex_ms.model.build import build_model
from codegeex_ms.env.paths import REPO_ROOT

STEPS, BATCH, SEQ = 20, 4, 32


def make_batches(vocab, eod, steps, rng):
    """Learnable documents (counting 1..16 from a random start) separated by EOD, positions
    reset after each EOD, trailing padding."""
    assert vocab > 17 and eod == 0
    batches = []
    for _ in range(steps):
        starts = rng.integers(0, 16, size=(BATCH, 1))
        ids = ((starts + np.arange(SEQ + 1)) % 16 + 1).astype(np.int32)
        mask = np.zeros((BATCH, SEQ, SEQ), np.float32)
        pos = np.zeros((BATCH, SEQ), np.int32)
        loss_mask = np.ones((BATCH, SEQ), np.float32)
        for b in range(BATCH):
            eods = np.sort(rng.choice(np.arange(2, SEQ - 2), size=2, replace=False))
            ids[b, eods] = eod
            pad = int(rng.integers(0, 4))
            if pad:
                ids[b, SEQ + 1 - pad:] = eod
            start = 0
            for q in range(SEQ):
                if q < SEQ - pad:
                    mask[b, q, start:q + 1] = 1.0
                pos[b, q] = q - start
                if ids[b, q] == eod:
                    loss_mask[b, q] = 0.0
                    start = q + 1
        batches.append((ids[:, :-1].copy(), ids[:, 1:].copy(), pos, mask, loss_mask))
    return batches


def train_losses(cfg, fused, init_weights, batches):
    model = build_model(dataclasses.replace(cfg, fused_kernels=fused))
    fresh = {name: ms.Parameter(ms.Tensor(value), name=name) for name, value in init_weights.items()}
    not_loaded, _ = ms.load_param_into_net(model, fresh, strict_load=True)
    assert not not_loaded
    net = CodeGeeXWithLoss(model)
    assert all(layer.mlp.activation.is_fused == (fused == "on")
               for layer in model.language_model.transformer.layers)
    step = nn.TrainOneStepCell(net, nn.Adam(net.trainable_params(), learning_rate=3e-3))
    step.set_train()
    return np.array([float(step(*map(ms.Tensor, batch)).asnumpy()) for batch in batches])


@pytest.fixture(scope="module", name="graph_mode")
def graph_mode_fixture():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.usefixtures("graph_mode")
def test_twenty_steps_fused_on_and_off_agree():
    cfg = load_config(str(REPO_ROOT / "ascend_configs" / "tiny_fixture.yaml")).model
    assert cfg.dropout == 0.0 and cfg.compute_dtype == "float32"
    ms.set_seed(7)
    reference = build_model(dataclasses.replace(cfg, fused_kernels="off"))
    init_weights = {p.name: p.asnumpy().copy() for p in reference.get_parameters()}
    batches = make_batches(cfg.vocab_size, cfg.eod_token_id, STEPS, np.random.default_rng(0))
    on = train_losses(cfg, "on", init_weights, batches)
    off = train_losses(cfg, "off", init_weights, batches)
    assert np.isfinite(on).all()
    assert off[-1] < off[0] - 0.5, f"the tiny model should learn: {off}"
    np.testing.assert_allclose(on, off, rtol=1e-5, atol=0)
