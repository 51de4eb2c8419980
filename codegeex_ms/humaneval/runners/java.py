"""Java: ``javac Main.java`` then ``java Main`` (the harness really runs Java, unlike the
official one whose run line is commented out)."""

from .base import Runner, Step, command_output, require_executable

# JVM settings that keep its address-space reservations inside RLIMIT_AS and start quickly.
JVM_FLAGS = ["-Xmx1g", "-Xss16m", "-XX:+UseSerialGC", "-XX:CompressedClassSpaceSize=64m",
             "-XX:ReservedCodeCacheSize=64m", "-XX:-UsePerfData", "-XX:TieredStopAtLevel=1"]


class JavaRunner(Runner):
    key = "java"
    filename = "Main.java"
    probe = ("import java.util.*;\npublic class Main {\n  public static void main(String[] a) {\n"
             "    if (Arrays.asList(1, 2).size() != 2) throw new AssertionError();\n  }\n}\n")

    def setup(self) -> None:
        hint = "apt-get install default-jdk-headless"
        self.javac = require_executable("javac", hint)
        self.java = require_executable("java", hint)
        self.version = command_output([str(self.javac), "-version"])

    def steps(self, workdir, slot, sandbox) -> list:
        env = self.base_env(workdir)
        return [Step("compile", [str(self.javac), *("-J" + f for f in JVM_FLAGS),
                                 "-encoding", "UTF-8", self.filename],
                     self.limits.compile, env),
                Step("run", [str(self.java), *JVM_FLAGS, "-cp", ".", "Main"], self.limits.run,
                     env)]
