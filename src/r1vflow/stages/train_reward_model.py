"""train_reward_model: the multimodal reward model (Skywork-VL Reward) that filters SFT data.

The base VLM gets a scalar value head on the last token's hidden state and is trained with the
pairwise loss -log sigmoid(r_chosen - r_rejected) on the train split's preference pairs from
synthesize_data: the reference response against a wrong answer, a misread scene, a broken
format, or reasoning that contradicts its own answer. Only the parts in
`train_reward_model.trainable` train (default projector + LLM: the report freezes the vision
encoder), plus the head.

On the val pairs it reports `pairwise_accuracy` (also per kind), mean/std of the chosen and
rejected scores, and fits the 0..5 calibration R1V's filtering thresholds need: the
`calibration.low_quantile` of the rejected scores maps to 0, the `calibration.high_quantile` of
the chosen scores to 5, linear between and clipped (docs/recipe-stages.md). The model (VLM,
head, calibration) is saved as safetensors and registered with `r1vflow.parent` = the base model.

Departures: one stage on image pairs (the report adds a text-only stage at 1e-6); the base is
the tiny base VLM, not Qwen2.5-VL-7B-Instruct. Two options off by default help tiny models:
`likelihood_term` adds a learned multiple of the response's mean log-probability to the
value head's output, `nll_weight` adds the chosen responses' NLL to the loss (see
docs/recipe-stages.md for why and the measured effect).

    r1vflow run pipelines/configs/tiny.yaml --set train_reward_model.trainable='[projector]'
"""

from __future__ import annotations

from collections import defaultdict

import torch

from r1vflow.data.io import load_image, load_preferences, read_info
from r1vflow.data.schema import PreferencePair
from r1vflow.models.devices import load_placed
from r1vflow.models.families import encode_pixels
from r1vflow.models.families.images import stack_images
from r1vflow.models.lora import apply_lora
from r1vflow.models.reward import (
    RewardModel,
    ScoreCalibration,
    reward_scores,
    save_reward_model,
)
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.models.vlm import set_trainable
from r1vflow.stages.common import StageContext, StageOutcome, parent_version
from r1vflow.train.engine import zero3_load_config
from r1vflow.train.reward import (
    RewardSettings,
    fit_calibration,
    pairwise_metrics,
    train_reward,
)

SCORE_BATCH = 64


def run(ctx: StageContext) -> StageOutcome:
    exp, cfg = ctx.exp, ctx.exp.train_reward_model
    base_dir, dataset = ctx.input("base_model"), ctx.input("dataset")
    info = read_info(dataset)
    pairs = load_preferences(dataset)
    train = [p for p in pairs if p.split == "train"]
    val = [p for p in pairs if p.split == "val"]
    if not train or not val:
        raise ValueError(f"{dataset}: train_reward_model needs train and val preference pairs, "
                         f"found {len(train)} and {len(val)}; raise "
                         "synthesize_data.num_preference_pairs or num_val")
    torch.manual_seed(cfg.seed)  # the value head's initialisation
    zero3 = zero3_load_config(cfg.backend, cfg.zero_stage, cfg.lr, cfg.weight_decay)
    model = RewardModel(load_placed(base_dir, zero3=zero3), cfg.likelihood_term)
    tokenizer = load_tokenizer(base_dir)
    trainable = set_trainable(model.vlm, set(cfg.trainable))
    trainable = apply_lora(model.vlm, cfg.lora) or trainable  # lora: adapters on the LLM
    pixels = _pixels(model.vlm, dataset, pairs, exp.data.image_size)

    def on_step(step: int, values: dict) -> None:
        ctx.tracker.log_metrics({f"train/{k}": v for k, v in values.items()}, step=step)

    stats = train_reward(
        model, tokenizer, [(p.question, p.chosen, p.rejected, pixels[p.image]) for p in train],
        RewardSettings.from_section(cfg), on_step=on_step,
        checkpoint=ctx.checkpointer().phase("train"))
    chosen, rejected = _score_pairs(model, tokenizer, val, pixels, cfg.max_length)
    metrics = pairwise_metrics(chosen, rejected)
    metrics.update(_accuracy_by_kind(val, chosen, rejected))
    calibration = fit_calibration(chosen, rejected, cfg.calibration.low_quantile,
                                  cfg.calibration.high_quantile)
    metrics.update({
        "calibration_low": calibration.low, "calibration_high": calibration.high,
        "train_loss": stats["loss"], "train_pairwise_accuracy": stats["accuracy"],
        "train_pairs": float(len(train)), "val_pairs": float(len(val)),
        "resumed_from_step": float(ctx.checkpointer().resumed_from_step),
        **{f"trainable_params_{k}": float(v) for k, v in trainable.items()},
    })
    out = save_reward_model(model, tokenizer, ctx.outputs["model"], {
        "stage": "train_reward_model", "parent": str(base_dir),
        "config_fingerprint": exp.fingerprint(), "data_digests": {"dataset": info.digest}},
        calibration)
    version = ctx.register(out, parent=parent_version(base_dir), dataset_digest=info.digest)
    return StageOutcome(metrics=metrics, model_dir=out, model_version=version,
                        report=_report(exp.name, metrics),
                        report_data=_report_data(chosen, rejected, calibration))


def _pixels(vlm, dataset, pairs: list[PreferencePair], image_size: int) -> dict:
    paths = sorted({p.image for p in pairs})
    tensor = encode_pixels(vlm, [load_image(dataset, p) for p in paths], image_size)
    return dict(zip(paths, tensor, strict=True))


def _score_pairs(model, tokenizer, pairs, pixels, max_length: int):
    questions = [p.question for p in pairs]
    images = stack_images([pixels[p.image] for p in pairs])
    return tuple(reward_scores(model, tokenizer, questions, images, responses, SCORE_BATCH,
                               max_length)
                 for responses in ([p.chosen for p in pairs], [p.rejected for p in pairs]))


def _accuracy_by_kind(pairs, chosen, rejected) -> dict[str, float]:
    wins: dict[str, list[bool]] = defaultdict(list)
    for pair, c, r in zip(pairs, chosen, rejected, strict=True):
        wins[pair.kind].append(c > r)
    return {f"pairwise_accuracy_{kind}": sum(w) / len(w) for kind, w in sorted(wins.items())}


def _report_data(chosen: list[float], rejected: list[float],
                 calibration: ScoreCalibration) -> dict[str, list[float]]:
    """The val scores, raw and on the calibrated 0..5 scale, for the report's histograms and
    calibration figure (r1vflow.reports.stages.reward_model_figures)."""
    return {"val_chosen": list(chosen), "val_rejected": list(rejected),
            "val_chosen_0to5": calibration.to_scale(torch.tensor(chosen)).tolist(),
            "val_rejected_0to5": calibration.to_scale(torch.tensor(rejected)).tolist()}


def _report(name: str, metrics: dict[str, float]) -> str:
    lines = [f"# train_reward_model: {name}", "", "| metric (val pairs) | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()
              if not k.startswith(("train", "trainable"))]
    return "\n".join(lines) + "\n"
