"""Go: ``go test -c`` of the sample's test file plus the harness's ``TestMain`` file, then the
test binary run with ``-test.v``, whose result lines are parsed (see the threat model in ``humaneval.assembly``), in
a module whose testify comes vendored from Debian's ``golang-github-stretchr-testify-dev``
(offline).

The module file follows the official harness's ``go_evaluation/go.mod`` (module name, Go version,
requirement versions) but lists only testify and the modules it imports, since nothing else is
vendored (its other requirement, go-openapi/inflect, is used by no test). Each worker slot has
its own build cache, seeded from one warmed once with testify's standard-library dependencies.
Go keys cached packages by directory, and a slot always uses the same sample directory, so a
slot compiles the vendored testify once per run and reuses it afterwards.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path

from ..assembly import Program, go_harness_file, go_test_file, go_test_names
from ..problems import humaneval_dir
from .base import (Check, Runner, Step, ToolchainMissing, command_output, make_world_readable,
                   require_executable)

# Vendored modules -> the packages of each that testify/assert needs.
VENDORED = {
    "github.com/stretchr/testify": ["github.com/stretchr/testify/assert"],
    "github.com/davecgh/go-spew": ["github.com/davecgh/go-spew/spew"],
    "github.com/pmezard/go-difflib": ["github.com/pmezard/go-difflib/difflib"],
    "gopkg.in/yaml.v3": ["gopkg.in/yaml.v3"],
}
GOCODE_DIR = Path(os.environ.get("CODEGEEX_GOCODE_DIR", "/usr/share/gocode/src"))
INSTALL_HINT = "apt-get install golang-go golang-github-stretchr-testify-dev"


def parse_go_mod(text: str) -> tuple:
    """(module name, go version, {module path: version}) of a go.mod text."""
    module = re.search(r"^module\s+(\S+)", text, re.M).group(1)
    go = re.search(r"^go\s+(\S+)", text, re.M).group(1)
    requires = dict(re.findall(r"^\s*(?:require\s+)?([\w.\-]+\.[\w.\-/]+)\s+(v\S+)", text, re.M))
    return module, go, requires


def vendored_module_files(go_mod_text: str) -> tuple:
    """(go.mod, vendor/modules.txt) texts for the vendored subset of the reference go.mod."""
    module, go, requires = parse_go_mod(go_mod_text)
    missing = [m for m in VENDORED if m not in requires]
    if missing:
        raise ToolchainMissing(f"reference go.mod does not require {missing}")
    mod = [f"module {module}", "", f"go {go}", "", "require ("]
    txt = []
    for path in sorted(VENDORED):
        mod.append(f"\t{path} {requires[path]}")
        txt += [f"# {path} {requires[path]}", "## explicit", *VENDORED[path]]
    return "\n".join(mod + [")", ""]), "\n".join(txt + [""])


BUILD = ["test", "-c", "-o", "main.test"]
_RESULT_LINE = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\w+)", re.M)
_PROBE_PROBLEM = {"task_id": "Go/probe", "import": "",
                  "test_setup": 'package main\n\nimport (\n    "testing"\n'
                                '    "github.com/stretchr/testify/assert"\n)\n',
                  "test": "func TestProbe(t *testing.T) {\n    assert := assert.New(t)\n"
                          "    assert.Equal(2, Add(1, 1))\n}\n"}


class GoRunner(Runner):
    key = "go"
    probe = Program("go", "func Add(a int, b int) int {\n    return a + b\n}\n", _PROBE_PROBLEM)

    @property
    def module_dir(self) -> Path:
        return self.cache_dir / "go" / "module"

    @property
    def warm_cache(self) -> Path:
        return self.cache_dir / "go" / "gocache"

    def setup(self) -> None:
        self.go = require_executable("go", INSTALL_HINT)
        self.goroot = Path(command_output([str(self.go), "env", "GOROOT"]))
        self.version = command_output([str(self.go), "version"])
        for module in VENDORED:
            if not (GOCODE_DIR / module).is_dir():
                raise ToolchainMissing(f"{GOCODE_DIR / module} missing ({INSTALL_HINT})")
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
        for module in VENDORED:
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
            command_output([str(self.go), *BUILD],
                           cwd=work, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                          **self._env(work, tmp_cache)})
        make_world_readable(tmp_cache)
        try:
            os.rename(tmp_cache, self.warm_cache)
        except OSError:  # another process warmed it meanwhile
            shutil.rmtree(tmp_cache, ignore_errors=True)

    def visible(self) -> list:
        return [self.module_dir, self.warm_cache, self.goroot]

    def steps(self, workdir, slot, sandbox, check) -> list:
        gocache = workdir.parent / f"gocache-{slot.index}"
        if not gocache.is_dir():
            shutil.copytree(self.warm_cache, gocache)
            sandbox.give(gocache, slot)
        env = self._env(workdir, gocache)
        return [Step("compile", [str(self.go), *BUILD], self.limits.compile, env,
                     writable=(gocache,)),
                Step("run", ["./main.test", "-test.v"], self.limits.run, env)]

    def verdict(self, result, check) -> tuple:
        """The marker, and ``go test``'s own verbose result lines reporting each of the
        problem's tests passed (none failed)."""
        passed, why = super().verdict(result, check)
        if not passed:
            return passed, why
        states = {}
        for state, name in _RESULT_LINE.findall(result.stdout):
            states.setdefault(name, set()).add(state)
        failed = sorted(name for name, seen in states.items() if seen != {"PASS"})
        if failed:
            return False, f"go test reports {failed} not passed"
        missing = [name for name in check.expected_tests if name not in states]
        if missing:
            return False, f"go test reports no pass for {missing}"
        return True, ""
