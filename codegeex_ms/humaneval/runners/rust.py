"""Rust: the sample is compiled alone as library crate ``sample``; then the harness crate (the
tests in a module of their own, a ``main`` that runs them and prints the marker, the nonce given
through the environment of that compile step only) is compiled against it, and run. See the
threat model in ``humaneval.assembly``. Both link prebuilt ``rand``, ``regex`` and ``md5``
crates.

The crates come from Debian's ``librust-*-dev`` packages (a Cargo directory source at
``/usr/share/cargo/registry``). They are built once with cargo, offline, into the evaluation
cache (keyed by the rustc version); each sample is then two ``rustc`` calls linking them,
without Cargo's build-directory lock serialising the workers.
"""

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..assembly import Program, rust_harness_crate, rust_sample_crate
from .base import (Runner, Step, ToolchainMissing, command_output, make_world_readable,
                   require_executable)

CRATES = {"rand": "0.8", "regex": "1", "md5": "0.7"}
REGISTRY = Path(os.environ.get("CODEGEEX_CARGO_REGISTRY", "/usr/share/cargo/registry"))
INSTALL_HINT = ("apt-get install cargo librust-rand-dev 'librust-regex+default-dev' "
                "librust-md5-dev")
EDITION = "2021"


_PROBE_DECLARATION = ("use rand::Rng;\nuse regex::Regex;\nuse md5;\n\n"
                      "fn probe(text: &str) -> String{\n")
_PROBE_PROBLEM = {"task_id": "Rust/probe", "declaration": _PROBE_DECLARATION,
                  "test": "#[cfg(test)]\nmod tests {\n    use super::*;\n\n    #[test]\n"
                          "    fn test_probe() {\n"
                          "        assert_eq!(probe(\"a\"),\n"
                          "                   \"0cc175b9c0f1b6a831c399e269772661\");\n"
                          "    }\n}\n"}


class RustRunner(Runner):
    key = "rust"
    probe = Program("rust", _PROBE_DECLARATION +
                    "    assert!(Regex::new(\"a+b\").unwrap().is_match(\"xaab\"));\n"
                    "    assert!(rand::thread_rng().gen_range(0..3) < 3);\n"
                    "    format!(\"{:x}\", md5::compute(text.as_bytes()))\n}\n", _PROBE_PROBLEM)

    def setup(self) -> None:
        proxy = require_executable("rustc", INSTALL_HINT)
        sysroot = Path(command_output([str(proxy), "--print", "sysroot"]).splitlines()[-1])
        self.rustc = sysroot / "bin" / "rustc"  # the real compiler, not a rustup proxy
        self.sysroot = sysroot
        self.version = command_output([str(self.rustc), "--version"])
        missing = [c for c in CRATES if not any(REGISTRY.glob(f"{c}-*"))]
        if missing:
            raise ToolchainMissing(f"crates {missing} not in {REGISTRY} ({INSTALL_HINT})")
        key = hashlib.sha256(self.version.encode()).hexdigest()[:12]
        self.deps_root = self.cache_dir / "rust" / key
        if not (self.deps_root / "externs.json").exists():
            self._build_deps()
        self.externs = json.loads((self.deps_root / "externs.json").read_text())

    def _build_deps(self) -> None:
        """Build the crates with cargo (trusted Debian sources, outside the sandbox)."""
        cargo = require_executable("cargo", INSTALL_HINT)
        self.deps_root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.deps_root.parent, prefix="build."))
        (tmp / "src").mkdir()
        (tmp / "src" / "lib.rs").write_text("")
        deps = "".join(f'{name} = "{version}"\n' for name, version in CRATES.items())
        (tmp / "Cargo.toml").write_text(
            f'[package]\nname = "humaneval_deps"\nversion = "0.1.0"\nedition = "{EDITION}"\n\n'
            f"[dependencies]\n{deps}")
        (tmp / ".cargo").mkdir()
        (tmp / ".cargo" / "config.toml").write_text(
            '[source.crates-io]\nreplace-with = "debian"\n\n'
            f'[source.debian]\ndirectory = "{REGISTRY}"\n\n[net]\noffline = true\n')
        env = {**os.environ, "RUSTC": str(self.rustc), "CARGO_HOME": str(tmp / "cargo-home"),
               "CARGO_TARGET_DIR": str(tmp / "target")}
        proc = subprocess.run([str(cargo), "build", "--offline", "--message-format=json"],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ToolchainMissing(f"building {sorted(CRATES)} failed: {proc.stderr[-2000:]}")
        externs = {}
        for line in proc.stdout.splitlines():
            msg = json.loads(line)
            if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] in CRATES:
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
        common = ["--edition", EDITION, "--cap-lints", "allow", "-L", f"dependency={deps_dir}"]
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
