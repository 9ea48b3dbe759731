"""Which figures each stage's report shows.

Every stage gets its loss and learning-rate curves (any history key ending in `/loss` or `/lr`,
one line per prefix: `train/loss`, `train/vision/loss`, ...). A stage with more to show
registers a builder, `@figure_builder("<stage>")`, a function `ReportData -> [(name, Figure)]`
that reads the history keys its stage logs (`train/<metric>` per step) and its `extra`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from matplotlib.figure import Figure

from r1vflow.reports.data import ReportData, series
from r1vflow.reports.figures import chain_figure, grouped_bars, histograms, line_chart

NamedFigure = tuple[str, Figure]
Builder = Callable[[ReportData], list[NamedFigure]]
BUILDERS: dict[str, Builder] = {}
UNIT = (-0.03, 1.03)


def figure_builder(stage: str) -> Callable[[Builder], Builder]:
    """Register the figure builder of `stage` (one per stage)."""

    def add(fn: Builder) -> Builder:
        if stage in BUILDERS:
            raise ValueError(f"stage {stage!r} already has a figure builder "
                             f"({BUILDERS[stage].__name__})")
        BUILDERS[stage] = fn
        return fn

    return add


def stage_figures(data: ReportData) -> list[NamedFigure]:
    """The loss and learning-rate curves, then the stage's own figures."""
    figures = training_curves(data)
    builder = BUILDERS.get(data.stage)
    return figures + (builder(data) if builder else [])


def _lines(data: ReportData, keys: Mapping[str, str]) -> dict[str, tuple[list, list]]:
    """label -> (steps, values) for the keys that were logged."""
    return {label: series(data.history, key) for label, key in keys.items()
            if data.history.get(key)}


def training_curves(data: ReportData) -> list[NamedFigure]:
    out = []
    for suffix, name, ylabel in (("loss", "loss", "loss"), ("lr", "learning_rate", "lr")):
        keys = {k[: -len(suffix) - 1] or k: k for k in data.history if k.endswith(f"/{suffix}")}
        if keys:
            out.append((name, line_chart(_lines(data, keys), f"{data.stage}: {ylabel} per step",
                                         ylabel)))
    return out


@figure_builder("synthesize_data")
def data_figures(data: ReportData) -> list[NamedFigure]:
    """Records per file of the synthesized data set (metrics `num_<file>`)."""
    counts = {k[len("num_"):]: {"records": float(v)} for k, v in data.metrics.items()
              if k.startswith("num_")}
    return [("records", grouped_bars(counts, "synthesize_data: records per file",
                                     "records"))] if counts else []


@figure_builder("grpo")
def grpo_figures(data: ReportData) -> list[NamedFigure]:
    """Reward components, accuracy and format rate, the SSB's effective ratio before vs after,
    replay fraction and the monitor's flags, per step (`train/...` as the grpo stage logs)."""
    h = data.history
    components = {k.split("/", 2)[2]: k for k in h if k.startswith("train/reward/")}
    out = []
    rewards = _lines(data, {**components, "total": "train/reward_mean"})
    if rewards:
        out.append(("rewards", line_chart(rewards, "grpo: reward components (batch mean)",
                                          "reward")))
    quality = _lines(data, {"accuracy": "train/accuracy", "format rate": "train/format_rate"})
    if quality:
        out.append(("accuracy_format", line_chart(quality, "grpo: accuracy and format rate",
                                                  "rate", ylim=UNIT)))
    ssb = _lines(data, {"before SSB": "train/effective_ratio_before",
                        "after SSB": "train/effective_ratio_after"})
    if ssb:
        out.append(("ssb_effective_ratio", line_chart(
            ssb, "SSB: share of samples with non-zero advantage",
            "effective ratio", ylim=UNIT)))
    replay = _lines(data, {"replay fraction": "train/replay_fraction"})
    if replay:
        out.append(("replay_fraction", line_chart(replay, "grpo: share of the batch replayed "
                                                  "from the SSB", "fraction", ylim=UNIT)))
    flags = _lines(data, {k.split("/", 2)[2]: k for k in h if k.startswith("train/monitor/")
                          and k.rsplit("/", 1)[1] in ("reward_hacking", "format_collapse")})
    if flags:
        out.append(("monitor_flags", line_chart(flags, "grpo: monitor flags (1 = raised)",
                                                "flag", ylim=(-0.1, 1.1), steps=True)))
    return out


