"""Verdicts a sample cannot fake: hostile completions in all six languages, each run through the
real executor and toolchains, must not be judged ``passed``; the canonical solution of the same
problem must be. The threat model is in ``codegeex_ms/humaneval/assembly.py``.

Toolchains come from run_scripts/install_eval_toolchains.sh; a missing one skips its language,
and fails the test under CI=true.
"""

import os
import textwrap

import pytest

from codegeex_ms.humaneval.assembly import (MARKER, assemble_program, marker_line,
                                            python_entry_point)
from codegeex_ms.humaneval.execution import COMPILE_ERROR, FAILED, PASSED, Executor
from codegeex_ms.data.languages import HUMANEVAL_LANGUAGES
from codegeex_ms.humaneval.problems import code_prefix, humaneval_dir, load_problems
from codegeex_ms.humaneval.python_driver import Opaque, decode, encode
from codegeex_ms.humaneval.runners import RUNNERS, Check, StepLimits
from codegeex_ms.humaneval.sandbox import RunResult

ANY_FAKE_NONCE = "0123456789abcdef0123456789abcdef"

# (problem number, completion, the statuses it may get). Completions that exit early print a
# fake marker first where they can, so that only the nonce tells the difference.
HOSTILE = {
    "python": {
        "sys_exit_at_import": (0, "    return False\nimport sys\nsys.exit(0)\n", {FAILED}),
        "os_exit_in_call": (0, f"    print('{MARKER} {ANY_FAKE_NONCE}')\n"
                               "    import os\n    os._exit(0)\n", {FAILED}),
        "sys_exit_in_call": (0, "    import sys\n    sys.exit(0)\n", {FAILED}),
        "atexit_rewrites_status": (0, "    import atexit, os\n"
                                      "    atexit.register(lambda: os._exit(0))\n"
                                      "    return None\n", {FAILED}),
        "equal_to_everything": (0, "    class Any:\n        def __eq__(self, other):\n"
                                   "            return True\n        __hash__ = object.__hash__\n"
                                   "    return Any()\n", {FAILED}),
        "bool_subclass_lies": (0, "    class Yes(int):\n        def __eq__(self, other):\n"
                                  "            return True\n    return Yes(0)\n", {FAILED}),
        "shadow_assertion_error": (0, "    return None\n"
                                      "import builtins\nclass AssertionError(Exception):\n"
                                      "    pass\nbuiltins.AssertionError = AssertionError\n"
                                      "builtins.abs = lambda x: 0\n", {FAILED}),
        "steal_nonce_then_exit": (0, "    import os, gc\n"
                                     "    found = []\n"
                                     "    parent = f'/proc/{os.getppid()}'\n"
                                     "    for path in ('harness.json', parent + '/environ',"
                                     " parent + '/mem'):\n"
                                     "        try:\n"
                                     "            found.append(open(path, 'rb').read(1 << 16))\n"
                                     "        except OSError:\n"
                                     "            pass\n"
                                     "    for o in gc.get_objects():\n"
                                     "        if isinstance(o, dict) and 'marker' in o:\n"
                                     "            found.append(o['marker'].encode())\n"
                                     "    for blob in found:\n"
                                     "        print(blob.decode(errors='replace'))\n"
                                     "    os._exit(0)\n", {FAILED}),
    },
    "js": {
        "process_exit": (0, f"  console.log('{MARKER} {ANY_FAKE_NONCE}');\n"
                            "  process.exit(0);\n}\n", {FAILED}),
        "console_assert_override": (0, "  return false;\n}\nconsole.assert = () => {};\n",
                                    {FAILED}),
        "escape_via_constructor": (0, "  const f = this.constructor.constructor;\n"
                                      "  f('return process')().exit(0);\n}\n", {FAILED}),
        "escape_via_stack_trace": (0, "  Error.prepareStackTrace = (e, frames) => {\n"
                                      "    for (const f of frames) {\n"
                                      "      const t = f.getThis();\n"
                                      "      if (t && t.process) t.process.exit(0);\n"
                                      "    }\n"
                                      "  };\n"
                                      "  new Error().stack;\n  return false;\n}\n", {FAILED}),
        "escape_via_caller": (0, "  const caller = hasCloseElements.caller;\n"
                                 "  caller.constructor('return process')().exit(0);\n}\n",
                              {FAILED}),
        "equal_to_everything": (0, "  return {valueOf() { return true; },\n"
                                   "          toString() { return 'true'; }};\n}\n", {FAILED}),
        "poison_host_json": (0, "  JSON.stringify = () => '';\n"
                                "  Array.prototype.toString = () => '';\n  return false;\n}\n",
                             {FAILED}),
        "require_child_process": (0, "  require('child_process').execSync('true');\n}\n",
                                  {FAILED}),
    },
    "cpp": {
        "global_ctor_exit": (0, "    return false;\n}\n#include<cstdlib>\n"
                                "static struct Early { Early() { "
                                f"printf(\"{MARKER} {ANY_FAKE_NONCE}\\n\");"
                                " std::exit(0); } } early;\n", {FAILED}),
        "define_main": (0, "    return false;\n}\n#define main ignored_main\n"
                           "#define assert(x) ((void)0)\n", {FAILED}),
        "assert_fail_override": (0, "    return false;\n}\n"
                                    "extern \"C\" void __assert_fail(const char*, const char*, "
                                    "unsigned, const char*) {}\n"
                                    "extern \"C\" void abort() {}\n", {FAILED}),
        "exit_interposed": (0, "    return false;\n}\nextern \"C\" void _exit(int) {}\n"
                               "extern \"C\" void exit(int) {}\n", {FAILED}),
        "memcmp_interposed": (27, "    return string(str.size(), 'x');\n}\n"
                                  "extern \"C\" int memcmp(const void*, const void*, size_t) "
                                  "{ return 0; }\n"
                                  "extern \"C\" int strcmp(const char*, const char*) "
                                  "{ return 0; }\n",
                              {FAILED}),
        "read_nonce_macro": (0, "    return false;\n}\nstatic struct Early { Early() { "
                                "printf(\"%s\\n\", CODEGEEX_NONCE); exit(0); } } early;\n",
                             {COMPILE_ERROR}),
    },
    "java": {
        "static_initializer_exit": (0, "        return false;\n    }\n    static {\n"
                                       "        System.out.println(\""
                                       f"{MARKER} {ANY_FAKE_NONCE}\");\n"
                                       "        System.exit(0);\n    }\n}\n", {FAILED}),
        "shutdown_hook_halts_zero": (0, "        Runtime.getRuntime().addShutdownHook("
                                        "new Thread(() -> Runtime.getRuntime().halt(0)));\n"
                                        "        return false;\n    }\n}\n", {FAILED}),
        "shadow_arrays_and_assertion_error": (
            0, "        return false;\n    }\n}\n"
               "class Arrays {\n    public static <T> List<T> asList(T... a) {\n"
               "        return new ArrayList<>();\n    }\n}\n"
               "class AssertionError extends RuntimeException {\n"
               "    AssertionError() { System.exit(0); }\n}\n", {FAILED}),
        "steal_nonce_file": (0, "        return false;\n    }\n    static {\n        try {\n"
                                "            String n = new String(java.nio.file.Files"
                                ".readAllBytes(java.nio.file.Paths.get(\"nonce\"))).trim();\n"
                                f"            System.out.println(\"{MARKER} \" + n);\n"
                                "        } catch (Exception e) {}\n"
                                "        Runtime.getRuntime().halt(0);\n    }\n}\n", {FAILED}),
    },
    "go": {
        "testmain_without_run": (0, "    return true\n}\n\nfunc TestMain(m *testing.M) {\n}\n",
                                 {COMPILE_ERROR}),
        "fake_framework_output": (0, "    return false\n}\n\nfunc init() {\n"
                                     "    fmt.Println(\"--- PASS: TestHasCloseElements (0.00s)\")\n"
                                     f"    fmt.Println(\"{MARKER} {ANY_FAKE_NONCE}\")\n"
                                     "    fmt.Println(\"PASS\")\n}\n", {FAILED}),
        "os_exit_zero": (0, "    os.Exit(0)\n    return true\n}\n", {COMPILE_ERROR}),
        "shadow_assert": (0, "    return false\n}\n\nvar assert = 0\n", {COMPILE_ERROR}),
    },
    "rust": {
        "init_array_exit": (0, "    return false;\n}\n#[used]\n#[link_section = \".init_array\"]\n"
                               "static EARLY: extern \"C\" fn() = {\n"
                               "    extern \"C\" fn early() {\n"
                               f"        println!(\"{MARKER} {ANY_FAKE_NONCE}\");\n"
                               "        std::process::exit(0);\n    }\n    early\n};\n", {FAILED}),
        "assert_macros_overridden": (0, "    return false;\n}\n"
                                        "#[macro_export]\n"
                                        "macro_rules! assert_eq { ($($t:tt)*) => {} }\n"
                                        "macro_rules! assert { ($($t:tt)*) => {} }\n", {FAILED}),
        "shadow_vec": (14, "    unimplemented!()\n}\npub struct Vec<T>(std::vec::Vec<T>);\n"
                           "impl<T, U> PartialEq<U> for Vec<T> {\n"
                           "    fn eq(&self, _: &U) -> bool { true }\n}\n"
                           "impl<T> std::fmt::Debug for Vec<T> {\n"
                           "    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result "
                           "{ write!(f, \"v\") }\n}\n", {COMPILE_ERROR}),
        "read_nonce_at_compile_time": (0, "    println!(\"{}\", env!(\"CODEGEEX_NONCE\"));\n"
                                          "    println!(\"{}\", include_str!(\"main.rs\"));\n"
                                          "    std::process::exit(0);\n}\n", {COMPILE_ERROR}),
    },
}


