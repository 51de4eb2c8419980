"""Pre-training and fine-tuning data, and the tokenizer (``tokenizer``: text <-> ids).

``sources`` (inputs, reading) -> ``languages`` (tags) -> ``filters`` -> ``pipeline`` (workers,
dedup, shuffle) -> ``packing`` -> ``mindrecord_io`` (shards, manifest); ``sampling`` and ``masks``
feed ``pretrain_dataset`` and ``finetune_dataset``. Only ``mindrecord_io``'s functions and the two
dataset factories import MindSpore; ``masks`` and ``sampling`` are NumPy only.
"""
