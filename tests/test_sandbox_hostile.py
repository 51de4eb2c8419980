"""Hostile samples in the six languages, run through the real executor, runners and toolchains
under bubblewrap + cgroups: each must be contained, judged not ``passed``, and the evaluation must
go on (the canonical solution still passes afterwards, nothing of the sample survives).

Every hostile completion is the problem's canonical solution plus code that attacks the host and
gives up (fails the sample) when the attack is stopped: a sample judged ``passed`` here means the
attack got through. Classes: memory spread over many processes, memory in memfds, disk filling,
fork bombs, reading the dataset / the checkout / the home directory, connecting to a host unix
socket (path-named under /run and abstract), daemons, 5000-deep directory trees. JavaScript
samples run in a V8 realm without ``require`` (see ``humaneval.assembly``), so its process, disk
and socket attacks are run as plain ``node`` programs through the same sandbox; Go completions
cannot import ``os``/``net``/``syscall``, so Go gets the memory attack only.

Missing bubblewrap, cgroups or a toolchain skips (fails under CI=true).
"""

import os
import secrets
import socket
import textwrap
from pathlib import Path

import pytest

import codegeex_ms
from codegeex_ms.humaneval.assembly import assemble_program
from codegeex_ms.humaneval.execution import FAILED, PASSED, TIMEOUT
from codegeex_ms.humaneval.problems import code_prefix, humaneval_dir, load_problems
from codegeex_ms.humaneval.runners import StepLimits
from codegeex_ms.humaneval.sandbox import SandboxLimits
from sandbox_support import leftovers, make_executor, require_language

_MIB = 1 << 20
# 1.5 GiB, smaller than the default so attacks exhaust it sooner (Java, whose reservations need
# the default 2 GiB of address space, runs under the default limits: it attacks files/sockets)
RUN = SandboxLimits(wall_s=10.0, memory_bytes=1536 * _MIB, max_procs=128, tmp_bytes=16 * _MIB)
WORKDIR_BYTES = 64 * _MIB
LANGS = ("python", "cpp", "js", "java", "go", "rust")
TASK = {"python": "Python/0", "cpp": "CPP/0", "js": "JavaScript/0", "java": "Java/0",
        "go": "Go/0", "rust": "Rust/0"}


@pytest.fixture(scope="module")
def problems():
    missing = [lang for lang in LANGS if not (humaneval_dir() / f"humaneval_{lang}.jsonl.gz").exists()]
    if missing:
        pytest.skip(f"HumanEval-X data missing in {humaneval_dir()} for {missing}")
    return {lang: load_problems(lang)[TASK[lang]] for lang in LANGS}


@pytest.fixture(scope="module")
def executor():
    ex = make_executor([lang for lang in LANGS if lang != "java"], workers=2,
                       limits=StepLimits(run=RUN), workdir_bytes=WORKDIR_BYTES)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def java_executor():
    ex = make_executor(["java"], workers=1, workdir_bytes=WORKDIR_BYTES)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def secrets_on_host():
    """Files a sample must not read: the answer key, the checkout, a file in the home dir."""
    marker = Path.home() / f".codegeex_hostile_{secrets.token_hex(4)}"
    marker.write_text("private")
    os.chmod(marker, 0o644)
    yield [str(humaneval_dir() / "humaneval_python.jsonl.gz"),
           str(Path(codegeex_ms.__file__).resolve()), str(marker)]
    marker.unlink()


@pytest.fixture
def host_sockets():
    """Listening unix sockets: one path-named under /run (world-connectable), one abstract."""
    base = Path("/run") if os.access("/run", os.W_OK) else Path.home()
    directory = base / f"codegeex-test-{secrets.token_hex(4)}"
    directory.mkdir(mode=0o755)
    path = str(directory / "s")
    abstract = f"codegeex-test-{secrets.token_hex(4)}"
    listeners = []
    for address in (path, "\0" + abstract):
        s = socket.socket(socket.AF_UNIX)
        s.bind(address)
        s.listen(8)
        s.setblocking(False)
        listeners.append(s)
    os.chmod(path, 0o777)
    yield path, abstract
    try:
        for s in listeners:
            with pytest.raises(BlockingIOError):
                s.accept()            # nobody connected
    finally:
        for s in listeners:
            s.close()
        os.unlink(path)
        directory.rmdir()


