"""The micro-batch stream of one rank, restartable at any position.

Rank ``shard_id`` of ``num_shards`` reads its own shard; how many shards there are and how many
samples each rank reads per micro-step is ``codegeex_ms.train.distributed.data_layout``'s choice
(one shard per device, ``micro_batch_size × data_parallel / world`` samples each).
The position is the number of micro-batches this rank has consumed since the start of training
(stored in checkpoints). Sample order, epochs and sharding are those of
``codegeex_ms.data.sampling.sample_order``, so the stream resumed at position ``k`` is the
uninterrupted stream without its first ``k`` batches.
"""

from pathlib import Path

import numpy as np

from codegeex_ms.config import ConfigError


def _num_samples(cfg) -> int:
    """Samples in the training data of ``cfg`` (one pass)."""
    if cfg.data.finetune:
        from codegeex_ms.data.finetune_dataset import read_pairs  # pylint: disable=import-outside-toplevel
        return len(read_pairs(cfg.data.train_path)[0])
    from codegeex_ms.data.mindrecord_io import check_shards, resolve_shards  # pylint: disable=import-outside-toplevel
    files, manifest = resolve_shards(cfg.data.train_path)
    return sum(check_shards(files, cfg.train.seq_length + 1, manifest))


def _dataset(cfg, shard_id: int, num_shards: int, skip_samples: int, num_epochs: int):
    """Single-sample batches of this rank's stream from ``skip_samples`` to the end of epoch
    ``num_epochs`` (MindDataset's subset sampler takes at most one pass of indices at a time)."""
    common = dict(shuffle=cfg.data.shuffle, seed=cfg.train.seed, num_shards=num_shards,
                  shard_id=shard_id, skip_samples=skip_samples, drop_remainder=True,
                  num_parallel_workers=cfg.data.num_workers, num_epochs=num_epochs)
    if cfg.data.finetune:
        from codegeex_ms.data.finetune_dataset import create_finetune_dataset  # pylint: disable=import-outside-toplevel
        from codegeex_ms.data.tokenizer import CodeGeeXTokenizer  # pylint: disable=import-outside-toplevel
        tokenizer = CodeGeeXTokenizer.from_dir(cfg.tokenizer.path or None)
        return create_finetune_dataset(cfg.data.train_path, tokenizer, cfg.train.seq_length, 1, **common)
    from codegeex_ms.data.pretrain_dataset import create_pretrain_dataset  # pylint: disable=import-outside-toplevel
    return create_pretrain_dataset(cfg.data.train_path, cfg.train.seq_length, 1,
                                   eod_reset=cfg.data.eod_reset, eod_id=cfg.model.eod_token_id,
                                   **common)


def check_data(cfg) -> None:
    """ConfigError when ``data.train_path`` is unset, FileNotFoundError when it is missing."""
    if not cfg.data.train_path:
        raise ConfigError("data.train_path is empty: set it to the preprocessed MindRecord directory "
                          "(or a .jsonl with data.finetune=true), e.g. --set data.train_path=DIR")
    if not Path(cfg.data.train_path).exists():
        raise FileNotFoundError(f"data.train_path {cfg.data.train_path} does not exist; run "
                                "`python -m codegeex_ms.preprocess` first or fix the path.")


def micro_batches(cfg, shard_id: int, num_shards: int, start: int, count: int, batch_size: int = 0):
    """Yield ``count`` micro-batches (tuples of the five int32/uint8/float32 NumPy columns, see
    ``CodeGeeXWithLoss``) of ``batch_size`` rows (0 = ``train.micro_batch_size``) of rank
    ``shard_id`` of ``num_shards``, starting at position ``start`` (in micro-batches)."""
    if count <= 0:
        return
    check_data(cfg)
    micro = batch_size or cfg.train.micro_batch_size
    per_rank = _num_samples(cfg) // num_shards
    position, end, rows = start * micro, (start + count) * micro, []
    while position < end:  # one epoch (or its remainder) at a time
        dataset = _dataset(cfg, shard_id, num_shards, position, position // per_rank + 1)
        for row in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
            rows.append(row)
            position += 1
            if len(rows) == micro:
                yield tuple(np.concatenate(column) for column in zip(*rows))
                rows = []
            if position == end:
                break
