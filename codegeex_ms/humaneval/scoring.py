"""The score step: per-problem pass counts -> pass@k per track and overall."""

from collections import Counter, defaultdict

from ..data.languages import HUMANEVAL_LANGUAGES
from .passk import applicable_ks, mean_pass_at_k, pass_at_k
from .problems import Track


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
