"""Per-language runners: how each HumanEval-X language is compiled and tested."""

from .base import Runner, Step, StepLimits, ToolchainMissing
from .cpp import CppRunner
from .go import GoRunner
from .java import JavaRunner
from .js import JsRunner
from .python import PythonRunner
from .rust import RustRunner

RUNNERS = {r.key: r for r in (PythonRunner, CppRunner, JavaRunner, JsRunner, GoRunner, RustRunner)}

__all__ = ["RUNNERS", "Runner", "Step", "StepLimits", "ToolchainMissing"]
