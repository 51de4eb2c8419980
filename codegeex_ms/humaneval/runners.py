"""The language runners, kept as a registry (:data:`RUNNERS`, language key -> runner class).

What every language runner provides: toolchain setup, files to write, steps to run, and the verdict
(see ``humaneval.assembly`` for the threat model the verdicts are built against).

Python: the sample runs in a child process of a trusted driver that runs the tests (see
``python_driver.py`` and the threat model in ``humaneval.assembly``).

C++: the sample is compiled alone into ``libsample.so``; then the test executable is linked from
the problem's test object (the harness's ``assert`` and ``main``; trusted dataset text, compiled
once per problem into the evaluation cache, outside the sandbox) and ``marker.c``, compiled in that
step with the nonce on its command line, with the C and C++ runtimes named first and the sample
last (``-nodefaultlibs``): the sample comes last in symbol search order and cannot interpose
anything the tests call (see the threat model in ``humaneval.assembly``). OpenSSL's libcrypto is
linked for the md5 problem.

Sample and test units start with a precompiled header of the standard includes (built once per
compiler version into the evaluation cache), which the assembled sample includes anyway.

Java: one ``javac`` of ``Solution.java`` (the sample, in its own package) and ``Main.java`` (the
tests plus the harness's ``Main``), then ``java Main`` (the harness really runs Java, unlike the
official one whose run line is commented out). See the threat model in ``humaneval.assembly``.

JavaScript: ``node driver.js``; the sample runs in its own V8 realm, the tests in the host realm
(see ``js_driver.js`` and the threat model in ``humaneval.assembly``).

Go: ``go test -c`` of the sample's test file plus the harness's ``TestMain`` file, then the test
binary run with ``-test.v``, whose result lines are parsed (see the threat model in
``humaneval.assembly``), in a module whose testify comes vendored from Debian's
``golang-github-stretchr-testify-dev`` (offline).

The module file follows the official harness's ``go_evaluation/go.mod`` (module name, Go version,
requirement versions) but lists only testify and the modules it imports, since nothing else is
vendored (its other requirement, go-openapi/inflect, is used by no test). Each worker slot has its
own build cache, seeded from one warmed once with testify's standard-library dependencies. Go keys
cached packages by directory, and a slot always uses the same sample directory, so a slot compiles
the vendored testify once per run and reuses it afterwards.

Rust: the sample is compiled alone as library crate ``sample``; then the harness crate (the tests
in a module of their own, a ``main`` that runs them and prints the marker, the nonce given through
the environment of that compile step only) is compiled against it, and run. See the threat model in
``humaneval.assembly``. Both link prebuilt ``rand``, ``regex`` and ``md5`` crates.

The crates come from Debian's ``librust-*-dev`` packages (a Cargo directory source at
``/usr/share/cargo/registry``). They are built once with cargo, offline, into the evaluation cache
(keyed by the rustc version); each sample is then two ``rustc`` calls linking them, without Cargo's
build-directory lock serialising the workers.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .assembly import (CPP_INCLUDES, PYTHON_IMPORTS, Program, cpp_marker_unit, cpp_test_unit,
                       go_harness_file, go_test_file, go_test_names, java_sample_unit,
                       java_test_unit, js_harness_parts, marker_line, new_nonce,
                       python_entry_point, rust_harness_crate, rust_sample_crate)
from .problems import humaneval_dir
from .sandbox import RunResult, SandboxLimits

_MIB = 1 << 20


class ToolchainMissing(Exception):
    """A language cannot be run here; the message says what is missing and how to install it."""


@dataclass(frozen=True)
class Step:
    """One sandboxed command of a sample's execution (``compile`` steps precede ``run``)."""

    name: str
    argv: list
    limits: SandboxLimits
    env: dict = field(default_factory=dict)
    writable: tuple = ()


@dataclass(frozen=True)
class StepLimits:
    """Limits of compile steps and of the test run. Compilers get more memory, processes, time."""

    run: SandboxLimits = SandboxLimits()
    compile: SandboxLimits = SandboxLimits(wall_s=60.0, memory_bytes=4096 * _MIB, max_procs=512,
                                           max_output_bytes=4 * _MIB, max_file_bytes=512 * _MIB)


