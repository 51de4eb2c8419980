"""Assembling an executable test program from code prefix + completion + tests (reference section 7)."""

import re

from .languages import get_language

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

_GO_IMPORT_PATH = re.compile(r'"([^"]+)"')
_GO_NOISE = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|`[^`]*`|\'(?:\\.|[^\'\\\n])*\'',
                       re.S)


def _go_imports(problem: dict, code: str) -> list:
    """Import paths ``code`` refers to (as ``pkg.``) and the test setup does not import already."""
    setup = set(_GO_IMPORT_PATH.findall(problem["test_setup"]))
    candidates = dict.fromkeys(GO_PACKAGES + _GO_IMPORT_PATH.findall(problem.get("import", "")))
    bare = _GO_NOISE.sub(" ", code)
    return [path for path in candidates if path not in setup
            and re.search(r"(?<![\w.])" + re.escape(path.rsplit("/", 1)[-1]) + r"\.", bare)]


def assemble_program(language: str, problem: dict, prefix: str, completion: str) -> str:
    """Source text of the test program for one sample.

    ``prefix`` is the code the completion continues (see ``prompts.code_prefix``); the problem's
    ``test`` follows the completion. Python gets the standard imports, C++ the usual includes, Go
    a ``package main`` test file whose imports are the test setup's plus the packages the code
    uses, Rust an empty ``main`` ahead of the code (it is compiled as a test crate).
    """
    key = get_language(language).key
    test = problem["test"]
    if key == "python":
        return "\n".join(PYTHON_IMPORTS) + "\n" + prefix + completion + "\n" + test + "\n"
    if key == "cpp":
        includes = "".join(line + "\n" for line in CPP_INCLUDES if line not in prefix)
        return includes + "\n" + prefix + completion + "\n" + test
    if key in ("java", "js"):
        return prefix + completion + "\n" + test
    if key == "go":
        if problem.get("import"):
            prefix = prefix.replace(problem["import"], "")
        code = prefix + completion
        imports = _go_imports(problem, code)
        block = "import (\n" + "".join(f'    "{p}"\n' for p in imports) + ")\n" if imports else ""
        return problem["test_setup"] + "\n" + block + code + "\n" + test
    if key == "rust":
        return "fn main() {}\n" + prefix + completion + "\n" + test
    raise AssertionError(key)
