"""Memory and FLOPs by formula, printed by ``plan``: ``training``, ``lora``, ``inference``."""
