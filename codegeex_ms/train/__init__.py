"""Training: recipe (optimizer, LR schedule, loss-scaled step), checkpoints, logging, the loop.

``python -m codegeex_ms.train --config C [--set ...] [--resume]`` runs :func:`loop.run`; see
``run_scripts/run_standalone_train.sh`` and ``run_scripts/run_distribute.sh``. Submodules import
MindSpore; importing this package does not.
"""
