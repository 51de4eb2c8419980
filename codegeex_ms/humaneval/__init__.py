"""HumanEval-X: prompts, stop rules, sandboxed execution in six languages, pass@k and reports.

Modules: ``problems`` (data), ``prompts`` (model inputs), ``stopping`` (stop rules shared with the
decoder), ``assembly`` (test programs), ``sandbox`` (isolation), ``runners`` (per-language
toolchains), ``execution`` (one program), ``generation`` / ``evaluation`` / ``scoring`` (the
generate, execute and score steps), ``passk``, ``report``, ``jsonl``. Nothing here imports
MindSpore.
"""

from .scoring import pass_at_k
from .stopping import is_finished, make_stop_fn, truncate_completion

__all__ = ["is_finished", "make_stop_fn", "pass_at_k", "truncate_completion"]