@dataclass(frozen=True)
class Check:
    """What the run of one sample must show to pass: the marker line with ``nonce`` on stdout
    (``expected_tests``: test names a runner also requires its framework to report passed).
    ``prebuilt``: paths of harness files built outside the sandbox that the steps use."""

    nonce: str
    expected_tests: tuple = ()
    prebuilt: tuple = ()


class Runner:
    """Base class of a language runner.

    Subclasses set ``key`` (language key) and ``probe`` (a :class:`Program` that must pass when
    the toolchain works), and implement :meth:`setup`, :meth:`write_files` and :meth:`steps`.
    """

    key = ""
    probe: Program = None

    def __init__(self, limits: StepLimits, cache_dir: Path):
        self.limits = limits
        self.cache_dir = Path(cache_dir)
        self.version = ""

    def setup(self) -> None:
        """Find the toolchain and prepare shared dependencies; raise ToolchainMissing if absent."""
        raise NotImplementedError

    def visible(self) -> list:
        """Paths the sandboxed toolchain must be able to read."""
        return []

    def write_files(self, workdir: Path, program: Program) -> Check:
        """Write the sample and the harness's files into the sample directory; return what the
        run must show. ``program`` must be of this runner's language."""
        if not isinstance(program, Program) or program.language != self.key:
            raise TypeError(f"{self.key} runner got {type(program).__name__} "
                            f"{getattr(program, 'language', '')!r}; pass assemble_program(...)")
        (workdir / "tmp").mkdir(exist_ok=True)
        return Check(new_nonce())

    def steps(self, workdir: Path, slot, sandbox, check: Check) -> list:
        """The sandboxed commands for one sample, compile steps first, the test run last."""
        raise NotImplementedError

    def verdict(self, result: RunResult, check: Check) -> tuple:
        """(passed, reason if not): exit status 0 and the marker with this sample's nonce."""
        if not result.ok:
            return False, f"tests failed (exit status {result.returncode})"
        if marker_line(check.nonce) not in result.stdout:
            return False, "exit status 0 but the tests did not finish (no completion marker)"
        return True, ""

    @staticmethod
    def base_env(workdir: Path) -> dict:
        """HOME and TMPDIR inside the sample directory (``tmp/`` is made by write_files)."""
        return {"HOME": str(workdir), "TMPDIR": str(workdir / "tmp"), "MALLOC_ARENA_MAX": "2"}


def require_executable(name: str, install_hint: str) -> Path:
    """Absolute path of an executable on PATH (symlinks kept: rustup proxies need their name),
    else ToolchainMissing."""
    found = shutil.which(name)
    if found is None:
        raise ToolchainMissing(f"{name} not found on PATH ({install_hint})")
    return Path(found).absolute()


