"""Writing score reports: JSON summary, markdown table, PNG bar chart, per-problem CSV."""

import csv
import json
from pathlib import Path


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
    import numpy as np

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
