"""Grade predictions of a benchmark: pass@1 averaged over samples, unbiased pass@k, extra
per-response metrics and per-category breakdowns.

    report = score_predictions("mmmu", bench, items, rows)

``rows`` are ``{"id", "response"}`` dicts (any other keys are kept), several per id when the
model sampled several responses. The report: ``benchmark``, ``n`` (items), ``samples``,
``accuracy`` (mean over items of the fraction of right responses: pass@1), ``pass@k`` (when
every item has k > 1 responses), ``metrics`` (accuracy of each extra verdict, e.g.
``math_verify``), ``breakdowns`` (category -> value -> {n, accuracy}) and ``items`` (one
``{"id", "sample", "extracted", "correct", ...}`` per row, the raw response kept).
"""

from __future__ import annotations

from collections import defaultdict

from r1vflow.eval.benchmarks import Benchmark, BenchmarkDataError, Item
from r1vflow.eval.grading import pass_at_k


def _grade_rows(bench: Benchmark, items: dict[str, Item],
                rows: list[dict]) -> tuple[list[dict], set[str]]:
    graded, seen, extra = [], defaultdict(int), set()
    for index, row in enumerate(rows, start=1):
        if not isinstance(row.get("id"), str | int) or not isinstance(row.get("response"), str):
            raise BenchmarkDataError(f"prediction {index}: needs an 'id' and a 'response' text")
        item_id = str(row["id"])
        if item_id not in items:
            raise BenchmarkDataError(f"prediction {index}: id {item_id!r} is not in the "
                                     "benchmark data (wrong --data, split or subset?)")
        verdict = bench.grade(items[item_id], row["response"])
        graded.append({**row, "id": item_id, "sample": row.get("sample", seen[item_id]),
                       "extracted": verdict.extracted, "correct": verdict.correct,
                       **verdict.extra})
        extra |= set(verdict.extra)
        seen[item_id] += 1
    return graded, extra


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def score_predictions(name: str, bench: Benchmark, items: dict[str, Item],
                      rows: list[dict]) -> dict:
    """The benchmark report of ``rows`` graded against ``items`` (id -> Item)."""
    if not rows:
        raise BenchmarkDataError("no predictions to score")
    graded, extra = _grade_rows(bench, items, rows)
    per_item: dict[str, list[dict]] = defaultdict(list)
    for row in graded:
        per_item[row["id"]].append(row)
    item_acc = {i: _mean([float(r["correct"]) for r in rs]) for i, rs in per_item.items()}
    report: dict = {"benchmark": name, "n": len(per_item),
                    "samples": max(len(rs) for rs in per_item.values()),
                    "accuracy": _mean(list(item_acc.values())), "metrics": {}}
    counts = {len(rs) for rs in per_item.values()}
    if len(counts) == 1 and (k := counts.pop()) > 1:
        report[f"pass@{k}"] = _mean([pass_at_k(k, sum(r["correct"] for r in rs), k)
                                     for rs in per_item.values()])
    for key in sorted(extra):
        report["metrics"][key] = _mean([_mean([float(r[key]) for r in rs])
                                        for rs in per_item.values()])
    breakdowns: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item_id, acc in item_acc.items():
        for category, values in items[item_id].categories.items():
            for value in values:
                breakdowns[category][value].append(acc)
    report["breakdowns"] = {c: {v: {"n": len(a), "accuracy": _mean(a)}
                                for v, a in sorted(vals.items())}
                            for c, vals in sorted(breakdowns.items())}
    report["items"] = graded
    return report

