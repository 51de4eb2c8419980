"""What every language runner provides: toolchain setup, files to write, steps to run."""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

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


class Runner:
    """Base class of a language runner.

    Subclasses set ``key`` (language key), ``filename`` (the program's file name) and ``probe``
    (a complete test program that must pass when the toolchain works), and implement
    :meth:`setup` and :meth:`steps`.
    """

    key = ""
    filename = ""
    probe = ""

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

    def write_files(self, workdir: Path, source: str) -> None:
        """Write the program (and any fixed project files) into the sample directory."""
        (workdir / "tmp").mkdir(exist_ok=True)
        (workdir / self.filename).write_text(source, encoding="utf-8")

    def steps(self, workdir: Path, slot, sandbox) -> list:
        """The sandboxed commands for one sample, compile steps first, the test run last."""
        raise NotImplementedError

    def passed(self, result: RunResult) -> bool:
        """Whether the test run's result means the tests passed (exit status 0)."""
        return result.ok

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