def command_output(argv, **kwargs) -> str:
    """stdout+stderr of a short trusted command, stripped; ToolchainMissing if it fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolchainMissing(f"{' '.join(map(str, argv))} failed: {e}") from e
    if proc.returncode != 0:
        raise ToolchainMissing(f"{' '.join(map(str, argv))} failed: "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return (proc.stdout + proc.stderr).strip()


def make_world_readable(path: Path) -> None:
    """chmod a+rX below ``path``, so sandbox uids can read what the harness prepared there."""
    for root, dirs, files in os.walk(path):
        os.chmod(root, os.stat(root).st_mode | 0o555)
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)


def _publish(tmp: Path, dest: Path) -> None:
    """Make ``tmp`` readable to sandbox uids and rename it to ``dest`` (or drop it: a race lost)."""
    make_world_readable(tmp)
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)

# ----- Python ------------------------------------------------------------------------------------
PYTHON_DRIVER = Path(__file__).with_name("python_driver.py").read_text(encoding="utf-8")

_PYTHON_PROBE = {"task_id": "Python/probe", "prompt": "def add_one(x):\n    \"\"\"x + 1\"\"\"\n",
                  "test": "def check(candidate):\n    assert candidate(1) == 2\n\n"
                          "check(add_one)\n"}


class PythonRunner(Runner):
    """``interpreter`` defaults to the running interpreter (``sys.executable``)."""

    key = "python"
    probe = Program("python", "import numpy\ndef add_one(x):\n    return int(numpy.add(x, 1))\n",
                    _PYTHON_PROBE)

    def __init__(self, limits, cache_dir, interpreter: str = None):
        super().__init__(limits, cache_dir)
        self.interpreter = Path(interpreter or sys.executable)
        self._paths = []

    def setup(self) -> None:
        if not self.interpreter.exists():
            raise ToolchainMissing(f"Python interpreter {self.interpreter} does not exist")
        out = command_output([str(self.interpreter), "-c",
                              "import sys, numpy; print(sys.prefix); print(sys.base_prefix); "
                              "print(sys.version.split()[0], 'numpy', numpy.__version__)"])
        prefix, base_prefix, self.version = out.splitlines()[-3:]
        self._paths = [Path(prefix), Path(base_prefix), self.interpreter.resolve().parent]

    def visible(self) -> list:
        return list(self._paths)

    def write_files(self, workdir, program):
        check = super().write_files(workdir, program)
        problem = program.problem
        test = problem["test"]
        # The tests' namespace gets the standard imports too (numpy only if the test uses it).
        preamble = [line for line in PYTHON_IMPORTS
                    if "numpy" not in line or "np." in test or "numpy" in test]
        spec = {"marker": marker_line(check.nonce), "preamble": "\n".join(preamble) + "\n",
                "prompt": problem["prompt"], "test": test,
                "entry": python_entry_point(problem)}
        (workdir / "driver.py").write_text(PYTHON_DRIVER, encoding="utf-8")
        (workdir / "sample.py").write_text(program.source, encoding="utf-8")
        (workdir / "harness.json").write_text(json.dumps(spec), encoding="utf-8")
        return check

    def steps(self, workdir, slot, sandbox, check) -> list:
        env = {**self.base_env(workdir), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        return [Step("run", [str(self.interpreter), "-I", "driver.py"], self.limits.run, env)]

# ----- C++ ---------------------------------------------------------------------------------------
_CPP_PROBE = {"task_id": "CPP/probe",
                  "declaration": "#include<string>\nusing namespace std;\nint digest(string s){\n",
                  "test": "#undef NDEBUG\n#include<assert.h>\nint main(){\n"
                          "    assert (digest(\"a\") == 0x0c61);\n}\n"}
CPP_FLAGS = ["-std=c++17", "-O0", "-fPIC"]
CPP_LINK_FIRST = ["-nodefaultlibs", "-Wl,--no-as-needed", "-lstdc++", "-lm", "-lc", "-lgcc_s",
                  "-lgcc"]


class CppRunner(Runner):
    key = "cpp"
    probe = Program("cpp", "#include <openssl/md5.h>\n#include<string>\nusing namespace std;\n"
                           "int digest(string s){\n    unsigned char d[MD5_DIGEST_LENGTH];\n"
                           "    MD5((const unsigned char*)s.data(), s.size(), d);\n"
                           "    return d[0] << 8 | d[15];\n}\n", _CPP_PROBE)

    def setup(self) -> None:
        self.gxx = require_executable("g++", "apt-get install g++ libssl-dev libboost-dev")
        self.version = command_output([str(self.gxx), "--version"]).splitlines()[0]
        header = "".join(line + "\n" for line in CPP_INCLUDES)
        digest = hashlib.sha256("\0".join([self.version, *CPP_FLAGS, header]).encode())
        key = digest.hexdigest()[:12]
        self.pch_dir = self.cache_dir / "cpp" / f"pch-{key}"
        self.tests_dir = self.cache_dir / "cpp" / f"tests-{key}"
        if not (self.pch_dir / "codegeex_std.h.gch").exists():
            self._build_pch(header)
        self.tests_dir.mkdir(parents=True, exist_ok=True)
        make_world_readable(self.tests_dir)

    def _build_pch(self, header: str) -> None:
        """Precompile the standard includes (trusted, outside the sandbox)."""
        self.pch_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.pch_dir.parent, prefix="build."))
        (tmp / "codegeex_std.h").write_text(header)
        proc = subprocess.run([str(self.gxx), *CPP_FLAGS, "-x", "c++-header", "codegeex_std.h",
                               "-o", "codegeex_std.h.gch"], cwd=tmp, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ToolchainMissing(f"precompiling the C++ standard headers failed: "
                                   f"{proc.stderr[-2000:]}")
        _publish(tmp, self.pch_dir)

    def _compile_flags(self) -> list:
        return [str(self.gxx), *CPP_FLAGS, "-include", str(self.pch_dir / "codegeex_std.h")]

    def test_object(self, problem: dict) -> Path:
        """The compiled test unit of ``problem`` (cached by its text; trusted dataset code, so
        compiled outside the sandbox). A test unit that does not compile raises ValueError."""
        text = cpp_test_unit(problem)
        path = self.tests_dir / (hashlib.sha256(text.encode()).hexdigest()[:24] + ".o")
        if path.exists():
            return path
        with tempfile.TemporaryDirectory(dir=self.tests_dir, prefix="build.") as tmp:
            (Path(tmp) / "tests.cpp").write_text(text, encoding="utf-8")
            proc = subprocess.run([*self._compile_flags(), "-c", "tests.cpp", "-o", "tests.o"],
                                  cwd=tmp, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise ValueError(f"{problem.get('task_id')}: test unit does not compile: "
                                 f"{proc.stderr[-1500:]}")
            os.chmod(Path(tmp) / "tests.o", 0o644)
            os.replace(Path(tmp) / "tests.o", path)
        return path

    def visible(self) -> list:
        return [self.pch_dir, self.tests_dir]

    def write_files(self, workdir, program):
        check = super().write_files(workdir, program)
        check = Check(check.nonce, prebuilt=(str(self.test_object(program.problem)),))
        (workdir / "sample.cpp").write_text(program.source, encoding="utf-8")
        (workdir / "marker.c").write_text(cpp_marker_unit(), encoding="utf-8")
        return check

    def steps(self, workdir, slot, sandbox, check) -> list:
        env = self.base_env(workdir)
        tests_object = check.prebuilt[0]
        return [Step("compile", [*self._compile_flags(), "-shared", "sample.cpp",
                                 "-Wl,-soname,libsample.so", "-o", "libsample.so", "-lcrypto"],
                     self.limits.compile, env),
                Step("compile", [str(self.gxx), "-fPIC", f'-DCODEGEEX_NONCE="{check.nonce}"',
                                 "-x", "c", "marker.c", "-x", "none", tests_object, "-o", "main",
                                 *CPP_LINK_FIRST, "libsample.so", "-Wl,-rpath,$ORIGIN"],
                     self.limits.compile, env),
                Step("run", ["./main"], self.limits.run, env)]

# ----- Java --------------------------------------------------------------------------------------
# JVM settings that keep its address-space reservations inside RLIMIT_AS and start quickly.
JVM_FLAGS = ["-Xmx1g", "-Xss16m", "-XX:+UseSerialGC", "-XX:CompressedClassSpaceSize=64m",
             "-XX:ReservedCodeCacheSize=64m", "-XX:-UsePerfData", "-XX:TieredStopAtLevel=1"]
JAVA_NONCE_FILE = "nonce"

_JAVA_PROBE = {"task_id": "Java/probe", "declaration": "import java.util.*;\n",
                  "test": "public class Main {\n    public static void main(String[] a) {\n"
                          "        if (new Solution().size() != 2) throw new AssertionError();\n"
                          "    }\n}\n"}


class JavaRunner(Runner):
    key = "java"
    probe = Program("java", "import java.util.*;\nclass Solution {\n    public int size() {\n"
                            "        return Arrays.asList(1, 2).size();\n    }\n}\n",
                    _JAVA_PROBE)

    def setup(self) -> None:
        hint = "apt-get install default-jdk-headless"
        self.javac = require_executable("javac", hint)
        self.java = require_executable("java", hint)
        self.version = command_output([str(self.javac), "-version"])

    def write_files(self, workdir, program):
        check = super().write_files(workdir, program)
        (workdir / "Solution.java").write_text(java_sample_unit(program.problem, program.source),
                                               encoding="utf-8")
        (workdir / "Main.java").write_text(java_test_unit(program.problem, JAVA_NONCE_FILE),
                                           encoding="utf-8")
        (workdir / JAVA_NONCE_FILE).write_text(check.nonce, encoding="ascii")
        return check

    def steps(self, workdir, slot, sandbox, check) -> list:
        env = self.base_env(workdir)
        return [Step("compile", [str(self.javac), *("-J" + f for f in JVM_FLAGS), "-proc:none",
                                 "-encoding", "UTF-8", "-d", "classes", "Solution.java",
                                 "Main.java"], self.limits.compile, env),
                Step("run", [str(self.java), *JVM_FLAGS, "-cp", "classes", "Main"],
                     self.limits.run, env)]

# ----- JavaScript --------------------------------------------------------------------------------
JS_DRIVER = Path(__file__).with_name("js_driver.js").read_text(encoding="utf-8")

_JS_PROBE = {"task_id": "JavaScript/probe",
                  "declaration": "const digest = (text) => {\n",
                  "test": "const testDigest = () => {\n"
                          "  console.assert(digest('a') === '0cc175b9c0f1b6a831c399e269772661')\n"
                          "}\ntestDigest()\n"}


class JsRunner(Runner):
    key = "js"
    probe = Program("js", "const digest = (text) => {\n  const md5 = require('js-md5');\n"
                          "  return md5(text);\n}\n", _JS_PROBE)

    @property
    def node_modules(self):
        return self.cache_dir / "js" / "node_modules"

    def setup(self) -> None:
        self.node = require_executable("node", "apt-get install nodejs")
        if not (self.node_modules / "js-md5").is_dir():
            raise ToolchainMissing(f"js-md5 not installed in {self.node_modules} "
                                   "(run run_scripts/install_eval_toolchains.sh)")
        self.version = "node " + command_output([str(self.node), "--version"])

    def visible(self) -> list:
        return [self.node_modules]

    def write_files(self, workdir, program):
        check = super().write_files(workdir, program)
        helpers, entry = js_harness_parts(program.problem)
        # js-md5 is evaluated in the sample's realm only for samples that can ask for it.
        md5 = self.node_modules / "js-md5" / "src" / "md5.js" if "require" in program.source \
            else ""
        spec = {"marker": marker_line(check.nonce), "helpers": helpers, "entry": entry,
                "test": program.problem["test"], "md5": str(md5)}
        (workdir / "driver.js").write_text(JS_DRIVER, encoding="utf-8")
        (workdir / "sample.js").write_text(program.source, encoding="utf-8")
        (workdir / "harness.json").write_text(json.dumps(spec), encoding="utf-8")
        return check

    def steps(self, workdir, slot, sandbox, check) -> list:
        return [Step("run", [str(self.node), "driver.js"], self.limits.run,
                     self.base_env(workdir))]

# ----- Go ----------------------------------------------------------------------------------------
# Vendored modules -> the packages of each that testify/assert needs.
GO_VENDORED = {
    "github.com/stretchr/testify": ["github.com/stretchr/testify/assert"],
    "github.com/davecgh/go-spew": ["github.com/davecgh/go-spew/spew"],
    "github.com/pmezard/go-difflib": ["github.com/pmezard/go-difflib/difflib"],
    "gopkg.in/yaml.v3": ["gopkg.in/yaml.v3"],
}
GOCODE_DIR = Path(os.environ.get("CODEGEEX_GOCODE_DIR", "/usr/share/gocode/src"))
GO_INSTALL_HINT = "apt-get install golang-go golang-github-stretchr-testify-dev"


def parse_go_mod(text: str) -> tuple:
    """(module name, go version, {module path: version}) of a go.mod text."""
    module = re.search(r"^module\s+(\S+)", text, re.M).group(1)
    go = re.search(r"^go\s+(\S+)", text, re.M).group(1)
    requires = dict(re.findall(r"^\s*(?:require\s+)?([\w.\-]+\.[\w.\-/]+)\s+(v\S+)", text, re.M))
    return module, go, requires


def vendored_module_files(go_mod_text: str) -> tuple:
    """(go.mod, vendor/modules.txt) texts for the vendored subset of the reference go.mod."""
    module, go, requires = parse_go_mod(go_mod_text)
    missing = [m for m in GO_VENDORED if m not in requires]
    if missing:
        raise ToolchainMissing(f"reference go.mod does not require {missing}")
    mod = [f"module {module}", "", f"go {go}", "", "require ("]
    txt = []
    for path in sorted(GO_VENDORED):
        mod.append(f"\t{path} {requires[path]}")
        txt += [f"# {path} {requires[path]}", "## explicit", *GO_VENDORED[path]]
    return "\n".join(mod + [")", ""]), "\n".join(txt + [""])


GO_BUILD = ["test", "-c", "-o", "main.test"]
_GO_RESULT_LINE = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\w+)", re.M)
_GO_PROBE = {"task_id": "Go/probe", "import": "",
                  "test_setup": 'package main\n\nimport (\n    "testing"\n'
                                '    "github.com/stretchr/testify/assert"\n)\n',
                  "test": "func TestProbe(t *testing.T) {\n    assert := assert.New(t)\n"
                          "    assert.Equal(2, Add(1, 1))\n}\n"}


class GoRunner(Runner):
    key = "go"
    probe = Program("go", "func Add(a int, b int) int {\n    return a + b\n}\n", _GO_PROBE)

    @property
    def module_dir(self) -> Path:
        return self.cache_dir / "go" / "module"

    @property
    def warm_cache(self) -> Path:
        return self.cache_dir / "go" / "gocache"

    def setup(self) -> None:
        self.go = require_executable("go", GO_INSTALL_HINT)
        self.goroot = Path(command_output([str(self.go), "env", "GOROOT"]))
        self.version = command_output([str(self.go), "version"])
        for module in GO_VENDORED:
            if not (GOCODE_DIR / module).is_dir():
                raise ToolchainMissing(f"{GOCODE_DIR / module} missing ({GO_INSTALL_HINT})")
        ref = humaneval_dir() / "go_evaluation" / "go.mod"
        if not ref.exists():
            raise ToolchainMissing(f"reference Go module file {ref} not found")
        go_mod, modules_txt = vendored_module_files(ref.read_text())
        if not ((self.module_dir / "go.mod").exists()
                and (self.module_dir / "go.mod").read_text() == go_mod):
            self._build_module(go_mod, modules_txt)
        if not self.warm_cache.is_dir():
            self._warm_cache()

    def _build_module(self, go_mod: str, modules_txt: str) -> None:
        self.module_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.module_dir.parent, prefix="module."))
        (tmp / "go.mod").write_text(go_mod)
        (tmp / "vendor").mkdir()
        (tmp / "vendor" / "modules.txt").write_text(modules_txt)
        for module in GO_VENDORED:
            link = tmp / "vendor" / module
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(GOCODE_DIR / module)
        make_world_readable(tmp)
        shutil.rmtree(self.module_dir, ignore_errors=True)
        os.replace(tmp, self.module_dir)

    def _env(self, workdir: Path, gocache: Path) -> dict:
        return {**self.base_env(workdir), "GOCACHE": str(gocache), "GOFLAGS": "-mod=vendor",
                "GOPROXY": "off", "GOSUMDB": "off", "GOTOOLCHAIN": "local", "GO111MODULE": "on",
                "CGO_ENABLED": "0", "GOPATH": str(workdir / "gopath"), "GOROOT": str(self.goroot)}

    def write_files(self, workdir: Path, program: Program) -> Check:
        check = super().write_files(workdir, program)
        check = Check(check.nonce, tuple(go_test_names(program.problem)))
        (workdir / "main_test.go").write_text(go_test_file(program.problem, program.source),
                                              encoding="utf-8")
        (workdir / "codegeex_harness_test.go").write_text(go_harness_file(check.nonce),
                                                          encoding="utf-8")
        shutil.copy(self.module_dir / "go.mod", workdir / "go.mod")
        (workdir / "vendor").symlink_to(self.module_dir / "vendor")
        return check

    def _warm_cache(self) -> None:
        """Compile testify once (trusted code, outside the sandbox) into the shared cache."""
        self.warm_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp_cache = Path(tempfile.mkdtemp(dir=self.warm_cache.parent, prefix="gocache."))
        with tempfile.TemporaryDirectory() as work:
            work = Path(work)
            self.write_files(work, self.probe)
            command_output([str(self.go), *GO_BUILD],
                           cwd=work, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                          **self._env(work, tmp_cache)})
        _publish(tmp_cache, self.warm_cache)

    def visible(self) -> list:
        return [self.module_dir, self.warm_cache, self.goroot]

    def steps(self, workdir, slot, sandbox, check) -> list:
        gocache = workdir.parent / f"gocache-{slot.index}"
        if not gocache.is_dir():
            shutil.copytree(self.warm_cache, gocache)
            sandbox.give(gocache, slot)
        env = self._env(workdir, gocache)
        return [Step("compile", [str(self.go), *GO_BUILD], self.limits.compile, env,
                     writable=(gocache,)),
                Step("run", ["./main.test", "-test.v"], self.limits.run, env)]

    def verdict(self, result, check) -> tuple:
        """The marker, and ``go test``'s own verbose result lines reporting each of the
        problem's tests passed (none failed)."""
        passed, why = super().verdict(result, check)
        if not passed:
            return passed, why
        states = {}
        for state, name in _GO_RESULT_LINE.findall(result.stdout):
            states.setdefault(name, set()).add(state)
        failed = sorted(name for name, seen in states.items() if seen != {"PASS"})
        if failed:
            return False, f"go test reports {failed} not passed"
        missing = [name for name in check.expected_tests if name not in states]
        if missing:
            return False, f"go test reports no pass for {missing}"
        return True, ""

