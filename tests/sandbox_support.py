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


def processes_of(uids) -> list:
    """(pid, uid, command) of live (non-zombie) processes whose real uid is in ``uids``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        uid = int(fields.get("Uid", "-1").split()[0])
        if uid in uids and not fields.get("State", "").strip().startswith("Z"):
            found.append((int(pid), uid, cmd))
    return found


def slot_uids(executor: Executor) -> set:
    sb = executor.sandbox
    return set(range(sb.uid_base, sb.uid_base + sb.workers)) if sb.switch_uid else set()
