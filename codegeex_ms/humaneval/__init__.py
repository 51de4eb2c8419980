"""HumanEval-X: prompts, stop rules, sandboxed execution in six languages, pass@k and reports.

Problems and prompts: ``problems`` (data, tracks, model inputs), ``stopping`` (stop rules shared
with the decoder). Execution and sandbox: ``assembly`` (test programs and the verdicts' threat
model), ``execution`` (one program in a fresh sample directory), ``sandbox`` (isolation and its
threat model), ``cgroups`` (whole-tree limits). Runners: ``runners`` (the ``RUNNERS`` registry of
per-language toolchains; ``python_driver.py`` and ``js_driver.js`` run inside the sandbox).
Steps and scores: ``steps`` (the resumable generate and execute steps), ``scoring`` (pass@k,
score step, reports). Language facts live in ``codegeex_ms.data.languages``. Nothing here
imports MindSpore.
"""

from .scoring import pass_at_k
from .stopping import is_finished, make_stop_fn, truncate_completion

__all__ = ["is_finished", "make_stop_fn", "pass_at_k", "truncate_completion"]
