"""C++: the sample is compiled alone into ``libsample.so``; then the test executable is linked
from the problem's test object (the harness's ``assert`` and ``main``; trusted dataset text,
compiled once per problem into the evaluation cache, outside the sandbox) and ``marker.c``,
compiled in that step with the nonce on its command line, with the C and C++ runtimes named
first and the sample last (``-nodefaultlibs``): the sample comes last in symbol search order and
cannot interpose anything the tests call (see the threat model in ``humaneval.assembly``).
OpenSSL's libcrypto is linked for the md5 problem.

Sample and test units start with a precompiled header of the standard includes (built once per
compiler version into the evaluation cache), which the assembled sample includes anyway.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..assembly import CPP_INCLUDES, Program, cpp_marker_unit, cpp_test_unit
from .base import (Check, Runner, Step, ToolchainMissing, command_output, make_world_readable,
                   require_executable)

_PROBE_PROBLEM = {"task_id": "CPP/probe",
                  "declaration": "#include<string>\nusing namespace std;\nint digest(string s){\n",
                  "test": "#undef NDEBUG\n#include<assert.h>\nint main(){\n"
                          "    assert (digest(\"a\") == 0x0c61);\n}\n"}
FLAGS = ["-std=c++17", "-O0", "-fPIC"]
LINK_FIRST = ["-nodefaultlibs", "-Wl,--no-as-needed", "-lstdc++", "-lm", "-lc", "-lgcc_s", "-lgcc"]


class CppRunner(Runner):
    key = "cpp"
    probe = Program("cpp", "#include <openssl/md5.h>\n#include<string>\nusing namespace std;\n"
                           "int digest(string s){\n    unsigned char d[MD5_DIGEST_LENGTH];\n"
                           "    MD5((const unsigned char*)s.data(), s.size(), d);\n"
                           "    return d[0] << 8 | d[15];\n}\n", _PROBE_PROBLEM)

    def setup(self) -> None:
        self.gxx = require_executable("g++", "apt-get install g++ libssl-dev libboost-dev")
        self.version = command_output([str(self.gxx), "--version"]).splitlines()[0]
        header = "".join(line + "\n" for line in CPP_INCLUDES)
        key = hashlib.sha256("\0".join([self.version, *FLAGS, header]).encode()).hexdigest()[:12]
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
        proc = subprocess.run([str(self.gxx), *FLAGS, "-x", "c++-header", "codegeex_std.h",
                               "-o", "codegeex_std.h.gch"], cwd=tmp, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ToolchainMissing(f"precompiling the C++ standard headers failed: "
                                   f"{proc.stderr[-2000:]}")
        make_world_readable(tmp)
        try:
            os.rename(tmp, self.pch_dir)
        except OSError:  # another process built it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)

    def _compile_flags(self) -> list:
        return [str(self.gxx), *FLAGS, "-include", str(self.pch_dir / "codegeex_std.h")]

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
                                 *LINK_FIRST, "libsample.so", "-Wl,-rpath,$ORIGIN"],
                     self.limits.compile, env),
                Step("run", ["./main"], self.limits.run, env)]
