"""C++: ``g++`` then run the binary. OpenSSL's libcrypto is linked for the md5 problem."""

from .base import Runner, Step, command_output, require_executable


class CppRunner(Runner):
    key = "cpp"
    filename = "main.cpp"
    probe = ("#include <openssl/md5.h>\n#include <cassert>\n#include <cstring>\n"
             "int main() { unsigned char d[MD5_DIGEST_LENGTH];\n"
             "  MD5((const unsigned char*)\"a\", 1, d); assert(d[0] == 0x0c && d[15] == 0x61); }\n")
    flags = ["-std=c++17", "-O0"]

    def setup(self) -> None:
        self.gxx = require_executable("g++", "apt-get install g++ libssl-dev libboost-dev")
        self.version = command_output([str(self.gxx), "--version"]).splitlines()[0]

    def steps(self, workdir, slot, sandbox) -> list:
        env = self.base_env(workdir)
        return [Step("compile", [str(self.gxx), *self.flags, self.filename, "-o", "main",
                                 "-lcrypto"], self.limits.compile, env),
                Step("run", ["./main"], self.limits.run, env)]
