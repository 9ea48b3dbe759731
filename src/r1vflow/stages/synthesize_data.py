"""synthesize_data: procedural visual reasoning tasks with verifiable answers.

Writes the data set directory (images, train/val/test JSONL, caption pairs for projector alignment,
chosen/rejected pairs for the reward model, dataset.json with a digest) and records the data set as
an MLflow input. The families are described in docs/tasks.md; splits never share an image.
"""

from __future__ import annotations

from r1vflow.data.synth import synthesize
from r1vflow.stages.common import StageContext, StageOutcome


def run(ctx: StageContext) -> StageOutcome:
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
