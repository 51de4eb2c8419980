"""Running untrusted programs: one process tree per call, confined and limited.

Two isolation levels, chosen by :func:`detect_isolation` (``auto``) or forced:

``bubblewrap``
    ``bwrap`` gives the program new PID, network, IPC and UTS namespaces (no network at all; the
    loopback is its own), a read-only view of ``/`` in which the only writable path is the
    sample's directory (plus paths a step names explicitly, such as a compiler cache), private
    ``/tmp`` and a 1 MiB ``/dev/shm`` that it cannot write, writable-looking ``/proc/sys`` bound
    read-only, and the invoking user's home hidden (only the toolchain paths a runner asks for
    are bound back, read-only). When the harness runs as root, bwrap runs privileged without a
    user namespace and ``setpriv`` drops the program to a per-worker unprivileged uid
    (``uid_base + slot``; see :class:`Slot`) with no capabilities and no new privileges, so that
    the process-count limit applies (the kernel exempts uid 0 from ``RLIMIT_NPROC``). Otherwise
    bwrap creates a user namespace and the program keeps the invoking uid. When the outer
    process is killed, ``--die-with-parent`` and the PID namespace take every descendant with it.

``rlimits``
    The fallback when bwrap is missing or cannot create namespaces: resource limits and a
    separate process group only. There is no filesystem or network isolation, and descendants
    that leave the process group survive a timeout.

In both, every call gets resource limits (address space, CPU time, processes, file size, open
files, no core dumps; applied with ``prlimit`` inside the sandbox), a wall-clock timeout after
which the whole process group is SIGKILLed, and a cap on captured stdout + stderr beyond which
the program is killed.
"""

import json
import os
import queue
import resource
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUBBLEWRAP = "bubblewrap"
RLIMITS = "rlimits"
ISOLATION_CHOICES = ("auto", BUBBLEWRAP, RLIMITS)
DEFAULT_UID_BASE = 61000
_MIB = 1 << 20
_GRACE_S = 10.0  # wait for a killed sandbox to be gone


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed process tree.

    ``wall_s``: wall-clock seconds before the tree is killed. ``cpu_s``: RLIMIT_CPU per process
    (default ``ceil(wall_s) + 1``). ``memory_bytes``: RLIMIT_AS per process. ``max_procs``:
    RLIMIT_NPROC (processes and threads of the sandbox uid). ``max_output_bytes``: stdout +
    stderr kept before the tree is killed. ``max_file_bytes``: RLIMIT_FSIZE. ``max_open_files``:
    RLIMIT_NOFILE.
    """

    wall_s: float = 10.0
    cpu_s: int = None
    memory_bytes: int = 2048 * _MIB
    max_procs: int = 128
    max_output_bytes: int = 1 * _MIB
    max_file_bytes: int = 64 * _MIB
    max_open_files: int = 1024

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
    """Outcome of one sandboxed command. ``returncode`` is negative for a signal (rlimits mode)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    output_exceeded: bool
    wall_s: float

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


def _bwrap_available() -> str:
    """Why bwrap cannot be used (empty string when its executables are all present)."""
    missing = [tool for tool in ("bwrap", "prlimit") if shutil.which(tool) is None]
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        missing.append("setpriv")
    return f"{', '.join(missing)} not found" if missing else ""