def calibration_curve(chosen: Sequence[float], rejected: Sequence[float], bins: int = 5,
                      top: float = 5.0) -> tuple[list[float], list[float], list[int]]:
    """Bin centers on [0, top], the share of chosen (better) responses among the responses
    whose calibrated score falls in each bin (nan for an empty bin), and the bin counts."""
    width = top / bins
    counts, good = [0] * bins, [0] * bins
    for values, is_good in ((chosen, 1), (rejected, 0)):
        for v in values:
            b = min(max(int(v // width), 0), bins - 1)
            counts[b] += 1
            good[b] += is_good
    centers = [width * (b + 0.5) for b in range(bins)]
    shares = [g / c if c else float("nan") for g, c in zip(good, counts, strict=True)]
    return centers, shares, counts


@figure_builder("train_reward_model")
def reward_model_figures(data: ReportData) -> list[NamedFigure]:
    """Val chosen/rejected raw score histograms and the calibration of the 0..5 scale; reads
    extra `val_chosen`, `val_rejected` (raw scores) and `val_chosen_0to5`, `val_rejected_0to5`."""
    e, out = data.extra, []
    if "val_chosen" in e:
        out.append(("score_histograms", histograms(
            {"chosen": e["val_chosen"], "rejected": e["val_rejected"]},
            "reward model: val scores of chosen and rejected responses", "raw score")))
    if "val_chosen_0to5" in e:
        centers, shares, counts = calibration_curve(e["val_chosen_0to5"], e["val_rejected_0to5"])
        fig = line_chart({"share of chosen responses": (centers, shares)},
                         "reward model: calibration of the 0..5 score (val pairs)",
                         "share chosen", xlabel="calibrated score bin", ylim=UNIT)
        ax = fig.axes[0]
        for x, y, n in zip(centers, shares, counts, strict=True):
            if n:
                ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)
        out.append(("calibration", fig))
    return out


def per_iteration(metrics: Mapping[str, float], names: Sequence[str]) -> dict[str, dict[int, float]]:
    """name -> {iteration: value} from metrics named `<name>/iter_<t>`."""
    out: dict[str, dict[int, float]] = {n: {} for n in names}
    for key, value in metrics.items():
        match = re.fullmatch(r"(.+)/iter_(\d+)", key)
        if match and match.group(1) in out:
            out[match.group(1)][int(match.group(2))] = float(value)
    return {n: dict(sorted(v.items())) for n, v in out.items() if v}


@figure_builder("sft")
def sft_figures(data: ReportData) -> list[NamedFigure]:
    """Per iteration of iterative SFT: the filtered training set, the error set, the total
    trained on, and validation accuracy (metrics `<name>/iter_<t>`)."""
    it = per_iteration(data.metrics, ("train_size", "error_set_size", "train_total",
                                      "val_accuracy", "val_format_rate"))
    out = []
    sizes = {f"iter {t}": {label: it[n][t] for n, label in (
        ("train_size", "filtered set"), ("error_set_size", "error set"),
        ("train_total", "trained on")) if t in it.get(n, {})}
        for t in it.get("train_size", {})}
    if len(sizes) > 1:
        out.append(("iteration_sizes", grouped_bars(sizes, "sft: training set per iteration",
                                                    "samples")))
    acc = {label: (list(it[n]), list(it[n].values())) for n, label in (
        ("val_accuracy", "val accuracy"), ("val_format_rate", "val format rate")) if n in it}
    if acc:
        out.append(("iteration_accuracy", line_chart(acc, "sft: validation per iteration",
                                                     "rate", xlabel="iteration", ylim=UNIT)))
    return out


def accuracy_table(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """model label -> {"all": accuracy/<label>, <family or benchmark>: accuracy_<x>/<label>}."""
    table: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        match = re.fullmatch(r"accuracy(?:_(.+))?/(.+)", key)
        if match:
            table.setdefault(match.group(2), {})[match.group(1) or "all"] = float(value)
    return {m: dict(sorted(v.items(), key=lambda kv: (kv[0] != "all", kv[0])))
            for m, v in table.items()}


@figure_builder("evaluate")
def evaluate_figures(data: ReportData) -> list[NamedFigure]:
    """Accuracy per model and task family (metrics `accuracy[_<family>]/<model>`), and the
    lineage chain of the evaluated models (extra `lineage`: [{version, stage}] newest first,
    `evaluated`: {label: version})."""
    out = []
    table = accuracy_table(data.metrics)
    if table:
        out.append(("accuracy", grouped_bars(table, "evaluate: accuracy per model and family",
                                             "accuracy", ylim=(0, 1.1))))
    chain = data.extra.get("lineage") or []
    if chain:
        evaluated = {v: label for label, v in (data.extra.get("evaluated") or {}).items()}
        nodes = []
        for node in reversed(chain):
            label = evaluated.get(node["version"])
            acc = data.metrics.get(f"accuracy/{label}") if label else None
            caption = node["stage"] + (f"\nacc {acc:.3f}" if acc is not None else "")
            nodes.append((node["version"], caption, label is not None))
        out.append(("lineage", chain_figure(nodes, "lineage of the evaluated models "
                                                   "(blue: evaluated)")))
    return out
