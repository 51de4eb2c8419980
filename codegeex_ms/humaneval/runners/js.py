"""JavaScript: ``node driver.js``; the sample runs in its own V8 realm, the tests in the host
realm (see ``js_driver.js`` and the threat model in ``humaneval.assembly``)."""

import json
from pathlib import Path

from ..assembly import Program, js_harness_parts, marker_line
from .base import Runner, Step, ToolchainMissing, command_output, require_executable

DRIVER = Path(__file__).with_name("js_driver.js").read_text(encoding="utf-8")

_PROBE_PROBLEM = {"task_id": "JavaScript/probe",
                  "declaration": "const digest = (text) => {\n",
                  "test": "const testDigest = () => {\n"
                          "  console.assert(digest('a') === '0cc175b9c0f1b6a831c399e269772661')\n"
                          "}\ntestDigest()\n"}


class JsRunner(Runner):
    key = "js"
    probe = Program("js", "const digest = (text) => {\n  const md5 = require('js-md5');\n"
                          "  return md5(text);\n}\n", _PROBE_PROBLEM)

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
        (workdir / "driver.js").write_text(DRIVER, encoding="utf-8")
        (workdir / "sample.js").write_text(program.source, encoding="utf-8")
        (workdir / "harness.json").write_text(json.dumps(spec), encoding="utf-8")
        return check

    def steps(self, workdir, slot, sandbox, check) -> list:
        return [Step("run", [str(self.node), "driver.js"], self.limits.run,
                     self.base_env(workdir))]
