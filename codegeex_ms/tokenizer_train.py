"""Train a CodeGeeX-style tokenizer from a corpus and save it in the CodeGeeX file format.

The result is a byte-level BPE of ``vocab_size`` entries whose last id is ``<|endoftext|>`` (like
GPT-2's 50257), followed by the 143 added tokens ``<|extratoken_1..143|>``; runs of 2..10 spaces
are the whitespace tokens, as in ``codegeex_ms.data.tokenizer``. The BPE is learned on text split
exactly where the whitespace tokens will split it, so no merges are spent on space runs.

Example::

    python -m codegeex_ms.tokenizer_train ~/src/cpython/Lib --vocab-size 8000 --output my_tok
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tqdm import tqdm

from codegeex_ms import cli as cli_common
from codegeex_ms.data.tokenizer import EOD_TOKEN, NUM_EXTRA_TOKENS, CodeGeeXTokenizer, extra_token

_SPACE_RUN = re.compile(" {2,10}")  # leftmost-longest, as the added-token matcher splits
_SPECIAL = {"content": EOD_TOKEN, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": True}


def _pieces(texts: Iterable[str]) -> Iterator[list[str]]:
    for text in texts:
        yield [piece for piece in _SPACE_RUN.split(text) if piece]


def write_tokenizer_files(vocab: dict[str, int], merges_file: Path, output_dir: Path) -> None:
    """Write ``vocab`` (+ ``<|endoftext|>`` as its last id), the merges and the added-token files
    into ``output_dir`` in the CodeGeeX layout."""
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    if EOD_TOKEN not in vocab:
        vocab[EOD_TOKEN] = len(vocab)
    eod_id = vocab[EOD_TOKEN]
    added = {extra_token(x): eod_id + x for x in range(1, NUM_EXTRA_TOKENS + 1)}
    files = {
        "vocab.json": vocab,
        "added_tokens.json": added,
        "special_tokens_map.json": {k: _SPECIAL for k in ("bos_token", "eos_token", "unk_token")},
        "tokenizer_config.json": {
            **{k: {**_SPECIAL, "__type": "AddedToken"} for k in ("unk_token", "bos_token", "eos_token")},
            "add_prefix_space": False, "errors": "replace", "model_max_length": 2048,
            "tokenizer_class": "GPT2Tokenizer"},
    }
    for name, content in files.items():
        with open(output_dir / name, "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False)
    (output_dir / "merges.txt").write_bytes(Path(merges_file).read_bytes())


def train_tokenizer(texts: Iterable[str], vocab_size: int, output_dir, *, min_frequency: int = 2,
                    show_progress: bool = False) -> CodeGeeXTokenizer:
    """Learn a byte-level BPE with at most ``vocab_size`` entries (``<|endoftext|>`` included; at
    least 257) from ``texts``, save it to ``output_dir`` and load it back."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be >= 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress, special_tokens=[])
    bpe.train_from_iterator(_pieces(texts), trainer=trainer)
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.model.save(tmp)
        with open(Path(tmp) / "vocab.json", encoding="utf-8") as f:
            vocab = json.load(f)
        write_tokenizer_files(vocab, Path(tmp) / "merges.txt", output_dir)
    return CodeGeeXTokenizer.from_dir(output_dir)


def corpus_texts(inputs: list, language_tags=None, progress: bool = False) -> Iterator[str]:
    """Texts as pre-training sees them (``tag line + "\\n" + code``) of every usable document in
    ``inputs`` (files, directories, JSONL; see ``codegeex_ms.data.sources``), unfiltered."""
    from codegeex_ms.data.languages import Languages
    from codegeex_ms.data.sources import discover, iter_units, load_unit

    languages = Languages.load(language_tags)
    for unit in tqdm(iter_units(discover(inputs)), unit="file", desc="reading", disable=not progress):
        doc, _ = load_unit(unit, languages)
        if doc is not None:
            yield languages.tag(doc.language) + "\n" + doc.text


def main(argv: list[str] | None = None) -> int:
    p = cli_common.ArgumentParser(
        prog="python -m codegeex_ms.tokenizer_train",
        description="Train a CodeGeeX-style tokenizer (byte-level BPE + <|endoftext|> + 143 added "
                    "tokens, space runs as whitespace tokens) on source files, directories or "
                    ".jsonl/.jsonl.gz files, and write vocab.json, merges.txt and added_tokens.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="source files, directories, .jsonl or .jsonl.gz files")
    p.add_argument("-o", "--output", required=True, type=Path, help="tokenizer directory to write")
    p.add_argument("--vocab-size", type=int, default=50257,
                   help="BPE vocabulary size including <|endoftext|> (143 added tokens follow)")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum count of a merged pair")
    p.add_argument("--language-tags", default=None,
                   help="language_tags.json (default: <shared data>/language_tags.json)")
    cli_common.add_quiet_arg(p, "no progress bars")
    args = p.parse_args(argv)
    try:
        tok = train_tokenizer(corpus_texts(args.inputs, args.language_tags, progress=not args.quiet),
                              args.vocab_size, args.output, min_frequency=args.min_frequency,
                              show_progress=not args.quiet)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {tok!r}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
