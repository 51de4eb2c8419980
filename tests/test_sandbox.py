"""Containment of hostile samples: each runs as the completion of Python/0 through the real
executor; the run must end, the sample must fail, and the host must be untouched. Plus the
parts: cgroup discovery, tree removal, refusing to run unsandboxed.

bubblewrap and cgroups come from run_scripts/install_eval_toolchains.sh and the machine; where
they are missing the tests that need them skip, and fail under CI=true.
"""

import os
import socket
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from codegeex_ms.humaneval.assembly import assemble_program
from codegeex_ms.humaneval.execution import FAILED, OUTPUT_LIMIT, PASSED, TIMEOUT, remove_tree
from codegeex_ms.humaneval.problems import humaneval_dir, load_problems
from codegeex_ms.humaneval.runners import StepLimits
from codegeex_ms.humaneval import cgroups
from codegeex_ms.humaneval.sandbox import (BUBBLEWRAP, RLIMITS, Sandbox, SandboxLimits,
                                           SandboxUnavailable)
from sandbox_support import make_executor, unavailable

RUN_LIMITS = SandboxLimits(wall_s=10.0, max_procs=64,
                           memory_bytes=1 << 30)  # smaller: faster to exhaust


@pytest.fixture(scope="module")
def problem():
    path = humaneval_dir() / "humaneval_python.jsonl.gz"
    if not path.exists():
        pytest.skip(f"HumanEval-X data missing: {path}")
    return load_problems("python")["Python/0"]


@pytest.fixture(scope="module")
def executor():
    ex = make_executor(["python"], workers=2, limits=StepLimits(run=RUN_LIMITS))
    yield ex
    ex.close()


def _program(problem, body: str) -> str:
    return assemble_program("python", problem, problem["prompt"], textwrap.indent(
        textwrap.dedent(body), "    "))


