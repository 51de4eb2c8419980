"""Stop rules, prompts, program assembly and the resumable JSONL files (no toolchains needed)."""

import json

import pytest

from codegeex_ms.humaneval.assembly import (assemble_program, cpp_test_unit, go_test_file,
                                            rust_harness_crate, rust_sample_crate)
from codegeex_ms.humaneval.steps import JsonlWriter, read_records
from codegeex_ms.data.languages import HUMANEVAL_LANGUAGES, get_language, parse_language_list
from codegeex_ms.humaneval.problems import (Track, code_prefix, generation_input, humaneval_dir,
                                            load_problems, model_input, track_code_prefix,
                                            translation_input)
from codegeex_ms.humaneval.stopping import (is_finished, make_stop_fn, stop_index,
                                            truncate_completion)

# Canonical solutions that define helper functions after the target function: the reference stop
# rule (which ends the completion with the function) cuts those helpers off.
HELPERS_AFTER_FUNCTION = {"CPP/94", "Go/72", "Rust/10", "Rust/32", "Rust/38", "Rust/50",
                          "Rust/137", "Rust/145"}


@pytest.fixture(scope="module")
def problems():
    missing = [lang for lang in HUMANEVAL_LANGUAGES
               if not (humaneval_dir() / f"humaneval_{lang}.jsonl.gz").exists()]
    if missing:
        pytest.skip(f"HumanEval-X data missing in {humaneval_dir()} for {missing}")
    return {lang: load_problems(lang) for lang in HUMANEVAL_LANGUAGES}


def test_language_names():
    assert get_language("C++").key == "cpp" and get_language("JavaScript").key == "js"
    assert parse_language_list("all") == list(HUMANEVAL_LANGUAGES)
    assert parse_language_list("python, c++,python") == ["python", "cpp"]
    with pytest.raises(ValueError, match="unknown HumanEval-X language 'cobol'"):
        get_language("cobol")


def test_python_stop_rule():
    body = "    x = 1\n\n    return x\n"
    for tail in ["def g():\n    pass\n", "class A:\n", "if __name__:\n", "# note\n",
                 "print(f(1))\n", "assert f(1) == 1\n"]:
        text = body + tail
        assert stop_index(text, "python") == len(body)
        assert truncate_completion(text, "python") == body
        assert is_finished(text, "python")
    # indented code, blank lines and tabs never stop it
    assert not is_finished("    if a:\n\treturn 1\n\n    ", "python")
    assert truncate_completion("    return 1", "python") == "    return 1"
    # a partial non-indented line is already a stop (what the decoder sees token by token)
    assert make_stop_fn("python")("    return 1\nd")


def test_brace_stop_rule():
    text = "    if (a) { b(); }\n    return c;\n}\n\nint main() { }"
    end = text.index("}\n\n") + 1
    for lang in ("cpp", "js", "go", "rust"):
        assert stop_index(text, lang) == end
        assert truncate_completion(text, lang) == text[:end]
    assert not is_finished("    if (a) { b(); }\n", "cpp")
    # Java: the method closes, then the class the prompt opened must close too
    assert truncate_completion("        return 1;\n    }\n    void g() {}\n}", "java") == \
        "        return 1;\n    }\n}"
    # count('{') + 1 == count('}') of the reference, checked as a prefix property
    for i in range(1, len(text) + 1):
        prefix = text[:i]
        assert is_finished(prefix, "go") == (i >= end)


def test_stop_rule_on_canonical_solutions(problems):
    """The rule cuts every canonical solution plus trailing junk back to the solution, except
    the listed ones that put helper functions after the function."""
    junk = {"python": "\n\ndef extra():\n    pass\n", "cpp": "\nint extra() { return 0; }\n",
            "java": "\nclass Extra { }\n", "js": "\nconst extra = () => { }\n",
            "go": "\nfunc extra() { }\n", "rust": "\nfn extra() { }\n"}
    cut = []
    for lang, probs in problems.items():
        for task_id, p in probs.items():
            sol = p["canonical_solution"]
            got = truncate_completion(sol + junk[lang], lang)
            if got.rstrip() != sol.rstrip():
                cut.append(task_id)
    assert set(cut) == HELPERS_AFTER_FUNCTION


def test_generation_prompt(problems):
    p = problems["cpp"]["CPP/0"]
    assert generation_input(p, "cpp") == "// language: C++\n" + p["prompt"]
    rust = problems["rust"]["Rust/0"]
    prefix = code_prefix(rust, "rust")
    assert prefix == rust["prompt"] + rust["declaration"]
    assert prefix.rstrip().endswith("-> bool{")        # the signature the completion continues
    assert generation_input(problems["python"]["Python/3"], "python").startswith(
        "# language: Python\nfrom typing import List")


