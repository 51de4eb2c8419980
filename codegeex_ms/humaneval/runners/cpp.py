"""C++: the sample is compiled alone into ``libsample.so``; the test unit (``tests.cpp``, the
harness's ``assert`` and ``main``) is compiled afterwards with the nonce on its command line and
linked so that the C and C++ runtimes precede the sample in symbol search order: the sample
cannot interpose anything the tests call (see the threat model in ``humaneval.assembly``).
OpenSSL's libcrypto is linked for the md5 problem."""

from ..assembly import Program, cpp_test_unit
from .base import Runner, Step, command_output, require_executable

_PROBE_PROBLEM = {"task_id": "CPP/probe",
                  "declaration": "#include<string>\nusing namespace std;\nint digest(string s){\n",
                  "test": "#undef NDEBUG\n#include<assert.h>\nint main(){\n"
                          "    assert (digest(\"a\") == 0x0c61);\n}\n"}


class CppRunner(Runner):
    key = "cpp"
    probe = Program("cpp", "#include <openssl/md5.h>\n#include<string>\nusing namespace std;\n"
                           "int digest(string s){\n    unsigned char d[MD5_DIGEST_LENGTH];\n"
                           "    MD5((const unsigned char*)s.data(), s.size(), d);\n"
                           "    return d[0] << 8 | d[15];\n}\n", _PROBE_PROBLEM)
    flags = ["-std=c++17", "-O0"]

    def setup(self) -> None:
        self.gxx = require_executable("g++", "apt-get install g++ libssl-dev libboost-dev")
        self.version = command_output([str(self.gxx), "--version"]).splitlines()[0]

    def write_files(self, workdir, program):
        check = super().write_files(workdir, program)
        (workdir / "sample.cpp").write_text(program.source, encoding="utf-8")
        (workdir / "tests.cpp").write_text(cpp_test_unit(program.problem), encoding="utf-8")
        return check

    def steps(self, workdir, slot, sandbox, check) -> list:
        env = self.base_env(workdir)
        gxx = str(self.gxx)
        return [Step("compile", [gxx, *self.flags, "-fPIC", "-shared", "sample.cpp",
                                 "-Wl,-soname,libsample.so", "-o", "libsample.so", "-lcrypto"],
                     self.limits.compile, env),
                Step("compile", [gxx, *self.flags, f'-DCODEGEEX_NONCE="{check.nonce}"',
                                 "tests.cpp", "-o", "main", "-Wl,--no-as-needed", "-lstdc++",
                                 "-lm", "-lc", "libsample.so", "-Wl,-rpath,$ORIGIN"],
                     self.limits.compile, env),
                Step("run", ["./main"], self.limits.run, env)]
