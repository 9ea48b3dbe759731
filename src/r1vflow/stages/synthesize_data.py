"""synthesize_data: the data set every later stage reads, synthesized or imported.

`data.source.kind: synthetic` (default): procedural visual reasoning tasks with verifiable
answers. Writes the data set directory (images, train/val/test JSONL, caption pairs for
projector alignment, chosen/rejected pairs for the reward model, dataset.json with a digest).
The families are described in docs/tasks.md; splits never share an image.

`files` / `hub`: the user's JSONL or Parquet data (or a hub data set at a pinned commit),
streamed into the same layout, every row validated (`data.on_bad_row`), splits carved or kept
without shared ids or images, training samples checked against `data.contamination`, and the
enabled stages' needs (solutions, preference pairs, captions) checked before anything trains
(docs/data.md). Metrics: rows_read, rows_skipped, contaminated_dropped.

Either way the data set is recorded as an MLflow input with its digest.

    r1vflow run pipelines/configs/smoke.yaml --set data.source.kind=files \
        --set data.source.path=my_data/train.jsonl
"""

from __future__ import annotations

from r1vflow.data.synth import synthesize
from r1vflow.stages.common import StageContext, StageOutcome

BAD_ROWS_IN_REPORT = 100


def run(ctx: StageContext) -> StageOutcome:
    if ctx.exp.data.source.kind != "synthetic":
        return _import(ctx)
    exp, cfg = ctx.exp, ctx.exp.synthesize_data
    out = ctx.outputs["dataset"]
    info = synthesize(
        out, families=list(exp.data.families), num_train=cfg.num_train, num_val=cfg.num_val,
        num_test=cfg.num_test, image_size=exp.data.image_size, seed=exp.data.seed,
        max_objects=exp.data.max_objects, num_captions=cfg.num_captions,
        num_preference_pairs=cfg.num_preference_pairs, progress=False,
    )
    ctx.tracker.log_dataset(f"{exp.name}-synthetic", info.digest, str(out), context="training")
    metrics = {f"num_{name}": float(n) for name, n in info.counts.items()}
    lines = [f"# synthesize_data: {exp.name}", "", f"digest `{info.digest[:16]}`", "",
             "| file | records |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in info.counts.items()]
    return StageOutcome(metrics=metrics, report="\n".join(lines) + "\n")


def _import(ctx: StageContext) -> StageOutcome:
    from r1vflow.data import needs
    from r1vflow.data.importer import import_dataset

    exp, data = ctx.exp, ctx.exp.data
    found = needs.check(exp, hub=True)  # column names first: fail before reading a single image
    if found:
        raise ValueError("; ".join(found))
    result = import_dataset(ctx.outputs["dataset"], data.source, on_bad_row=data.on_bad_row,
                            contamination=data.contamination, image_size=data.image_size)
    found = needs.problems_after_import(exp, result.with_solution,
                                        result.info.counts["captions"], result.pairs_by_split)
    if found:
        raise ValueError("; ".join(found))
    info = result.info
    ctx.tracker.log_dataset(f"{exp.name}-{data.source.kind}", info.digest,
                            str(ctx.outputs["dataset"]), context="training")
    metrics = {f"num_{name}": float(n) for name, n in info.counts.items()}
    metrics |= {"rows_read": float(result.rows_read), "rows_skipped": float(result.rows_skipped),
                "contaminated_dropped": float(sum(result.contaminated.values())),
                **{f"contaminated_dropped/{k}": float(result.contaminated.get(k, 0))
                   for k in result.reference_sizes}}
    return StageOutcome(metrics=metrics, report=_report(exp.name, result))


def _report(name: str, result) -> str:
    info = result.info
    lines = [f"# synthesize_data: {name} (imported)", "", f"source `{info.source}`", "",
             f"digest `{info.digest[:16]}`", "", "| file | records |", "|---|---|"]
    lines += [f"| {k} | {n} |" for k, n in info.counts.items()]
    lines += ["", f"rows read {result.rows_read}, skipped {result.rows_skipped}, answer kinds "
              f"{', '.join(info.families)}"]
    if result.reference_sizes:
        lines += ["", "| contamination reference | items | training samples dropped |",
                  "|---|---|---|"]
        lines += [f"| {k} | {n} | {result.contaminated.get(k, 0)} |"
                  for k, n in sorted(result.reference_sizes.items())]
    if result.bad_rows:
        lines += ["", "## Skipped rows", ""]
        lines += [f"- `{row}`" for row in result.bad_rows[:BAD_ROWS_IN_REPORT]]
        if result.rows_skipped > BAD_ROWS_IN_REPORT:
            lines.append(f"- ... {result.rows_skipped - BAD_ROWS_IN_REPORT} more in import.json")
    return "\n".join(lines) + "\n"
