"""Turning code prefix + completion + a problem's tests into the units a runner compiles and runs.

Verdicts are decided by the harness, not by the sample. The threat model, the defences, and what
stays out of scope:

Adversary
    The completion: arbitrary code in the target language, placed after the prompt. HumanEval-X
    tests call the completed function directly, so sample and tests share a process (except in
    Python, see below); the sandbox (``sandbox.py``) bounds what the code can do to the host.
    The adversary wins if a run is judged ``passed`` although the problem's tests did not all run
    and succeed.

Verdict
    ``passed`` needs, together: exit status 0, no timeout or output overflow, and a completion
    marker ``CODEGEEX-TESTS-PASSED <nonce>`` on stdout, where the nonce is 128 random bits drawn
    by the harness for this one sample (:func:`new_nonce`) and printed by harness code only after
    the last test returned. Go additionally needs the test binary's own ``-test.v`` result lines
    to report every test function of the problem passed and none failed. Exiting early with status 0 (``sys.exit(0)``,
    ``os._exit(0)``, ``process.exit(0)``, ``System.exit(0)``/``halt(0)`` in a static initializer
    or shutdown hook, ``exit(0)`` in a C++ global constructor or a Rust ``.init_array`` entry, a Go
    ``TestMain`` that never calls ``m.Run``), rewriting the status afterwards (``atexit``),
    printing a framework's success line: none of these produces the marker.

Where the nonce lives (it must be out of the sample's reach until the tests are over)
    Python and JavaScript: in ``harness.json``, which the trusted driver reads and deletes before
    any sample code runs. C++: a tiny ``marker.c`` compiled in the link step, after the sample's
    compile, with the nonce on that step's command line (so ``#include`` in the sample cannot
    read it), linked as a hidden symbol the sample's library cannot bind to. Rust: the harness
    crate is compiled after the sample crate, with the nonce in that step's environment only (so
    ``env!``/``include_str!`` in the sample cannot read it). Java: a file that ``Main``
    reads and deletes before the sample's class is initialised; it is then held only in
    primitive locals. Go: a literal in a separate ``_test.go`` file; a completion cannot import
    ``os``, ``io``, ``embed`` or ``unsafe`` (imports precede all code in Go, and the harness adds
    only the listed packages), so it cannot read files.

Assertion helpers the sample cannot shadow
    Python: the sample runs in a *child process*; the tests run in the parent, against the
    prompt's own helper functions and pristine builtins and modules, and call the sample over a
    pipe whose answers are decoded into plain built-in values (so an object "equal to
    everything", a shadowed ``AssertionError``, patched builtins or modules never reach the
    tests). The parent is made non-dumpable, so the child cannot read its memory.
    JavaScript: the sample runs in its own V8 realm (``vm`` context) with no ``require``,
    ``process`` or ``console`` of the host; results are copied into plain host-realm values;
    the tests get their own ``console.assert`` that throws. C++: the sample is a separate
    translation unit built as a shared library that comes *last* in the symbol search order (so
    it cannot interpose ``__assert_fail``, ``memcmp``, ``operator==`` instantiations or any other
    symbol the tests use), macros such as ``#define main`` stay in its own unit, and the tests'
    ``assert`` is the harness's, which calls ``_exit(1)``. Java: ``Main`` is compiled against the
    sample's ``Solution`` class alone (a sample class named ``Arrays`` or ``AssertionError``
    cannot shadow ``java.util``/``java.lang``). Rust: the tests live in a harness module placed
    *before* the sample (``macro_rules!`` scope is textual) that calls ``::std::assert*!`` by
    path, uses the prompt's trusted helpers, and reaches the sample only through forwarders whose
    signatures are re-resolved in the harness's scope (a sample that shadows ``Vec`` or ``bool``
    no longer type-checks). Go: sample and test share a package, where redefinition is a compile
    error; the harness's ``TestMain`` makes a sample's own ``TestMain`` a compile error too.

Out of scope (stated, not defended)
    Code that reads or rewrites the harness's memory or binary from inside the same process:
    raw pointers/``unsafe``/``/proc/self/mem`` in C++ and Rust, a V8 or JVM heap inspection
    (e.g. a JVM heap dump), i.e. reverse-engineering this harness specifically. Such code can
    only affect its own sample's verdict; the sandbox confines it otherwise. Problems whose
    dataset tests are empty (Rust/32's are commented out) pass any code that compiles.
"""

import re
import secrets
from dataclasses import dataclass