def _python(canonical: str, code: str) -> str:
    """Top-level code after the completed function: runs when the sample is loaded."""
    return canonical + "\n\n" + textwrap.dedent(code)


_CPP_HEAD = ("#include <unistd.h>\n#include <sys/wait.h>\n#include <sys/mman.h>\n"
             "#include <sys/socket.h>\n#include <sys/un.h>\n#include <fcntl.h>\n"
             "#include <cstdlib>\n#include <cstring>\n#include <cstdio>\n")


def _cpp(canonical: str, body: str) -> str:
    """A global constructor after the completed function: runs when the sample is loaded."""
    return (canonical + "\n" + _CPP_HEAD + "static int hostile_() {\n"
            + textwrap.indent(textwrap.dedent(body), "    ")
            + "    return 0;\n}\nstatic int hostile_done_ = hostile_();\n")


def _first_statement(canonical: str, block: str) -> str:
    """A block at the start of the function body (Java, Rust, Go): runs at every call."""
    return textwrap.indent(textwrap.dedent(block), "        ") + canonical


def _cases(secret_paths, sockets) -> dict:
    """{(language, case): (completion builder(canonical), what the outcome must show)}."""
    path, abstract = sockets or ("", "")
    py_paths = repr(secret_paths)
    c_paths = ", ".join(f'"{p}"' for p in secret_paths)
    java_paths = c_paths
    return {
        ("python", "memory_over_processes"): (lambda c: _python(c, """
            import os
            import time
            pids = []
            for i in range(6):
                pid = os.fork()
                if pid == 0:
                    b = bytearray(300 * 2**20)
                    for j in range(0, len(b), 4096):
                        b[j] = 1
                    time.sleep(3)  # hold it until all six hold theirs: 1800 MiB together
                    os._exit(0)
                pids.append(pid)
            if any(os.waitpid(p, 0)[1] != 0 for p in pids):
                raise SystemExit(1)
            """), "memory limit"),
        ("python", "memfd"): (lambda c: _python(c, """
            import os
            chunk = b'x' * 2**20
            for i in range(30):
                fd = os.memfd_create('m')
                for j in range(60):
                    os.write(fd, chunk)
            """), "memory limit"),
        ("python", "disk"): (lambda c: _python(c, """
            chunk = b'x' * 2**20
            for i in range(50):
                with open(f'fill{i}', 'wb') as f:
                    for j in range(63):
                        f.write(chunk)
            """), "No space left on device"),
        ("python", "fork_bomb"): (lambda c: _python(c, """
            import os
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
            """), "process limit"),
        ("python", "read_host_files"): (lambda c: _python(c, f"""
            leaks = []
            for p in {py_paths}:
                try:
                    open(p, 'rb').read(16)
                    leaks.append(p)
                except OSError:
                    pass
            if not leaks:
                raise SystemExit(1)
            """), ""),
        ("python", "unix_sockets"): (lambda c: _python(c, f"""
            import socket
            connected = False
            for address in ({path!r}, '\\0' + {abstract!r}):
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(address)
                    s.sendall(b'leak')
                    connected = True
                except OSError:
                    pass
            if not connected:
                raise SystemExit(1)
            """), ""),
        ("python", "daemon"): (lambda c: _python(c, """
            import os, time
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(300)
                os._exit(0)
            raise SystemExit(1)
            """), ""),
        ("python", "deep_tree"): (lambda c: _python(c, """
            import os
            os.mkdir('deep')
            os.chdir('deep')
            for i in range(5000):
                os.mkdir('d')
                os.symlink('/', 'root_link')
                os.chdir('d')
            for i in range(0, 5000, 7):
                os.chdir('..')
                os.chmod('d', 0)
            raise SystemExit(1)
            """), ""),
        ("cpp", "memory_over_processes"): (lambda c: _cpp(c, """
            pid_t pids[6];
            for (int i = 0; i < 6; i++) {
                pids[i] = fork();
                if (pids[i] == 0) {
                    char *p = (char *) malloc(300u << 20);
                    if (!p) _exit(1);
                    memset(p, 1, 300u << 20);
                    sleep(3);  // hold it until all six hold theirs: 1800 MiB together
                    _exit(0);
                }
            }
            for (int i = 0; i < 6; i++) {
                int st = 0;
                waitpid(pids[i], &st, 0);
                if (st != 0) _exit(1);
            }
            """), "memory limit"),
        ("cpp", "memfd"): (lambda c: _cpp(c, """
            static char chunk[1 << 20];
            memset(chunk, 'x', sizeof chunk);
            for (int i = 0; i < 30; i++) {
                int fd = memfd_create("m", 0);
                for (int j = 0; j < 60; j++)
                    if (write(fd, chunk, sizeof chunk) != (ssize_t) sizeof chunk) _exit(1);
            }
            """), "memory limit"),
        ("cpp", "disk"): (lambda c: _cpp(c, """
            static char chunk[1 << 20];
            for (int i = 0; i < 50; i++) {
                char name[32];
                snprintf(name, sizeof name, "fill%d", i);
                int fd = open(name, O_WRONLY | O_CREAT, 0600);
                for (int j = 0; j < 63; j++)
                    if (write(fd, chunk, sizeof chunk) < 0) {  /* a short write, then ENOSPC */
                        perror("write");
                        _exit(1);
                    }
                close(fd);
            }
            """), "No space left on device"),
        ("cpp", "fork_bomb"): (lambda c: _cpp(c, """
            for (;;) fork();
            """), "process limit"),
        ("cpp", "read_host_files"): (lambda c: _cpp(c, f"""
            const char *paths[] = {{{c_paths}}};
            int leaks = 0;
            for (const char *p : paths) {{
                int fd = open(p, O_RDONLY);
                char b[16];
                if (fd >= 0 && read(fd, b, sizeof b) > 0) leaks++;
            }}
            if (!leaks) _exit(1);
            """), ""),
        ("cpp", "unix_sockets"): (lambda c: _cpp(c, f"""
            int connected = 0;
            for (int abstract_ = 0; abstract_ < 2; abstract_++) {{
                struct sockaddr_un a;
                memset(&a, 0, sizeof a);
                a.sun_family = AF_UNIX;
                const char *name = abstract_ ? "{abstract}" : "{path}";
                strcpy(a.sun_path + abstract_, name);
                socklen_t len = offsetof(struct sockaddr_un, sun_path) + abstract_ + strlen(name);
                int s = socket(AF_UNIX, SOCK_STREAM, 0);
                if (connect(s, (struct sockaddr *) &a, len) == 0 && write(s, "leak", 4) == 4)
                    connected = 1;
            }}
            if (!connected) _exit(1);
            """), ""),
        ("cpp", "daemon"): (lambda c: _cpp(c, """
            if (fork() == 0) {
                setsid();
                if (fork() == 0) sleep(300);
                _exit(0);
            }
            _exit(1);
            """), ""),
        ("js", "memory"): (lambda c: c + textwrap.dedent("""
            const keep = [];
            for (let i = 0; i < 20; i++) {
              const b = new Uint8Array(100 * 1024 * 1024);
              b.fill(1);
              keep.push(b);
            }
            """), ""),
        ("java", "read_host_files_and_socket"): (lambda c: _first_statement(c, f"""
            {{
                boolean leak = false;
                for (String p : new String[] {{{java_paths}}}) {{
                    try {{ java.nio.file.Files.readAllBytes(java.nio.file.Path.of(p)); leak = true; }}
                    catch (Exception e) {{ }}
                }}
                try (java.nio.channels.SocketChannel ch = java.nio.channels.SocketChannel.open(
                        java.net.UnixDomainSocketAddress.of("{path}"))) {{
                    ch.write(java.nio.ByteBuffer.wrap("leak".getBytes()));
                    leak = true;
                }} catch (Exception e) {{ }}
                if (!leak) throw new RuntimeException("contained");
            }}
            """), ""),
        ("rust", "read_host_files_and_socket"): (lambda c: _first_statement(c, f"""
            {{
                let mut leak = false;
                for p in [{c_paths}] {{
                    if std::fs::read(p).is_ok() {{ leak = true; }}
                }}
                if let Ok(mut s) = std::os::unix::net::UnixStream::connect("{path}") {{
                    use std::io::Write;
                    let _ = s.write_all(b"leak");
                    leak = true;
                }}
                if !leak {{ panic!("contained"); }}
            }}
            """), ""),
        ("go", "memory"): (lambda c: _first_statement(c, """
            {
                var keep [][]byte
                for i := 0; i < 20; i++ {
                    b := make([]byte, 100<<20)
                    for j := range b {
                        b[j] = 1
                    }
                    keep = append(keep, b)
                }
                _ = keep
            }
            """), ""),
    }


