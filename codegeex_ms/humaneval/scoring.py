"""The score step: per-problem pass counts -> pass@k per track and overall, and its reports
(JSON summary, markdown table, PNG bar chart, per-problem CSV).

pass@k is the unbiased estimator (Chen et al. 2021; reference section 7): for a problem with
``n`` samples of which ``c`` pass, pass@k = 1 - C(n-c, k) / C(n, k), the probability that k
samples drawn without replacement include a passing one; with n - c < k it is 1. The product
form 1 - prod_{i=n-c+1}^{n} (1 - k/i) avoids huge binomials.
"""

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..data.languages import HUMANEVAL_LANGUAGES
from .problems import Track


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem. Requires 0 <= c <= n and 1 <= k <= n."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(counts, k: int) -> float:
    """Mean pass@k over problems given as ``[(n, c), ...]``."""
    counts = list(counts)
    if not counts:
        raise ValueError("no problems to score")
    return float(np.mean([pass_at_k(n, c, k) for n, c in counts]))


def applicable_ks(counts, ks=(1, 10, 100)) -> list:
    """The ks that every problem has enough samples for (k <= n for all problems)."""
    smallest = min(n for n, _ in counts)
    return [k for k in ks if k <= smallest]


def count_results(results) -> dict:
    """``{track: {task_id: [n, c, Counter(status)]}}`` from result records."""
    table = defaultdict(dict)
    for r in results:
        entry = table[r["track"]].setdefault(r["task_id"], [0, 0, Counter()])
        entry[0] += 1
        entry[1] += bool(r["passed"])
        entry[2][r["status"]] += 1
    return dict(table)


def score(results, ks=(1, 10, 100), sample_tracks=(), skipped=None) -> tuple:
    """(summary, per-problem rows) of result records.

    Per track, pass@k is the mean over its problems of the unbiased estimator, for each k that
    every problem has n >= k samples for. ``overall`` is the mean over tracks with results of
    the ks they all have (the reference table's "mean" column). Tracks named in
    ``sample_tracks`` without any result are listed under ``skipped`` with the reason from
    ``skipped`` ({language: reason}) when known.
    """
    table = count_results(results)
    summary = {"ks": list(ks), "tracks": {}, "overall": {}, "skipped": {}}
    rows = []
    for name in sorted(table, key=_track_order):
        counts = [(n, c) for n, c, _ in table[name].values()]
        track_ks = applicable_ks(counts, ks)
        track = Track.parse(name)
        statuses = sum((s for _, _, s in table[name].values()), Counter())
        summary["tracks"][name] = {
            "language": track.language, "task": track.task, "problems": len(counts),
            "samples_min": min(n for n, _ in counts), "samples_max": max(n for n, _ in counts),
            "passed_samples": sum(c for _, c in counts), "status_counts": dict(statuses),
            **{f"pass@{k}": mean_pass_at_k(counts, k) for k in track_ks}}
        for task_id, (n, c, st) in table[name].items():
            rows.append({"track": name, "task_id": task_id, "n": n, "c": c,
                         **{f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n},
                         "statuses": " ".join(f"{s}={st[s]}" for s in sorted(st))})
    tracks = summary["tracks"].values()
    common = [k for k in ks if all(f"pass@{k}" in t for t in tracks)] if tracks else []
    summary["overall"] = {"tracks": len(summary["tracks"]),
                          **{f"pass@{k}": sum(t[f"pass@{k}"] for t in tracks) / len(tracks)
                             for k in common}}
    for name in sample_tracks:
        if name not in table:
            language = Track.parse(name).language
            summary["skipped"][name] = (skipped or {}).get(language, "no execution results")
    return summary, rows


def _track_order(name: str) -> tuple:
    order = list(HUMANEVAL_LANGUAGES)
    track = Track.parse(name)
    return (track.source is not None, order.index(track.language),
            order.index(track.source) if track.source else -1)


def write_json(path: Path, summary: dict) -> None:
    Path(path).write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")


def markdown_table(summary: dict) -> str:
    """Markdown table of pass@k in percent, one row per track, then overall, then skipped."""
    ks = summary["ks"]
    head = "| track | problems | samples/problem | " + " | ".join(f"pass@{k} (%)" for k in ks) + " |"
    lines = [head, "|" + "---|" * (3 + len(ks))]

    def cells(entry):
        return " | ".join(f"{100 * entry[f'pass@{k}']:.2f}" if f"pass@{k}" in entry else "–"
                          for k in ks)

    for name, t in summary["tracks"].items():
        n = (str(t["samples_min"]) if t["samples_min"] == t["samples_max"]
             else f"{t['samples_min']}–{t['samples_max']}")
        lines.append(f"| {name} | {t['problems']} | {n} | {cells(t)} |")
    if summary["tracks"]:
        n = summary["overall"]["tracks"]
        lines.append(f"| **overall (mean of {n} track{'s' if n != 1 else ''})** | | | "
                     f"{cells(summary['overall'])} |")
    for name, reason in summary["skipped"].items():
        lines.append(f"| {name} | skipped: {reason.splitlines()[0] if reason else ''} | | "
                     + " | ".join("–" for _ in ks) + " |")
    notes = []
    if summary.get("isolation"):
        notes.append(f"Isolation: {summary['isolation']}.")
    notes.append("pass@k: unbiased estimator, mean over problems; – where some problem has "
                 "fewer than k samples.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_markdown(path: Path, summary: dict) -> None:
    Path(path).write_text(markdown_table(summary))


def write_chart(path: Path, summary: dict) -> None:
    """Grouped bar chart: pass@k (%) per track, one bar per k."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["tracks"])
    ks = [k for k in summary["ks"] if any(f"pass@{k}" in t for t in summary["tracks"].values())]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.5), dpi=120)
    width = 0.8 / max(1, len(ks))
    x = np.arange(len(names))
    for i, k in enumerate(ks):
        values = [100 * summary["tracks"][n].get(f"pass@{k}", np.nan) for n in names]
        bars = ax.bar(x + (i - (len(ks) - 1) / 2) * width, values, width, label=f"pass@{k}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, names, rotation=20 if len(names) > 6 else 0)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("HumanEval-X pass@k")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_per_problem(path: Path, rows: list, ks) -> None:
    """CSV with one row per (track, problem): n, c, pass@k, status counts."""
    fields = ["track", "task_id", "n", "c"] + [f"pass@{k}" for k in ks] + ["statuses"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
