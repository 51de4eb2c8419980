"""Megatron-style shard plan for semi-auto parallel, its per-operator checker and its validator."""

from codegeex_ms.parallel.shard_plan import apply_shard_plan, parameter_splits
from codegeex_ms.parallel.checker import PlanError, check_shard_plan
from codegeex_ms.parallel.validator import PlanReport, validate_plan

__all__ = ["apply_shard_plan", "parameter_splits", "PlanError", "check_shard_plan", "PlanReport",
           "validate_plan"]
