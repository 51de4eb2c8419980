"""JavaScript: ``node main.js`` with the ``js-md5`` package; output on stderr is a failure
(``console.assert`` reports there without throwing)."""

from .base import Runner, Step, ToolchainMissing, command_output, require_executable


class JsRunner(Runner):
    key = "js"
    filename = "main.js"
    probe = ("const md5 = require('js-md5');\n"
             "console.assert(md5('a') === '0cc175b9c0f1b6a831c399e269772661');\n")

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

    def steps(self, workdir, slot, sandbox) -> list:
        env = {**self.base_env(workdir), "NODE_PATH": str(self.node_modules)}
        return [Step("run", [str(self.node), self.filename], self.limits.run, env)]

    def passed(self, result) -> bool:
        return result.ok and not result.stderr.strip()
