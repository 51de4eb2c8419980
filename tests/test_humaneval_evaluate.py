"""End to end through ``python -m codegeex_ms.evaluate`` with an injected generate_fn: exact
pass@k, report files, separate steps, and resuming after an interruption."""

import json
from collections import Counter
from math import comb

import pytest

from codegeex_ms import evaluate
from codegeex_ms.humaneval.problems import humaneval_dir, load_problems

N = 4
# problem number -> how many of its N samples are correct (the others return a wrong value)
CORRECT = {0: 4, 1: 1, 2: 0}


def _expected(k):
    """Mean over problems of 1 - C(N-c, k)/C(N, k)."""
    return sum(1 - comb(N - c, k) / comb(N, k) for c in CORRECT.values()) / len(CORRECT)


class FakeGenerator:
    """generate_fn answering the i-th request for a problem's prompt with its canonical solution
    when i < CORRECT[problem], else a wrong one; appends junk after the function so the stop
    rule must cut it. ``fail_after`` raises after that many calls (an interrupted run)."""

    def __init__(self, fail_after=None):
        problems = load_problems("python")
        self.by_prompt = {}
        for number in CORRECT:
            p = problems[f"Python/{number}"]
            self.by_prompt["# language: Python\n" + p["prompt"]] = (number, p)
        self.seen = Counter()
        self.calls = []
        self.fail_after = fail_after

    def __call__(self, prompts, *, max_new_tokens, sampling, seed, stop_fn):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append({"n": len(prompts), "temperature": sampling.temperature, "top_p": sampling.top_p,
                           "seed": seed, "max_new_tokens": max_new_tokens})
        out = []
        for prompt in prompts:
            number, p = self.by_prompt[prompt]
            i = self.seen[number]
            self.seen[number] += 1
            body = p["canonical_solution"] if i < CORRECT[number] else "    return None\n"
            text = body + "\n\ndef junk():\n    raise SystemExit(1)\n"
            assert stop_fn(text) and not stop_fn(body)
            out.append(text)
        return out


@pytest.fixture(scope="module", autouse=True)
def _data():
    path = humaneval_dir() / "humaneval_python.jsonl.gz"
    if not path.exists():
        pytest.skip(f"HumanEval-X data missing: {path}")


def _args(out, steps, *extra):
    return ["--output-dir", str(out), "--steps", steps, "--languages", "python",
            "--problems", "0-2", "--samples-per-problem", str(N), "--batch-size", "3",
            "--ks", "1,2,4,10", "--workers", "2", "--no-progress", *extra]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_end_to_end_exact_pass_at_k(tmp_path):
    fake = FakeGenerator()
    evaluate.main(_args(tmp_path, "generate,execute,score", "--temperature", "0.8"),
                  generate_fn=fake)
    assert sum(c["n"] for c in fake.calls) == N * len(CORRECT)
    assert {(c["temperature"], c["top_p"]) for c in fake.calls} == {(0.8, 0.95)}
    samples = _lines(tmp_path / "samples.jsonl")
    assert len(samples) == 12 and all("junk" not in s["completion"] for s in samples)
    results = _lines(tmp_path / "results.jsonl")
    assert Counter(r["status"] for r in results) == Counter(passed=5, failed=7)

    summary = json.loads((tmp_path / "pass_at_k.json").read_text())
    py = summary["tracks"]["python"]
    for k in (1, 2, 4):
        assert py[f"pass@{k}"] == pytest.approx(_expected(k), abs=1e-12)
    assert "pass@10" not in py and summary["ks"] == [1, 2, 4, 10]
    assert py["pass@1"] == pytest.approx(5 / 12) and py["pass@4"] == pytest.approx(2 / 3)
    assert summary["overall"]["pass@2"] == pytest.approx(_expected(2))
    assert summary["isolation"]
    table = (tmp_path / "pass_at_k.md").read_text()
    assert "| python | 3 | 4 | 41.67 | 50.00 | 66.67 | – |" in table
    assert (tmp_path / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "per_problem.csv").read_text().splitlines()
    assert rows[1:] == ["python,Python/0,4,4,1.000000,1.000000,1.000000,,passed=4",
                        "python,Python/1,4,1,0.250000,0.500000,1.000000,,failed=3 passed=1",
                        "python,Python/2,4,0,0.000000,0.000000,0.000000,,failed=4"]
    meta = json.loads((tmp_path / "execution.json").read_text())
    assert meta["skipped"] == {} and "python" in meta["toolchains"]


