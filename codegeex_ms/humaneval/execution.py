"""Executing assembled programs: per-sample directories, compile/run steps, outcome statuses.

A sample never stops the evaluation: whatever goes wrong in the harness while running one
(its directory cannot be made, a cgroup cannot be joined, a runner raises) is that sample's
``error`` outcome, with the reason, and the next sample runs in a fresh directory.

Sample directories (:class:`Workdirs`): a fresh, size-capped one per sample, removed without
ever raising. A sample controls what its directory holds when the harness cleans up: trees
thousands of levels deep, directories without permissions, symlinks to elsewhere, millions of
files. So:

- As root, each sample directory is its own tmpfs (``size=``, ``nr_inodes=`` capped, nosuid,
  nodev), mounted before the sample and lazily unmounted after it: writing is capped, and
  clean-up is one ``umount`` whatever the tree inside. tmpfs pages are also charged to the memory
  cgroup of the process that writes them.
- Otherwise (no mount permission) the directory is a plain one and :func:`remove_tree` deletes
  it iteratively, holding one directory descriptor at a time, never following a symlink, and
  giving itself permissions it lacks; what it cannot delete is renamed into a trash directory,
  so the next sample still starts empty.
"""

import ctypes
import ctypes.util
import errno
import os
import secrets
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .runners import RUNNERS, StepLimits, ToolchainMissing
from .sandbox import Sandbox

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


