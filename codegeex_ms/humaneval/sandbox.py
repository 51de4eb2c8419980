"""Running untrusted programs: one process tree per call, confined and limited.

Threat model. A sample is arbitrary code written to make the evaluator misbehave: read the
answer key or anything else on the host, write or delete outside its directory, reach a host
service (TCP, unix sockets in ``/run`` or the abstract namespace), leave processes running, or
exhaust memory, processes, CPU or disk so that the machine or the rest of the evaluation
suffers. It does not get to exploit the kernel: a kernel bug is out of scope, as is a sample
that merely computes for its whole time limit. What it prints is handled by the verdict code
of the runners, not here.

Two isolation levels; :class:`Sandbox` picks one and never downgrades silently:

``bubblewrap``
    ``bwrap`` builds a new root holding only what toolchains need, read-only: ``/usr`` and the
    ``/lib*``, ``/bin``, ``/sbin`` links, a few ``/etc`` entries (dynamic linker, alternatives,
    time zone, Java configuration, certificates), the paths each runner declares visible (an
    interpreter's prefix, a compiler's sysroot, prepared dependencies), the resolved prefix of
    the program's executable, plus the writable sample directory and a private size-capped
    ``/tmp``. Nothing else exists inside: no home directories, no ``/run`` or ``/var``, no
    datasets, no checkout, no ``/sys``. Toolchains that live under ``/tmp`` (a checkout's venv,
    an evaluation cache) are bound in after the private ``/tmp`` is mounted, so they work.
    New PID, network, IPC and UTS namespaces: no network at all (the loopback is the
    sandbox's own), and, since abstract-namespace unix sockets belong to the network
    namespace, none of the host's abstract sockets either; path-named sockets are unreachable
    because no host directory that holds them is mounted. When the harness runs as root, bwrap
    runs without a user namespace and ``setpriv`` drops the program to a per-worker
    unprivileged uid (``uid_base + slot``) with no capabilities and no new privileges; as
    another user, bwrap makes a user namespace and the program keeps the invoking uid. When
    the outer process is killed, ``--die-with-parent`` and the PID namespace take every
    descendant along.

``rlimits``
    Not a sandbox, only limits: used when asked for explicitly *and* acknowledged
    (``allow_unsandboxed``); ``auto`` refuses instead of falling back to it. As root the
    program still runs as the slot's uid (``setpriv``), so it cannot write root's files and
    ``RLIMIT_NPROC`` binds; it can read whatever that uid can read and reach the network.

Limits. Every call runs in a fresh control group when the machine offers one
(:mod:`.cgroups`: memory including shmem/memfd/tmpfs pages and no swap, task count, CPU
quota), which also finds and kills every leftover process afterwards. Without cgroups the
strongest fallback applies and :meth:`Sandbox.describe` says so: per-process limits only
(``RLIMIT_AS``, ``RLIMIT_NPROC`` per sandbox uid). In both cases each process gets
``RLIMIT_AS``, ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and no core dumps (applied
with ``prlimit``), the whole tree is SIGKILLed after a wall-clock timeout or when captured
stdout + stderr pass a cap. The sample directory's size cap is :class:`.execution.Workdirs`' job.
"""

import fcntl
import itertools
import json
import os
import queue
import resource
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import cgroups as cg

BUBBLEWRAP = "bubblewrap"
RLIMITS = "rlimits"
ISOLATION_CHOICES = ("auto", BUBBLEWRAP, RLIMITS)
DEFAULT_UID_BASE = 61000
UID_BLOCK = 256   # uids reserved per sandbox (at most this many workers)
UID_BLOCKS = 64   # sandboxes that may run on one machine at once with their own uids
_MIB = 1 << 20
_GRACE_S = 10.0  # wait for a killed sandbox to be gone
# Read-only system paths of the bubblewrap view (symlinks there are recreated as symlinks).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime",
               "timezone", "nsswitch.conf", "ssl", "java-*")
