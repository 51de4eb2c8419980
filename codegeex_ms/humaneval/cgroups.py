"""Control groups for sandboxed runs: memory, process-count and CPU limits on a whole process tree.

Per-process resource limits (``RLIMIT_AS``, ``RLIMIT_NPROC``) are walked around by forking many
processes, or by holding pages that count towards no address space (a ``memfd`` or a tmpfs file
that is written but never mapped). A control group counts every page its processes charge,
shmem and tmpfs included, every task, and all of their CPU time. :func:`detect` finds what this
machine offers:

- cgroup v2 (the ``cgroup2`` hierarchy lists ``memory`` and ``pids`` among its controllers and
  lets us enable them below our own group): ``memory.max``, ``memory.swap.max = 0``,
  ``pids.max``, ``cpu.max``; the group is emptied with ``cgroup.kill``.
- cgroup v1 (separate ``memory`` and ``pids`` hierarchies, ``cpu`` optional):
  ``memory.limit_in_bytes`` and, when swap accounting is on, ``memory.memsw.limit_in_bytes``
  set to the same value (no escape into swap), ``pids.max``, ``cpu.cfs_quota_us``; emptied by
  SIGKILLing the listed tasks until none is left.

Groups are made below the group the evaluator runs in (``/proc/self/cgroup``), as
``codegeex-<pid>-<random>/<run>``, so a nested or delegated hierarchy works. A process joins a
group by writing its pid to ``cgroup.procs`` before it execs the sandbox (see
:meth:`RunGroup.join_script`), so every descendant is born inside.
"""

import os
import re
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
_CPU_PERIOD_US = 100_000
_KILL_ROUNDS = 200  # x 10 ms: how long remove() keeps killing a group's tasks


class CgroupsUnavailable(Exception):
    """This machine offers no usable cgroup memory + pids controllers; the message says why."""


def _mounts(mountinfo: str) -> tuple:
    """({controller: (mount point, mount root)} for v1, (mount point, root) of cgroup2 or None)."""
    v1, v2 = {}, None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype = fields[3], fields[4].replace("\\040", " "), tail[0]
        if fstype == "cgroup2":
            v2 = (point, root)
        elif fstype == "cgroup":
            for option in tail[2].split(","):
                if option in CONTROLLERS:
                    v1[option] = (point, root)
    return v1, v2


def _own_groups(proc_cgroup: str) -> tuple:
    """({v1 controller: path}, v2 path or None) of a ``/proc/<pid>/cgroup`` text."""
    v1, v2 = {}, None
    for line in proc_cgroup.splitlines():
        hier, controllers, path = line.split(":", 2)
        if hier == "0" and controllers == "":
            v2 = path
        for c in controllers.split(","):
            if c in CONTROLLERS:
                v1[c] = path
    return v1, v2


def _inside(point: str, mount_root: str, path: str) -> Path:
    """Directory of cgroup ``path`` under a hierarchy mounted at ``point`` whose root is
    ``mount_root`` (a container sees only the part of the hierarchy below its own group)."""
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root):]
    return Path(point) / path.lstrip("/")


