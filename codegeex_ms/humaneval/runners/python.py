"""Python: run ``main.py`` with the evaluation interpreter (which must have numpy)."""

import sys
from pathlib import Path

from .base import Runner, Step, ToolchainMissing, command_output


class PythonRunner(Runner):
    """``interpreter`` defaults to the running interpreter (``sys.executable``)."""

    key = "python"
    filename = "main.py"
    probe = "import numpy\nassert int(numpy.add(1, 1)) == 2\n"

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

    def steps(self, workdir, slot, sandbox) -> list:
        env = {**self.base_env(workdir), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        return [Step("run", [str(self.interpreter), self.filename], self.limits.run, env)]
