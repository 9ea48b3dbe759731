"""The evaluate stage's published benchmarks (``evaluate.benchmarks``): load each once, score
every model on it, write the predictions and score reports, and a Markdown table next to the
reports' numbers.

Metrics are ``bench/<name>/<metric>/<model>`` with metric ``accuracy`` (pass@1, averaged over
``samples``), ``pass@k`` (k = samples > 1), extra verdicts (``math_verify`` on math500) and
``n``. Files: ``<out>/<name>/<model>.predictions.jsonl`` (one row per response, the raw response
kept) and ``<out>/<name>/<model>.json`` (the report without the rows).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from r1vflow.eval.benchmarks import (
    Benchmark,
    BenchmarkDataError,
    Item,
    JudgeConfig,
    get_benchmark,
    iter_items,
    resolve_path,
)
from r1vflow.eval.benchmarks.hub import PLACEHOLDER_REVISION, hub_repo

# The reports' numbers for the released 38B models (docs/recipe.md: Skywork R1V arXiv 2504.05599,
# R1V2 arXiv 2504.16656); None where a report gives none.
PUBLISHED: dict[str, dict[str, float | None]] = {
    "mmmu": {"r1v-38b": 69.0, "r1v2-38b": 73.6},
    "mathvista": {"r1v-38b": 67.5, "r1v2-38b": 74.0},
    "math500": {"r1v-38b": 94.0, "r1v2-38b": None},
    "aime2024": {"r1v-38b": 72.0, "r1v2-38b": 78.9},
    "olympiadbench": {"r1v-38b": None, "r1v2-38b": 62.6},
    "mathvision": {"r1v-38b": None, "r1v2-38b": None},
}


@dataclass(frozen=True)
class LoadedBenchmark:
    """A configured benchmark with its items read once (``cfg`` is a BenchmarkConfig)."""

    cfg: object
    bench: Benchmark
    items: list[Item]
    breakdowns: dict[str, dict] = field(default_factory=dict)  # model -> its report's breakdowns


def missing_paths(configs: list) -> list[str]:
    """The configured benchmark paths that do not exist on this machine, and hub: or github:
    paths whose revision is a preset's placeholder (the evaluate task would refuse them after training)."""
    missing = []
    for cfg in configs:
        if hub_repo(cfg.path) is not None:
            if cfg.revision == PLACEHOLDER_REVISION:
                missing.append(f"{cfg.path} (its revision is the placeholder {cfg.revision[:8]}"
                               f"..., not a commit: set evaluate.benchmarks' revision)")
            continue
        try:
            exists = resolve_path(cfg.path).exists()
        except BenchmarkDataError:
            exists = False
        missing += [] if exists else [cfg.path]
    return missing


# (config) -> the local folder of a configured benchmark; the evaluate stage's knows the
# object store and the cache (hub: and github: paths), the default reads local and package paths only.
Locate = Callable[[object], str | Path]


def local_path(cfg) -> str | Path:
    """A local or package path as configured; a hub: or github: path is refused (it needs
    `Locate`)."""
    if hub_repo(cfg.path) is not None:
        raise BenchmarkDataError(f"benchmark {cfg.name}: {cfg.path} is a remote data set; fetch "
                                 "it with r1vflow.eval.benchmarks.hub.fetch_benchmark")
    return cfg.path


def load_benchmarks(configs: list, locate: Locate = local_path) -> list[LoadedBenchmark]:
    """Read every configured benchmark (its first ``limit`` items) from ``locate(cfg)``."""
    loaded = []
    for cfg in configs:
        judge = (JudgeConfig(cfg.judge_base_url, cfg.judge_model, cfg.judge_key_env)
                 if cfg.judge_base_url else None)
        items = list(iter_items(cfg.name, locate(cfg), cfg.split, cfg.limit, cfg.subsets))
        loaded.append(LoadedBenchmark(cfg, get_benchmark(cfg.name, judge), items))
    return loaded


