"""The training benchmark's PyTorch CodeGeeX (``bench/bench_train.py``: the modules of
``bench/torch_codegeex.py`` run through a differentiable, cache-free forward) is the same model:
it reproduces the golden fixture's logits and loss, from the release checkpoint and from this
project's parameter names, and its dropout is active only in training mode."""

import sys

import numpy as np
import pytest
import torch

from codegeex_ms.checkpoint import load_into_network
from codegeex_ms.config import load_config
from codegeex_ms.model.build import build_model
from codegeex_ms.env.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
from bench_train import release_module, torch_loss, torch_train_forward  # noqa: E402
from torch_codegeex import TorchCodeGeeX  # noqa: E402


def fixture_net(golden):
    c = golden["config"]
    return TorchCodeGeeX(c["padded_vocab_size"], c["hidden_size"], c["num_attention_heads"],
                         c["num_layers"], c["max_position_embeddings"], eps=c["layernorm_epsilon"])


def test_training_forward_reproduces_fixture_logits_and_loss(golden):
    net = fixture_net(golden)
    net.load_release(torch.load(golden["pt"], map_location="cpu", weights_only=True)["module"])
    net.eval()
    ids = torch.tensor(golden["input_ids"].astype(np.int64))
    logits = torch_train_forward(net, ids, p=0.1)  # eval mode: dropout inactive
    # FP32 math on FP16-rounded weights: the reference document bounds a faithful port at ~1e-4.
    assert np.abs(logits.detach().numpy() - golden["logits_full"]).max() < 1e-4
    mask = torch.ones(ids.shape[0], ids.shape[1] - 1)
    loss = torch_loss(net, ids[:, :-1], ids[:, 1:], mask)
    assert float(loss.detach()) == pytest.approx(golden["config"]["loss_next_token_mean"], abs=1e-5)
    # The loss mask: masking the second half of every row gives the mean over the first half.
    half = mask.clone()
    half[:, half.shape[1] // 2:] = 0
    per_token = torch.nn.functional.cross_entropy(
        torch_train_forward(net, ids[:, :-1]).reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
        reduction="none").reshape(mask.shape)
    expected = per_token[:, :half.shape[1] // 2].mean()
    assert float(torch_loss(net, ids[:, :-1], ids[:, 1:], half)) == pytest.approx(float(expected), rel=1e-6)


def test_weights_from_project_names_give_the_same_model(golden):
    """``release_module`` maps this project's parameter names onto the PyTorch modules."""
    cfg = load_config(str(REPO_ROOT / "ascend_configs" / "tiny_fixture.yaml"), ("model.fused_kernels=off",))
    model = build_model(cfg.model)
    load_into_network(model, golden["pt"])
    weights = {name: p.asnumpy() for name, p in model.parameters_and_names()}
    net = fixture_net(golden)
    net.load_release(release_module(weights))
    net.eval()
    logits = torch_train_forward(net, torch.tensor(golden["input_ids"].astype(np.int64)))
    assert np.abs(logits.detach().numpy() - golden["logits_full"]).max() < 1e-4


def test_dropout_only_in_training_mode_and_gradients_flow(golden):
    net = fixture_net(golden)
    net.load_release(torch.load(golden["pt"], map_location="cpu", weights_only=True)["module"])
    ids = torch.tensor(golden["input_ids"].astype(np.int64))
    net.eval()
    clean = torch_train_forward(net, ids, p=0.5)
    net.train()
    torch.manual_seed(0)
    noisy = torch_train_forward(net, ids, p=0.5)
    assert not torch.allclose(clean, noisy, atol=1e-3)
    loss = torch_loss(net, ids[:, :-1], ids[:, 1:], torch.ones(ids.shape[0], ids.shape[1] - 1), p=0.5)
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.top_query.weight.grad.abs().sum() > 0  # the top-query embedding is in the graph