def _processes_in(directory: Path) -> list:
    """PIDs whose working directory lies under ``directory`` (leftovers of a sample)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd.startswith(str(directory)):
            found.append(int(pid))
    return found


def _run(executor, problem, body):
    outcome = executor.run("python", _program(problem, body))
    assert _processes_in(executor.workspace) == []      # nothing survives the sample
    assert list(executor.workspace.glob("slot-*")) == []  # its directory is gone
    return outcome


def test_canonical_passes_and_wrong_fails(executor, problem):
    assert _run(executor, problem, problem["canonical_solution"]).status == PASSED
    wrong = problem["canonical_solution"].replace("return True", "return None")
    assert _run(executor, problem, wrong).status == FAILED


def test_infinite_loop_times_out(executor, problem):
    outcome = _run(executor, problem, "while True:\n    pass\n")
    assert outcome.status == TIMEOUT and "run timed out after 10s" in outcome.detail


def test_endless_allocation_fails(executor, problem):
    outcome = _run(executor, problem, "x = []\nwhile True:\n    x.append(bytearray(10**8))\n")
    # under a loaded machine filling 1 GiB may take the whole time limit: timeout is contained too
    assert outcome.status == TIMEOUT or (outcome.status == FAILED and (
        "MemoryError" in outcome.detail or "memory limit" in outcome.detail))


def test_printing_gigabytes_is_cut_off(executor, problem):
    outcome = _run(executor, problem, "import sys\nwhile True:\n    sys.stdout.write('x' * 10**6)\n")
    assert outcome.status == OUTPUT_LIMIT


def test_writing_a_huge_file_is_stopped(executor, problem):
    outcome = _run(executor, problem, "with open('big', 'wb') as f:\n"
                                      "    while True:\n        f.write(b'x' * 10**6)\n")
    assert outcome.status == FAILED  # RLIMIT_FSIZE: SIGXFSZ, or EFBIG


def test_fork_bomb_is_contained(executor, problem):
    body = """
    import os, time
    n = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
    except OSError:
        print('fork refused after', n, flush=True)
    while True:
        try:
            os.fork()
        except OSError:
            pass
    """
    outcome = _run(executor, problem, body)
    assert outcome.status == TIMEOUT


def test_process_limit_counts_only_the_sample(problem, tmp_path):
    """Under bubblewrap the fork limit is per sample: a sample may start max_procs - 1 others."""
    try:
        sandbox = Sandbox("auto", workers=1)
    except SandboxUnavailable as e:
        unavailable(str(e))
    code = ("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            time.sleep(30)\n            os._exit(0)\n        n += 1\n"
            "except OSError:\n    print(n)\n")
    (tmp_path / "f.py").write_text(code)
    os.chmod(tmp_path, 0o777)
    with sandbox.slot() as slot:
        sandbox.give(tmp_path, slot)
        result = sandbox.run([sys.executable, "f.py"], cwd=tmp_path, slot=slot,
                             limits=SandboxLimits(wall_s=20, max_procs=40),
                             visible=[sys.prefix, sys.base_prefix])
    sandbox.close()
    assert result.returncode == 0, result.stderr
    # 39 children at most (the sample itself is the 40th task; bwrap and its PID-namespace init
    # count against the cgroup's pids.max too)
    assert 35 <= int(result.stdout) <= 39
    assert sandbox.cgroups is None or "processes" in result.limits_hit


def test_deleting_its_own_directory_harms_no_neighbour(executor, problem):
    vandal = """
    import os, shutil
    for name in os.listdir('.'):
        shutil.rmtree(name) if os.path.isdir(name) else os.remove(name)
    return None
    """
    programs = [_program(problem, vandal), _program(problem, problem["canonical_solution"])] * 3
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda src: executor.run("python", src), programs))
    assert [o.status for o in outcomes] == [FAILED, PASSED] * 3
    assert _processes_in(executor.workspace) == []


def test_deleting_outside_its_directory_is_refused(executor, problem, tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("still here")
    vandal = f"""
    import shutil
    for root in ('..', {str(canary)!r}, {str(executor.workspace)!r}, {str(Path.home())!r}):
        shutil.rmtree(root, ignore_errors=True)
    open({str(canary / "keep.txt")!r}).read()     # raises if the canary is out of reach
    return has_close_elements(numbers, threshold)  # unreachable when contained
    """
    programs = [_program(problem, vandal), _program(problem, problem["canonical_solution"])] * 2
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda src: executor.run("python", src), programs))
    # walking read-only toolchain trees may use up the time: failed or timed out, never passed
    assert [o.status in (FAILED, TIMEOUT) for o in outcomes[::2]] == [True, True]
    assert [o.status for o in outcomes[1::2]] == [PASSED, PASSED]
    assert (canary / "keep.txt").read_text() == "still here"
    assert executor.workspace.is_dir() and Path.home().is_dir()


def test_writing_outside_its_directory_is_refused(executor, problem, tmp_path):
    target = tmp_path / "written_by_sample"
    home = Path.home() / "written_by_sample"
    body = f"""
    for path in ({str(target)!r}, {str(home)!r}, '/tmp/written_by_sample', '/dev/shm/x',
                 {str(executor.workspace / 'x')!r}):
        try:
            open(path, 'w').write('x')
            print('WROTE', path)
        except OSError:
            pass
    return None
    """
    outcome = _run(executor, problem, body)
    assert outcome.status == FAILED and "WROTE" not in outcome.detail
    assert not target.exists() and not home.exists()


def test_network_is_unreachable(executor, problem):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    body = f"""
    import socket
    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')
    return None
    """
    try:
        outcome = _run(executor, problem, body)
        assert outcome.status == FAILED
        with pytest.raises(BlockingIOError):
            server.accept()                              # nobody connected
    finally:
        server.close()


def test_environment_and_home_are_not_exposed(executor, problem, monkeypatch):
    monkeypatch.setenv("CODEGEEX_TEST_SECRET", "s3cret")
    marker = Path.home() / ".codegeex_sandbox_test_marker"
    marker.write_text("private")
    leak = f"'CODEGEEX_TEST_SECRET' in os.environ or os.path.exists({str(marker)!r})"
    # the correct answer only when the secret or the marker leaks in: passing means a leak
    body = (f"import os\nif {leak}:\n"
            + textwrap.indent(textwrap.dedent(problem["canonical_solution"]), "    ")
            + "return None\n")
    try:
        outcome = _run(executor, problem, body)
    finally:
        marker.unlink()
    assert outcome.status == FAILED


def test_rlimits_fallback_still_limits(tmp_path):
    """Not a sandbox, and says so; still limited, and (as root) programs run as the slot uid,
    and with cgroups a daemon that left the process group is killed with its run."""
    with pytest.raises(SandboxUnavailable, match="--i-understand-this-is-not-a-sandbox"):
        Sandbox(RLIMITS)
    sandbox = Sandbox(RLIMITS, workers=1, allow_unsandboxed=True)
    assert "NOT A SANDBOX" in sandbox.describe()
    os.chmod(tmp_path, 0o777)
    cases = {"while :; do :; done": "timeout",
             "while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done": "output",
             "dd if=/dev/zero of=/dev/null bs=300M count=1": "memory"}
    if sandbox.switch_uid:
        cases[f"touch {Path.home()}/codegeex_rlimits_probe"] = "uid"
    with sandbox.slot() as slot:
        sandbox.give(tmp_path, slot)
        for code, kind in cases.items():
            r = sandbox.run(["/bin/sh", "-c", code], cwd=tmp_path, slot=slot,
                            limits=SandboxLimits(wall_s=5, memory_bytes=256 << 20))
            assert not r.ok, kind
            assert {"timeout": r.timed_out, "output": r.output_exceeded,
                    "memory": "memory exhausted" in r.stderr,
                    "uid": "Permission denied" in r.stderr}[kind], (kind, r)
        if sandbox.cgroups is not None:
            r = sandbox.run(["/bin/sh", "-c", "setsid sleep 300 > /dev/null 2>&1 & echo $!"],
                            cwd=tmp_path, slot=slot, limits=SandboxLimits(wall_s=5))
            daemon = int(r.stdout)
            assert r.ok and not os.path.exists(f"/proc/{daemon}/status") or \
                "Z" in open(f"/proc/{daemon}/status").read().split("State:")[1][:4]
    assert not (Path.home() / "codegeex_rlimits_probe").exists()
    sandbox.close()


def test_forcing_unusable_bubblewrap_raises_or_works():
    try:
        sandbox = Sandbox(BUBBLEWRAP)
    except RuntimeError as e:
        assert "bubblewrap isolation is not usable here" in str(e)
    else:
        assert sandbox.isolation == BUBBLEWRAP


def test_auto_refuses_instead_of_falling_back(tmp_path, monkeypatch, capsys):
    """Without a usable bwrap, auto refuses; only the explicit acknowledgement runs rlimits."""
    import shutil
    from codegeex_ms import evaluate
    bin_dir = tmp_path / "bin"          # a PATH with the other tools but no bwrap
    bin_dir.mkdir()
    for tool in ("prlimit", "setpriv", "sh"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(SandboxUnavailable, match="bubblewrap isolation is not usable here: bwrap "
                                                 "not found.*--i-understand-this-is-not-a-sandbox"):
        Sandbox("auto")
    with Sandbox("auto", allow_unsandboxed=True) as sandbox:
        assert sandbox.isolation == RLIMITS and "bwrap not found" in sandbox.describe()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "samples.jsonl").write_text(
        '{"track": "python", "task_id": "Python/0", "sample_idx": 0, "completion": ""}\n')
    with pytest.raises(SystemExit, match="execute: bubblewrap isolation is not usable here"):
        evaluate.main(["--output-dir", str(tmp_path / "out"), "--steps", "execute",
                       "--no-progress"])
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_cgroup_discovery_v1_and_v2():
    """Hierarchy and own-group parsing of /proc texts; a container's mount root is cut off."""
    mountinfo = (
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "39 31 0:36 /docker/abc /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
        "24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw\n")
    v1, v2 = cgroups._mounts(mountinfo)
    assert v1 == {"memory": ("/sys/fs/cgroup/memory", "/"),
                  "pids": ("/sys/fs/cgroup/pids", "/docker/abc"),
                  "cpu": ("/sys/fs/cgroup/cpu,cpuacct", "/")}
    assert v2 == ("/sys/fs/cgroup/unified", "/")
    own_v1, own_v2 = cgroups._own_groups("8:pids:/docker/abc/x\n4:memory:/user/1\n"
                                         "1:cpu,cpuacct:/\n0::/init.scope\n")
    assert own_v1 == {"pids": "/docker/abc/x", "memory": "/user/1", "cpu": "/"}
    assert own_v2 == "/init.scope"
    assert cgroups._inside("/sys/fs/cgroup/pids", "/docker/abc", "/docker/abc/x") == \
        Path("/sys/fs/cgroup/pids/x")
    assert cgroups._inside("/sys/fs/cgroup/memory", "/", "/user/1") == \
        Path("/sys/fs/cgroup/memory/user/1")


