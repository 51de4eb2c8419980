"""The CodeGeeX tokenizer: GPT-2 byte-level BPE, 143 added tokens and whitespace-run tokens.

Directory format (the released CodeGeeX/GPT-J files, and what ``tokenizer_train`` writes):

* ``vocab.json`` -- byte-level BPE vocabulary, ``<|endoftext|>`` included (50257 entries).
* ``merges.txt`` -- BPE merges (``#version`` header, one ``a b`` pair per line).
* ``added_tokens.json`` -- ``{"<|extratoken_X|>": eod_id + X}`` for X = 1..143.

Whitespace rule (reference section 3): a run of L spaces, 2 <= L <= 10, is the single token
``<|extratoken_{8+L}|>``, longest runs first (23 spaces -> 10 + 10 + 3). Here it is done inside the
``tokenizers`` library: those nine added tokens are registered with the *spaces themselves* as
content, and the library's added-token matcher (leftmost-longest) splits exactly as the reference
``str.replace`` cascade does, in Rust and in parallel for batches. Decoding turns them back into
spaces natively.

Deliberate difference from the reference (which replaces runs by the strings
``<|extratoken_10|>``..``<|extratoken_18|>`` and then tokenizes): a *literal* string
``<|extratoken_10..18|>`` in the input is encoded here as plain text, so ``decode(encode(x)) == x``
for every ``x``; the reference would map it to a whitespace id and decode it as spaces. All other
added tokens (``<|endoftext|>``, ``<|extratoken_1..9|>``, ``<|extratoken_19..143|>``) match
atomically in the input, as in the reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from codegeex_ms.env.paths import shared_data_dir

EOD_TOKEN = "<|endoftext|>"
NUM_EXTRA_TOKENS = 143
MIN_SPACE_RUN, MAX_SPACE_RUN = 2, 10
TOKENIZER_DIR_ENV = "CODEGEEX_TOKENIZER_DIR"
REQUIRED_FILES = ("vocab.json", "merges.txt", "added_tokens.json")



def extra_token(x: int) -> str:
    """Name of added token number ``x`` (1-based): ``<|extratoken_x|>``."""
    return f"<|extratoken_{x}|>"


def whitespace_extra_index(run_length: int) -> int:
    """Extra-token number encoding a run of ``run_length`` spaces (2..10 -> 10..18)."""
    if not MIN_SPACE_RUN <= run_length <= MAX_SPACE_RUN:
        raise ValueError(f"space runs of {run_length} have no token (only {MIN_SPACE_RUN}..{MAX_SPACE_RUN})")
    return 8 + run_length


def resolve_tokenizer_dir(path: str | os.PathLike | None = None) -> Path:
    """Tokenizer directory: ``path`` if given, else ``$CODEGEEX_TOKENIZER_DIR``, else
    ``<shared data>/codegeex_tokenizer``. Raises FileNotFoundError naming the first missing file."""
    if path is not None:
        source = "the given path"
    elif os.environ.get(TOKENIZER_DIR_ENV):
        path, source = os.environ[TOKENIZER_DIR_ENV], f"${TOKENIZER_DIR_ENV}"
    else:
        path, source = shared_data_dir() / "codegeex_tokenizer", "the shared data directory"
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {path} (from {source}) does not exist. Pass a directory holding "
            f"{', '.join(REQUIRED_FILES)}, set ${TOKENIZER_DIR_ENV}, or train one with "
            f"`python -m codegeex_ms.tokenizer_train`.")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"tokenizer directory {path} (from {source}) is incomplete: {name} is missing "
                f"(needed: {', '.join(REQUIRED_FILES)}).")
    return path


def _added_token_contents(added: dict[str, int], eod_id: int, where: Path) -> list[str]:
    """Contents of the added tokens in id order eod_id+1, eod_id+2, ...; whitespace tokens become
    their spaces. Raises ValueError if ids are not contiguous after ``eod_id`` or the nine
    whitespace tokens are missing."""
    by_id = sorted(added.items(), key=lambda kv: kv[1])
    expected = list(range(eod_id + 1, eod_id + 1 + len(by_id)))
    if [i for _, i in by_id] != expected:
        raise ValueError(f"{where}: added token ids must be {eod_id + 1}..{eod_id + len(by_id)} "
                         f"(right after <|endoftext|> = {eod_id}), found {[i for _, i in by_id][:5]}...")
    space_names = {extra_token(whitespace_extra_index(n)): " " * n
                   for n in range(MIN_SPACE_RUN, MAX_SPACE_RUN + 1)}
    missing = [name for name in space_names if name not in added]
    if missing:
        raise ValueError(f"{where}: whitespace tokens {missing} are missing; this is not a CodeGeeX "
                         f"tokenizer directory.")
    return [space_names.get(name, name) for name, _ in by_id]


class CodeGeeXTokenizer:
    """Byte-level BPE + added tokens + whitespace-run tokens (see module docstring).

    ``eod_id`` is the id of ``<|endoftext|>`` (50256 for the CodeGeeX files): BOS, EOS, EOD and
    padding. ``vocab_size`` counts real tokens, added ones included (50400 for the CodeGeeX files).
    """

    def __init__(self, tokenizer: Tokenizer, eod_id: int, source: Path | None = None):
        self._tok = tokenizer
        self.eod_id = int(eod_id)
        self.source = source
        self._literal = None  # copy that encodes <|endoftext|> in text as plain text, built lazily
        self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)  # O(V) to ask: ask once

    @classmethod
    def from_dir(cls, path: str | os.PathLike | None = None) -> "CodeGeeXTokenizer":
        """Load from a tokenizer directory (resolution: see ``resolve_tokenizer_dir``)."""
        path = resolve_tokenizer_dir(path)
        with open(path / "vocab.json", encoding="utf-8") as f:
            vocab = json.load(f)
        with open(path / "added_tokens.json", encoding="utf-8") as f:
            added = json.load(f)
        if EOD_TOKEN not in vocab:
            raise ValueError(f"{path / 'vocab.json'} has no {EOD_TOKEN} entry.")
        eod_id = vocab[EOD_TOKEN]
        if eod_id != len(vocab) - 1:
            raise ValueError(f"{path / 'vocab.json'}: {EOD_TOKEN} must be the last id "
                             f"({len(vocab) - 1}), found {eod_id}.")
        contents = _added_token_contents(added, eod_id, path / "added_tokens.json")

        tok = Tokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(EOD_TOKEN, special=True, normalized=False)])
        tok.add_tokens([AddedToken(c, special=False, normalized=False) for c in contents])
        for offset, content in enumerate(contents, start=1):
            if tok.token_to_id(content) != eod_id + offset:
                raise ValueError(f"{path}: added token {content!r} did not get id {eod_id + offset}.")
        return cls(tok, eod_id, path)

    @property
    def vocab_size(self) -> int:
        """Number of real token ids (BPE vocabulary + added tokens)."""
        return self._vocab_size

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def _encoder(self, allow_special: bool) -> Tokenizer:
        if allow_special:
            return self._tok
        if self._literal is None:
            self._literal = Tokenizer.from_str(self._tok.to_str())
            self._literal.encode_special_tokens = True
        return self._literal

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added). ``allow_special=False`` encodes a literal
        ``<|endoftext|>`` in the text as plain text instead of the EOD id."""
        return self._encoder(allow_special).encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = True) -> list[list[int]]:
        """``encode`` for many texts, in parallel threads inside ``tokenizers``."""
        encs = self._encoder(allow_special).encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encs]

    def _checked(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1}); "
                             f"ids of padded embedding rows must never be decoded.")
        return ids

    def decode(self, ids: Iterable[int], *, skip_eod: bool = False) -> str:
        """Text of ``ids``; ``<|endoftext|>`` is kept as text unless ``skip_eod``. Invalid UTF-8
        byte sequences become U+FFFD. Raises ValueError for an id outside the vocabulary."""
        return self._tok.decode(self._checked(ids), skip_special_tokens=skip_eod)

    def decode_batch(self, batch: Iterable[Iterable[int]], *, skip_eod: bool = False) -> list[str]:
        """``decode`` for many id sequences."""
        return self._tok.decode_batch([self._checked(ids) for ids in batch],
                                      skip_special_tokens=skip_eod)

    def __repr__(self) -> str:
        return f"CodeGeeXTokenizer(source={self.source}, vocab_size={self.vocab_size}, eod_id={self.eod_id})"