class Sandbox:
    """Runs commands under the chosen isolation; hands out per-worker :class:`Slot` s.

    ``isolation`` is ``auto`` (bubblewrap when it works here, else rlimits), ``bubblewrap``
    (raise RuntimeError if it does not work) or ``rlimits``. ``workers`` is the number of slots.
    ``uid_base``: first uid used for slots when running as root (default 61000, or
    ``$CODEGEEX_SANDBOX_UID_BASE``); the uids need no passwd entry but must be unused.
    """

    def __init__(self, isolation: str = "auto", workers: int = 1, uid_base: int = None):
        if isolation not in ISOLATION_CHOICES:
            raise ValueError(f"unknown isolation {isolation!r}; use one of {ISOLATION_CHOICES}")
        self.workers = max(1, int(workers))
        self.is_root = os.geteuid() == 0
        if uid_base is None:
            uid_base = int(os.environ.get("CODEGEEX_SANDBOX_UID_BASE", DEFAULT_UID_BASE))
        self.uid_base = uid_base
        self.fallback_reason = ""
        if isolation == RLIMITS:
            self.isolation = RLIMITS
            self.fallback_reason = "requested"
        else:
            reason = _bwrap_available() or self._try_bwrap()
            if reason and isolation == BUBBLEWRAP:
                raise RuntimeError(f"bubblewrap isolation is not usable here: {reason}")
            self.isolation = RLIMITS if reason else BUBBLEWRAP
            self.fallback_reason = reason
        switch = self.isolation == BUBBLEWRAP and self.is_root
        self._slots = queue.Queue()
        for i in range(self.workers):
            if switch:
                self._slots.put(Slot(i, uid_base + i, uid_base + i, switch_uid=True))
            else:
                self._slots.put(Slot(i, os.getuid(), os.getgid()))

    # ----- description -------------------------------------------------------------------------
    def describe(self) -> str:
        """One line saying which isolation is in force and what it does not cover."""
        if self.isolation == BUBBLEWRAP:
            who = (f"programs run as uids {self.uid_base}..{self.uid_base + self.workers - 1}"
                   if self.is_root else "programs keep the invoking uid in a user namespace")
            return ("bubblewrap: new pid/net/ipc/uts namespaces (no network), read-only root, "
                    f"writable sample directory only, home hidden; {who}; rlimits via prlimit")
        return (f"rlimits only ({self.fallback_reason}): resource limits and process-group kill; "
                "NO filesystem or network isolation")

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
    def run(self, argv, *, cwd, limits: Limits, slot: Slot, env: dict = None, visible=(),
            writable=()) -> RunResult:
        """Run ``argv`` in directory ``cwd`` (writable) under ``limits``; never raises on the
        program's behaviour.

        ``env``: the program's whole environment (PATH defaults to /usr/local/bin:/usr/bin:/bin).
        ``visible``: paths (toolchains, caches) to bind back read-only if they lie in a hidden
        directory. ``writable``: extra directories the program may write (e.g. a compiler cache).
        """
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
        cwd = Path(cwd).resolve()
        if self.isolation == BUBBLEWRAP:
            cmd = self._bwrap_argv(list(argv), cwd, limits, slot, env, visible, writable)
            return _run_capped(cmd, cwd=cwd, env={"PATH": env["PATH"]}, limits=limits,
                               preexec=None, bwrap=True)
        # RLIMIT_NPROC counts the uid's tasks host-wide (and never binds root): allow for the
        # tasks that already exist.
        nproc = None if self.is_root else _count_own_tasks() + limits.max_procs
        rlimits = limits.rlimits(nproc)
        if shutil.which("prlimit"):
            return _run_capped(_prlimit_prefix(rlimits) + list(argv), cwd=cwd, env=env,
                               limits=limits, preexec=None)
        return _run_capped(list(argv), cwd=cwd, env=env, limits=limits,
                           preexec=lambda: _apply_rlimits(rlimits))

    def _hidden_dirs(self) -> list:
        """Home directories replaced by empty tmpfs mounts (those under /tmp go with /tmp)."""
        dirs = {Path.home().resolve()}
        if self.is_root:
            dirs.add(Path("/root"))
        tmp = Path("/tmp")
        return [d for d in sorted(dirs) if d.is_dir() and d != Path("/") and d != tmp
                and tmp not in d.parents and d not in tmp.parents]

    def _bwrap_argv(self, argv, cwd, limits, slot, env, visible, writable) -> list:
        cmd = ["bwrap", "--die-with-parent", "--new-session"]
        if self.is_root:
            cmd += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                    "--unshare-cgroup-try", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            cmd += ["--unshare-all"]
        cmd += ["--ro-bind", "/", "/"]
        tmpfs = self._hidden_dirs() + [Path("/tmp")]
        made = set()

        def parents(dest: Path) -> list:
            """``--dir`` options making dest's missing ancestors inside one of our tmpfs mounts."""
            base = next((t for t in tmpfs if t in dest.parents), None)
            out = []
            if base is not None:
                for p in reversed(dest.parents):
                    if base in p.parents and p not in made:
                        made.add(p)
                        out += ["--perms", "0755", "--dir", str(p)]
            return out

        for d in self._hidden_dirs():
            cmd += ["--tmpfs", str(d)]
        for p in sorted({Path(v).resolve() for v in visible}):
            if any(h == p or h in p.parents for h in self._hidden_dirs()) and p.exists():
                cmd += parents(p) + ["--ro-bind", str(p), str(p)]
        cmd += ["--dev", "/dev", "--size", str(_MIB), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
                "--proc", "/proc", "--ro-bind-try", "/proc/sys", "/proc/sys",
                "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
                "--tmpfs", "/tmp"]
        made.clear()  # /tmp is a fresh tmpfs: its subdirectories must be made again
        for p in [cwd] + [Path(w).resolve() for w in writable]:
            cmd += parents(p) + ["--bind", str(p), str(p)]
        for t in tmpfs:  # in a user namespace the program would own them: no writes there
            cmd += ["--remount-ro", str(t)]
        cmd += ["--chdir", str(cwd), "--clearenv"]
        for k, v in env.items():
            cmd += ["--setenv", k, str(v)]
        cmd += ["--"]
        if slot.switch_uid:
            cmd += ["setpriv", f"--reuid={slot.uid}", f"--regid={slot.gid}", "--clear-groups",
                    "--inh-caps=-all", "--"]
        return cmd + _prlimit_prefix(limits.rlimits(limits.max_procs)) + argv

    def _try_bwrap(self) -> str:
        """Run ``true`` the way real programs will run; return why it failed ('' if it worked)."""
        slot = Slot(0, self.uid_base, self.uid_base, switch_uid=self.is_root)
        with tempfile.TemporaryDirectory(prefix="codegeex_bwrap_probe_") as probe_dir:
            cmd = self._bwrap_argv(["true"], Path(probe_dir).resolve(), Limits(wall_s=10), slot,
                                   {"PATH": "/usr/bin:/bin"}, (), ())
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=30, cwd="/")
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"bwrap failed to start: {e}"
        if proc.returncode != 0:
            return "bwrap cannot create its sandbox here: " + proc.stderr.decode(errors="replace").strip()
        return ""