def test_cgroup_v2_limits_are_written(tmp_path):
    """v2 files get the kernel's formats (a directory stands in for the cgroup2 filesystem)."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    groups = cgroups._setup_v2(own, "codegeex-test")
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    base = own / "codegeex-test"
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    group = groups.create("run-0", cgroups.GroupLimits(3 << 20, 17, 1.5))
    d = base / "run-0"
    assert (d / "memory.max").read_text() == str(3 << 20)
    assert (d / "pids.max").read_text() == "17"
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert group.join_script() == f"echo $$ > '{d}/cgroup.procs'"
    assert groups.describe() == "cgroup v2: memory.max (swap 0), pids.max, cpu.max"
    (own / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(cgroups.CgroupsUnavailable, match=r"\['memory', 'pids'\] not available"):
        cgroups._setup_v2(own, "codegeex-test2")


def test_remove_tree_survives_hostile_trees(tmp_path):
    """5000 levels, directories without permissions, symlinks out: removed, nothing outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    root = tmp_path / "tree"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for depth in range(5000):
        os.mkdir("d", dir_fd=fd)
        if depth % 500 == 0:
            os.symlink(outside, "link", dir_fd=fd)
            os.symlink(outside / "keep", "file_link", dir_fd=fd)
            os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o000, dir_fd=fd))
        child = os.open("d", os.O_RDONLY, dir_fd=fd)
        if depth % 1000 == 999:
            os.fchmod(fd, 0o000)
        os.close(fd)
        fd = child
    os.close(fd)
    assert remove_tree(root) == ""
    assert not os.path.lexists(root)
    assert (outside / "keep").read_text() == "keep"
    assert remove_tree(root) == ""          # already gone: fine


