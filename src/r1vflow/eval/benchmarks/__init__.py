"""Published benchmarks, each in its published layout and scored by its owners' rules.

One module per benchmark, each with ``load(path, split, subsets) -> Iterator[Item]`` and
``grade(item, response) -> Verdict`` (see `common`); `BENCHMARKS` maps the name to both.

    from r1vflow.eval.benchmarks import iter_items
    for item in iter_items("mmmu", "/data/MMMU", split="validation", limit=10):
        item.id, item.question, item.images   # images: encoded PNG/JPEG bytes

`score_predictions` grades `{"id", "response"}` rows (several per id for pass@k);
`r1vflow.eval.benchmarks.run` generates them with a model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from r1vflow.eval.benchmarks import aime2024, math500, mathvision, mathvista, mmmu, olympiadbench
from r1vflow.eval.benchmarks.common import BenchmarkDataError, Item, Verdict, resolve_path
from r1vflow.eval.benchmarks.judge import JudgeConfig

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataError", "Item", "JudgeConfig", "Verdict",
           "get_benchmark", "iter_items", "resolve_path"]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's loader, scorer and default split."""

    load: Callable[[Path, str | None, list[str] | None], Iterator[Item]]
    grade: Callable[[Item, str], Verdict]
    default_split: str


BENCHMARKS: dict[str, Benchmark] = {
    name: Benchmark(module.load, module.grade, module.DEFAULT_SPLIT)
    for name, module in (("mmmu", mmmu), ("mathvista", mathvista), ("math500", math500),
                         ("mathvision", mathvision), ("aime2024", aime2024),
                         ("olympiadbench", olympiadbench))
}


def get_benchmark(name: str, judge: JudgeConfig | None = None) -> Benchmark:
    """The registered benchmark; ``judge`` (MathVista only) extracts answers with a model."""
    if name not in BENCHMARKS:
        raise BenchmarkDataError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    if judge is None:
        return bench
    if name != "mathvista":
        raise BenchmarkDataError(f"a judge extracts answers for mathvista only, not {name!r}")
    return Benchmark(bench.load, functools.partial(mathvista.grade, judge=judge),
                     bench.default_split)


def iter_items(name: str, path: str | Path, split: str | None = None, limit: int | None = None,
               subsets: list[str] | None = None) -> Iterator[Item]:
    """The first ``limit`` items of benchmark ``name`` read from ``path`` (its published
    layout, or ``package:<module>/<path>``), one at a time. Each has at least ``id``,
    ``question`` (str) and ``images`` (a list of encoded image bytes). Raises
    BenchmarkDataError for an unknown name or a path that is missing or not in the layout."""
    bench = get_benchmark(name)
    return islice(bench.load(resolve_path(path), split, subsets), limit)
