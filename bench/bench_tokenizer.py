"""Tokenizer throughput on this machine's Python standard library.

Encodes every ``.py`` file of the standard library (decoded with its declared source encoding,
Latin-1 when it declares none validly) with three batch encoders on the same threads:

* ``raw``: a plain GPT-2 byte-level BPE ``tokenizers.Tokenizer`` (no added tokens, no whitespace
  rule) -- the baseline;
* ``codegeex``: ``CodeGeeXTokenizer.encode_batch`` (whitespace tokens matched inside ``tokenizers``);
* ``reference``: HF ``GPT2TokenizerFast`` on text where the whitespace rule was applied with
  ``str.replace`` (the parity reference; timing includes the replacement).

Prints characters/s, tokens/s and their ratio to ``raw`` (best of ``--repeats``). The rayon pool
size is set with ``RAYON_NUM_THREADS`` before ``tokenizers`` is imported.

    python bench/bench_tokenizer.py [--threads 2] [--repeats 3] [--max-files N] [--json out.json]
"""

import argparse
import io
import json
import os
import sys
import sysconfig
import time
import tokenize
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def stdlib_texts(max_files=None):
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "dist-packages"))
        files += [Path(dirpath) / n for n in sorted(names) if n.endswith(".py")]
    texts = []
    for path in files[:max_files]:
        data = path.read_bytes()
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
            texts.append(data.decode(encoding))
        except (SyntaxError, LookupError, UnicodeDecodeError):
            texts.append(data.decode("latin-1"))
    return texts


def best_time(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="tokenizers (rayon) worker threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-files", type=int, default=None)
    p.add_argument("--tokenizer", default=None, help="CodeGeeX tokenizer directory")
    p.add_argument("--skip-reference", action="store_true", help="skip the slow HF reference row")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from codegeex_ms.data.tokenizer import CodeGeeXTokenizer

    ours = CodeGeeXTokenizer.from_dir(args.tokenizer)
    raw = Tokenizer(models.BPE.from_file(str(ours.source / "vocab.json"), str(ours.source / "merges.txt")))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    texts = stdlib_texts(args.max_files)
    chars = sum(map(len, texts))

    def run_reference():
        from transformers import GPT2TokenizerFast

        ref = GPT2TokenizerFast.from_pretrained(str(ours.source))
        ref.model_max_length = 10 ** 9

        def encode():
            replaced = []
            for text in texts:
                for n in range(10, 1, -1):
                    text = text.replace(" " * n, f"<|extratoken_{8 + n}|>")
                replaced.append(text)
            return ref(replaced, add_special_tokens=False)["input_ids"]
        return encode

    encoders = {
        "raw": lambda: [e.ids for e in raw.encode_batch(texts, add_special_tokens=False)],
        "codegeex": lambda: ours.encode_batch(texts),
    }
    if not args.skip_reference:
        encoders["reference"] = run_reference()
    rows = {}
    for name, fn in encoders.items():
        seconds, ids = best_time(fn, args.repeats)
        tokens = sum(map(len, ids))
        rows[name] = {"seconds": seconds, "tokens": tokens, "chars_per_s": chars / seconds,
                      "tokens_per_s": tokens / seconds}
    base = rows["raw"]
    for row in rows.values():
        row["tokens_per_s_ratio"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["chars_per_s_ratio"] = row["chars_per_s"] / base["chars_per_s"]

    print(f"corpus: {len(texts)} stdlib .py files, {chars / 1e6:.1f} M characters; "
          f"{args.threads} threads, best of {args.repeats}")
    print(f"{'encoder':<10} {'seconds':>8} {'tokens':>10} {'Mchar/s':>8} {'Ktok/s':>8} "
          f"{'tok/s vs raw':>13} {'char/s vs raw':>14}")
    for name, r in rows.items():
        print(f"{name:<10} {r['seconds']:8.2f} {r['tokens']:10d} {r['chars_per_s'] / 1e6:8.2f} "
              f"{r['tokens_per_s'] / 1e3:8.1f} {r['tokens_per_s_ratio']:13.2f} {r['chars_per_s_ratio']:14.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"files": len(texts), "chars": chars, "threads": args.threads,
                       "repeats": args.repeats, "encoders": rows}, f, indent=1)


if __name__ == "__main__":
    main()
