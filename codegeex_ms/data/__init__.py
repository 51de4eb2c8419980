"""Pre-training and fine-tuning data: sources, filters, packing, MindRecord shards, datasets.

Submodules import MindSpore only where they need it (``mindrecord_io``, ``pretrain_dataset``,
``finetune_dataset``); ``masks``, ``packing``, ``filters``, ``languages`` and ``sources`` are pure
Python/NumPy.
"""
