"""Score token ids with a checkpoint: FP32 logits of a full forward or of cached decoding.

    python -m codegeex_ms.score --config tiny_fixture --checkpoint model.ckpt \
        --input-ids ids.npy --output logits.npy [--decode-from P]

Full forward: logits [B, S, V] for positions 0..S-1 under a causal mask. With ``--decode-from P``
the first P tokens are prefilled into the KV cache and the remaining S - P tokens are fed one at
a time; the output is [B, S - P + 1, V]: step 0 is the logits at position P - 1 after the
prefill, step k the logits after feeding token P + k - 1.
"""

import argparse
import sys

import numpy as np

from codegeex_ms import cli as cli_common


def parse_args(argv=None):
    parser = cli_common.ArgumentParser(prog="python -m codegeex_ms.score", description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_common.add_model_args(parser, adapter=False)
    parser.add_argument("--input-ids", required=True, help=".npy of int token ids [batch, seq]")
    parser.add_argument("--output", required=True, help=".npy to write the FP32 logits to")
    parser.add_argument("--decode-from", type=int, default=None, metavar="P",
                        help="prefill P tokens, then decode the rest one token at a time")
    return parser.parse_args(argv)


def load_input_ids(path: str, model_cfg) -> np.ndarray:
    """Read and validate a [batch, seq] integer id array."""
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--input-ids {path}: cannot read as .npy ({e})") from None
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise SystemExit(f"--input-ids {path}: expected integer ids of shape [batch, seq], "
                         f"got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= model_cfg.vocab_size):
        raise SystemExit(f"--input-ids {path}: ids must be in [0, {model_cfg.vocab_size}), "
                         f"got [{ids.min()}, {ids.max()}]")
    if ids.shape[1] > model_cfg.max_position_embeddings:
        raise SystemExit(f"--input-ids {path}: {ids.shape[1]} tokens exceed the "
                         f"{model_cfg.max_position_embeddings} positions of the model")
    return ids.astype(np.int32)


def full_logits(model, ids: np.ndarray) -> np.ndarray:
    """[B, S, V] FP32 logits of one causal forward at positions 0..S-1."""
    import mindspore as ms
    from codegeex_ms.data.masks import causal_mask, positions
    b, s = ids.shape
    out = model(ms.Tensor(ids), ms.Tensor(positions(b, s)), ms.Tensor(causal_mask(b, s)))
    return out.asnumpy()


def cached_logits(model, ids: np.ndarray, prefill: int) -> np.ndarray:
    """[B, S - P + 1, V] FP32 logits of prefill(P) followed by one-token decode steps, through
    the generator's :class:`~codegeex_ms.model.kv_cache.CachedDecoder`."""
    from codegeex_ms.model.kv_cache import CachedDecoder
    b, s = ids.shape
    decoder = CachedDecoder(model, b, s)
    steps = [decoder.prefill([row.tolist() for row in ids[:, :prefill]])]
    for t in range(prefill, s):
        steps.append(decoder.decode(ids[:, t]))
    return np.stack(steps, axis=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = cli_common.config_for_checkpoint(args, args.checkpoint)
    ids = load_input_ids(args.input_ids, cfg.model)
    if args.decode_from is not None and not 1 <= args.decode_from <= ids.shape[1]:
        raise SystemExit(f"--decode-from {args.decode_from}: must be in [1, {ids.shape[1]}]")

    from codegeex_ms.env import runtime
    from codegeex_ms.model.build import load_model
    runtime.setup(args.mode, args.device_target)
    model = load_model(cfg.model, args.checkpoint)
    model.set_train(False)
    if args.decode_from is None:
        logits = full_logits(model, ids)
    else:
        logits = cached_logits(model, ids, args.decode_from)
    np.save(args.output, logits.astype(np.float32))
    print(f"wrote {args.output}: logits {logits.shape} float32", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
