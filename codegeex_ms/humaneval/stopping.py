"""Language-aware stop rules for HumanEval-X completions (reference section 7).

Python: a completion ends before its first non-empty line that does not start with a space or a
tab (this covers ``\\ndef``, ``\\nclass``, ``\\nif``, ``\\n#`` and ``\\nprint``). Brace languages
(C++, Java, JavaScript, Go, Rust): a completion ends at the first ``}`` where the number of ``}``
seen exceeds the number of ``{`` by one, i.e. the brace closing the function the prompt opened.
Braces inside strings and comments count too, as in the reference rule.

The same rule serves two users: the decoder asks after each token, and the evaluator cuts the
completion with :func:`truncate_completion`. :class:`StopScanner` applies the rule incrementally
(each character is looked at once, however often it is asked), and :func:`make_stop_fn` returns
a ``text -> bool`` test that reuses the scanner of the text it was last asked about.
"""

import copy
from collections import OrderedDict
from typing import Optional

from ..data.languages import get_language


class StopScanner:
    """:func:`stop_index` of a growing text, scanning only characters not seen before.

    ``scan(text)`` returns the stop index of ``text`` (None: not ended), provided every earlier
    call was given a prefix of it; :meth:`fork` copies the state (for a text that may still be
    rewritten after the point scanned so far, e.g. a half-decoded character).
    """

    def __init__(self, language: str):
        self.braces = get_language(language).braces
        self.pos = 0                # characters consumed
        self.depth = 0              # brace languages: '{' minus '}' so far
        self.line_start = 0         # Python: index where the current line starts
        self.line_first = None      # Python: the current line's first character (None: empty)
        self.found = None

    def fork(self) -> "StopScanner":
        return copy.copy(self)

    def scan(self, text: str, end: Optional[int] = None) -> Optional[int]:
        """Consume ``text[pos:end]`` (``end``: default the whole text); the stop index or None."""
        end = len(text) if end is None else end
        if self.found is not None or end <= self.pos:
            return self.found
        if self.braces:
            for i in range(self.pos, end):
                ch = text[i]
                if ch == "{":
                    self.depth += 1
                elif ch == "}":
                    self.depth -= 1
                    if self.depth < 0:
                        self.found = i + 1
                        break
        else:
            for i in range(self.pos, end):
                ch = text[i]
                if ch == "\n":
                    self.line_start, self.line_first = i + 1, None
                    continue
                if self.line_first is None:
                    self.line_first = ch
                if self.line_first not in " \t" and not ch.isspace():
                    self.found = self.line_start
                    break
        self.pos = end
        return self.found


def stop_index(text: str, language: str):
    """Index where the completion ``text`` ends under the stop rule, or None if it has not ended.

    For Python the index is the start of the first non-indented non-empty line; for brace
    languages it is one past the closing ``}``.
    """
    lang = get_language(language)
    if lang.braces:
        depth = 0
        for i, ch in enumerate(text):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth < 0:
                    return i + 1
        return None
    start = 0
    for line in text.split("\n"):
        if line.strip() and line[0] not in " \t":
            return start
        start += len(line) + 1
    return None


def is_finished(text: str, language: str) -> bool:
    """True once the completion ``text`` has reached its stop point (usable as a decode stop test)."""
    return stop_index(text, language) is not None


class IncrementalStopFn:
    """``stop_fn(completion_text) -> bool`` for ``language`` that scans only new text.

    It remembers the scanners of the last ``memory`` texts it was asked about; a text that
    extends one of them (the usual case: the same row one token later) continues from that
    scanner, any other text is scanned from the start. :meth:`scanner` gives a fresh per-row
    :class:`StopScanner` to callers that track rows themselves.
    """

    def __init__(self, language: str, memory: int = 256):
        self.language = get_language(language).key
        self.memory = memory
        self._seen = OrderedDict()          # text -> scanner that has consumed it

    def scanner(self) -> StopScanner:
        return StopScanner(self.language)

    def __call__(self, text: str) -> bool:
        best = None
        for seen in reversed(self._seen):
            if text.startswith(seen) and (best is None or len(seen) > len(best)):
                best = seen
                if len(best) == len(text):
                    break
        scanner = self._seen[best].fork() if best is not None else self.scanner()
        if best is not None and len(best) == len(text):
            return scanner.found is not None
        finished = scanner.scan(text) is not None
        self._seen[text] = scanner
        while len(self._seen) > self.memory:
            self._seen.popitem(last=False)
        return finished


class LanguageStop:
    """``stop_fn(text) -> text cut at its stop point, or None`` for ``language``; generators
    that track rows call :meth:`scanner` for a per-row incremental :class:`StopScanner`."""

    def __init__(self, language: str):
        self.language = get_language(language).key

    def scanner(self) -> StopScanner:
        return StopScanner(self.language)

    def __call__(self, text: str) -> Optional[str]:
        end = stop_index(text, self.language)
        return None if end is None else text[:end]


def language_stop(language: str) -> Optional[LanguageStop]:
    """The stop rule of ``language`` (any name or alias of a HumanEval-X language), or None for a
    language without one; what generate, evaluate and serve hand to the generator."""
    try:
        return LanguageStop(language)
    except ValueError:
        return None


def make_stop_fn(language: str) -> IncrementalStopFn:
    """A one-argument ``stop_fn(completion_text) -> bool`` for ``language``, for generate_fn."""
    return IncrementalStopFn(language)


def truncate_completion(text: str, language: str) -> str:
    """Cut ``text`` at its stop point; text that never reached it is returned unchanged.

    For Java the generation stops at the method's closing brace, while the prompt also opened
    ``class Solution {``: a ``"\\n}"`` is appended to close the class.
    """
    key = get_language(language).key
    end = stop_index(text, key)
    if end is None:
        return text
    text = text[:end]
    if key == "java":
        text += "\n}"
    return text