_JOIN_FAILED = 125
_JOIN_MARK = "codegeex-sandbox: cannot join the run's cgroup"


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be had here; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed process tree.

    ``wall_s``: wall-clock seconds before the tree is killed. ``cpu_s``: RLIMIT_CPU per process
    (default ``int(wall_s) + 2``). ``memory_bytes``: RLIMIT_AS per process and, with cgroups,
    the memory of the whole tree (RAM incl. shmem/memfd/tmpfs pages, no swap).
    ``max_procs``: tasks (processes + threads) of the tree (cgroup ``pids.max``) and
    RLIMIT_NPROC of the sandbox uid. ``cpus``: CPU quota of the tree in cores (cgroup only).
    ``max_output_bytes``: stdout + stderr kept before the tree is killed. ``max_file_bytes``:
    RLIMIT_FSIZE. ``max_open_files``: RLIMIT_NOFILE. ``tmp_bytes``: size of the private /tmp
    (bubblewrap).
    """

    wall_s: float = 10.0
    cpu_s: int = None
    memory_bytes: int = 2048 * _MIB
    max_procs: int = 128
    max_output_bytes: int = 1 * _MIB
    max_file_bytes: int = 64 * _MIB
    max_open_files: int = 1024
    cpus: float = 1.0
    tmp_bytes: int = 64 * _MIB

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else int(self.wall_s) + 2

    def rlimits(self, nproc: int = None) -> dict:
        """The limits as ``{RLIMIT_*: value}``; ``nproc`` overrides ``max_procs`` (None: omit
        RLIMIT_NPROC)."""
        limits = {resource.RLIMIT_AS: self.memory_bytes, resource.RLIMIT_CPU: self.cpu_seconds,
                  resource.RLIMIT_FSIZE: self.max_file_bytes,
                  resource.RLIMIT_NOFILE: self.max_open_files, resource.RLIMIT_CORE: 0}
        if nproc is not None:
            limits[resource.RLIMIT_NPROC] = nproc
        return limits


_PRLIMIT_NAMES = {resource.RLIMIT_AS: "as", resource.RLIMIT_CPU: "cpu",
                  resource.RLIMIT_FSIZE: "fsize", resource.RLIMIT_NOFILE: "nofile",
                  resource.RLIMIT_CORE: "core", resource.RLIMIT_NPROC: "nproc"}


def _prlimit_prefix(rlimits: dict) -> list:
    """``prlimit --as=N ... --`` setting soft = hard for each limit."""
    return ["prlimit"] + [f"--{_PRLIMIT_NAMES[k]}={v}" for k, v in rlimits.items()] + ["--"]


@dataclass
class RunResult:
    """Outcome of one sandboxed command. ``returncode`` is negative for a signal (rlimits mode).
    ``limits_hit``: cgroup limits that stopped a task ('memory': the OOM killer ran;
    'processes': a fork was refused)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    output_exceeded: bool
    wall_s: float
    limits_hit: tuple = ()

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded


@dataclass(frozen=True)
class Slot:
    """A worker's identity: the uid/gid its programs run as (the invoking ids unless switching)."""

    index: int
    uid: int
    gid: int
    switch_uid: bool = False


def _missing_tools(isolation: str) -> str:
    """Which executables the isolation needs are missing ('' when none)."""
    needed = ["prlimit"] + (["bwrap"] if isolation == BUBBLEWRAP else [])
    if os.geteuid() == 0:
        needed.append("setpriv")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    return f"{', '.join(missing)} not found" if missing else ""


