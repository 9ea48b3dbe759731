"""evaluate: score the base model and the final model of every training stage on held-out data.

For each model: accuracy (answer from <answer>, falling back to \\boxed{}, then the last number or
choice; graded with math-verify), format compliance (<think> then <answer>), mean response length
(characters and tokens), accuracy per task family and the hallucination rate on the synthetic
scenes. Metrics are named `<metric>/<model>` with model in base, align_projector, sft, mpo, grpo;
the final model's monitor flags (from training, or a hallucination rate above
`evaluate.max_hallucination_rate`) become `monitor_flag/<flag>` metrics, which the promotion gate
refuses; a Markdown report with a table and example answers goes
to the KFP UI. With `evaluate.num_samples > 1` and a temperature, accuracy is pass@1 averaged over
the samples (the reports' protocol) and pass@k is added.

`evaluate.benchmarks` adds published benchmarks (MMMU, MathVista, MATH-500, ... in their published
layouts, scored by their official rules; r1vflow.eval.benchmarks): metrics
`bench/<name>/<metric>/<model>`, the predictions in the `predictions` output and a table next to
the reports' numbers: in the Markdown report, leading the HTML page, and as an MLflow table on
this run and the pipeline's parent run (docs/evaluation.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from r1vflow.config.stage_table import evaluated_models
from r1vflow.data.io import load_split
from r1vflow.eval.benchmarks.suite import (
    benchmark_rows,
    benchmark_table,
    load_benchmarks,
    score_on_benchmarks,
    table_columns,
)
from r1vflow.eval.grading import score_responses
from r1vflow.eval.scoring import score_model
from r1vflow.models.devices import load_placed
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.stages.common import StageContext, StageOutcome, monitor_flags, parent_version
from r1vflow.tracking.promotion import FLAG_METRIC, mark_candidate

# input name -> label used in metric names, in the order they are scored (the stage table)
MODEL_INPUTS = evaluated_models()
EXAMPLES_IN_REPORT = 3


def run(ctx: StageContext) -> StageOutcome:
    exp, cfg = ctx.exp, ctx.exp.evaluate
    dataset = ctx.input("dataset")
    samples = load_split(dataset, cfg.split)[: cfg.limit]
    metrics: dict[str, float] = {"eval_size": float(len(samples))}
    benchmarks = load_benchmarks(cfg.benchmarks, benchmark_locator(exp))
    predictions_dir = ctx.outputs["predictions"]
    (predictions_dir / "benchmarks.json").write_text(json.dumps([b.name for b in cfg.benchmarks]))
    examples: dict[str, list[str]] = {}
    predictions: dict[str, list] = {}  # the MLflow table of the test-split responses
    evaluated: dict[str, str | None] = {}  # label -> registered version
    final: tuple[str, Path] | None = None  # the last training stage's model: the candidate
    engine = None  # one engine: each later model of the run is synced into it
    for input_name, label in MODEL_INPUTS.items():
        if input_name not in ctx.inputs:
            continue
        path = ctx.input(input_name)
        final = (label, path) if label != "base" else final
        model, tokenizer = load_placed(path), load_tokenizer(path)
        engine = _engine_for(exp, engine, model, tokenizer)
        scored, responses = score_model(
            model, tokenizer, samples, dataset, exp.data.image_size, cfg.max_new_tokens,
            cfg.batch_size, temperature=cfg.temperature, num_samples=cfg.num_samples,
            seed=exp.data.seed, engine=engine)
        metrics.update({f"{k}/{label}": v for k, v in scored.items()})
        metrics.update(score_on_benchmarks(
            benchmarks, model, tokenizer, label, exp.data.image_size, cfg.max_new_tokens,
            cfg.batch_size, exp.data.seed, predictions_dir, engine=engine))
        examples[label] = responses[:EXAMPLES_IN_REPORT]
        _add_predictions(predictions, label, samples, responses)
        evaluated[label] = parent_version(path)
    if engine is not None:
        engine.close()
    flags = candidate_flags(final, metrics, cfg.max_hallucination_rate) if final else {}
    metrics.update({FLAG_METRIC.format(flag=k): 1.0 for k in flags})
    candidate = _mark_candidate(ctx, final, metrics) if final else None
    ctx.tracker.log_table(predictions, "predictions.json")
    lineage = _lineage(ctx, candidate)
    report = _report(exp.name, cfg.split, samples, metrics, examples) + _lineage_md(lineage)
    if flags:
        report += "\n## Monitor flags (the promotion gate refuses this candidate)\n\n" + "".join(
            f"- `{k}`: {v}\n" for k, v in flags.items())
    report += benchmark_table(benchmarks, metrics, list(examples))
    rows = benchmark_rows(benchmarks, metrics, list(examples))
    if rows:  # the models x benchmarks table, on the stage run and on the pipeline's run
        ctx.tracker.log_table(table_columns(rows), "benchmarks.json")
        ctx.tracker.log_parent_table(table_columns(rows), "benchmarks.json")
    return StageOutcome(metrics=metrics, model_version=candidate, report=report,
                        report_data={"lineage": lineage, "benchmarks": rows, "evaluated": {
                            k: v for k, v in evaluated.items() if v}})


def _engine_for(exp, engine, model, tokenizer):
    """The generation engine for `model`: the first model's is built (`evaluate.generation`);
    a later model of the same architecture is synced into it (vLLM; transformers: the model
    itself), one of another architecture gets a new engine."""
    from r1vflow.generation import TransformersEngine, build_engine

    same = engine is not None and type(engine.config) is type(model.config) and (
        engine.config.to_dict().get("text_config") == model.config.to_dict().get("text_config"))
    if same and not isinstance(engine, TransformersEngine):
        engine.sync(model)
        return engine
    if engine is not None:
        engine.close()
    settings = exp.generation_for("evaluate").model_copy(
        update={"batch_size": exp.evaluate.batch_size})
    return build_engine(settings, model, tokenizer)


def benchmark_locator(exp):
    """Where each configured benchmark's files are: its path, or for a hub path the cached
    download (the object store's copy first with storage.backend s3; r1vflow.eval.benchmarks.hub)."""
    from r1vflow.eval.benchmarks import get_benchmark
    from r1vflow.eval.benchmarks.hub import benchmark_cache, fetch_benchmark, hub_repo
    from r1vflow.storage.pointers import experiment_store

    def locate(cfg) -> str | Path:
        if hub_repo(cfg.path) is None:
            return cfg.path
        split = cfg.split or get_benchmark(cfg.name).default_split
        return fetch_benchmark(cfg.name, cfg.path, cfg.revision, split, benchmark_cache(),
                               experiment_store(exp), exp.storage.prefix)
    return locate


def candidate_flags(final: tuple[str, Path], metrics: dict[str, float],
                    max_hallucination: float | None) -> dict[str, str]:
    """The candidate's flags: those its training (and its ancestors') raised, from its
    metadata, and `hallucination` when its measured rate is above the threshold."""
    label, path = final
    flags = monitor_flags(path)
    rate = metrics.get(f"hallucination_rate/{label}")
    if max_hallucination is not None and rate is not None and rate > max_hallucination:
        flags["hallucination"] = (f"hallucination rate {rate:.3f} of {label} is above "
                                  f"evaluate.max_hallucination_rate {max_hallucination}")
    return flags


def _add_predictions(table: dict[str, list], label: str, samples, responses: list[str]) -> None:
    """One row per (model, sample): the first response, graded (the MLflow table evaluate
    logs as predictions.json, filterable in the UI)."""
    graded = score_responses([s.answer for s in samples], responses)
    for sample, response, correct, fmt in zip(samples, responses, graded["correct"],
                                              graded["format"], strict=True):
        for key, value in (("model", label), ("sample_id", sample.id),
                           ("family", sample.family), ("question", sample.question),
                           ("gold", sample.answer), ("response", response),
                           ("correct", bool(correct)), ("format_ok", bool(fmt))):
            table.setdefault(key, []).append(value)


def _lineage(ctx: StageContext, candidate: str | None) -> list[dict[str, str]]:
    """The candidate's registered chain back to its root, newest first ([] without a
    registry): [{version, stage}]."""
    if not (candidate and ctx.tracker.enabled and ctx.tracker.register):
        return []
    from r1vflow.tracking.lineage import walk_lineage

    return [{"version": node["model_version"], "stage": node["stage"]}
            for node in walk_lineage(*candidate.rsplit("/", 1))]


def _lineage_md(lineage: list[dict[str, str]]) -> str:
    if not lineage:
        return ""
    chain = " <- ".join(f"`{node['version']}` ({node['stage']})" for node in lineage)
    return f"\n## Lineage of the candidate\n\n{chain}\n"


def _mark_candidate(ctx: StageContext, final: tuple[str, Path], metrics: dict) -> str | None:
    """Alias the final model `candidate` with its score; the pipeline's gate may promote it."""
    label, path = final
    metric = ctx.exp.tracking.promotion_metric
    key = f"{metric}/{label}"
    if key not in metrics:
        raise ValueError(f"tracking.promotion_metric {metric!r} is not an evaluate metric; "
                         f"known: {sorted({k.split('/')[0] for k in metrics if '/' in k})}")
    version = parent_version(path)
    metrics["promotion_score"] = metrics[key]
    metrics[f"promotion_metric/{metric}"] = 1.0
    if version and ctx.tracker.enabled and ctx.tracker.register:
        mark_candidate(version, metric, metrics[key])
    return version


def _report(name, split, samples, metrics, examples) -> str:
    labels = list(examples)
    keys = sorted({k.split("/")[0] for k in metrics if "/" in k and not k.startswith("bench/")})
    lines = [f"# evaluate: {name} ({split} split, {len(samples)} samples)", "",
             "| metric | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for key in keys:
        cells = [f"{metrics[f'{key}/{lab}']:.3f}" if f"{key}/{lab}" in metrics else "-"
                 for lab in labels]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## Examples"]
    for i, sample in enumerate(samples[:EXAMPLES_IN_REPORT]):
        lines += ["", f"**Q:** {sample.question}  (gold: `{sample.answer}`)"]
        lines += [f"- {lab}: `{examples[lab][i]}`" for lab in labels]
    return "\n".join(lines) + "\n"
