"""distill: R1V's adaptive-length chain-of-thought distillation (AL-CoTD) before SFT.

Method (docs/alcotd.md): each train sample gets S_v, S_t, S_I in [0, 1] from the scorers the
config names (rule-based on the question and the synthetic scene, the question-only probe, or
the reward model as judge; r1vflow.data.alcotd); the model before SFT (aligned, else base)
generates its <think> chain at repetition penalty P = min(2, exp(alpha * (1 - S))), S the
weighted mean of the scores; a chain with the gold answer in the right format (and the judge's
approval, when on) is accepted, others are regenerated up to `max_attempts`, then dropped or kept
templated (r1vflow.train.distill). The output is the data set with its train split rewritten
(the accepted chains as reasoning) plus `distill.jsonl` (scores, P, attempts, chain length per
sample); SFT trains on it. Metrics: acceptance_rate, chain length per difficulty bucket, P's
distribution, length_difficulty_spearman, and one generation at a fixed penalty on the same
prompts (accuracy and length) against the adaptive first attempt.

With `sft.iterative.distill`, sft calls `redistill` before each iteration t >= 1 with its
current model (R1V repeats AL-CoTD before every iteration of stage 2).

    r1vflow run pipelines/configs/r1v-38b.yaml --set distill.alpha=1.5
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from r1vflow.data.alcotd import SCORERS, vision_rule
from r1vflow.data.io import (
    INFO_FILE,
    dataset_digest,
    load_split,
    read_info,
    split_file,
    write_info,
    write_jsonl,
)
from r1vflow.data.schema import Sample
from r1vflow.eval.scoring import sample_pixels
from r1vflow.models.families.images import Images
from r1vflow.models.io import load_model
from r1vflow.models.reward import load_reward_scorer
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.stages.common import StageContext, StageOutcome
from r1vflow.train.distill import (
    DistillResult,
    DistillSettings,
    distill,
    fixed_penalty_comparison,
    question_only_probe,
    score_samples,
)

RECORDS_FILE = "distill.jsonl"


def settings(cfg) -> DistillSettings:
    """The loop's settings from a `distill` config section."""
    return DistillSettings(cfg.alpha, cfg.beta, cfg.gamma, cfg.max_attempts, cfg.temperature,
                           cfg.max_new_tokens, cfg.batch_size, cfg.on_failure, cfg.seed,
                           cfg.judge_threshold)


def _rm(ctx: StageContext, reward_model: Path | None):
    """rm(samples, pixels, responses) -> 0..1 (calibrated 0..5 / 5, raw when uncalibrated)."""
    if reward_model is None:
        return None
    scorer = load_reward_scorer(reward_model, ctx.exp.distill.batch_size, 256)

    def rm(samples: list[Sample], pixels: Images, responses: list[str]) -> list[float]:
        questions = [s.question for s in samples]
        if scorer.calibration is None:
            return scorer.score(questions, pixels, responses)
        return [v / 5.0 for v in scorer.score_0to5(questions, pixels, responses)]

    return rm


def distill_samples(ctx: StageContext, model, tokenizer, samples: list[Sample],
                    pixels: Images, reward_model: Path | None) -> DistillResult:
    """Score `samples` with the configured scorers and self-distil their chains."""
    cfg, image_size = ctx.exp.distill, ctx.exp.data.image_size
    rm = _rm(ctx, reward_model)
    vision = vision_rule if cfg.vision_scorer == "vision_rule" else question_only_probe(
        model, tokenizer, image_size, cfg.max_new_tokens, cfg.batch_size)
    text = SCORERS["text_rule"]
    if cfg.text_scorer == "judge":
        def text(batch: list[Sample]) -> list[float]:  # harder when the judge is less sure
            scores = rm(batch, sample_pixels(ctx.input("dataset"), batch, image_size, model),
                        [s.response() for s in batch])
            return [min(1.0, max(0.0, 1.0 - v)) for v in scores]
    scores = score_samples(samples, vision, text, SCORERS[cfg.integration_scorer])
    return distill(model, tokenizer, samples, pixels, scores, settings(cfg),
                   judge=rm if cfg.judge else None)


def redistill(ctx: StageContext, model, tokenizer, train: list[Sample],
              pixels: Images) -> tuple[list[str], dict[str, float]]:
    """sft.iterative.distill: a fresh response per train sample from the current model (the
    accepted chain, else its current response) and the distillation metrics."""
    reward_model = ctx.inputs.get("reward_model")
    cfg = ctx.exp.distill
    limit = cfg.limit or len(train)
    result = distill_samples(ctx, model, tokenizer, train[:limit], pixels[:limit], reward_model)
    by_id = {s.id: s for s in result.samples}
    return [by_id.get(s.id, s).response() for s in train], result.metrics


def run(ctx: StageContext) -> StageOutcome:
    exp, cfg = ctx.exp, ctx.exp.distill
    start = ctx.input("aligned_model" if "aligned_model" in ctx.inputs else "base_model")
    dataset = ctx.input("dataset")
    model, tokenizer = load_model(start, "vlm"), load_tokenizer(start)
    train = load_split(dataset, "train")
    chosen = train[: cfg.limit]
    pixels = sample_pixels(dataset, chosen, exp.data.image_size, model)
    result = distill_samples(ctx, model, tokenizer, chosen, pixels,
                             ctx.inputs.get("reward_model"))
    n = min(cfg.compare_limit, len(chosen))
    fixed = fixed_penalty_comparison(model, tokenizer, chosen[:n], pixels[:n],
                                     cfg.fixed_penalty, settings(cfg))
    first = result.records[:n]
    metrics = {**result.metrics, **fixed,
               "adaptive_compare_accuracy": sum(r["first_correct"] for r in first) / n,
               "adaptive_compare_tokens_mean": sum(r["first_tokens"] for r in first) / n,
               "train_size": float(len(result.samples) + len(train) - len(chosen))}
    _write_dataset(dataset, ctx.outputs["distilled"], result, train[len(chosen):])
    return StageOutcome(metrics=metrics, report=_report(exp.name, metrics))


def _write_dataset(source: Path, out: Path, result: DistillResult, rest: list[Sample]) -> None:
    """The input data set with train.jsonl rewritten and distill.jsonl added; dataset.json is
    removed first and written last (its presence marks a complete set)."""
    shutil.copytree(source, out, dirs_exist_ok=True)
    (out / INFO_FILE).unlink(missing_ok=True)
    write_jsonl(out / split_file("train"), [*result.samples, *rest])
    (out / RECORDS_FILE).write_text("".join(json.dumps(r) + "\n" for r in result.records))
    info = read_info(source)
    counts = {**info.counts, "train": len(result.samples) + len(rest)}
    files = {**info.files, "distill": RECORDS_FILE}
    write_info(out, info.model_copy(update={"digest": dataset_digest(out), "counts": counts,
                                            "files": files, "root": out}))


def _report(name: str, metrics: dict[str, float]) -> str:
    lines = [f"# distill (AL-CoTD): {name}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"
