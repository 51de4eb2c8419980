"""The compiled inference graph of the model: no operator copies a parameter.

MindSpore copies a parameter (``TensorMove``) when it is read on both sides of a call it cannot
inline, such as a Cell with a custom ``bprop``: the tied word-embedding table, read by the
embedding lookup and by the head, was then copied twice per forward (decode step). The check
reads the graph MindSpore compiled (``save_graphs``), for FP32 and INT8 layers.
"""

import re

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.config import load_config
from codegeex_ms.model.build import build_model
from codegeex_ms.model.kv_cache import CachedDecoder

TINY = ("model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_hidden_size=64",
        "model.vocab_size=64", "model.real_vocab_size=64", "model.eod_token_id=63",
        "model.max_position_embeddings=32", "model.dropout=0.0", "train.seq_length=32")


def compiled_graph_text(tmp_path, run) -> str:
    """The last ``auto_monad_reorder`` IR (where MindSpore adds parameter copies) of ``run()``'s graphs."""
    ms.set_context(save_graphs=1, save_graphs_path=str(tmp_path))
    try:
        run()
    finally:
        ms.set_context(save_graphs=0)
    files = sorted(tmp_path.glob("*auto_monad_reorder*.ir"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert files, f"no IR written under {tmp_path}"
    return files[-1].read_text()


@pytest.mark.parametrize("quant", ["none", "int8"])
def test_decode_step_graph_copies_no_parameter(tmp_path, quant):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(None, TINY + (f"model.weight_quant={quant}",)).model
    net = build_model(cfg)
    net.set_train(False)
    decoder = CachedDecoder(net, 1, 16)

    def run():
        decoder.prefill([[1, 2, 3]])
        decoder.decode([4])

    text = compiled_graph_text(tmp_path, run)
    assert "word_embeddings.weight" in text        # the table is read in the graph checked
    copies = re.findall(r"= TensorMove\(", text)
    assert not copies, f"{len(copies)} parameter copies (TensorMove) in the decode step's graph"
    assert np.isfinite(decoder.decode([5])).all()
