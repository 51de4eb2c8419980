"""What every language runner provides: toolchain setup, files to write, steps to run, and the
verdict (see ``humaneval.assembly`` for the threat model the verdicts are built against)."""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..assembly import Program, marker_line, new_nonce
from ..sandbox import Limits, RunResult

_MIB = 1 << 20


class ToolchainMissing(Exception):
    """A language cannot be run here; the message says what is missing and how to install it."""


@dataclass(frozen=True)
class Step:
    """One sandboxed command of a sample's execution (``compile`` steps precede ``run``)."""

    name: str
    argv: list
    limits: Limits
    env: dict = field(default_factory=dict)
    writable: tuple = ()


@dataclass(frozen=True)
class StepLimits:
    """Limits of compile steps and of the test run. Compilers get more memory, processes, time."""

    run: Limits = Limits()
    compile: Limits = Limits(wall_s=60.0, memory_bytes=4096 * _MIB, max_procs=512,
                             max_output_bytes=4 * _MIB, max_file_bytes=512 * _MIB)


@dataclass(frozen=True)
class Check:
    """What the run of one sample must show to pass: the marker line with ``nonce`` on stdout
    (``expected_tests``: test names a runner also requires its framework to report passed).
    ``prebuilt``: paths of harness files built outside the sandbox that the steps use."""

    nonce: str
    expected_tests: tuple = ()
    prebuilt: tuple = ()


class Runner:
    """Base class of a language runner.

    Subclasses set ``key`` (language key) and ``probe`` (a :class:`Program` that must pass when
    the toolchain works), and implement :meth:`setup`, :meth:`write_files` and :meth:`steps`.
    """

    key = ""
    probe: Program = None

    def __init__(self, limits: StepLimits, cache_dir: Path):
        self.limits = limits
        self.cache_dir = Path(cache_dir)
        self.version = ""

    def setup(self) -> None:
        """Find the toolchain and prepare shared dependencies; raise ToolchainMissing if absent."""
        raise NotImplementedError

    def visible(self) -> list:
        """Paths the sandboxed toolchain must be able to read."""
        return []

    def write_files(self, workdir: Path, program: Program) -> Check:
        """Write the sample and the harness's files into the sample directory; return what the
        run must show. ``program`` must be of this runner's language."""
        if not isinstance(program, Program) or program.language != self.key:
            raise TypeError(f"{self.key} runner got {type(program).__name__} "
                            f"{getattr(program, 'language', '')!r}; pass assemble_program(...)")
        (workdir / "tmp").mkdir(exist_ok=True)
        return Check(new_nonce())

    def steps(self, workdir: Path, slot, sandbox, check: Check) -> list:
        """The sandboxed commands for one sample, compile steps first, the test run last."""
        raise NotImplementedError

    def verdict(self, result: RunResult, check: Check) -> tuple:
        """(passed, reason if not): exit status 0 and the marker with this sample's nonce."""
        if not result.ok:
            return False, f"tests failed (exit status {result.returncode})"
        if marker_line(check.nonce) not in result.stdout:
            return False, "exit status 0 but the tests did not finish (no completion marker)"
        return True, ""

    @staticmethod
    def base_env(workdir: Path) -> dict:
        """HOME and TMPDIR inside the sample directory (``tmp/`` is made by write_files)."""
        return {"HOME": str(workdir), "TMPDIR": str(workdir / "tmp"), "MALLOC_ARENA_MAX": "2"}


def require_executable(name: str, install_hint: str) -> Path:
    """Absolute path of an executable on PATH (symlinks kept: rustup proxies need their name),
    else ToolchainMissing."""
    found = shutil.which(name)
    if found is None:
        raise ToolchainMissing(f"{name} not found on PATH ({install_hint})")
    return Path(found).absolute()


def command_output(argv, **kwargs) -> str:
    """stdout+stderr of a short trusted command, stripped; ToolchainMissing if it fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolchainMissing(f"{' '.join(map(str, argv))} failed: {e}") from e
    if proc.returncode != 0:
        raise ToolchainMissing(f"{' '.join(map(str, argv))} failed: "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return (proc.stdout + proc.stderr).strip()


def make_world_readable(path: Path) -> None:
    """chmod a+rX below ``path``, so sandbox uids can read what the harness prepared there."""
    for root, dirs, files in os.walk(path):
        os.chmod(root, os.stat(root).st_mode | 0o555)
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)