def test_translation_prompt(problems):
    src, tgt = problems["python"]["Python/2"], problems["java"]["Java/2"]
    text = translation_input(src, "python", tgt, "java")
    assert text == ("code translation\nPython:\n" + src["declaration"]
                    + src["canonical_solution"].rstrip() + "\nJava:\n" + tgt["declaration"])
    track = Track("java", "python")
    assert track.name == "python-to-java" and Track.parse(track.name) == track
    assert model_input(track, tgt, src) == text
    # the program continues the target's prompt, which keeps helpers the declaration lacks
    go = problems["go"]["Go/38"]
    assert "func EncodeCyclic" in track_code_prefix(Track("go", "python"), go)
    assert "func EncodeCyclic" not in go["declaration"]
    assert track_code_prefix(Track("rust", "cpp"), problems["rust"]["Rust/0"]) == \
        code_prefix(problems["rust"]["Rust/0"], "rust")
    with pytest.raises(ValueError, match="both 'go'"):
        Track("go", "go")


def test_assembly_python_cpp_java_js(problems):
    p = problems["python"]["Python/0"]
    prog = assemble_program("python", p, p["prompt"], "    return False\n")
    assert prog.language == "python" and prog.problem is p
    src = prog.source                      # the sample's own unit; the runner adds the tests
    assert src.startswith("import math\n") and "import numpy\n" in src
    assert src.endswith(p["prompt"] + "    return False\n\n") and p["test"] not in src
    c = problems["cpp"]["CPP/0"]
    src = assemble_program("cpp", c, c["prompt"], "X").source
    assert "#include<algorithm>\n" in src and "#include<vector>\n" not in src.split(c["prompt"])[0]
    assert "int main" not in src and "int codegeex_tests()" in cpp_test_unit(c)
    j = problems["java"]["Java/0"]
    assert assemble_program("java", j, j["prompt"], "X").source == j["prompt"] + "X"


def test_go_imports_follow_usage(problems):
    g = problems["go"]["Go/0"]      # prompt imports "math"; the test setup imports testing/assert
    body = "    return math.Abs(strings.Count(\"fmt.x\", \"a\")) > 0 // sort.Ints\n}\n"
    prog = go_test_file(g, assemble_program("go", g, code_prefix(g, "go"), body).source)
    assert prog.startswith(g["test_setup"])
    block = prog[len(g["test_setup"]):].split(")\n", 1)[0]
    assert '"math"' in block and '"strings"' in block
    assert '"fmt"' not in block and '"sort"' not in block   # only in a string / comment
    assert g["import"] not in prog                          # the prompt's own block is replaced
    # test setups that import math already must not import it twice
    g2 = next(p for p in problems["go"].values() if '"math"' in p["test_setup"])
    prog = go_test_file(g2, assemble_program("go", g2, code_prefix(g2, "go"),
                                              "    return math.Sqrt(2)\n}\n").source)
    assert prog.count('"math"') == 1


def test_assembly_rust_sample_and_harness_crates(problems):
    r = problems["rust"]["Rust/0"]
    sample = rust_sample_crate(r, assemble_program("rust", r, code_prefix(r, "rust"), "X").source)
    assert "pub fn has_close_elements(" in sample and sample.endswith("X")
    harness = rust_harness_crate(r)        # tests call the std macros by path, via a forwarder
    assert "::std::assert_eq!(has_close_elements(" in harness
    assert "::sample::has_close_elements(numbers, threshold)" in harness


def test_jsonl_resume_after_torn_write(tmp_path):
    path = tmp_path / "s.jsonl"
    with JsonlWriter(path) as w:
        w.write({"a": 1})
        w.write({"a": 2})
    with open(path, "a") as f:
        f.write('{"a": 3, "tor')                     # interrupted mid-line
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    with JsonlWriter(path) as w:
        w.write({"a": 4})
    assert [r["a"] for r in read_records(path)] == [1, 2, 4]
    with open(path, "a") as f:
        f.write('{"a": 5}')                          # complete record, newline not yet written
    assert [r["a"] for r in read_records(path)] == [1, 2, 4, 5]
    with JsonlWriter(path) as w:
        w.write({"a": 6})
    assert [json.loads(x)["a"] for x in path.read_text().splitlines()] == [1, 2, 4, 5, 6]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:2: not a JSON record"):
        read_records(path)
    assert read_records(tmp_path / "absent.jsonl") == []
