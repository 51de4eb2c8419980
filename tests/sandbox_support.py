"""Helpers of the sandbox tests: an executor that must really isolate, leftover processes."""

import os

import pytest

from codegeex_ms.humaneval.execution import Executor
from codegeex_ms.humaneval.sandbox import SandboxUnavailable

ON_CI = os.environ.get("CI") == "true"


def unavailable(reason: str):
    """Skip, or fail under CI=true (where bubblewrap, cgroups and toolchains must exist)."""
    if ON_CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def make_executor(languages, need_cgroups: bool = True, **kwargs) -> Executor:
    """An Executor under bubblewrap (and, by default, cgroups); skip/fail when unavailable."""
    try:
        ex = Executor(languages, **kwargs)
    except SandboxUnavailable as e:
        unavailable(str(e))
    print(f"\nisolation: {ex.sandbox.describe()}; {ex.workdirs.describe()}")
    if need_cgroups and ex.sandbox.cgroups is None:
        ex.close()
        unavailable(f"no cgroups: {ex.sandbox.cgroups_reason}")
    return ex


def require_language(executor: Executor, language: str) -> None:
    if language in executor.skipped:
        unavailable(f"{language} toolchain unusable: {executor.skipped[language]}")


def leftovers(executor: Executor) -> list:
    """(pid, command) of live processes still in one of the executor's cgroups (every sandboxed
    process is born in one, and cannot leave it)."""
    names = {base.name for base in executor.sandbox.cgroups.bases}
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                groups = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and any(name in groups for name in names):
            found.append((int(pid), cmd))
    return found