def _apply_rlimits(rlimits: dict) -> None:
    """preexec hook of the rlimits fallback when ``prlimit`` is missing (runs in the child)."""
    for which, value in rlimits.items():
        resource.setrlimit(which, (value, value))


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


def _run_capped(cmd, *, cwd, env, limits: Limits, preexec, bwrap: bool = False) -> RunResult:
    """Run ``cmd`` in a new session; kill it on timeout or when its output passes the cap.

    With ``bwrap`` the kill goes to the sandbox's PID-namespace init (its host pid comes from
    ``--info-fd``): the kernel then kills every process in the namespace, and bwrap exits only
    once they are all gone, so nothing outlives the call. Otherwise the process group is killed.
    """
    start = time.monotonic()
    deadline = start + limits.wall_s
    info_r = info_w = None
    if bwrap:
        info_r, info_w = os.pipe()
        cmd = [cmd[0], "--info-fd", str(info_w)] + list(cmd[1:])
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=preexec,
                                pass_fds=(info_w,) if bwrap else ())
    finally:
        if info_w is not None:
            os.close(info_w)
    chunks = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    info = []
    total, timed_out, exceeded = 0, False, False
    sel = selectors.DefaultSelector()
    for fd in list(chunks) + ([info_r] if bwrap else []):
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
                    info.append(data)
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
            _kill(proc, _child_pid(info, info_r))
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
        if info_r is not None:
            os.close(info_r)
    out, err = (b"".join(part).decode("utf-8", errors="replace") for part in chunks.values())
    return RunResult(proc.returncode, out, err, timed_out, exceeded, time.monotonic() - start)


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