def test_interrupted_run_resumes_without_redoing_work(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(_args(tmp_path, "generate"), generate_fn=FakeGenerator(fail_after=2))
    assert len(_lines(tmp_path / "samples.jsonl")) == 6       # two batches of 3 were kept
    with open(tmp_path / "samples.jsonl", "a") as f:
        f.write('{"track": "python", "task_')                  # torn line of a killed writer

    # execute what exists so far, then finish generating, then execute the rest
    evaluate.main(_args(tmp_path, "execute"))
    first = _lines(tmp_path / "results.jsonl")
    assert len(first) == 6
    resumed = FakeGenerator()
    resumed.seen.update({0: 4, 1: 2})                          # problem order: 0, then 1
    evaluate.main(_args(tmp_path, "generate"), generate_fn=resumed)
    assert sum(c["n"] for c in resumed.calls) == 6             # only the missing samples
    evaluate.main(_args(tmp_path, "execute,score"))
    results = _lines(tmp_path / "results.jsonl")
    assert results[:6] == first and len(results) == 12
    assert len({(r["task_id"], r["sample_idx"]) for r in results}) == 12
    summary = json.loads((tmp_path / "pass_at_k.json").read_text())
    assert summary["tracks"]["python"]["pass@2"] == pytest.approx(_expected(2), abs=1e-12)

    evaluate.main(_args(tmp_path, "execute"))                  # nothing left to do
    assert len(_lines(tmp_path / "results.jsonl")) == 12


def test_resuming_with_other_sampling_settings_is_refused(tmp_path):
    evaluate.main(_args(tmp_path, "generate"), generate_fn=FakeGenerator())
    with pytest.raises(SystemExit, match="different settings.*temperature"):
        evaluate.main(_args(tmp_path, "generate", "--temperature", "0.2"),
                      generate_fn=FakeGenerator())


def test_missing_toolchain_is_skipped_not_failed(tmp_path, monkeypatch):
    evaluate.main(_args(tmp_path, "generate"), generate_fn=FakeGenerator())
    monkeypatch.setattr(evaluate, "Executor", _executor_without("python"))
    evaluate.main(_args(tmp_path, "execute,score"))
    assert not (tmp_path / "results.jsonl").exists() or not _lines(tmp_path / "results.jsonl")
    summary = json.loads((tmp_path / "pass_at_k.json").read_text())
    assert summary["tracks"] == {}
    assert summary["skipped"] == {"python": "python toolchain removed for this test"}
    assert "| python | skipped: python toolchain removed for this test |" in \
        (tmp_path / "pass_at_k.md").read_text()


def _executor_without(language):
    class NoToolchain(evaluate.Executor):
        def __init__(self, languages, **kwargs):
            super().__init__([], **kwargs)
            self.skipped = {language: f"{language} toolchain removed for this test"}
    return NoToolchain


def test_cli_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="unknown.*'compile'"):
        evaluate.main(_args(tmp_path, "compile"))
    with pytest.raises(SystemExit, match="no samples"):
        evaluate.main(_args(tmp_path / "empty", "execute"))
    with pytest.raises(SystemExit, match="--generator model needs --config, --checkpoint"):
        evaluate.main(_args(tmp_path / "m", "generate"))
    with pytest.raises(SystemExit, match="needs --source-language"):
        evaluate.main(_args(tmp_path / "t", "generate", "--task", "translation"))


def test_translation_track_with_canonical_generator(tmp_path):
    if not (humaneval_dir() / "humaneval_js.jsonl.gz").exists():
        pytest.skip("HumanEval-X JavaScript data missing")
    evaluate.main(["--output-dir", str(tmp_path), "--task", "translation", "--source-language",
                   "python", "--languages", "js,python", "--problems", "0,38",
                   "--generator", "canonical", "--samples-per-problem", "1", "--workers", "2",
                   "--no-progress"])
    samples = _lines(tmp_path / "samples.jsonl")
    assert {s["track"] for s in samples} == {"python-to-js"}   # python -> python is dropped
    summary = json.loads((tmp_path / "pass_at_k.json").read_text())
    if "python-to-js" in summary["skipped"]:
        pytest.skip(f"JavaScript toolchain missing: {summary['skipped']['python-to-js']}")
    assert summary["tracks"]["python-to-js"]["pass@1"] == 1.0
    assert summary["tracks"]["python-to-js"]["task"] == "translation"
