"""``python -m codegeex_ms.lora merge --base X --adapter A --out Y [--dtype float16|float32|int8]``.

Folds a LoRA adapter (``adapter_final.ckpt`` of a LoRA training run) into its base checkpoint,
streaming one tensor at a time (see :mod:`codegeex_ms.lora.merge`). Training itself is
``python -m codegeex_ms.train`` with a config whose ``lora.rank > 0`` (e.g.
``finetune_13b_lora_1npu``). Errors and exit status follow :mod:`codegeex_ms.cli`.
"""

import argparse
import logging
import sys

from codegeex_ms import cli as cli_common


def build_parser() -> argparse.ArgumentParser:
    parser = cli_common.ArgumentParser(
        prog="python -m codegeex_ms.lora", description="LoRA adapters of CodeGeeX.",
        epilog="Example:\n  python -m codegeex_ms.lora merge --base codegeex_13b.pt "
               "--adapter out/adapter_final.ckpt --out codegeex_13b_ft.ckpt --dtype float16",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="write base + adapter as one checkpoint")
    merge.add_argument("--base", required=True, help="the base checkpoint the adapter was trained on "
                                                     "(release .pt, .ckpt or .safetensors; FP16/FP32 or INT8)")
    merge.add_argument("--adapter", required=True, help="adapter file (adapter_final.ckpt)")
    merge.add_argument("--out", required=True, help="merged checkpoint to write (.ckpt, .safetensors, "
                                                    "or .pt for float outputs); appears only when complete")
    merge.add_argument("--dtype", default="float16", choices=("float16", "float32", "int8"),
                       help="output dtype: float16 (default, like the release), float32, or int8 "
                            "(W8A16, re-quantized per output row)")
    cli_common.add_quiet_arg(merge, "no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from codegeex_ms.lora.merge import merge_adapter  # pylint: disable=import-outside-toplevel

    info = merge_adapter(args.base, args.adapter, args.out, args.dtype, progress=not args.quiet)
    print(f"wrote {args.out}: {info['merged']} weights merged, {info['tensors']} tensors, {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
