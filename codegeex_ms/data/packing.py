"""Packing documents into fixed-length samples.

The token stream is ``doc_1 EOD doc_2 EOD ... doc_n EOD``; it is cut into consecutive,
non-overlapping samples of ``sample_length`` (= seq_length + 1) tokens, so a document longer than
the rest of a sample continues at the start of the next. Only the final sample is padded, with EOD.
"""

from __future__ import annotations

import numpy as np


class Packer:
    """Streaming packer: ``add`` documents, collect finished samples, then ``finish``."""

    def __init__(self, sample_length: int, eod_id: int):
        if sample_length < 2:
            raise ValueError(f"sample_length must be >= 2, got {sample_length}")
        self.sample_length = sample_length
        self.eod_id = eod_id
        self._buf = np.empty(sample_length, dtype=np.int32)
        self._fill = 0

    def _push(self, tokens: np.ndarray, out: list[np.ndarray]) -> None:
        pos = 0
        while pos < len(tokens):
            take = min(self.sample_length - self._fill, len(tokens) - pos)
            self._buf[self._fill:self._fill + take] = tokens[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == self.sample_length:
                out.append(self._buf.copy())
                self._fill = 0

    def add(self, tokens) -> list[np.ndarray]:
        """Append one document (token ids, no EOD) followed by EOD; returns the samples (int32
        [sample_length]) completed by it, possibly none."""
        out: list[np.ndarray] = []
        self._push(np.asarray(tokens, dtype=np.int32), out)
        self._push(np.array([self.eod_id], dtype=np.int32), out)
        return out

    def finish(self) -> tuple[np.ndarray | None, int]:
        """The last, EOD-padded sample (None if the stream ended on a sample boundary) and the
        number of padding tokens in it."""
        if self._fill == 0:
            return None, 0
        padding = self.sample_length - self._fill
        self._buf[self._fill:] = self.eod_id
        self._fill = 0
        return self._buf.copy(), padding
