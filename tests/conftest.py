"""Shared test helpers: where the shared data is, and skipping when it is absent."""

import json

import numpy as np
import pytest

from codegeex_ms.env.paths import shared_data_dir

FIXTURE = shared_data_dir() / "fixtures" / "codegeex_tiny_reference"


@pytest.fixture(scope="session")
def golden():
    """The golden fixture made by the official PyTorch implementation (see its README)."""
    needed = ["codegeex_release_layout.pt", "config.json", "input_ids.npy", "logits_full.npy",
              "decode_prompt_ids.npy", "decode_greedy_ids.npy", "decode_step_logits.npy"]
    missing = [n for n in needed if not (FIXTURE / n).exists()]
    if missing:
        pytest.skip(f"golden fixture files missing in {FIXTURE}: {', '.join(missing)}")
    data = {n[:-4]: np.load(FIXTURE / n) for n in needed if n.endswith(".npy")}
    data["config"] = json.loads((FIXTURE / "config.json").read_text())
    data["pt"] = FIXTURE / "codegeex_release_layout.pt"
    return data
