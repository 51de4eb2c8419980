"""pass@k estimator against exact combinatorics, and the score/report step on hand-made results."""

import itertools
import json
from fractions import Fraction
from math import comb

import pytest

from codegeex_ms.humaneval.scoring import (applicable_ks, markdown_table, mean_pass_at_k, pass_at_k,
                                           score, write_chart, write_per_problem)


def exact_pass_at_k(n, c, k):
    """1 - C(n-c, k)/C(n, k) in exact rational arithmetic (C(m, k) = 0 for m < k)."""
    return 1 - Fraction(comb(n - c, k), comb(n, k))


def brute_force_pass_at_k(n, c, k):
    """Fraction of the k-subsets of n samples (c of them passing) that contain a pass."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", [1, 2, 5, 10, 17, 200])
def test_estimator_matches_exact_binomials(n):
    # The product form differs from the exact rational only by float rounding: each of the
    # <= 200 factors carries ~1e-16 relative error, so 1e-12 absolute is a loose bound.
    for c in range(n + 1):
        for k in {1, 2, 3, 10, 100, n} & set(range(1, n + 1)):
            assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)


def test_estimator_matches_brute_force_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)),
                                                           abs=1e-12)


def test_fewer_failures_than_k_scores_one():
    # n - c < k: every k-subset must contain a passing sample.
    assert pass_at_k(200, 195, 10) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0
    assert pass_at_k(100, 1, 100) == 1.0
    assert pass_at_k(200, 101, 100) == 1.0
    # n - c == k: exactly one k-subset has no pass.
    assert pass_at_k(200, 100, 100) == pytest.approx(1 - 1 / comb(200, 100), abs=1e-15)


def test_known_values():
    assert pass_at_k(200, 0, 1) == 0.0
    assert pass_at_k(200, 46, 1) == pytest.approx(0.23)  # pass@1 is c/n
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)      # 1 - C(3,2)/C(4,2) = 1 - 3/6


def test_bad_arguments_are_rejected():
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(n, c, k)
    with pytest.raises(ValueError, match="no problems"):
        mean_pass_at_k([], 1)


def test_applicable_ks_need_enough_samples_everywhere():
    assert applicable_ks([(200, 3), (200, 0)]) == [1, 10, 100]
    assert applicable_ks([(200, 3), (50, 0)]) == [1, 10]
    assert applicable_ks([(5, 3)]) == [1]


def _results(track, task_prefix, counts):
    """Result records for {problem number: (n, c)}; the first c samples pass."""
    out = []
    for number, (n, c) in counts.items():
        for i in range(n):
            out.append({"track": track, "task_id": f"{task_prefix}/{number}", "sample_idx": i,
                        "passed": i < c, "status": "passed" if i < c else "failed"})
    return out


def test_score_per_track_and_overall(tmp_path):
    results = (_results("python", "Python", {0: (4, 4), 1: (4, 1), 2: (4, 0)})
               + _results("cpp", "CPP", {0: (4, 2), 1: (4, 0), 2: (4, 0)}))
    summary, rows = score(results, ks=(1, 2, 4, 10), sample_tracks=["python", "cpp", "go"],
                          skipped={"go": "go not found on PATH"})
    py, cpp = summary["tracks"]["python"], summary["tracks"]["cpp"]
    assert py["pass@1"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert py["pass@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert py["pass@4"] == pytest.approx((1 + 1 + 0) / 3)
    assert "pass@10" not in py                                # n = 4 < 10
    assert cpp["pass@2"] == pytest.approx((1 - comb(2, 2) / comb(4, 2)) / 3)
    assert summary["overall"]["pass@1"] == pytest.approx((py["pass@1"] + cpp["pass@1"]) / 2)
    assert summary["skipped"] == {"go": "go not found on PATH"}
    assert py["status_counts"] == {"passed": 5, "failed": 7}
    assert len(rows) == 6 and {r["track"] for r in rows} == {"python", "cpp"}
    assert list(summary["tracks"]) == ["python", "cpp"]      # language order, not alphabetical

    table = markdown_table(summary)
    assert "| python | 3 | 4 | 41.67 | 50.00 | 66.67 | – |" in table
    assert "| go | skipped: go not found on PATH |" in table
    write_chart(tmp_path / "c.png", summary)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_per_problem(tmp_path / "p.csv", rows, (1, 2, 4, 10))
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "track,task_id,n,c,pass@1,pass@2,pass@4,pass@10,statuses"
    assert lines[2] == "python,Python/1,4,1,0.250000,0.500000,1.000000,,failed=3 passed=1"
    json.dumps(summary)  # serialisable