# ----- sample directories -------------------------------------------------------------------
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def mount_tmpfs(path: Path, size_bytes: int, uid: int, gid: int) -> None:
    """Mount a tmpfs of ``size_bytes`` owned by uid/gid (mode 0700) on ``path``; OSError if not."""
    if _LIBC is None:
        raise OSError(errno.ENOSYS, "libc not found for mount(2)")
    inodes = max(1024, size_bytes // 2048)
    options = f"size={size_bytes},nr_inodes={inodes},mode=0700,uid={uid},gid={gid}"
    if _LIBC.mount(b"tmpfs", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                   options.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount tmpfs on {path}: {os.strerror(e)}")


def unmount(path: Path) -> str:
    """Lazily unmount ``path``; '' on success, else why not. Never raises."""
    if _LIBC is None:
        return "libc not found for umount2(2)"
    if _LIBC.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        return f"umount {path}: {os.strerror(ctypes.get_errno())}"
    return ""


def remove_tree(path) -> str:
    """Delete ``path`` and everything below it; '' on success, else the first problems met.

    Never raises and never follows a symlink. Iterative (no recursion limit) and uses one open
    directory at a time (no descriptor limit), walking back up through ``..`` and checking each
    parent is the directory it left (so a tree moved meanwhile is not mistaken for another).
    Directories lacking permissions are given ``0700`` first (which works for their owner and
    for root).
    """
    problems = []
    try:
        _remove_tree(Path(path), problems)
    except Exception as e:  # noqa: BLE001 -- the contract is to never raise
        problems.append(f"{type(e).__name__}: {e}")
    return "; ".join(problems[:5])


def _open_dir(name, dir_fd, problems):
    """fd of subdirectory ``name`` (fixing its permissions if needed), or None."""
    for attempt in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except PermissionError:
            if attempt:
                break
            try:
                os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                break
        except OSError as e:
            problems.append(f"open {name}: {e.strerror}")
            return None
    problems.append(f"open {name}: permission denied")
    return None


def _remove_tree(root: Path, problems: list) -> None:
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(root)
        return
    parent_fd = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fd = _open_dir(root.name, parent_fd, problems)
    os.close(parent_fd)
    if fd is None:
        return
    # stack of (name in parent, (dev, ino) of the parent, subdirectories still to visit)
    stack = [(root.name, None, None)]
    try:
        while True:
            name, parent_id, pending = stack[-1]
            if pending is None:
                pending = _unlink_files(fd, problems)
                stack[-1] = (name, parent_id, pending)
            child = None
            while pending and child is None:
                sub = pending.pop()
                child = _open_dir(sub, fd, problems)
            if child is not None:
                here = os.fstat(fd)
                os.close(fd)
                fd = child
                stack.append((sub, (here.st_dev, here.st_ino), None))
                continue
            # this directory is done: go up and remove it
            if len(stack) == 1:
                os.close(fd)
                fd = None
                try:
                    os.rmdir(root)
                except OSError as e:
                    problems.append(f"rmdir {root}: {e.strerror}")
                return
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = up
            ust = os.fstat(fd)
            stack.pop()
            if (ust.st_dev, ust.st_ino) != parent_id:
                problems.append(f"{name}: its parent changed during removal; stopped")
                return
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError as e:
                problems.append(f"rmdir {name}: {e.strerror}")
    finally:
        if fd is not None:
            os.close(fd)


def _unlink_files(fd: int, problems: list) -> list:
    """Unlink every non-directory in directory ``fd``; return the names of subdirectories."""
    subdirs = []
    for attempt in range(2):
        denied = False
        with os.scandir(fd) as entries:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for name, is_dir in names:
            if is_dir:
                if attempt == 0:
                    subdirs.append(name)
                continue
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except PermissionError:
                denied = True
            except OSError as e:
                problems.append(f"unlink {name}: {e.strerror}")
        if not denied:
            break
        try:
            os.fchmod(fd, 0o700)  # the directory was made read-only: give it back write access
        except OSError as e:
            problems.append(f"chmod: {e.strerror}")
            break
    return subdirs


def remove_stale_workspaces(parent: Path, prefix: str) -> None:
    """Unmount and remove ``<prefix><pid>_*`` directories below ``parent`` whose process is
    gone (killed before it could clean up). Never raises."""
    try:
        entries = [p for p in Path(parent).iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for workspace in entries:
        pid = workspace.name[len(prefix):].split("_", 1)[0]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        try:
            for slot in workspace.iterdir():
                if os.path.ismount(slot):
                    unmount(slot)
        except OSError:
            pass
        remove_tree(workspace)


class Workdirs:
    """Hands out sample directories below ``parent``: tmpfs mounts of ``size_bytes`` when this
    process may mount (root), plain directories otherwise. :attr:`capped` says which."""

    def __init__(self, parent: Path, size_bytes: int):
        self.parent = Path(parent)
        self.size_bytes = int(size_bytes)
        self.trash = self.parent / "trash"
        self.capped, self.reason = False, "not root: cannot mount a tmpfs per sample"
        if os.geteuid() == 0:
            probe = self.parent / "mount-probe"
            probe.mkdir()
            try:
                mount_tmpfs(probe, 1 << 20, 0, 0)
            except OSError as e:
                self.reason = f"cannot mount a tmpfs per sample: {e}"
            else:
                self.capped, self.reason = True, ""
                unmount(probe)
            probe.rmdir()

    def describe(self) -> str:
        if self.capped:
            return f"sample directory: tmpfs of {self.size_bytes >> 20} MiB per sample"
        return f"sample directory: plain directory, size not capped ({self.reason})"

    def create(self, path: Path, uid: int, gid: int) -> None:
        """Make ``path`` a fresh, empty sample directory writable by uid/gid (OSError if not)."""
        path = Path(path)
        if os.path.lexists(path):
            left = self.release(path)
            if left:
                raise OSError(f"sample directory {path} could not be emptied: {left}")
        path.mkdir()
        if self.capped:
            mount_tmpfs(path, self.size_bytes, uid, gid)
        else:
            os.chown(path, uid, gid)

    def release(self, path: Path) -> str:
        """Remove a sample directory; '' when it is gone, else why it is not. Never raises.

        What cannot be deleted is renamed into ``trash/`` so the path is free again.
        """
        path = Path(path)
        problems = []
        if self.capped and os.path.ismount(path):
            problems.append(unmount(path))
        problems.append(remove_tree(path))
        if os.path.lexists(path):
            try:
                self.trash.mkdir(exist_ok=True)
                os.rename(path, self.trash / f"{path.name}.{secrets.token_hex(4)}")
            except OSError as e:
                problems.append(f"rename into trash: {e.strerror}")
        return "; ".join(p for p in problems if p) if os.path.lexists(path) else ""

    def close(self) -> str:
        """Remove the trash (the caller removes ``parent``). Never raises."""
        return remove_tree(self.trash)