def test_toolchains_under_tmp_are_bound_and_nothing_else(tmp_path):
    """A toolchain under /tmp (a /tmp checkout's venv, a /tmp evaluation cache) is visible when
    declared; its undeclared siblings, the dataset, /run and homes are not there at all."""
    try:
        sandbox = Sandbox("auto", workers=1)
    except SandboxUnavailable as e:
        unavailable(str(e))
    tool = tmp_path / "toolchain"
    (tool / "bin").mkdir(parents=True)
    (tool / "share").mkdir()
    (tool / "share" / "data").write_text("toolchain data\n")
    (tool / "bin" / "tool").write_text(f"#!/bin/sh\ncat {tool / 'share' / 'data'}\n")
    for p in (tool, tool / "bin", tool / "share", tool / "bin" / "tool", tool / "share" / "data"):
        os.chmod(p, 0o755)
    (tmp_path / "secret").write_text("undeclared")
    os.chmod(tmp_path / "secret", 0o644)
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    hidden = [tmp_path / "secret", humaneval_dir(), Path("/run"), Path("/var"), Path("/home"),
              Path.home()]
    try:
        with sandbox.slot() as slot:
            sandbox.give(work, slot)
            ran = sandbox.run([str(tool / "bin" / "tool")], cwd=work, slot=slot,
                              limits=SandboxLimits(), visible=[tool])
            look = sandbox.run(["/bin/sh", "-c", "for p; do [ -e \"$p\" ] && echo \"SEEN $p\"; "
                                "done; true", "sh", *map(str, hidden)],
                               cwd=work, slot=slot, limits=SandboxLimits())
    finally:
        sandbox.close()
    assert ran.ok and ran.stdout == "toolchain data\n", ran
    assert look.ok and "SEEN" not in look.stdout, look