@pytest.fixture(scope="module")
def problems():
    missing = [lang for lang in HUMANEVAL_LANGUAGES
               if not (humaneval_dir() / f"humaneval_{lang}.jsonl.gz").exists()]
    if missing:
        pytest.skip(f"HumanEval-X data missing in {humaneval_dir()} for {missing}")
    return {lang: load_problems(lang) for lang in HUMANEVAL_LANGUAGES}


@pytest.fixture(scope="module")
def executor():
    ex = Executor(list(HUMANEVAL_LANGUAGES), workers=2, limits=StepLimits())
    yield ex
    ex.close()


def _require(executor, language):
    if language in executor.skipped:
        message = f"{language} toolchain unusable: {executor.skipped[language]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _task(problems, language, number):
    return next(p for p in problems[language].values() if p["task_id"].endswith(f"/{number}"))


@pytest.mark.parametrize("language", list(HUMANEVAL_LANGUAGES))
def test_hostile_samples_are_not_passed(executor, problems, language):
    _require(executor, language)
    base = _task(problems, language, 0)
    canonical = executor.run(language, assemble_program(
        language, base, code_prefix(base, language), base["canonical_solution"]))
    assert canonical.status == PASSED, canonical.detail
    wrong = {}
    for name, (number, completion, allowed) in HOSTILE[language].items():
        problem = _task(problems, language, number)
        outcome = executor.run(language, assemble_program(
            language, problem, code_prefix(problem, language), completion))
        if outcome.status not in allowed:
            wrong[name] = (outcome.status, outcome.detail[-600:])
    assert wrong == {}


