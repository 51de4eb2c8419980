"""Executing assembled programs: per-sample directories, compile/run steps, outcome statuses.

A sample never stops the evaluation: whatever goes wrong in the harness while running one
(its directory cannot be made, a cgroup cannot be joined, a runner raises) is that sample's
``error`` outcome, with the reason, and the next sample runs in a fresh directory.
"""

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .runners import RUNNERS, StepLimits, ToolchainMissing
from .sandbox import Sandbox
from .workdirs import Workdirs, remove_stale_workspaces, remove_tree

PASSED = "passed"
FAILED = "failed"
COMPILE_ERROR = "compile_error"
TIMEOUT = "timeout"
OUTPUT_LIMIT = "output_limit"
ERROR = "error"  # the harness failed on this sample (not the sample's verdict)
STATUSES = (PASSED, FAILED, COMPILE_ERROR, TIMEOUT, OUTPUT_LIMIT, ERROR)
_DETAIL_CHARS = 2000
_MIB = 1 << 20
_LIMIT_NOTES = {"memory": "the memory limit of the whole process tree was reached (OOM kill)",
                "processes": "the process limit was reached (a fork was refused)"}


def eval_cache_dir() -> Path:
    """Where prepared dependencies live (js-md5, Rust crates, Go module and build cache).

    ``$CODEGEEX_EVAL_CACHE``, else ``$XDG_CACHE_HOME/codegeex_ms``, else ``~/.cache/codegeex_ms``.
    ``run_scripts/install_eval_toolchains.sh`` uses the same rule.
    """
    env = os.environ.get("CODEGEEX_EVAL_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "codegeex_ms"


@dataclass
class Outcome:
    """Result of executing one program: a status from STATUSES, the tail of its output, seconds."""

    status: str
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict:
        return asdict(self)


class Executor:
    """Runs assembled programs of the requested languages in a sandbox.

    On construction each language's toolchain is set up and checked by running a probe program
    through the sandbox; languages that fail are listed in :attr:`skipped` with the reason and
    never produce outcomes. Thread-safe: :meth:`run` may be called from ``workers`` threads.
    ``isolation`` / ``allow_unsandboxed``: see :class:`.sandbox.Sandbox` (raises
    SandboxUnavailable rather than run unsandboxed unasked). ``workdir_bytes``: size cap of each
    sample's directory (a tmpfs, when the harness may mount). Use as a context manager (or call
    :meth:`close`) to remove the scratch directory and the cgroups.
    """

    def __init__(self, languages, *, workers: int = 1, isolation: str = "auto",
                 limits: StepLimits = StepLimits(), cache_dir: Path = None,
                 scratch_dir: Path = None, python: str = None, allow_unsandboxed: bool = False,
                 workdir_bytes: int = 256 * _MIB):
        self.sandbox = Sandbox(isolation, workers=workers, allow_unsandboxed=allow_unsandboxed)
        self.cache_dir = Path(cache_dir or eval_cache_dir())
        prefix = "codegeex_eval_"
        remove_stale_workspaces(Path(scratch_dir or tempfile.gettempdir()), prefix)
        self.workspace = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}_", dir=scratch_dir))
        os.chmod(self.workspace, 0o711)  # sandbox uids must traverse it to reach their directory
        try:
            self.workdirs = Workdirs(self.workspace, workdir_bytes)
        except BaseException:
            self.close()
            raise
        self.runners, self.skipped = {}, {}
        for key in languages:
            kwargs = {"interpreter": python} if key == "python" else {}
            runner = RUNNERS[key](limits, self.cache_dir, **kwargs)
            try:
                runner.setup()
            except ToolchainMissing as e:
                self.skipped[key] = str(e)
                continue
            self.runners[key] = runner
            probe = self.run(key, runner.probe)
            if not probe.passed:
                del self.runners[key]
                self.skipped[key] = f"toolchain probe {probe.status}: {probe.detail[-500:]}"

    def describe(self) -> dict:
        """Isolation and limits in force, toolchain versions and skipped languages (reports)."""
        return {"isolation": self.sandbox.isolation, "isolation_detail": self.sandbox.describe(),
                "limits": self.sandbox.limits_mechanism(),
                "sample_directory": self.workdirs.describe(),
                "toolchains": {k: r.version for k, r in self.runners.items()},
                "skipped": dict(self.skipped)}

    def run(self, language: str, source: str) -> Outcome:
        """Execute one program of ``language`` (which must be available) in a fresh directory.

        Never raises (except KeyboardInterrupt and the like): a harness failure is an ERROR
        outcome naming it.
        """
        start = time.monotonic()
        try:
            runner = self.runners[language]
            with self.sandbox.slot() as slot:
                # One path per slot, a fresh directory (tmpfs) for each sample on it: a stable
                # path lets compilers that key caches by directory (Go) reuse their work.
                workdir = self.workspace / f"slot-{slot.index}"
                try:
                    self.workdirs.create(workdir, slot.uid, slot.gid)
                    check = runner.write_files(workdir, source)
                    self.sandbox.give(workdir, slot)
                    return self._run_steps(runner, workdir, slot, start, check)
                finally:
                    self.workdirs.release(workdir)
        except Exception as e:  # noqa: BLE001 -- one sample must not stop the evaluation
            return Outcome(ERROR, f"harness error: {type(e).__name__}: {e}"[-_DETAIL_CHARS:],
                           time.monotonic() - start)

    def _run_steps(self, runner, workdir, slot, start, check) -> Outcome:
        visible = runner.visible()
        for step in runner.steps(workdir, slot, self.sandbox, check):
            result = self.sandbox.run(step.argv, cwd=workdir, limits=step.limits, slot=slot,
                                      env=step.env, visible=visible, writable=step.writable)
            detail = (result.stderr + result.stdout)[-_DETAIL_CHARS:]
            notes = "".join(f"\n[{step.name}: {_LIMIT_NOTES[h]}]" for h in result.limits_hit)
            if result.timed_out:
                return Outcome(TIMEOUT, f"{step.name} timed out after {step.limits.wall_s:g}s"
                               + notes, time.monotonic() - start)
            if result.output_exceeded:
                return Outcome(OUTPUT_LIMIT, f"{step.name} output exceeded "
                               f"{step.limits.max_output_bytes} bytes" + notes,
                               time.monotonic() - start)
            if step.name == "compile" and not result.ok:
                return Outcome(COMPILE_ERROR, detail + notes, time.monotonic() - start)
            if step.name == "run":
                passed, why = runner.verdict(result, check)  # the harness decides, see assembly
                status = PASSED if passed else FAILED
                if status == FAILED:
                    detail = f"{why}\n{detail}" if detail else why
                return Outcome(status, detail + notes, time.monotonic() - start)
        raise AssertionError(f"{runner.key} runner has no run step")

    def close(self) -> None:
        """Remove the scratch directory and the sandbox's cgroups (never raises)."""
        if hasattr(self, "workdirs"):
            self.workdirs.close()
        remove_tree(self.workspace)
        self.sandbox.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