CASE_IDS = list(_cases(["x"], ("p", "a")))


def _assemble(problems, language, completion):
    p = problems[language]
    return assemble_program(language, p, code_prefix(p, language), completion)


@pytest.mark.parametrize("language,case", CASE_IDS, ids=[f"{l}-{c}" for l, c in CASE_IDS])
def test_hostile_sample_is_contained(request, problems, secrets_on_host, host_sockets,
                                     language, case):
    executor = request.getfixturevalue("java_executor" if language == "java" else "executor")
    require_language(executor, language)
    build, must_show = _cases(secrets_on_host, host_sockets)[(language, case)]
    canonical = problems[language]["canonical_solution"]
    outcome = executor.run(language, _assemble(problems, language, build(canonical)))
    assert outcome.status != PASSED, outcome
    assert outcome.status in (FAILED, TIMEOUT), outcome
    # filling 1.5 GiB may take the whole time limit on a loaded machine: a timeout is contained
    # too, but a failure must name the limit that stopped it
    assert must_show in outcome.detail or (must_show == "memory limit"
                                           and outcome.status == TIMEOUT), outcome
    # contained: no process of the sample is left, its directory is gone, the slot is reusable
    assert leftovers(executor) == []
    assert list(executor.workspace.glob("slot-*")) == []
    again = executor.run(language, _assemble(problems, language, canonical))
    assert again.status == PASSED, again