def _write(path: Path, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(text: str, key: str) -> int:
    """Value of ``key N`` in a flat-keyed cgroup file (0 when absent)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


@dataclass(frozen=True)
class GroupLimits:
    """Limits of one group: bytes of memory (RAM + swap, page cache and shmem included), tasks
    (processes and threads), CPU cores of quota (None: no CPU cap)."""

    memory_bytes: int
    max_procs: int
    cpus: float = None


class RunGroup:
    """One run's group (one directory per hierarchy). Never raises after creation."""

    def __init__(self, version: int, dirs: list):
        self.version = version
        self.dirs = dirs

    def join_script(self) -> str:
        """A ``sh`` fragment moving the shell into this group (then it execs the sandbox)."""
        return " && ".join(f"echo $$ > '{d}/cgroup.procs'" for d in self.dirs)

    def limits_hit(self) -> list:
        """Which limits stopped a task: 'memory' (the OOM killer ran), 'processes' (a fork was
        refused)."""
        hit = []
        mem = next((d for d in self.dirs if (d / "memory.events").exists()
                    or (d / "memory.oom_control").exists()), None)
        if mem is not None:
            events = _read(mem / ("memory.events" if self.version == 2 else "memory.oom_control"))
            if _counter(events, "oom_kill"):
                hit.append("memory")
        pids = next((d for d in self.dirs if (d / "pids.events").exists()), None)
        if pids is not None and _counter(_read(pids / "pids.events"), "max"):
            hit.append("processes")
        return hit

    def pids(self) -> set:
        out = set()
        for d in self.dirs:
            out.update(int(p) for p in _read(d / "cgroup.procs").split())
        return out

    def kill(self) -> None:
        """SIGKILL every task of the group (cgroup.kill where the kernel has it)."""
        for d in self.dirs:
            if (d / "cgroup.kill").exists():
                try:
                    _write(d / "cgroup.kill", 1)
                    return
                except OSError:
                    pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def remove(self) -> str:
        """Kill what is left and remove the group; '' on success, else what is left behind."""
        for _ in range(_KILL_ROUNDS):
            if not self.pids():
                break
            self.kill()
            time.sleep(0.01)
        left = []
        for d in self.dirs:
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # tasks still exiting
                    time.sleep(0.01)
            else:
                left.append(str(d))
        return f"cgroups not removed: {left}" if left else ""


class Cgroups:
    """Makes one :class:`RunGroup` per sandboxed run, below a base group of this process."""

    def __init__(self, version: int, bases: list, memsw: bool, cpu: bool):
        self.version = version
        self.bases = bases
        self.memsw = memsw
        self.cpu = cpu

    def describe(self) -> str:
        if self.version == 2:
            what = "memory.max (swap 0), pids.max" + (", cpu.max" if self.cpu else "")
        else:
            what = ("memory" + ("+memsw" if self.memsw else " (swap not accounted)")
                    + ", pids" + (", cpu quota" if self.cpu else ""))
        return f"cgroup v{self.version}: {what}"

    def create(self, name: str, limits: GroupLimits) -> RunGroup:
        """A fresh group ``name`` under the base with ``limits`` written (OSError if it cannot)."""
        dirs = []
        try:
            for base in self.bases:
                d = base / name
                d.mkdir()
                dirs.append(d)
            self._apply(dirs, limits)
        except BaseException:
            RunGroup(self.version, dirs).remove()
            raise
        return RunGroup(self.version, dirs)

    def _apply(self, dirs: list, limits: GroupLimits) -> None:
        for d in dirs:
            if self.version == 2:
                _write(d / "memory.max", limits.memory_bytes)
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", 0)
                _write(d / "pids.max", limits.max_procs)
                if self.cpu and limits.cpus:
                    _write(d / "cpu.max", f"{int(limits.cpus * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")
                continue
            if (d / "memory.limit_in_bytes").exists():
                _write(d / "memory.limit_in_bytes", limits.memory_bytes)
                if self.memsw:
                    _write(d / "memory.memsw.limit_in_bytes", limits.memory_bytes)
            if (d / "pids.max").exists():
                _write(d / "pids.max", limits.max_procs)
            if (d / "cpu.cfs_quota_us").exists() and limits.cpus:
                _write(d / "cpu.cfs_period_us", _CPU_PERIOD_US)
                _write(d / "cpu.cfs_quota_us", int(limits.cpus * _CPU_PERIOD_US))

    def close(self) -> None:
        """Remove the base groups (after every run group is gone). Never raises."""
        for base in self.bases:
            try:
                for child in base.iterdir():
                    if child.is_dir():
                        RunGroup(self.version, [child]).remove()
                os.rmdir(base)
            except OSError:
                pass


def detect(mountinfo: str = None, proc_cgroup: str = None) -> Cgroups:
    """Set up a base group for this process; CgroupsUnavailable says why when none works.

    The texts default to this process's ``/proc/self/mountinfo`` and ``/proc/self/cgroup``.
    """
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    if proc_cgroup is None:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    v1_mounts, v2_mount = _mounts(mountinfo)
    v1_paths, v2_path = _own_groups(proc_cgroup)
    name = f"codegeex-{os.getpid()}-{secrets.token_hex(4)}"
    reasons = []
    if v2_mount is not None and v2_path is not None:
        try:
            return _setup_v2(_inside(*v2_mount, v2_path), name)
        except (CgroupsUnavailable, OSError) as e:
            reasons.append(f"v2: {e}")
    if all(c in v1_mounts and c in v1_paths for c in ("memory", "pids")):
        try:
            return _setup_v1(v1_mounts, v1_paths, name)
        except OSError as e:
            reasons.append(f"v1: {e}")
    else:
        reasons.append("v1: no memory and pids hierarchies mounted")
    raise CgroupsUnavailable("; ".join(reasons))


def remove_stale(parent: Path) -> None:
    """Remove ``codegeex-<pid>-*`` groups below ``parent`` whose evaluator process is gone (it
    was killed before it could clean up). Never raises."""
    try:
        children = list(parent.iterdir())
    except OSError:
        return
    for child in children:
        m = re.fullmatch(r"codegeex-(\d+)-[0-9a-f]+", child.name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            Cgroups(0, [child], memsw=False, cpu=False).close()


def _setup_v2(own: Path, name: str) -> Cgroups:
    available = _read(own / "cgroup.controllers").split()
    missing = [c for c in ("memory", "pids") if c not in available]
    if missing:
        raise CgroupsUnavailable(f"controllers {missing} not available in {own}")
    wanted = [c for c in CONTROLLERS if c in available]
    enabled = _read(own / "cgroup.subtree_control").split()
    todo = [c for c in wanted if c not in enabled]
    if todo:
        try:  # refused (EBUSY) when our own group holds processes and is not the root
            _write(own / "cgroup.subtree_control", " ".join("+" + c for c in todo))
        except OSError as e:
            raise CgroupsUnavailable(
                f"cannot enable {todo} below {own} ({e.strerror}); run the evaluator in a "
                "delegated group, e.g. systemd-run --user --scope -p Delegate=yes") from e
    remove_stale(own)
    base = own / name
    base.mkdir()
    try:
        _write(base / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
    except OSError:
        os.rmdir(base)
        raise
    return Cgroups(2, [base], memsw=True, cpu="cpu" in wanted)


def _setup_v1(mounts: dict, paths: dict, name: str) -> Cgroups:
    controllers = [c for c in CONTROLLERS if c in mounts and c in paths]
    bases, seen = [], set()
    try:
        for c in controllers:
            base = _inside(*mounts[c], paths[c]) / name
            if base in seen:  # co-mounted controllers share one directory
                continue
            remove_stale(base.parent)
            base.mkdir()
            seen.add(base)
            bases.append(base)
    except OSError:
        for b in bases:
            os.rmdir(b)
        raise
    memsw = any((b / "memory.memsw.limit_in_bytes").exists() for b in bases)
    return Cgroups(1, bases, memsw=memsw, cpu="cpu" in controllers)