class Sandbox:
    """Runs commands under the chosen isolation; hands out per-worker :class:`Slot` s.

    ``isolation``: ``auto`` (bubblewrap; :class:`SandboxUnavailable` when it does not work
    here, unless ``allow_unsandboxed``, which falls back to rlimits), ``bubblewrap`` (raise if
    it does not work) or ``rlimits`` (needs ``allow_unsandboxed``: it is not a sandbox).
    ``workers``: the number of slots. ``uid_base``: first uid used for slots when running as
    root (default: ``$CODEGEEX_SANDBOX_UID_BASE``, else the first free block of
    ``UID_BLOCK`` uids from 61000 on, reserved with a lock file so that evaluators running at the
    same time on one machine never share uids); the uids need no passwd entry but must be
    unused. Call :meth:`close` (or use as a context manager) to remove its cgroups.
    """

    def __init__(self, isolation: str = "auto", workers: int = 1, uid_base: int = None,
                 allow_unsandboxed: bool = False):
        if isolation not in ISOLATION_CHOICES:
            raise ValueError(f"unknown isolation {isolation!r}; use one of {ISOLATION_CHOICES}")
        self.workers = max(1, int(workers))
        self.is_root = os.geteuid() == 0
        self._serial = itertools.count()
        uid_lock = None
        if uid_base is None and "CODEGEEX_SANDBOX_UID_BASE" in os.environ:
            uid_base = int(os.environ["CODEGEEX_SANDBOX_UID_BASE"])
        elif uid_base is None:
            if self.workers > UID_BLOCK:
                raise ValueError(f"workers={self.workers}: at most {UID_BLOCK} per sandbox")
            uid_base, uid_lock = _reserve_uid_block() if self.is_root else (DEFAULT_UID_BASE, None)
        self.uid_base = uid_base
        try:
            self.cgroups, self.cgroups_reason = cg.detect(), ""
        except (cg.CgroupsUnavailable, OSError) as e:
            self.cgroups, self.cgroups_reason = None, str(e) or type(e).__name__
        self._finalizer = weakref.finalize(self, _release, self.cgroups, uid_lock)
        self.fallback_reason = ""
        try:
            self.isolation = self._choose(isolation, allow_unsandboxed)
            missing = _missing_tools(self.isolation)
            if missing:
                raise SandboxUnavailable(f"{self.isolation} isolation needs {missing}")
            if self.cgroups is not None:
                self._check_cgroups()
        except BaseException:
            self.close()
            raise
        self.switch_uid = self.is_root
        self._slots = queue.Queue()
        for i in range(self.workers):
            if self.switch_uid:
                self._slots.put(Slot(i, uid_base + i, uid_base + i, switch_uid=True))
            else:
                self._slots.put(Slot(i, os.getuid(), os.getgid()))

    def _choose(self, isolation: str, allow_unsandboxed: bool) -> str:
        hint = ("install bubblewrap (run_scripts/install_eval_toolchains.sh), or knowingly run "
                "without a sandbox: --isolation rlimits --i-understand-this-is-not-a-sandbox")
        if isolation == RLIMITS:
            if not allow_unsandboxed:
                raise SandboxUnavailable("rlimits isolation is not a sandbox (samples can read "
                                         "and reach whatever the sandbox uid can); pass "
                                         "--i-understand-this-is-not-a-sandbox to use it")
            self.fallback_reason = "requested"
            return RLIMITS
        reason = _missing_tools(BUBBLEWRAP) or self._try_bwrap()
        if not reason:
            return BUBBLEWRAP
        if isolation == BUBBLEWRAP or not allow_unsandboxed:
            raise SandboxUnavailable(f"bubblewrap isolation is not usable here: {reason}; {hint}")
        self.fallback_reason = reason
        return RLIMITS

    def _check_cgroups(self) -> None:
        """Run ``true`` in a run group; on failure use no cgroups and keep the reason."""
        reason = ""
        try:
            group = self.cgroups.create("probe", cg.GroupLimits(64 * _MIB, 8, 1.0))
        except OSError as e:
            reason = f"cannot create a group: {e}"
        else:
            try:
                result = _run_capped(_joining(group, ["true"]), cwd="/", env={},
                                     limits=SandboxLimits(wall_s=10), group=group)
            finally:
                group.remove()
            reason = "" if result.returncode == 0 else f"cannot join a group: {result.stderr}"
        if reason:
            self.cgroups.close()
            self.cgroups, self.cgroups_reason = None, reason

    # ----- description -------------------------------------------------------------------------
    def limits_mechanism(self) -> str:
        """How whole-tree limits are enforced (cgroup version and controllers, or the fallback)."""
        if self.cgroups is not None:
            return self.cgroups.describe()
        who = "per sandbox uid" if self.switch_uid else "per invoking uid"
        return (f"NO cgroups ({self.cgroups_reason}): per-process limits only, memory and CPU "
                f"not capped for the whole tree, RLIMIT_NPROC {who}")

    def describe(self) -> str:
        """One line: the isolation in force, its limits mechanism and what it does not cover."""
        if self.isolation == BUBBLEWRAP:
            who = (f"programs run as uids {self.uid_base}..{self.uid_base + self.workers - 1}"
                   if self.switch_uid else "programs keep the invoking uid in a user namespace")
            return ("bubblewrap: new pid/net/ipc/uts namespaces (no network, no host sockets), "
                    "minimal read-only filesystem view (system dirs and declared toolchains), "
                    f"writable sample directory and private /tmp only; {who}; "
                    f"{self.limits_mechanism()}; rlimits via prlimit")
        who = (f"as uids {self.uid_base}..{self.uid_base + self.workers - 1}"
               if self.switch_uid else "as the invoking uid")
        return (f"rlimits only ({self.fallback_reason}), NOT A SANDBOX: NO filesystem or network "
                f"isolation; programs run {who}; {self.limits_mechanism()}")

    # ----- slots -------------------------------------------------------------------------------
    @contextmanager
    def slot(self):
        """Borrow a worker slot for the duration of one sample (blocks until one is free)."""
        s = self._slots.get()
        try:
            yield s
        finally:
            self._slots.put(s)

    def give(self, path: Path, slot: Slot) -> None:
        """Make ``path`` (recursively) owned by the slot's uid, so its programs may write there."""
        if not slot.switch_uid:
            return
        path = Path(path)
        os.chown(path, slot.uid, slot.gid, follow_symlinks=False)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), slot.uid, slot.gid, follow_symlinks=False)

    # ----- running -----------------------------------------------------------------------------
    def run(self, argv, *, cwd, limits: SandboxLimits, slot: Slot, env: dict = None, visible=(),
            writable=()) -> RunResult:
        """Run ``argv`` in directory ``cwd`` (writable) under ``limits``; never raises on the
        program's behaviour (OSError / SandboxUnavailable only for a harness failure).

        ``env``: the program's whole environment (PATH defaults to /usr/local/bin:/usr/bin:/bin).
        ``visible``: paths (toolchains, caches) the program may read. ``writable``: extra
        directories it may write (e.g. a compiler cache).
        """
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
        cwd = Path(cwd).resolve()
        argv = list(argv)
        group = None
        if self.cgroups is not None:
            group = self.cgroups.create(f"run-{slot.index}-{next(self._serial)}",
                                        cg.GroupLimits(limits.memory_bytes, limits.max_procs,
                                                       limits.cpus))
        try:
            if self.isolation == BUBBLEWRAP:
                info_r, info_w = os.pipe()
                try:
                    cmd = ["bwrap", "--info-fd", str(info_w)] + self._bwrap_args(
                        argv, cwd, limits, slot, env, visible, writable)
                    result = _run_capped(_joining(group, cmd), cwd=cwd,
                                         env={"PATH": env["PATH"]}, limits=limits, group=group,
                                         info=(info_r, info_w))
                finally:
                    os.close(info_r)
            else:
                result = _run_capped(_joining(group, self._rlimits_argv(argv, limits, slot)),
                                     cwd=cwd, env=env, limits=limits, group=group)
        finally:
            if group is not None:
                group.remove()
        if group is not None and result.returncode == _JOIN_FAILED and _JOIN_MARK in result.stderr:
            raise OSError(f"{_JOIN_MARK} ({', '.join(map(str, group.dirs))})")
        return result

    def _rlimits_argv(self, argv, limits, slot) -> list:
        if slot.switch_uid:
            return _setpriv(slot) + _prlimit_prefix(limits.rlimits(limits.max_procs)) + argv
        # RLIMIT_NPROC counts the uid's tasks host-wide: allow for the tasks that already exist.
        return _prlimit_prefix(limits.rlimits(_count_own_tasks() + limits.max_procs)) + argv

    def _bwrap_args(self, argv, cwd, limits, slot, env, visible, writable) -> list:
        cmd = ["--die-with-parent", "--new-session"]
        if self.is_root:
            cmd += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                    "--unshare-cgroup-try", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            cmd += ["--unshare-all"]
        view = _View()
        view.system()
        view.add(["--dev", "/dev", "--perms", "0755", "--size", str(_MIB), "--tmpfs", "/dev/shm",
                  "--remount-ro", "/dev", "--proc", "/proc",
                  "--ro-bind-try", "/proc/sys", "/proc/sys",
                  "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
                  "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"],
                 made=("/dev", "/proc", "/tmp"))
        rw = [cwd] + [Path(w).resolve() for w in writable]
        for src, dest in _visible_binds(list(visible) + _exec_prefix(argv[0]), rw):
            view.bind("--ro-bind", src, dest)
        for p in rw:
            view.bind("--bind", str(p), str(p))
        cmd += view.args
        cmd += ["--remount-ro", "/", "--chdir", str(cwd), "--clearenv"]
        for k, v in env.items():
            cmd += ["--setenv", k, str(v)]
        cmd += ["--"]
        if slot.switch_uid:
            cmd += _setpriv(slot)
        return cmd + _prlimit_prefix(limits.rlimits(limits.max_procs)) + argv

    def _try_bwrap(self) -> str:
        """Run ``true`` the way real programs will run; return why it failed ('' if it worked)."""
        slot = Slot(0, self.uid_base, self.uid_base, switch_uid=self.is_root)
        with tempfile.TemporaryDirectory(prefix="codegeex_bwrap_probe_") as probe_dir:
            cmd = ["bwrap"] + self._bwrap_args(["true"], Path(probe_dir).resolve(),
                                               SandboxLimits(wall_s=10), slot,
                                               {"PATH": "/usr/bin:/bin"}, (), ())
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=30, cwd="/")
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"bwrap failed to start: {e}"
        if proc.returncode != 0:
            return "bwrap cannot create its sandbox here: " + proc.stderr.decode(errors="replace").strip()
        return ""

    def close(self) -> None:
        """Remove this sandbox's cgroups, free its uids (idempotent; never raises)."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _reserve_uid_block() -> tuple:
    """(first uid, open lock file) of the first block of UID_BLOCK uids no other sandbox on this
    machine holds (an exclusive ``flock`` on ``<tmp>/codegeex-sandbox-uids/<block>.lock``)."""
    lock_dir = Path(tempfile.gettempdir()) / "codegeex-sandbox-uids"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    for block in range(UID_BLOCKS):
        f = open(lock_dir / f"{block}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return DEFAULT_UID_BASE + block * UID_BLOCK, f
    raise SandboxUnavailable(f"all {UID_BLOCKS} sandbox uid blocks are in use (locks in "
                             f"{lock_dir}); set CODEGEEX_SANDBOX_UID_BASE to unused uids")


def _release(groups, uid_lock) -> None:
    if groups is not None:
        groups.close()
    if uid_lock is not None:
        uid_lock.close()


def _setpriv(slot: Slot) -> list:
    return ["setpriv", f"--reuid={slot.uid}", f"--regid={slot.gid}", "--clear-groups",
            "--inh-caps=-all", "--"]


def _joining(group, cmd: list) -> list:
    """``cmd`` started from a shell that first moves itself into ``group`` (if any)."""
    if group is None:
        return cmd
    script = (f"{{ {group.join_script()}; }} 2>/dev/null || "
              f"{{ echo {shlex.quote(_JOIN_MARK)} >&2; exit {_JOIN_FAILED}; }}; exec \"$@\"")
    return ["/bin/sh", "-c", script, "sh"] + cmd


class _View:
    """bwrap options building the filesystem view; every directory bwrap has to create on the
    way to a mount point is made explicitly with mode 0755 (bwrap would copy the host's mode,
    e.g. 0700 for /root, and the sandbox uid could not pass)."""

    def __init__(self):
        self.args = []
        self._dirs = {Path("/")}

    def add(self, args: list, made=()) -> None:
        self.args += args
        self._dirs.update(Path(m) for m in made)

    def bind(self, option: str, src: str, dest: str) -> None:
        for parent in reversed(Path(dest).parents):
            if parent not in self._dirs:
                self.args += ["--perms", "0755", "--dir", str(parent)]
                self._dirs.add(parent)
        self.args += [option, src, dest]
        self._dirs.add(Path(dest))

    def system(self) -> None:
        """The read-only system part: SYSTEM_PATHS (symlinks kept as symlinks), /etc entries."""
        for name in SYSTEM_PATHS:
            p = Path(name)
            if p.is_symlink():
                self.add(["--symlink", os.readlink(p), name])
            elif p.is_dir():
                self.bind("--ro-bind", name, name)
        for pattern in ETC_ENTRIES:
            for p in sorted(Path("/etc").glob(pattern)):
                self.bind("--ro-bind", str(p), str(p))


def _covered(p: Path, roots) -> bool:
    return any(p == r or r in p.parents for r in roots)


def _exec_prefix(argv0: str) -> list:
    """The installation prefix of an absolute executable outside the system paths (``X`` for
    ``X/bin/prog``, else its directory), so an undeclared toolchain still runs."""
    if not os.path.isabs(argv0):
        return []
    dirs = {Path(os.path.abspath(argv0)).parent, Path(argv0).resolve().parent}
    return [d.parent if d.name == "bin" else d for d in dirs]


def _visible_binds(paths, writable) -> list:
    """(source, destination) read-only binds for the visible ``paths``: each at its resolved
    location, and at its given location too when that is a symlinked path. Paths inside the
    system view, inside another visible path or inside a writable one are left out, as is
    ``/`` and anything that does not exist."""
    system = [Path(p) for p in SYSTEM_PATHS] + [Path("/etc")]
    wanted = {}
    for p in paths:
        given = Path(os.path.abspath(p))
        if not given.exists():
            continue
        real = given.resolve()
        for dest in {real, given}:
            if dest != Path("/"):
                wanted.setdefault(dest, real)
    dests = sorted(wanted, key=lambda d: (len(d.parts), str(d)))
    binds, done = [], []
    for dest in dests:
        if _covered(dest, system) or _covered(dest, done) or _covered(dest, writable):
            continue
        done.append(dest)
        binds.append((str(wanted[dest]), str(dest)))
    return binds


def _count_own_tasks() -> int:
    """Threads of all processes of the current uid (what RLIMIT_NPROC counts)."""
    uid, total = str(os.getuid()), 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [uid]:
            total += int(fields.get("Threads", "1"))
    return total


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_capped(cmd, *, cwd, env, limits: SandboxLimits, group=None, info=None) -> RunResult:
    """Run ``cmd`` in a new session; kill it on timeout or when its output passes the cap.

    ``info``: (read end, write end) of bwrap's ``--info-fd`` pipe; the kill then goes to the
    sandbox's PID-namespace init (its host pid comes from there): the kernel kills every process
    in the namespace, and bwrap exits only once they are all gone. ``group``: the run's cgroup,
    whose every task is killed too. Otherwise the process group is killed.
    """
    start = time.monotonic()
    deadline = start + limits.wall_s
    info_r, info_w = info if info else (None, None)
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, pass_fds=(info_w,) if info else ())
    finally:
        if info_w is not None:
            os.close(info_w)
    chunks = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    infos = []
    total, timed_out, exceeded = 0, False, False
    sel = selectors.DefaultSelector()
    for fd in list(chunks) + ([info_r] if info else []):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.get_map() and not exceeded:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(remaining, 0.5)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                elif key.fd == info_r:
                    infos.append(data)
                else:
                    chunks[key.fd].append(data[:max(0, limits.max_output_bytes - total)])
                    total += len(data)
                    exceeded = total > limits.max_output_bytes
        if not (timed_out or exceeded):  # the pipes closed: the program is ending
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out or exceeded:
            _kill(proc, _child_pid(infos, info_r))
            if group is not None:
                group.kill()
            try:
                proc.wait(timeout=_GRACE_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
        _kill_group(proc.pid)  # stragglers that kept running after the main process exited
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    hit = tuple(group.limits_hit()) if group is not None else ()
    out, err = (b"".join(part).decode("utf-8", errors="replace") for part in chunks.values())
    return RunResult(proc.returncode, out, err, timed_out, exceeded, time.monotonic() - start,
                     hit)


def _child_pid(info: list, info_r) -> int:
    """Host pid of the bwrap sandbox's init from its ``--info-fd`` JSON (None if unknown)."""
    if info_r is None:
        return None
    try:
        info.append(os.read(info_r, 65536))
    except (BlockingIOError, OSError):
        pass
    try:
        return int(json.loads(b"".join(info))["child-pid"])
    except (ValueError, KeyError):
        return None


def _kill(proc, child_pid) -> None:
    """SIGKILL the bwrap sandbox's init, which takes its PID namespace along while bwrap waits
    (killing bwrap itself would let it exit before the namespace is empty); without a known
    init, SIGKILL the process group."""
    if child_pid is not None and proc.poll() is None:
        try:
            os.kill(child_pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            pass
    _kill_group(proc.pid)
