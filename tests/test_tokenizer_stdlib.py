"""Tokenizer parity with the reference on every .py file of this machine's standard library.

Reference: HF ``GPT2TokenizerFast`` over the CodeGeeX files, on text where space runs were replaced
by ``<|extratoken_{8+L}|>`` (longest first). Files are decoded with their declared source encoding
(PEP 263); the few that declare none validly are decoded as Latin-1 so every file is covered.
"""

import io
import os
import sysconfig
import time
import tokenize
from pathlib import Path

import pytest

from test_tokenizer import CODEGEEX_DIR, reference_encode, reference_tokenizer

from codegeex_ms.data.tokenizer import CodeGeeXTokenizer


def stdlib_py_files():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "dist-packages"))
        files += [Path(dirpath) / n for n in sorted(names) if n.endswith(".py")]
    return files


def read_source(path):
    data = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding), False
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return data.decode("latin-1"), True


def test_stdlib_parity_and_round_trip():
    if not (CODEGEEX_DIR / "vocab.json").exists():
        pytest.skip(f"CodeGeeX tokenizer files missing: {CODEGEEX_DIR}")
    files = stdlib_py_files()
    assert len(files) > 500, "standard library not found"
    texts, fallback = [], 0
    for path in files:
        text, used_fallback = read_source(path)
        texts.append(text)
        fallback += used_fallback
    start = time.perf_counter()
    ours = CodeGeeXTokenizer.from_dir(CODEGEEX_DIR).encode_batch(texts)
    ours_s = time.perf_counter() - start
    theirs = reference_encode(reference_tokenizer(CODEGEEX_DIR), texts)
    mismatched = [str(files[i]) for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not mismatched, f"{len(mismatched)} files differ, e.g. {mismatched[:3]}"
    tok = CodeGeeXTokenizer.from_dir(CODEGEEX_DIR)
    not_round_tripped = [str(f) for f, t, d in zip(files, texts, tok.decode_batch(ours)) if d != t]
    assert not not_round_tripped, not_round_tripped[:3]
    print(f"stdlib parity: {len(files)} files ({fallback} decoded as Latin-1), "
          f"{sum(map(len, texts))} characters, {sum(map(len, ours))} tokens identical; "
          f"our encode {ours_s:.1f} s")