NODE_ATTACKS = {
    "fork_bomb": ("const { spawn } = require('child_process');\n"
                  "for (;;) { try { spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)']); }"
                  " catch (e) { } }\n", "process limit"),
    "memory_over_processes": (
        "const { spawnSync } = require('child_process');\n"
        "const kids = 'for i in 1 2 3 4 5 6; do \"$0\" -e \"const b = Buffer.alloc(300 * 1024 * 1024, 1);"
        " setTimeout(() => {}, 4000)\" & done; wait';\n"
        "spawnSync('/bin/sh', ['-c', kids, process.execPath], { stdio: 'inherit' });\n",
        "memory limit"),
    "disk": ("const fs = require('fs');\nconst chunk = Buffer.alloc(1 << 20, 120);\n"
             "for (let i = 0; i < 50; i++) for (let j = 0; j < 63; j++)"
             " fs.appendFileSync('fill' + i, chunk);\n", "ENOSPC"),
}


@pytest.mark.parametrize("attack", list(NODE_ATTACKS))
def test_node_with_its_apis_is_contained(executor, attack):
    """The JS toolchain with ``require`` available (outside the harness's realm) is still held
    by the sandbox: a process-count cap, a whole-tree memory cap, a capped directory."""
    require_language(executor, "js")
    runner = executor.runners["js"]
    code, must_show = NODE_ATTACKS[attack]
    sandbox = executor.sandbox
    with sandbox.slot() as slot:
        workdir = executor.workspace / f"slot-{slot.index}"
        executor.workdirs.create(workdir, slot.uid, slot.gid)
        try:
            (workdir / "attack.js").write_text(code)
            sandbox.give(workdir, slot)
            result = sandbox.run([str(runner.node), "attack.js"], cwd=workdir, slot=slot,
                                 limits=SandboxLimits(wall_s=15, memory_bytes=1024 * _MIB,
                                                      max_procs=256),
                                 visible=runner.visible(), env={"HOME": str(workdir)})
        finally:
            assert executor.workdirs.release(workdir) == ""
    assert not result.ok or must_show == "memory limit", result  # sh's `wait` says 0
    if must_show == "ENOSPC":
        assert must_show in result.stderr, result
    elif must_show == "memory limit":
        assert "memory" in result.limits_hit, result
    else:  # fork bomb: refused by pids.max, or node gave up on threads / memory first
        assert result.timed_out or "processes" in result.limits_hit or \
            "Resource temporarily unavailable" in result.stderr or "bad_alloc" in result.stderr, \
            result
    assert leftovers(executor) == []


