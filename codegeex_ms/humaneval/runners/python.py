"""Python: the sample runs in a child process of a trusted driver that runs the tests (see
``python_driver.py`` and the threat model in ``humaneval.assembly``)."""

import json
import sys
from pathlib import Path

from ..assembly import PYTHON_IMPORTS, Program, marker_line, python_entry_point
from .base import Runner, Step, ToolchainMissing, command_output

DRIVER = Path(__file__).with_name("python_driver.py").read_text(encoding="utf-8")

_PROBE_PROBLEM = {"task_id": "Python/probe", "prompt": "def add_one(x):\n    \"\"\"x + 1\"\"\"\n",
                  "test": "def check(candidate):\n    assert candidate(1) == 2\n\n"
                          "check(add_one)\n"}


class PythonRunner(Runner):
    """``interpreter`` defaults to the running interpreter (``sys.executable``)."""

    key = "python"
    probe = Program("python", "import numpy\ndef add_one(x):\n    return int(numpy.add(x, 1))\n",
                    _PROBE_PROBLEM)

    def __init__(self, limits, cache_dir, interpreter: str = None):
        super().__init__(limits, cache_dir)
        self.interpreter = Path(interpreter or sys.executable)
        self._paths = []

    def setup(self) -> None:
        if not self.interpreter.exists():
            raise ToolchainMissing(f"Python interpreter {self.interpreter} does not exist")
        out = command_output([str(self.interpreter), "-c",
                              "import sys, numpy; print(sys.prefix); print(sys.base_prefix); "
                              "print(sys.version.split()[0], 'numpy', numpy.__version__)"])
        prefix, base_prefix, self.version = out.splitlines()[-3:]
        self._paths = [Path(prefix), Path(base_prefix), self.interpreter.resolve().parent]

    def visible(self) -> list:
        return list(self._paths)

    def write_files(self, workdir, program):
        check = super().write_files(workdir, program)
        problem = program.problem
        test = problem["test"]
        # The tests' namespace gets the standard imports too (numpy only if the test uses it).
        preamble = [line for line in PYTHON_IMPORTS
                    if "numpy" not in line or "np." in test or "numpy" in test]
        spec = {"marker": marker_line(check.nonce), "preamble": "\n".join(preamble) + "\n",
                "prompt": problem["prompt"], "test": test,
                "entry": python_entry_point(problem)}
        (workdir / "driver.py").write_text(DRIVER, encoding="utf-8")
        (workdir / "sample.py").write_text(program.source, encoding="utf-8")
        (workdir / "harness.json").write_text(json.dumps(spec), encoding="utf-8")
        return check

    def steps(self, workdir, slot, sandbox, check) -> list:
        env = {**self.base_env(workdir), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        return [Step("run", [str(self.interpreter), "-I", "driver.py"], self.limits.run, env)]
