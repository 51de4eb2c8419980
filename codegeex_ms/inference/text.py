"""Incremental detokenization and stop strings: per new token, work on the new text only.

:class:`IncrementalText` keeps ``tokenizer.decode(tokens)`` up to date by decoding only the
tokens since the last clean boundary (a point where the text so far ended in a complete
character): byte-level BPE decodes the bytes of all tokens as UTF-8, so once a prefix decodes
without a trailing U+FFFD its text no longer depends on what follows.
:class:`StopStrings` finds the earliest stop string by searching only the text that changed
(plus the last ``len(stop) - 1`` characters before it).
"""

from __future__ import annotations

from typing import Optional, Sequence

REPLACEMENT = "\ufffd"


class IncrementalText:
    """``text`` equals ``decode(tokens)`` after every :meth:`push`; ``stable`` is the length of
    the prefix that later tokens can no longer change."""

    def __init__(self, decode):
        self._decode = decode
        self.tokens = []
        self._committed = ""        # decode(tokens[:self._start]), ends on a complete character
        self._start = 0
        self.text = ""

    @property
    def stable(self) -> int:
        return len(self._committed)

    def push(self, token: int) -> str:
        """Add ``token``; returns the whole text."""
        self.tokens.append(int(token))
        piece = self._decode(self.tokens[self._start:])
        if piece.endswith(REPLACEMENT):
            self.text = self._committed + piece
        else:
            self._committed += piece
            self._start = len(self.tokens)
            self.text = self._committed
        return self.text


class StopStrings:
    """The earliest occurrence of any of ``stops`` in a growing text, searching new text only.

    :meth:`find` must be called after each change with the text and ``unchanged``, the length
    of the prefix that equals the previous call's text.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, unchanged: int) -> Optional[int]:
        """Index of the first stop string in ``text`` (None: none), given that no stop string
        lay within ``text[:unchanged]`` before."""
        if not self.stops:
            return None
        begin = max(0, unchanged - self._longest + 1)
        cuts = [i for i in (text.find(s, begin) for s in self.stops) if i >= 0]
        return min(cuts) if cuts else None

    @property
    def holdback(self) -> int:
        """Characters at the end of a streamed text that may still begin a stop string."""
        return self._longest