# ----- Rust --------------------------------------------------------------------------------------
RUST_CRATES = {"rand": "0.8", "regex": "1", "md5": "0.7"}
CARGO_REGISTRY = Path(os.environ.get("CODEGEEX_CARGO_REGISTRY", "/usr/share/cargo/registry"))
RUST_INSTALL_HINT = ("apt-get install cargo librust-rand-dev 'librust-regex+default-dev' "
                "librust-md5-dev")
RUST_EDITION = "2021"


_RUST_PROBE_DECLARATION = ("use rand::Rng;\nuse regex::Regex;\nuse md5;\n\n"
                      "fn probe(text: &str) -> String{\n")
_RUST_PROBE = {"task_id": "Rust/probe", "declaration": _RUST_PROBE_DECLARATION,
                  "test": "#[cfg(test)]\nmod tests {\n    use super::*;\n\n    #[test]\n"
                          "    fn test_probe() {\n"
                          "        assert_eq!(probe(\"a\"),\n"
                          "                   \"0cc175b9c0f1b6a831c399e269772661\");\n"
                          "    }\n}\n"}


class RustRunner(Runner):
    key = "rust"
    probe = Program("rust", _RUST_PROBE_DECLARATION +
                    "    assert!(Regex::new(\"a+b\").unwrap().is_match(\"xaab\"));\n"
                    "    assert!(rand::thread_rng().gen_range(0..3) < 3);\n"
                    "    format!(\"{:x}\", md5::compute(text.as_bytes()))\n}\n", _RUST_PROBE)

    def setup(self) -> None:
        proxy = require_executable("rustc", RUST_INSTALL_HINT)
        sysroot = Path(command_output([str(proxy), "--print", "sysroot"]).splitlines()[-1])
        self.rustc = sysroot / "bin" / "rustc"  # the real compiler, not a rustup proxy
        self.sysroot = sysroot
        self.version = command_output([str(self.rustc), "--version"])
        missing = [c for c in RUST_CRATES if not any(CARGO_REGISTRY.glob(f"{c}-*"))]
        if missing:
            raise ToolchainMissing(f"crates {missing} not in {CARGO_REGISTRY} "
                                   f"({RUST_INSTALL_HINT})")
        key = hashlib.sha256(self.version.encode()).hexdigest()[:12]
        self.deps_root = self.cache_dir / "rust" / key
        if not (self.deps_root / "externs.json").exists():
            self._build_deps()
        self.externs = json.loads((self.deps_root / "externs.json").read_text())

    def _build_deps(self) -> None:
        """Build the crates with cargo (trusted Debian sources, outside the sandbox)."""
        cargo = require_executable("cargo", RUST_INSTALL_HINT)
        self.deps_root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.deps_root.parent, prefix="build."))
        (tmp / "src").mkdir()
        (tmp / "src" / "lib.rs").write_text("")
        deps = "".join(f'{name} = "{version}"\n' for name, version in RUST_CRATES.items())
        (tmp / "Cargo.toml").write_text(
            f'[package]\nname = "humaneval_deps"\nversion = "0.1.0"\nedition = "{RUST_EDITION}"\n\n'
            f"[dependencies]\n{deps}")
        (tmp / ".cargo").mkdir()
        (tmp / ".cargo" / "config.toml").write_text(
            '[source.crates-io]\nreplace-with = "debian"\n\n'
            f'[source.debian]\ndirectory = "{CARGO_REGISTRY}"\n\n[net]\noffline = true\n')
        env = {**os.environ, "RUSTC": str(self.rustc), "CARGO_HOME": str(tmp / "cargo-home"),
               "CARGO_TARGET_DIR": str(tmp / "target")}
        proc = subprocess.run([str(cargo), "build", "--offline", "--message-format=json"],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ToolchainMissing(f"building {sorted(RUST_CRATES)} failed: {proc.stderr[-2000:]}")
        externs = {}
        for line in proc.stdout.splitlines():
            msg = json.loads(line)
            if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] in RUST_CRATES:
                rlib = next(f for f in msg["filenames"] if f.endswith(".rlib"))
                final = self.deps_root / Path(rlib).relative_to(tmp)
                externs[msg["target"]["name"]] = str(final)
        (tmp / "externs.json").write_text(json.dumps(externs, indent=1))
        make_world_readable(tmp)
        shutil.rmtree(self.deps_root, ignore_errors=True)
        os.replace(tmp, self.deps_root)

    def visible(self) -> list:
        return [self.sysroot, self.deps_root]

    def write_files(self, workdir, program):
        check = super().write_files(workdir, program)
        (workdir / "sample.rs").write_text(rust_sample_crate(program.problem, program.source),
                                           encoding="utf-8")
        (workdir / "main.rs").write_text(rust_harness_crate(program.problem), encoding="utf-8")
        return check

    def steps(self, workdir, slot, sandbox, check) -> list:
        deps_dir = Path(next(iter(self.externs.values()))).parent
        common = ["--edition", RUST_EDITION, "--cap-lints", "allow", "-L", f"dependency={deps_dir}"]
        for name, rlib in sorted(self.externs.items()):
            common += ["--extern", f"{name}={rlib}"]
        env = self.base_env(workdir)
        rustc = str(self.rustc)
        return [Step("compile", [rustc, *common, "--crate-type", "rlib", "--crate-name", "sample",
                                 "sample.rs", "-o", "libsample.rlib"], self.limits.compile, env),
                Step("compile", [rustc, *common, "--crate-name", "main", "--extern",
                                 "sample=libsample.rlib", "main.rs", "-o", "main"],
                     self.limits.compile, {**env, "CODEGEEX_NONCE": check.nonce}),
                Step("run", ["./main"], self.limits.run, env)]


RUNNERS = {r.key: r for r in (PythonRunner, CppRunner, JavaRunner, JsRunner, GoRunner, RustRunner)}