def score_on_benchmarks(loaded: list[LoadedBenchmark], model, tokenizer, label: str,
                        image_size: int, max_new_tokens: int, batch_size: int, seed: int,
                        out_dir: Path, engine=None) -> dict[str, float]:
    """Run one model on every benchmark (generated on `engine`, which serves `model`'s
    weights; None: transformers); returns its ``bench/...`` metrics, writes its files."""
    # here, not at the top: `r1vflow run` imports this module for missing_paths before any
    # task starts, and generation imports torch (seconds of a cached rerun)
    from r1vflow.eval.benchmarks.run import run_benchmark, write_jsonl

    metrics: dict[str, float] = {}
    for entry in loaded:
        cfg = entry.cfg
        report = run_benchmark(cfg.name, entry.bench, model, tokenizer, entry.items, image_size,
                               cfg.samples, cfg.max_new_tokens or max_new_tokens, batch_size,
                               cfg.temperature, seed, engine=engine)
        folder = out_dir / cfg.name
        folder.mkdir(parents=True, exist_ok=True)
        write_jsonl(folder / f"{label}.predictions.jsonl", report["items"])
        summary = {k: v for k, v in report.items() if k != "items"}
        (folder / f"{label}.json").write_text(json.dumps(summary, indent=1) + "\n")
        entry.breakdowns[label] = report["breakdowns"]
        values = {"accuracy": report["accuracy"], "n": float(report["n"]), **report["metrics"],
                  **{k: v for k, v in report.items() if k.startswith("pass@")}}
        metrics.update({f"bench/{cfg.name}/{k}/{label}": float(v) for k, v in values.items()})
    return metrics


# The reference columns: the reports' numbers for the released 38B models.
REFERENCES = {"r1v-38b": "R1V-38B (report)", "r1v2-38b": "R1V2-38B (report)"}


def benchmark_rows(loaded: list[LoadedBenchmark], metrics: dict[str, float],
                   labels: list[str]) -> list[dict]:
    """One JSON-able row per benchmark: ``benchmark``, ``split``, ``n``, ``samples``,
    ``scores`` (model label -> pass@1 in %, None where that model was not scored) and
    ``published`` (reference column title -> the report's number in %, None where a report
    gives none)."""
    rows = []
    for entry in loaded:
        name = entry.cfg.name
        scores = {lab: (100 * metrics[k] if (k := f"bench/{name}/accuracy/{lab}") in metrics
                        else None) for lab in labels}
        rows.append({"benchmark": name, "split": entry.cfg.split or entry.bench.default_split,
                     "n": len(entry.items), "samples": entry.cfg.samples, "scores": scores,
                     "published": {title: PUBLISHED[name][key]
                                   for key, title in REFERENCES.items()}})
    return rows


def table_columns(rows: list[dict]) -> dict[str, list]:
    """The rows as equal-length columns (an MLflow table): benchmark, split, n, samples, one
    column per model, then the two reference columns."""
    labels = list(rows[0]["scores"]) if rows else []
    columns: dict[str, list] = {k: [r[k] for r in rows]
                                for k in ("benchmark", "split", "n", "samples")}
    columns |= {lab: [r["scores"][lab] for r in rows] for lab in labels}
    columns |= {title: [r["published"][title] for r in rows] for title in REFERENCES.values()}
    return columns


def benchmark_table(loaded: list[LoadedBenchmark], metrics: dict[str, float],
                    labels: list[str]) -> str:
    """Markdown: accuracy (%) of each model on each benchmark next to the reports' numbers."""
    if not loaded:
        return ""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = ["", "## Published benchmarks", "",
             "pass@1 in %, averaged over the samples; the last two columns are the reports' "
             "numbers for the released 38B models (Skywork R1V / R1V2).", "",
             "| benchmark | split | n | samples | " + " | ".join(labels)
             + " | " + " | ".join(REFERENCES.values()) + " |",
             "|---" * (len(labels) + 6) + "|"]
    for row in benchmark_rows(loaded, metrics, labels):
        cells = [cell(row["scores"][lab]) for lab in labels]
        cells += [cell(value) for value in row["published"].values()]
        lines.append(f"| {row['benchmark']} | {row['split']} | {row['n']} | {row['samples']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines + _breakdown_lines(loaded, labels)) + "\n"


def _breakdown_lines(loaded: list[LoadedBenchmark], labels: list[str]) -> list[str]:
    """Per-category accuracy of the last model scored (the candidate), one line per category."""
    lines = []
    for entry in loaded:
        label = next((lab for lab in reversed(labels) if lab in entry.breakdowns), None)
        for category, values in (entry.breakdowns.get(label) or {}).items():
            cells = ", ".join(f"{value} {100 * v['accuracy']:.1f} (n={v['n']})"
                              for value, v in values.items())
            lines += ["", f"- {entry.cfg.name} by {category} ({label}): {cells}"]
    return lines