from ..data.languages import get_language

# Prepended to every Python program (reference section 7), plus the common aliases.
PYTHON_IMPORTS = [
    "import math", "import re", "import sys", "import copy", "import datetime", "import itertools",
    "import collections", "import heapq", "import statistics", "import functools",
    "import hashlib", "import numpy", "import numpy as np", "import string", "import typing",
    "from typing import *", "from collections import *",
]

# Prepended to a C++ program unless the prefix already has them.
CPP_INCLUDES = [
    "#include<stdlib.h>", "#include<algorithm>", "#include<math.h>", "#include<stdio.h>",
    "#include<vector>", "#include<string>", "#include<climits>", "#include<cstring>",
    "#include<iostream>",
]

# Go packages a completion may use without importing them (Go rejects unused imports, so each is
# imported only when the code refers to it).
GO_PACKAGES = ["math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort",
               "math/rand", "crypto/md5", "unicode"]

MARKER = "CODEGEEX-TESTS-PASSED"

_GO_IMPORT_PATH = re.compile(r'"([^"]+)"')
_GO_NOISE = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|`[^`]*`|\'(?:\\.|[^\'\\\n])*\'',
                       re.S)


def new_nonce() -> str:
    """128 random bits as 32 lowercase hex digits (one per executed sample)."""
    return secrets.token_hex(16)


def marker_line(nonce: str) -> str:
    """The line harness code prints after the last test passed."""
    return f"{MARKER} {nonce}"


@dataclass(frozen=True)
class Program:
    """One sample to execute.

    ``language``: language key. ``source``: the sample's own compilation unit (prefix +
    completion, with the standard Python imports / C++ includes). ``problem``: the dataset
    record whose ``test`` (and prompt/declaration, for trusted helpers) the runner uses.
    """

    language: str
    source: str
    problem: dict


def assemble_program(language: str, problem: dict, prefix: str, completion: str) -> Program:
    """The :class:`Program` of one sample.

    ``prefix`` is the code the completion continues (see ``prompts.code_prefix``). Python gets the
    standard imports and C++ the usual includes; the tests are added by the language's runner.
    """
    key = get_language(language).key
    code = prefix + completion
    if key == "python":
        code = "\n".join(PYTHON_IMPORTS) + "\n" + code + "\n"
    elif key == "cpp":
        code = "".join(line + "\n" for line in CPP_INCLUDES if line not in prefix) + "\n" + code
    return Program(key, code, problem)


# ---- Python ------------------------------------------------------------------------------------

def python_entry_point(problem: dict) -> str:
    """Name of the function the tests check: the argument of the test's final ``check(...)``."""
    match = re.search(r"^check\((\w+)\)\s*$", problem["test"].strip(), re.M)
    if not match:
        raise ValueError(f"{problem['task_id']}: test does not end with check(<name>)")
    return match.group(1)


# ---- C++ ---------------------------------------------------------------------------------------

_CPP_ASSERT_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*[<"](?:assert\.h|cassert)[>"][^\n]*$'
                                 r'|^[ \t]*#[ \t]*undef[ \t]+NDEBUG[^\n]*$', re.M)
_CPP_HEADER = re.compile(r"^(?![ \t#])([^\n;{}()]*?\b\w+\s*\([^;{}]*\))\s*\{", re.M)
_CPP_MAIN = re.compile(r"\bint\s+main\s*\(\s*(?:void\s*)?\)")

CPP_TEST_DRIVER = r"""
#include <unistd.h>
#include <string.h>
namespace {
[[noreturn]] void codegeex_assert_failed(const char* expr, int line) {
    static const char head[] = "assertion failed (test line ";
    char buf[32]; int n = 0; char digits[16]; int d = 0;
    if (line <= 0) line = 0;
    do { digits[d++] = char('0' + line % 10); line /= 10; } while (line && d < 15);
    while (d) buf[n++] = digits[--d];
    write(2, head, sizeof head - 1); write(2, buf, n); write(2, "): ", 3);
    write(2, expr, strlen(expr)); write(2, "\n", 1);
    _exit(1);
}
}
#undef assert
#define assert(e) ((e) ? (void)0 : codegeex_assert_failed(#e, __LINE__))
"""


def cpp_test_unit(problem: dict) -> str:
    """The C++ test translation unit: includes, the declaration's helpers and prototypes, the
    dataset test (its ``main`` renamed, ``assert`` replaced), and a ``main`` that runs the tests
    and prints the marker of :func:`cpp_marker_unit`. It holds no nonce, so one compiled object
    serves every sample of a problem."""
    headers = list(_CPP_HEADER.finditer(problem["declaration"]))
    if not headers:
        raise ValueError(f"{problem['task_id']}: no function header in the C++ declaration")
    last = headers[-1]  # the entry point (some declarations go on into its body)
    prototypes = problem["declaration"][:last.start()] + last.group(1) + ";\n"
    test = _CPP_ASSERT_INCLUDE.sub("", problem["test"])
    test, n = _CPP_MAIN.subn("int codegeex_tests()", test)
    if n != 1:
        raise ValueError(f"{problem['task_id']}: test has {n} main functions, expected 1")
    body_end = test.rstrip().rfind("}")
    test = test[:body_end] + "return 0;\n}\n"
    includes = "".join(line + "\n" for line in CPP_INCLUDES)
    return (includes + prototypes + "\n" + CPP_TEST_DRIVER + "\n" + test + "\n"
            'extern "C" __attribute__((visibility("hidden"))) const char codegeex_marker[];\n'
            "int main() {\n    codegeex_tests();\n"
            "    size_t n = strlen(codegeex_marker);\n"
            "    if (write(1, codegeex_marker, n) != (ssize_t)n)\n"
            "        _exit(1);\n"
            "    _exit(0);\n}\n")


def cpp_marker_unit() -> str:
    """``marker.c``: the marker line, nonce from macro ``CODEGEEX_NONCE`` (a string literal),
    as a hidden symbol of the test executable (the sample's library cannot bind to it)."""
    return ('__attribute__((visibility("hidden"))) extern const char codegeex_marker[];\n'
            '__attribute__((visibility("hidden"))) const char codegeex_marker[] = '
            f'"\\n{MARKER} " CODEGEEX_NONCE "\\n";\n')


# ---- Java --------------------------------------------------------------------------------------

_JAVA_MAIN_CLASS = re.compile(r"\bpublic\s+class\s+Main\b")
_JAVA_SOLUTION = re.compile(r"^((?:public\s+)?)class\s+Solution\b", re.M)
JAVA_SAMPLE_PACKAGE = "codegeex_sample"


def java_sample_unit(problem: dict, source: str) -> str:
    """``Solution.java``: the sample in package ``codegeex_sample``, class ``Solution`` public, so
    that the tests (default package) see no other class of the sample by a simple name."""
    text, n = _JAVA_SOLUTION.subn("public class Solution", source, count=1)
    if n != 1:
        raise ValueError(f"{problem['task_id']}: no class Solution in the Java sample")
    return f"package {JAVA_SAMPLE_PACKAGE};\n" + text


def java_test_unit(problem: dict, nonce_file: str) -> str:
    """``Main.java``: the dataset test as class ``CodegeexTests`` and a ``Main`` that reads and
    deletes ``nonce_file`` (before the sample's class is touched), runs the tests, prints the
    marker and halts."""
    test, n = _JAVA_MAIN_CLASS.subn("class CodegeexTests", problem["test"])
    if n != 1:
        raise ValueError(f"{problem['task_id']}: test has no public class Main")
    imports = "".join(line + "\n" for line in problem["declaration"].splitlines()
                      if line.startswith("import "))
    return (imports + f"import {JAVA_SAMPLE_PACKAGE}.Solution;\n" + test + "\n"
            "public class Main {\n"
            "    public static void main(String[] args) throws Throwable {\n"
            f"        java.nio.file.Path path = java.nio.file.Paths.get(\"{nonce_file}\");\n"
            "        byte[] raw = java.nio.file.Files.readAllBytes(path);\n"
            "        java.nio.file.Files.delete(path);\n"
            "        long hi = 0, lo = 0;\n"
            "        for (int i = 0; i < 32; i++) {\n"
            "            long digit = Character.digit(raw[i], 16);\n"
            "            if (i < 16) hi = (hi << 4) | digit; else lo = (lo << 4) | digit;\n"
            "            raw[i] = 0;\n"
            "        }\n"
            "        CodegeexTests.main(args);\n"
            "        String hex = String.format(\"%016x%016x\", hi, lo);\n"
            f"        byte[] out = (\"\\n{MARKER} \" + hex + \"\\n\").getBytes();\n"
            "        java.io.FileOutputStream stdout = new java.io.FileOutputStream("
            "java.io.FileDescriptor.out);\n"
            "        stdout.write(out);\n"
            "        stdout.flush();\n"
            "        Runtime.getRuntime().halt(0);\n"
            "    }\n"
            "}\n")


# ---- JavaScript --------------------------------------------------------------------------------

_JS_HEADER = re.compile(r"^(?:const|let|var)\s+(\w+)\s*=\s*(?:async\s*)?\(?[^\n]*=>\s*\{\s*$"
                        r"|^(?:async\s+)?function\s*(\w+)\s*\([^\n]*\{\s*$", re.M)


def js_harness_parts(problem: dict) -> tuple:
    """(helpers, entry point name) of a JavaScript problem: the declaration's code before the
    entry point's header (trusted helpers the tests may call) and the entry point's name."""
    decl = problem["declaration"]
    headers = list(_JS_HEADER.finditer(decl))
    if not headers:
        raise ValueError(f"{problem['task_id']}: no function header in the JavaScript declaration")
    last = headers[-1]
    return decl[:last.start()], last.group(1) or last.group(2)


# ---- Go ----------------------------------------------------------------------------------------

def _go_imports(problem: dict, code: str) -> list:
    """Import paths ``code`` refers to (as ``pkg.``) and the test setup does not import already."""
    setup = set(_GO_IMPORT_PATH.findall(problem["test_setup"]))
    candidates = dict.fromkeys(GO_PACKAGES + _GO_IMPORT_PATH.findall(problem.get("import", "")))
    bare = _GO_NOISE.sub(" ", code)
    return [path for path in candidates if path not in setup
            and re.search(r"(?<![\w.])" + re.escape(path.rsplit("/", 1)[-1]) + r"\.", bare)]


def go_test_file(problem: dict, source: str) -> str:
    """``main_test.go``: the test setup, the imports the code uses, the sample, the tests."""
    prefix = source
    if problem.get("import"):
        prefix = prefix.replace(problem["import"], "")
    imports = _go_imports(problem, prefix + "\n" + problem["test"])
    block = "import (\n" + "".join(f'    "{p}"\n' for p in imports) + ")\n" if imports else ""
    return problem["test_setup"] + "\n" + block + prefix + "\n" + problem["test"]


def go_test_names(problem: dict) -> list:
    """Test function names of a Go problem's tests."""
    return re.findall(r"^func\s+(Test\w*)\s*\(\s*\w+\s+\*testing\.T\s*\)", problem["test"], re.M)


def go_harness_file(nonce: str) -> str:
    """``codegeex_harness_test.go``: a ``TestMain`` that prints the marker iff ``m.Run`` passed."""
    return ('package main\n\nimport (\n    "os"\n    "testing"\n)\n\n'
            "func TestMain(m *testing.M) {\n    code := m.Run()\n    if code == 0 {\n"
            f'        os.Stdout.WriteString("\\n{MARKER} {nonce}\\n")\n'
            "    }\n    os.Exit(code)\n}\n")


# ---- Rust --------------------------------------------------------------------------------------

_RUST_FN = re.compile(r"^(\s*)(pub(?:\([^)]*\))?\s+)?fn\s+(\w+)", re.M)
_RUST_ASSERT = re.compile(r"(?<![\w:!])(assert|assert_eq|assert_ne|debug_assert|debug_assert_eq|"
                          r"debug_assert_ne|panic)!")
_RUST_TYPE = re.compile(r"^\s*(?:pub\s+)?(?:enum|struct|type|trait)\s+(\w+)", re.M)
_RUST_TEST_FN = re.compile(r"#\[test\]\s*fn\s+(\w+)\s*\(\s*\)")


def _strip_rust_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def _split_rust_params(params: str) -> list:
    """Parameter names of a Rust parameter list (``mut`` dropped)."""
    names, depth, current = [], 0, ""
    for ch in params + ",":
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        if ch == "," and depth == 0:
            if current.strip():
                names.append(current.split(":", 1)[0].replace("mut ", "").strip())
            current = ""
        else:
            current += ch
    return names


def _rust_declared(problem: dict) -> list:
    return [m.group(3) for m in _RUST_FN.finditer(_strip_rust_comments(problem["declaration"]))]


def rust_completion_items(problem: dict) -> list:
    """Items the tests need that the declaration does not declare (in a few problems the
    declaration ends with a helper and the entry point is written by the completion; Rust/137's
    return type is defined by the completion), found in the canonical solution: functions the
    tests call, and types the tests or the declaration name."""
    declared = set(_rust_declared(problem))
    test = _strip_rust_comments(problem["test"])
    canonical = _strip_rust_comments(problem.get("canonical_solution", ""))
    used = test + "\n" + _strip_rust_comments(problem["declaration"])
    functions = [name for name in dict.fromkeys(m.group(3) for m in _RUST_FN.finditer(canonical))
                 if name not in declared and re.search(rf"(?<![\w:]){name}\s*\(", test)]
    types = [name for name in dict.fromkeys(_RUST_TYPE.findall(canonical))
             if re.search(rf"(?<![\w:]){name}\b", used)]
    return functions + types


def rust_sample_crate(problem: dict, source: str) -> str:
    """The sample as a library crate: the declaration's functions made ``pub`` (in the trusted
    prefix only, by name), and the first definition of each of :func:`rust_completion_items`,
    so the harness crate can use them."""
    names = set(_rust_declared(problem))
    decl_end = source.find(problem["declaration"])
    head_len = decl_end + len(problem["declaration"]) if decl_end >= 0 else 0
    head, tail = source[:head_len], source[head_len:]
    head = _RUST_FN.sub(lambda m: m.group(0) if m.group(2) or m.group(3) not in names
                        else f"{m.group(1)}pub fn {m.group(3)}", head)
    for name in rust_completion_items(problem):
        tail = re.sub(rf"^(\s*)(?:pub\s+)?(fn|enum|struct|type|trait)\s+{name}\b",
                      rf"\1pub \2 {name}", tail, count=1, flags=re.M)
    return "#![allow(unused, dead_code, non_snake_case)]\n" + head + tail


def _rust_param_list(signature: str) -> str:
    """The text inside the first balanced parentheses of a function signature."""
    start = signature.index("(")
    depth = 0
    for i in range(start, len(signature)):
        depth += {"(": 1, ")": -1}.get(signature[i], 0)
        if depth == 0:
            return signature[start + 1:i]
    raise ValueError(f"unbalanced parameter list in {signature!r}")


def rust_harness_crate(problem: dict) -> str:
    """The test binary's crate: ``main`` runs each test function of the problem in order, then
    prints the marker with the nonce of compile-time ``CODEGEEX_NONCE``. Tests sit in a module
    that sees the declaration's ``use`` lines and helpers, and the sample only through a
    forwarder to ``::sample::<entry>`` with the declaration's signature."""
    decl = problem["declaration"].rstrip()
    if not decl.endswith("{"):
        raise ValueError(f"{problem['task_id']}: declaration does not end with a function header")
    header = list(_RUST_FN.finditer(decl))[-1]
    entry = header.group(3)
    sig = decl[header.start():].lstrip()
    sig = re.sub(r"^pub(?:\([^)]*\))?\s+", "", sig)
    params = _rust_param_list(sig)
    # Items only the completion defines have no trusted definition: imported as they are.
    forwarder = "".join(f"pub use ::sample::{name};\n" for name in rust_completion_items(problem))
    forwarder += decl[:header.start()] + "pub " + sig + \
        f"\n    ::sample::{entry}({', '.join(_split_rust_params(params))})\n}}\n"
    test = _strip_rust_comments(problem["test"])
    test_fns = _RUST_TEST_FN.findall(test)
    test = test.replace("#[cfg(test)]", "").replace("#[test]", "")
    test = _RUST_ASSERT.sub(lambda m: f"::std::{m.group(1)}!", test)
    test = re.sub(r"\bmod\s+tests\s*\{", "pub mod tests {\n    pub fn codegeex_run_all() {"
                  + "".join(f" {name}();" for name in test_fns) + " }\n", test, count=1)
    runner = ("tests::codegeex_run_all();" if "pub mod tests" in test else "")
    return ("#![allow(unused, dead_code, non_snake_case, deprecated)]\n"
            "fn main() {\n"
            f"    codegeex_harness::run();\n"
            "    use ::std::io::Write;\n"
            f"    let marker = ::std::concat!(\"\\n{MARKER} \", ::std::env!(\"CODEGEEX_NONCE\"), "
            "\"\\n\");\n"
            "    let mut out = ::std::io::stdout();\n"
            "    if out.write_all(marker.as_bytes()).and_then(|_| out.flush()).is_err() {\n"
            "        ::std::process::exit(1);\n    }\n"
            "    ::std::process::exit(0);\n}\n"
            "mod codegeex_harness {\n"
            + forwarder + "\n" + test + "\n"
            f"pub fn run() {{ {runner} }}\n"
            "}\n")