def _mixed_completion(i: int, canonical: str) -> str:
    """Mostly trivial passes and fails, every tenth sample crashing, hanging or flooding."""
    if i % 10 < 6:
        return canonical
    if i % 10 < 8:
        return "    return None\n"
    if i % 10 == 8:
        return "    import os\n    os.abort()\n"
    return ["    while True:\n        pass\n",
            "    import sys\n    while True:\n        sys.stdout.write('x' * 65536)\n",
            "    import os\n    while True:\n        try:\n            os.fork()\n"
            "        except OSError:\n            pass\n"][(i // 10) % 3]


class _Interrupting:
    """An executor that is interrupted (KeyboardInterrupt) after ``after`` samples, and raises a
    harness error on the sample whose completion contains ``BROKEN``."""

    def __init__(self, executor, after=None):
        self.executor, self.after, self.calls = executor, after, 0
        self.runners, self.skipped = executor.runners, executor.skipped

    def run(self, language, program):
        self.calls += 1
        if self.after is not None and self.calls > self.after:
            raise KeyboardInterrupt("simulated interruption")
        if "BROKEN" in program.source:
            raise RuntimeError("simulated harness failure")
        return self.executor.run(language, program)


def test_mixed_samples_survive_and_a_resumed_run_finishes(problems, tmp_path):
    """100 samples (crashing, hanging, flooding, fork-bombing among them), one that cannot be
    assembled and one the harness fails on: every one gets exactly one result, the run goes on
    after each, and a run interrupted half-way resumes to the same complete set."""
    from codegeex_ms.humaneval.steps import execute_samples, read_records
    import json
    canonical = problems["python"]["canonical_solution"]
    records = [{"track": "python", "task_id": "Python/0", "sample_idx": i,
                "completion": _mixed_completion(i, canonical)} for i in range(100)]
    records.append({"track": "python", "task_id": "Python/99999", "sample_idx": 0,
                    "completion": canonical})
    records.append({"track": "python", "task_id": "Python/0", "sample_idx": 100,
                    "completion": "    return 'BROKEN'\n"})
    samples, results = tmp_path / "samples.jsonl", tmp_path / "results.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    limits = StepLimits(run=SandboxLimits(wall_s=6.0, max_procs=32, max_output_bytes=256 * 1024))
    ex = make_executor(["python"], workers=2, limits=limits)
    try:
        table = {"python": {"Python/0": problems["python"]}}
        with pytest.raises(KeyboardInterrupt):
            execute_samples(samples, results, table, _Interrupting(ex, after=50), workers=2,
                            progress=False)
        first = read_records(results)
        assert 40 <= len(first) <= 52
        stats = execute_samples(samples, results, table, _Interrupting(ex), workers=2,
                                progress=False)
        assert stats["executed"] == len(records) - len(first)
        assert leftovers(ex) == [] and list(ex.workspace.glob("slot-*")) == []
    finally:
        ex.close()
    done = read_records(results)
    assert sorted((r["task_id"], r["sample_idx"]) for r in done) == \
        sorted((r["task_id"], r["sample_idx"]) for r in records)
    status = {(r["task_id"], r["sample_idx"]): r["status"] for r in done}
    for i in range(100):
        kind = i % 10
        want = (PASSED if kind < 6 else FAILED if kind < 9 else
                ["timeout", "output_limit", "timeout"][(i // 10) % 3])
        assert status[("Python/0", i)] == want, (i, [r for r in done if r["sample_idx"] == i])
    assert status[("Python/99999", 0)] == "error"
    assert status[("Python/0", 100)] == "error"
    broken = next(r for r in done if r["sample_idx"] == 100)
    assert "simulated harness failure" in broken["detail"] and broken["passed"] is False
