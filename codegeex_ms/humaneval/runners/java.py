"""Java: one ``javac`` of ``Solution.java`` (the sample, in its own package) and ``Main.java``
(the tests plus the harness's ``Main``), then ``java Main`` (the harness really runs Java, unlike
the official one whose run line is commented out). See the threat model in
``humaneval.assembly``."""

from ..assembly import Program, java_sample_unit, java_test_unit
from .base import Runner, Step, command_output, require_executable

# JVM settings that keep its address-space reservations inside RLIMIT_AS and start quickly.
JVM_FLAGS = ["-Xmx1g", "-Xss16m", "-XX:+UseSerialGC", "-XX:CompressedClassSpaceSize=64m",
             "-XX:ReservedCodeCacheSize=64m", "-XX:-UsePerfData", "-XX:TieredStopAtLevel=1"]
NONCE_FILE = "nonce"

_PROBE_PROBLEM = {"task_id": "Java/probe", "declaration": "import java.util.*;\n",
                  "test": "public class Main {\n    public static void main(String[] a) {\n"
                          "        if (new Solution().size() != 2) throw new AssertionError();\n"
                          "    }\n}\n"}


class JavaRunner(Runner):
    key = "java"
    probe = Program("java", "import java.util.*;\nclass Solution {\n    public int size() {\n"
                            "        return Arrays.asList(1, 2).size();\n    }\n}\n",
                    _PROBE_PROBLEM)

    def setup(self) -> None:
        hint = "apt-get install default-jdk-headless"
        self.javac = require_executable("javac", hint)
        self.java = require_executable("java", hint)
        self.version = command_output([str(self.javac), "-version"])

    def write_files(self, workdir, program):
        check = super().write_files(workdir, program)
        (workdir / "Solution.java").write_text(java_sample_unit(program.problem, program.source),
                                               encoding="utf-8")
        (workdir / "Main.java").write_text(java_test_unit(program.problem, NONCE_FILE),
                                           encoding="utf-8")
        (workdir / NONCE_FILE).write_text(check.nonce, encoding="ascii")
        return check

    def steps(self, workdir, slot, sandbox, check) -> list:
        env = self.base_env(workdir)
        return [Step("compile", [str(self.javac), *("-J" + f for f in JVM_FLAGS), "-proc:none",
                                 "-encoding", "UTF-8", "-d", "classes", "Solution.java",
                                 "Main.java"], self.limits.compile, env),
                Step("run", [str(self.java), *JVM_FLAGS, "-cp", "classes", "Main"],
                     self.limits.run, env)]
