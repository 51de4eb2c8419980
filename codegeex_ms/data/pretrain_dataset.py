"""MindSpore training dataset over packed MindRecord shards, with EOD reset.

Each stored sample holds seq_length + 1 tokens; the dataset yields batches of, per sample:
``input_ids`` int32 [S] (tokens[:-1]), ``labels`` int32 [S] (tokens[1:]), ``position_ids`` int32
[S], ``attention_mask`` uint8 [S, S] (1 = may attend) and ``loss_mask`` float32 [S], computed by
``codegeex_ms.data.masks.eod_reset_masks`` (see there for the EOD convention). Token rows are
batched first and the masks computed per batch into one array: carrying 16 separate 4 MiB masks
through MindSpore's batch operator was several times slower.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from codegeex_ms.data.masks import eod_reset_masks
from codegeex_ms.data.mindrecord_io import COLUMN, check_shards, resolve_shards
from codegeex_ms.data.sampling import sample_order

COLUMNS = ("input_ids", "labels", "position_ids", "attention_mask", "loss_mask")


def pretrain_columns(tokens: np.ndarray, eod_id: int, eod_reset: bool) -> tuple:
    """The five training columns of stored samples ``tokens`` (int [S + 1] or [B, S + 1])."""
    tokens = np.asarray(tokens, dtype=np.int32)
    input_ids = np.ascontiguousarray(tokens[..., :-1])
    position_ids, attention_mask, loss_mask = eod_reset_masks(input_ids, eod_id, eod_reset)
    return input_ids, np.ascontiguousarray(tokens[..., 1:]), position_ids, attention_mask, loss_mask


def create_pretrain_dataset(data_paths_or_dir, seq_length: int, batch_size: int, *,
                            shuffle: bool = True, seed: int = 1234, num_shards: int = 1,
                            shard_id: int = 0, skip_samples: int = 0, eod_reset: bool = True,
                            eod_id: int = 50256, drop_remainder: bool = True,
                            num_parallel_workers: int = 2, num_epochs: int = 1,
                            verify_checksums: bool = False):
    """A batched ``mindspore.dataset`` over preprocessed shards.

    ``data_paths_or_dir``: a preprocessing output directory, its ``manifest.json``, one shard or a
    list of shards. Sample order, data-parallel split (``num_shards``/``shard_id``; equal counts
    per rank), epochs and ``skip_samples`` (counted in this rank's samples, before batching) follow
    ``codegeex_ms.data.sampling.sample_order``. Raises ValueError/FileNotFoundError naming the
    file for missing, truncated, corrupt or mismatched shards (wrong seq_length or EOD id).
    """
    import mindspore.dataset as ds

    files, manifest = resolve_shards(data_paths_or_dir)
    if manifest is not None and manifest.get("eod_id") != eod_id:
        raise ValueError(f"shards were made with EOD id {manifest.get('eod_id')} but eod_id={eod_id} "
                         f"was requested; use the tokenizer the shards were made with.")
    counts = check_shards(files, seq_length + 1, manifest, verify_checksums)
    order = sample_order(sum(counts), shuffle=shuffle, seed=seed, num_shards=num_shards,
                         shard_id=shard_id, num_epochs=num_epochs, skip_samples=skip_samples)
    # SubsetSampler takes at most as many indices as the files hold: several epochs are read as
    # consecutive datasets of at most that many indices each.
    total = sum(counts)
    parts = [ds.MindDataset([str(f) for f in files], columns_list=[COLUMN],
                            sampler=ds.SubsetSampler(order[i:i + total]),
                            num_parallel_workers=num_parallel_workers)
             for i in range(0, len(order), total)]
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset + part
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(partial(pretrain_columns, eod_id=eod_id, eod_reset=eod_reset),
                          input_columns=[COLUMN], output_columns=list(COLUMNS),
                          num_parallel_workers=num_parallel_workers)
    return dataset.project(list(COLUMNS))
