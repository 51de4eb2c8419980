"""Which samples a data-parallel rank reads, in which order (NumPy only).

Per epoch the ``num_samples`` indices are permuted with ``default_rng([seed, epoch])`` (or kept in
order without shuffle); the last ``num_samples % num_shards`` of them are dropped so every rank
gets the same count, and rank ``shard_id`` takes every ``num_shards``-th index starting at
``shard_id``. Epochs are concatenated, then the first ``skip_samples`` indices of the rank's stream
are dropped (resuming after ``skip_samples`` samples this rank has consumed).
"""

from __future__ import annotations

import numpy as np


def sample_order(num_samples: int, *, shuffle: bool = True, seed: int = 1234,
                 num_shards: int = 1, shard_id: int = 0, num_epochs: int = 1,
                 skip_samples: int = 0) -> np.ndarray:
    """Global sample indices (int64 [k]) read by rank ``shard_id``, in reading order."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"need 0 <= shard_id < num_shards, got shard_id={shard_id}, "
                         f"num_shards={num_shards}")
    if num_epochs < 1 or skip_samples < 0:
        raise ValueError(f"need num_epochs >= 1 and skip_samples >= 0, got {num_epochs}, {skip_samples}")
    per_rank = num_samples // num_shards
    if per_rank == 0:
        raise ValueError(f"{num_samples} samples cannot be split over {num_shards} data-parallel "
                         f"ranks; use fewer ranks or more data.")
    epochs = []
    for epoch in range(num_epochs):
        order = (np.random.default_rng([seed, epoch]).permutation(num_samples) if shuffle
                 else np.arange(num_samples))
        epochs.append(order[:per_rank * num_shards][shard_id::num_shards])
    stream = np.concatenate(epochs)
    if skip_samples >= len(stream):
        raise ValueError(f"skip_samples={skip_samples} leaves nothing: this rank has "
                         f"{len(stream)} samples over {num_epochs} epoch(s).")
    return stream[skip_samples:]
