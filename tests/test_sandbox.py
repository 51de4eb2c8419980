"""Containment of hostile samples: each runs as the completion of Python/0 through the real
executor; the run must end, the sample must fail, and the host must be untouched."""

import os
import socket
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from codegeex_ms.humaneval.assembly import assemble_program
from codegeex_ms.humaneval.execution import (FAILED, OUTPUT_LIMIT, PASSED, TIMEOUT, Executor)
from codegeex_ms.humaneval.problems import humaneval_dir, load_problems
from codegeex_ms.humaneval.runners import StepLimits
from codegeex_ms.humaneval.sandbox import BUBBLEWRAP, RLIMITS, Limits, Sandbox

RUN_LIMITS = Limits(wall_s=5.0, max_procs=64, memory_bytes=1 << 30)  # smaller: faster to exhaust
BWRAP_ONLY = "needs bubblewrap isolation, which is not usable here (rlimits fallback in force)"


@pytest.fixture(scope="module")
def problem():
    path = humaneval_dir() / "humaneval_python.jsonl.gz"
    if not path.exists():
        pytest.skip(f"HumanEval-X data missing: {path}")
    return load_problems("python")["Python/0"]


@pytest.fixture(scope="module")
def executor():
    ex = Executor(["python"], workers=2, limits=StepLimits(run=RUN_LIMITS))
    if "python" in ex.skipped:
        ex.close()
        pytest.skip(f"python toolchain unusable: {ex.skipped['python']}")
    print(f"isolation in force: {ex.sandbox.describe()}")
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
    assert outcome.status == TIMEOUT and "run timed out after 5s" in outcome.detail


def test_endless_allocation_fails(executor, problem):
    outcome = _run(executor, problem, "x = []\nwhile True:\n    x.append(bytearray(10**8))\n")
    assert outcome.status == FAILED and "MemoryError" in outcome.detail


def test_printing_gigabytes_is_cut_off(executor, problem):
    outcome = _run(executor, problem, "import sys\nwhile True:\n    sys.stdout.write('x' * 10**6)\n")
    assert outcome.status == OUTPUT_LIMIT


def test_writing_a_huge_file_is_stopped(executor, problem):
    outcome = _run(executor, problem, "with open('big', 'wb') as f:\n"
                                      "    while True:\n        f.write(b'x' * 10**6)\n")
    assert outcome.status == FAILED  # RLIMIT_FSIZE: SIGXFSZ, or EFBIG


def test_fork_bomb_is_contained(executor, problem):
    if executor.sandbox.isolation == RLIMITS and os.geteuid() == 0:
        pytest.skip("as root without bubblewrap RLIMIT_NPROC does not bind: not run on this host")
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
    sandbox = Sandbox("auto", workers=1)
    if sandbox.isolation != BUBBLEWRAP:
        pytest.skip(BWRAP_ONLY)
    code = ("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            time.sleep(30)\n            os._exit(0)\n        n += 1\n"
            "except OSError:\n    print(n)\n")
    (tmp_path / "f.py").write_text(code)
    os.chmod(tmp_path, 0o777)
    with sandbox.slot() as slot:
        sandbox.give(tmp_path, slot)
        result = sandbox.run([sys.executable, "f.py"], cwd=tmp_path, slot=slot,
                             limits=Limits(wall_s=20, max_procs=40),
                             visible=[sys.prefix, sys.base_prefix])
    assert result.returncode == 0, result.stderr
    # 39 children at most (the sample itself is the 40th task; a user-namespace init may take
    # one more slot)
    assert 35 <= int(result.stdout) <= 39


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
    if executor.sandbox.isolation != BUBBLEWRAP:
        pytest.skip(BWRAP_ONLY)
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
    assert [o.status for o in outcomes] == [FAILED, PASSED] * 2
    assert (canary / "keep.txt").read_text() == "still here"
    assert executor.workspace.is_dir() and Path.home().is_dir()


def test_writing_outside_its_directory_is_refused(executor, problem, tmp_path):
    if executor.sandbox.isolation != BUBBLEWRAP:
        pytest.skip(BWRAP_ONLY)
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
    if executor.sandbox.isolation != BUBBLEWRAP:
        pytest.skip(BWRAP_ONLY)
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
    body = f"""
    import os
    print(sorted(os.environ))
    print('MARKER_VISIBLE' if os.path.exists({str(marker)!r}) else 'marker hidden')
    return None
    """
    try:
        outcome = _run(executor, problem, body)
    finally:
        marker.unlink()
    assert outcome.status == FAILED
    assert "CODEGEEX_TEST_SECRET" not in outcome.detail and "s3cret" not in outcome.detail
    if executor.sandbox.isolation == BUBBLEWRAP:
        assert "marker hidden" in outcome.detail


def test_rlimits_fallback_still_limits(tmp_path):
    sandbox = Sandbox(RLIMITS, workers=1)
    assert "NO filesystem or network isolation" in sandbox.describe()
    cases = {"while True: pass": "timeout",
             "import sys\nwhile True: sys.stdout.write('x' * 65536)": "output",
             "x = []\nwhile True: x.append(bytearray(10**8))": "memory"}
    with sandbox.slot() as slot:
        for code, kind in cases.items():
            (tmp_path / "m.py").write_text(code)
            r = sandbox.run([sys.executable, "m.py"], cwd=tmp_path, slot=slot,
                            limits=Limits(wall_s=5, memory_bytes=256 << 20))
            assert not r.ok
            assert {"timeout": r.timed_out, "output": r.output_exceeded,
                    "memory": "MemoryError" in r.stderr}[kind]


def test_forcing_unusable_bubblewrap_raises_or_works():
    try:
        sandbox = Sandbox(BUBBLEWRAP)
    except RuntimeError as e:
        assert "bubblewrap isolation is not usable here" in str(e)
    else:
        assert sandbox.isolation == BUBBLEWRAP
