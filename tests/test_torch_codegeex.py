"""The benchmark's PyTorch CodeGeeX (bench/torch_codegeex.py) is the same model: it reproduces the
golden fixture made with the official implementation (full forward and cached greedy decode)."""

import sys

import numpy as np
import torch

from codegeex_ms.env.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
from torch_codegeex import TorchCodeGeeX  # noqa: E402


def test_reproduces_the_golden_fixture(golden):
    c = golden["config"]
    net = TorchCodeGeeX(c["padded_vocab_size"], c["hidden_size"], c["num_attention_heads"],
                        c["num_layers"], c["max_position_embeddings"], eps=c["layernorm_epsilon"])
    net.load_release(torch.load(golden["pt"], map_location="cpu", weights_only=True)["module"])
    ids = torch.tensor(golden["input_ids"].astype(np.int64))
    net.reset(ids.shape[0])
    full = net(ids, 0).numpy()
    # FP32 math on FP16-rounded weights on both sides: the reference document bounds a faithful
    # port's error at ~1e-4.
    assert np.abs(full - golden["logits_full"]).max() < 1e-4
    prompt = torch.tensor(golden["decode_prompt_ids"].astype(np.int64))
    net.reset(prompt.shape[0])
    logits = net(prompt, 0)[:, -1]
    tokens, steps = [], [logits.numpy()]
    start = prompt.shape[1]
    for k in range(golden["decode_greedy_ids"].shape[1]):
        tok = logits.argmax(-1)
        tokens.append(tok.numpy())
        if k + 1 < golden["decode_greedy_ids"].shape[1]:
            logits = net(tok[:, None], start + k)[:, -1]
            steps.append(logits.numpy())
    assert np.array_equal(np.stack(tokens, 1), golden["decode_greedy_ids"])
    assert np.abs(np.stack(steps, 1) - golden["decode_step_logits"]).max() < 1e-4
