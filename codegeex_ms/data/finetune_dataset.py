"""Fine-tuning dataset from ``.jsonl`` prompt/completion pairs, loss on the completion only.

One example per sample: ``prompt ids + completion ids + EOD``, padded with EOD to seq_length + 1
tokens. Prompt and completion are tokenized separately (as at inference, where the prompt is
encoded alone and the model continues it). Too long examples lose the start of the prompt first,
then the end of the completion. ``loss_mask[t]`` is 1 exactly when ``labels[t]`` is a completion
token or the EOD that ends it. Columns as in ``pretrain_dataset.COLUMNS``.
"""

from __future__ import annotations

import gzip
import json
from functools import partial
from pathlib import Path

import numpy as np

from codegeex_ms.data.pretrain_dataset import COLUMNS, pretrain_columns
from codegeex_ms.data.sampling import sample_order


def read_pairs(jsonl_path, prompt_key: str = "prompt",
               completion_key: str = "completion") -> tuple[list[str], list[str]]:
    """Prompts and completions of a ``.jsonl``/``.jsonl.gz`` file; ValueError names a bad line."""
    path = Path(jsonl_path)
    if not path.is_file():
        raise FileNotFoundError(f"fine-tuning data {path} does not exist.")
    prompts, completions = [], []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                prompt, completion = record[prompt_key], record[completion_key]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}:{lineno} is not a JSON object with string fields "
                                 f"{prompt_key!r} and {completion_key!r}.") from None
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise ValueError(f"{path}:{lineno}: {prompt_key!r} and {completion_key!r} must be strings.")
            prompts.append(prompt)
            completions.append(completion)
    if not prompts:
        raise ValueError(f"{path} holds no prompt/completion pairs.")
    return prompts, completions


def encode_pairs(prompts: list[str], completions: list[str], tokenizer,
                 seq_length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(tokens int32 [N, S+1], completion_mask float32 [N, S], n_truncated)``; see module doc."""
    eod, length = tokenizer.eod_id, seq_length + 1
    prompt_ids = tokenizer.encode_batch(prompts, allow_special=False)
    completion_ids = tokenizer.encode_batch(completions, allow_special=False)
    tokens = np.full((len(prompts), length), eod, dtype=np.int32)
    mask = np.zeros((len(prompts), seq_length), dtype=np.float32)
    truncated = 0
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        c = (c + [eod])[:length]
        p = p[len(p) - (length - len(c)):] if len(p) + len(c) > length else p
        truncated += len(p) + len(c) < len(prompt_ids[i]) + len(completion_ids[i]) + 1
        row = p + c
        tokens[i, :len(row)] = row
        # label t is token t + 1: completion tokens sit at len(p) .. len(row) - 1
        mask[i, max(len(p) - 1, 0):len(row) - 1] = 1.0
    return tokens, mask, truncated


def finetune_columns(tokens, completion_mask, eod_id: int) -> tuple:
    """The five training columns of examples (one or a batch); the loss mask is the completion
    mask."""
    input_ids, labels, position_ids, attention_mask, _ = pretrain_columns(tokens, eod_id, True)
    return input_ids, labels, position_ids, attention_mask, np.asarray(completion_mask, np.float32)


def create_finetune_dataset(jsonl_path, tokenizer, seq_length: int, batch_size: int, *,
                            shuffle: bool = True, seed: int = 1234, num_shards: int = 1,
                            shard_id: int = 0, skip_samples: int = 0, drop_remainder: bool = True,
                            num_parallel_workers: int = 2, num_epochs: int = 1,
                            prompt_key: str = "prompt", completion_key: str = "completion"):
    """A batched ``mindspore.dataset`` of prompt/completion examples (order, sharding, epochs and
    skipping as in ``create_pretrain_dataset``)."""
    import mindspore.dataset as ds

    prompts, completions = read_pairs(jsonl_path, prompt_key, completion_key)
    tokens, mask, _ = encode_pairs(prompts, completions, tokenizer, seq_length)
    order = sample_order(len(tokens), shuffle=shuffle, seed=seed, num_shards=num_shards,
                         shard_id=shard_id, num_epochs=num_epochs, skip_samples=skip_samples)
    dataset = ds.NumpySlicesDataset((tokens[order], mask[order]),
                                    column_names=["tokens", "completion_mask"], shuffle=False)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(partial(finetune_columns, eod_id=tokenizer.eod_id),
                          input_columns=["tokens", "completion_mask"], output_columns=list(COLUMNS),
                          num_parallel_workers=num_parallel_workers)
    return dataset.project(list(COLUMNS))
