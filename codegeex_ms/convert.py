"""Convert CodeGeeX checkpoints between the PyTorch release (.pt), MindSpore .ckpt and .safetensors.

    python -m codegeex_ms.convert --input codegeex_13b.pt --output codegeex_13b.ckpt

The input format is detected from its content, the output format from ``--format`` or the output
extension. Model sizes are inferred from the tensor shapes and the names/shapes checked against
the release layout before anything is written. One tensor is in memory at a time; the output
appears only when complete.
"""

import argparse
import logging
import sys
from typing import Optional

import numpy as np

from . import cli as cli_common
from .checkpoint import dtypes
from .checkpoint.layout import ModelSizes, check_layout
from .checkpoint.model_sizes import recorded_sizes, shape_sizes, sizes_metadata
from .checkpoint.rewrite import Transform, rewrite_checkpoint
from .checkpoint.sources import open_weights
from .checkpoint.writers import FORMATS, output_format
from .config import DTYPES


def convert_checkpoint(input_path, output_path, fmt: Optional[str] = None, dtype: Optional[str] = None,
                       from_ms17: Optional[bool] = None, num_heads: Optional[int] = None,
                       progress: bool = False) -> ModelSizes:
    """Convert ``input_path`` to ``output_path`` in the release layout; return the inferred sizes.

    ``fmt``: "ckpt", "safetensors" or "pt" (default: from the output extension). ``dtype``:
    "float16"/"float32" to cast every tensor, None to keep the stored dtypes. ``from_ms17``: force
    (True) the MindSpore 1.7 name mapping; None detects it.
    .ckpt/.safetensors outputs record the model (see ``checkpoint.model_sizes``): the sizes seen
    in the shapes, what the input's metadata records (real vocabulary, EOD id) and the number of
    heads: ``num_heads``, else the input's metadata, else 40 for CodeGeeX-13B; if none of these
    tells it, ValueError asks for ``num_heads`` (a .pt output has no metadata and needs none).
    Raises LayoutMismatchError (all problems at once) if the input is not the release layout.
    """
    fmt = output_format(output_path, fmt)

    def metadata(weights, sizes):
        if sizes.num_attention_heads is None:
            raise ValueError(f"cannot tell the number of attention heads of {input_path} (hidden "
                             f"size {sizes.hidden_size}; its metadata does not record it): pass "
                             "--num-heads N")
        return sizes_metadata({**recorded_sizes(weights.metadata), **shape_sizes(
            {name: info.shape for name, info in weights.infos.items()}), "num_heads": sizes.num_attention_heads})

    return rewrite_checkpoint(input_path, output_path, fmt, Transform(metadata=metadata) if fmt != "pt"
                              else Transform(), dtype, from_ms17, num_heads, progress=progress).sizes


def verify_conversion(input_path, output_path, from_ms17: Optional[bool] = None) -> dict:
    """Check, one tensor at a time, that ``output_path`` holds exactly the tensors of ``input_path``.

    Both files are read under the model's names; every tensor must have the same shape and its
    bytes must equal the input's after casting to the output's dtype (so a straight conversion
    is compared bit for bit). Returns ``{"tensors": n, "bytes": output tensor bytes}``; raises
    ValueError naming the first tensor that differs, or every missing/unexpected name.
    """
    with open_weights(input_path, from_ms17) as src, open_weights(output_path) as dst:
        check_layout({n: i.shape for n, i in dst.infos.items()}, {n: i.shape for n, i in src.infos.items()},
                     what=f"{output_path} (against {input_path})")
        count, nbytes = 0, 0
        for name, info in dst.infos.items():
            expected = src.read(name).astype(dtypes.np_dtype(info.dtype), copy=False)
            got = dst.read(name)
            if got.dtype != expected.dtype or not _same_bytes(got, expected):
                raise ValueError(f"{output_path}: tensor '{name}' differs from {input_path}; "
                                 f"the conversion is wrong or one file is damaged.")
            count, nbytes = count + 1, nbytes + got.nbytes
            del expected, got
    return {"tensors": count, "bytes": nbytes}


def _same_bytes(a, b, chunk: int = 1 << 24) -> bool:
    """Whether C-contiguous arrays ``a`` and ``b`` hold the same bytes (compared ``chunk`` at a time,
    so no full-size temporary is made)."""
    x, y = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    return x.size == y.size and all(np.array_equal(x[i:i + chunk], y[i:i + chunk])
                                    for i in range(0, x.size, chunk))


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = cli_common.ArgumentParser(
        prog="python -m codegeex_ms.convert",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Examples:\n"
               "  python -m codegeex_ms.convert --input codegeex_13b.pt --output codegeex_13b.ckpt\n"
               "  python -m codegeex_ms.convert --input codegeex_13b.pt --output w.safetensors --dtype float32\n"
               "  python -m codegeex_ms.convert --input codegeex_13b.ckpt --output codegeex_13b.pt\n"
               "  python -m codegeex_ms.convert --input ms17_merged.ckpt --output codegeex_13b.ckpt --from-ms17\n"
               "Peak memory is about one tensor (the largest, the word embedding, is 0.5 GiB in FP16 "
               "for 13B), so a 26 GB checkpoint converts on a 24 GiB machine.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_common.add_io_args(parser,
                           "checkpoint to read: PyTorch zip .pt (release layout, or a state dict with "
                           "the same names), MindSpore .ckpt or .safetensors; detected from the content",
                           "file to write; written to a temporary file in the same directory and "
                           "renamed when complete, with a checksum manifest <output>.manifest.json")
    parser.add_argument("--format", choices=FORMATS,
                        help="output format (default: from the output extension .ckpt/.safetensors/.pt)")
    parser.add_argument("--dtype", choices=DTYPES,
                        help="cast every tensor to this dtype (default: keep the stored dtypes; the "
                             "release is float16)")
    parser.add_argument("--from-ms17", action="store_true",
                        help="the input uses the parameter names of the original MindSpore 1.7 training code "
                             "(backbone.*; auto-detected otherwise); optimizer moments are ignored")
    parser.add_argument("--num-heads", type=int, metavar="N",
                        help="number of attention heads, recorded in .ckpt/.safetensors outputs "
                             "(default: the input's metadata, else 40 for CodeGeeX-13B; other "
                             "inputs without it must give it)")
    cli_common.add_quiet_arg(parser, "no progress bar")
    return parser


def main(argv=None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    sizes = convert_checkpoint(args.input, args.output, args.format, args.dtype,
                               True if args.from_ms17 else None, args.num_heads, progress=not args.quiet)
    print(f"wrote {args.output}: {sizes.num_layers} layers + top-query layer, hidden {sizes.hidden_size}, "
          f"FFN {sizes.ffn_hidden_size}, vocab rows {sizes.vocab_size}, positions "
          f"{sizes.max_position_embeddings}, heads {sizes.num_attention_heads}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