@pytest.mark.parametrize("language", list(HUMANEVAL_LANGUAGES))
def test_verdict_needs_this_samples_nonce(language):
    runner = RUNNERS[language].__new__(RUNNERS[language])
    check = Check("f" * 32, ("TestX",) if language == "go" else ())

    def result(stdout, code=0):
        return RunResult(code, stdout, "", False, False, 0.1)

    go_lines = "=== RUN   TestX\n--- PASS: TestX (0.00s)\n" if language == "go" else ""
    assert runner.verdict(result(go_lines + marker_line("f" * 32) + "\n"), check)[0]
    assert not runner.verdict(result(go_lines + marker_line("e" * 32) + "\n"), check)[0]
    assert not runner.verdict(result(go_lines + "PASS\n"), check)[0]
    assert not runner.verdict(result(go_lines + marker_line("f" * 32), code=1), check)[0]


def test_go_verdict_needs_every_test_reported_passed():
    runner = RUNNERS["go"].__new__(RUNNERS["go"])
    check = Check("a" * 32, ("TestA", "TestB"))
    marker = marker_line("a" * 32) + "\n"

    def verdict(lines):
        return runner.verdict(RunResult(0, lines + marker, "", False, False, 0.1), check)

    assert verdict("--- PASS: TestA (0.00s)\n--- PASS: TestB (0.01s)\nPASS\n")[0]
    assert not verdict("--- PASS: TestA (0.00s)\nPASS\n")[0]
    assert not verdict("--- PASS: TestA (0.00s)\n--- FAIL: TestB (0.00s)\n"
                       "--- PASS: TestB (0.00s)\n")[0]


def test_python_answers_decode_to_plain_builtins_only():
    value = {"a": [1, 2.5, (3, frozenset({4})), {5}], 7: None, (1, 2): b"x", "c": 1 + 2j,
             "big": 10 ** 50, "t": True}
    assert decode(encode(value)) == value
    assert type(decode(encode(True))) is bool and type(decode(encode(1))) is int

    class Liar(int):
        def __eq__(self, other):
            return True

    assert decode(encode(Liar(3))) == 3 and type(decode(encode(Liar(3)))) is int
    opaque = decode(encode(object()))
    assert isinstance(opaque, Opaque) and opaque != opaque.type_name and opaque != 0
    for malformed in (["I", 3], ["X"], ["L", [["Q"]]], ["D", [[["L", []], ["N"]]]], "x", []):
        with pytest.raises((ValueError, TypeError)):
            decode(malformed)


def test_python_entry_point_is_the_checked_function(problems):
    assert python_entry_point(problems["python"]["Python/32"]) == "find_zero"
    with pytest.raises(ValueError, match="Python/x"):
        python_entry_point({"task_id": "Python/x", "test": "assert True\n"})


def test_runner_rejects_raw_source(tmp_path):
    runner = RUNNERS["python"](StepLimits(), tmp_path)
    with pytest.raises(TypeError, match="assemble_program"):
        runner.write_files(tmp_path, textwrap.dedent("print('hi')\n"))
