"""Write a synthetic CodeGeeX release checkpoint (.pt): the release's layout, random FP16 values.

Default sizes are CodeGeeX-13B's (12,873,943,040 parameters, 25.75 GB); ``--hidden``, ``--ffn``,
``--layers``, ``--vocab``, ``--positions`` make a smaller one. Deterministic for ``--seed`` (see
``codegeex_ms.checkpoint.synthetic``); one tensor in memory at a time; the file appears only
when complete.

    python bench/make_synthetic_release.py --output /big/disk/codegeex_13b.pt [--seed 0]
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from codegeex_ms.checkpoint.layout import CODEGEEX_13B, num_parameters, release_layout  # noqa: E402
from codegeex_ms.checkpoint.synthetic import write_synthetic_release  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--output", required=True, type=Path, help="the .pt file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=CODEGEEX_13B.hidden_size)
    parser.add_argument("--ffn", type=int, default=CODEGEEX_13B.ffn_hidden_size)
    parser.add_argument("--layers", type=int, default=CODEGEEX_13B.num_layers,
                        help="decoder layers without the top-query layer (39 for 13B)")
    parser.add_argument("--vocab", type=int, default=CODEGEEX_13B.vocab_size)
    parser.add_argument("--positions", type=int, default=CODEGEEX_13B.max_position_embeddings)
    args = parser.parse_args(argv)
    sizes = replace(CODEGEEX_13B, hidden_size=args.hidden, ffn_hidden_size=args.ffn, num_layers=args.layers,
                    vocab_size=args.vocab, max_position_embeddings=args.positions,
                    num_attention_heads=args.hidden // 128 if args.hidden % 128 == 0 else None)
    expected = num_parameters(release_layout(sizes))
    start = time.perf_counter()
    try:
        written = write_synthetic_release(args.output, sizes, args.seed)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    assert written == expected
    print(f"wrote {args.output}: {written:,} parameters, {args.output.stat().st_size / 1e9:.2f} GB "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
