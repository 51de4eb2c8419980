"""Quantize a CodeGeeX checkpoint to INT8 weight-only (W8A16), and load INT8 checkpoints.

    python -m codegeex_ms.quantize --input codegeex_13b.pt --output codegeex_13b_int8.ckpt

The six linear weights of every layer become int8 with one FP32 scale per output row
(``<name>.weight_scale``; scheme in ``codegeex_ms.model.quant``); embeddings, LayerNorms and
biases are copied unchanged (or cast with ``--dtype``). The output (.ckpt or .safetensors) records
``weight_quant=int8`` in its metadata; ``codegeex_ms.generate`` then builds the INT8 network by
itself. Tensors are read, quantized and written one at a time, so the 26 GB release needs about
one tensor's worth of memory (~1 GB for the largest linear weight), not the file size.
"""

import argparse
import logging
import os
import sys
from typing import Optional

from . import cli as cli_common
from .checkpoint import dtypes
from .checkpoint.layout import sizes_of
from .checkpoint.rewrite import Transform, rewrite_checkpoint
from .checkpoint.writers import output_format
from .config import DTYPES
from .model.quant import (METADATA_KEY, SCALE_DTYPE, is_quantized_layout, is_quantized_weight,
                          quantize_tensors, quantized_infos)

SCHEME = "int8 per output row, scale = absmax/127 (float32), symmetric [-127, 127]"
FORMATS = ("ckpt", "safetensors")


def _refuse_int8(weights) -> None:
    if weights.metadata.get(METADATA_KEY) == "int8" or is_quantized_layout(weights.infos):
        raise ValueError(f"{weights.path} is already an INT8 checkpoint; give the float checkpoint.")


def _int8_metadata(weights, sizes) -> dict:
    metadata = {METADATA_KEY: "int8", "weight_quant_scheme": SCHEME}
    if sizes.num_attention_heads is not None:
        metadata["num_attention_heads"] = str(sizes.num_attention_heads)
    return metadata


INT8 = Transform(refuse=_refuse_int8, infos=quantized_infos, tensors=quantize_tensors, metadata=_int8_metadata)


def quantize_checkpoint(input_path, output_path, model_config=None, fmt: Optional[str] = None,
                        dtype: Optional[str] = None, progress: bool = False) -> dict:
    """Write the INT8 version of checkpoint ``input_path`` (any format, release layout) to
    ``output_path`` (.ckpt or .safetensors). ``model_config``: check the input against its sizes
    (default: infer them from the shapes). ``dtype``: cast the tensors that stay float.

    Returns byte counts: ``linear_in`` (the input's linear weights), ``linear_out`` (int8 weights
    + scales), ``file_in``, ``file_out``. Raises CheckpointError / ValueError on bad input.
    """
    fmt = output_format(output_path, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"{output_path}: INT8 checkpoints are written as .ckpt or .safetensors "
                         f"(the .pt release format has no place for the scales); change the extension.")
    done = rewrite_checkpoint(input_path, output_path, fmt, INT8, dtype,
                              sizes=sizes_of(model_config) if model_config is not None else None,
                              progress=progress)
    linear_in = sum(i.numel * dtypes.itemsize(i.dtype) for n, i in done.inputs.items() if is_quantized_weight(n))
    linear_out = sum(i.numel * dtypes.itemsize(i.dtype) for n, i in done.outputs.items()
                     if i.dtype == "int8" or n.endswith("weight_scale"))
    return {"linear_in": linear_in, "linear_out": linear_out, "file_in": os.path.getsize(input_path),
            "file_out": os.path.getsize(output_path)}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = cli_common.ArgumentParser(
        prog="python -m codegeex_ms.quantize", description=__doc__.split("\n\n", 1)[0],
        epilog="Examples:\n"
               "  python -m codegeex_ms.quantize --input codegeex_13b.pt --output codegeex_13b_int8.ckpt\n"
               "  python -m codegeex_ms.quantize --input tiny.ckpt --output tiny_int8.safetensors "
               "--config tiny\n"
               "Then: python -m codegeex_ms.generate --config infer_13b_single_npu "
               "--checkpoint codegeex_13b_int8.ckpt --prompt ...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_common.add_io_args(parser, "float checkpoint: release .pt, MindSpore .ckpt or .safetensors "
                                   "(detected from the content)",
                           "INT8 checkpoint to write (.ckpt or .safetensors); appears only when "
                           "complete, with a checksum manifest <output>.manifest.json")
    cli_common.add_config_args(parser)
    parser.add_argument("--dtype", choices=DTYPES,
                        help="cast the tensors that stay float (embeddings, LayerNorms, biases); "
                             "default: keep the stored dtype (the release is float16)")
    cli_common.add_quiet_arg(parser, "no progress bar")
    return parser


def main(argv=None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    model_config = (cli_common.config_for_checkpoint(args, args.input).model
                    if args.config or args.overrides else None)
    out = quantize_checkpoint(args.input, args.output, model_config, dtype=args.dtype, progress=not args.quiet)
    print(f"wrote {args.output}: linear weights {out['linear_in'] / 2**20:.1f} MiB -> "
          f"{out['linear_out'] / 2**20:.1f} MiB (int8 + {SCALE_DTYPE} row scales); file "
          f"{out['file_in'] / 2**20:.1f} MiB -> {out['file_out'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
