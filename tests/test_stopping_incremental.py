"""Incremental stopping equals the full re-decode rule: detokenization, stop strings and the
HumanEval-X language rules, checked after every token/chunk on many random cases."""

import numpy as np
import pytest

from codegeex_ms.humaneval.stopping import IncrementalStopFn, LanguageStop, StopScanner, stop_index
from codegeex_ms.inference.text import IncrementalText, StopStrings
from codegeex_ms.env.paths import shared_data_dir

ALPHABET = list("ab{}\n \t\r") + ["\u3000", "é", "}\n", "{ "]
LANGUAGES = ["python", "cpp", "java", "js", "go", "rust"]


def random_text(rng, size):
    return "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), size=size))


@pytest.mark.parametrize("language", LANGUAGES)
def test_scanner_equals_the_rule_on_every_prefix(language):
    rng = np.random.default_rng(0)
    for _ in range(300):
        text = random_text(rng, int(rng.integers(0, 40)))
        scanner = StopScanner(language)
        end = 0
        while end < len(text):
            end = min(len(text), end + int(rng.integers(1, 5)))      # chunks of 1-4 characters
            assert scanner.scan(text, end) == stop_index(text[:end], language), (text, end)
        # A fork scanned further leaves the original where it was.
        assert StopScanner(language).scan(text) == stop_index(text, language)


def test_memoizing_stop_fn_with_interleaved_rows():
    rng = np.random.default_rng(1)
    for language in ("python", "go"):
        fn = IncrementalStopFn(language, memory=8)
        rows = [random_text(rng, 30) for _ in range(6)]
        for end in range(31):
            for row in rows:                  # rows of one batch ask in turn, as the decoder does
                assert fn(row[:end]) == (stop_index(row[:end], language) is not None)
        rule = LanguageStop(language)
        for row in rows:
            end = stop_index(row, language)
            assert rule(row) == (None if end is None else row[:end])


def test_stop_strings_equal_the_first_occurrence_rule():
    rng = np.random.default_rng(2)
    for _ in range(500):
        text = random_text(rng, int(rng.integers(1, 40)))
        stops = [random_text(rng, int(rng.integers(1, 4))) for _ in range(int(rng.integers(1, 4)))]
        finder = StopStrings(stops)
        for end in range(1, len(text) + 1):
            old = [text[:end].find(s) for s in stops if s in text[:end]]
            got = finder.find(text[:end], end - 1)
            assert got == (min(old) if old else None), (text, stops, end)
            if got is not None:
                break


@pytest.fixture(scope="module")
def tokenizer():
    if not (shared_data_dir() / "codegeex_tokenizer" / "vocab.json").exists():
        pytest.skip("shared tokenizer files missing")
    from codegeex_ms.data.tokenizer import CodeGeeXTokenizer
    return CodeGeeXTokenizer.from_dir(None)


def test_incremental_text_equals_decoding_everything(tokenizer):
    rng = np.random.default_rng(3)
    samples = ["def f(x):\n    return x  # 中文注释 😀\n", "naïve café — “quotes”", "    \t\t  spaces\n\n"]
    sequences = [tokenizer.encode(s) for s in samples]
    # Random ids split multi-byte characters and make invalid UTF-8 on purpose.
    sequences += [list(rng.integers(0, tokenizer.vocab_size, size=30)) for _ in range(40)]
    for ids in sequences:
        text = IncrementalText(tokenizer.decode)
        for k, token in enumerate(ids, 1):
            assert text.push(int(token)) == tokenizer.decode([int(t) for t in ids[:k]]), (ids, k)
            assert tokenizer.decode([int(t) for t in ids[:k]]).startswith(text.text[:text.stable])
