"""align_projector: R1V stage 1, efficient multimodal transfer through the MLP projector.

1. MLP initialisation: assemble the base model's vision tower and projector with the frozen
   *substitute* LLM (same architecture and tokenizer, instruct-style: bootstrap trains it on
   captions and short question/answer text) and train only the MLP over the configured
   sub-stages (the report's: full set at 2e-4, a 10% subset at 4e-5, 2% chain-of-thought at 4e-5).
2. Re-assembly: move the trained MLP onto the reasoning LLM (the base model's), no tuning.
   Hidden size, vocabulary and `<image>` id must match; otherwise the stage fails naming them.
3. Modality alignment: train only the MLP again, vision encoder and reasoning LLM frozen.

After each step: validation loss on the val split's step-by-step responses and greedy accuracy
(answers graded with the same extraction everywhere, so the substitute's untagged answers
count too): `val_loss|val_accuracy/substitute|transferred|aligned`, the retention across the
transfer (the report: MMMU 64.0 -> 60.2 -> recovered). The aligned model is saved and
registered with `r1vflow.parent` = the base model's version.

Departures: no quality scoring picks the report's "quality" subset (a seeded random share is
used), and the substitute is a tiny LM pretrained here, not Qwen2.5-32B-Instruct.

    r1vflow run pipelines/configs/tiny.yaml --set align_projector.align.epochs=2
"""

from __future__ import annotations

from pathlib import Path

import torch

from r1vflow.data.io import load_captions, load_image, load_split, read_info
from r1vflow.eval.scoring import score_model
from r1vflow.models.devices import load_placed, place
from r1vflow.models.families import encode_pixels
from r1vflow.models.io import save_model
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.models.transfer import check_same_tokenizer, transfer_projector
from r1vflow.models.vlm import set_trainable, swap_llm
from r1vflow.stages.common import StageContext, StageOutcome, parent_version
from r1vflow.train.align import AlignText, alignment_texts
from r1vflow.train.sft import SFTSettings, eval_loss, train_sft

STEPS = ("substitute", "transferred", "aligned")


def run(ctx: StageContext) -> StageOutcome:
    exp, cfg = ctx.exp, ctx.exp.align_projector
    base_dir, dataset = ctx.input("base_model"), ctx.input("dataset")
    substitute_dir = ctx.input("substitute_llm")
    info = read_info(dataset)
    base, tokenizer, model = _load_models(base_dir, substitute_dir)
    train, val = load_split(dataset, "train"), load_split(dataset, "val")[: cfg.val_limit]
    captions = load_captions(dataset)
    pixels = _PixelCache(base, dataset, exp.data.image_size)
    val_items = pixels.items([(s.question, s.response(), s.image) for s in val])
    ck = ctx.checkpointer()
    # What is done (sub-stages, the transfer, align) and its metrics, saved with every
    # checkpoint: a rerun skips it.
    state = {"done": [], "metrics": {}, "steps": 0, **(ck.resumed.context if ck.resumed else {})}
    metrics: dict[str, float] = state["metrics"]

    def evaluate(vlm, label: str) -> None:
        metrics[f"val_loss/{label}"] = eval_loss(vlm, tokenizer, val_items, cfg.batch_size,
                                                 cfg.max_length)
        scored, _ = score_model(vlm, tokenizer, val, dataset, exp.data.image_size,
                                cfg.val_max_new_tokens, cfg.val_batch_size)
        metrics[f"val_accuracy/{label}"] = scored["accuracy"]
        metrics[f"val_format_rate/{label}"] = scored["format_rate"]

    def fit(name: str, data, fraction, limit, lr, epochs, tag: str, next_phase: str) -> None:
        if name in state["done"]:
            return
        texts = alignment_texts(data, captions, train, fraction, limit, f"{cfg.seed}:{name}")
        stats = _train_projector(ctx, model, tokenizer, pixels.items(texts), lr, epochs, tag,
                                 ck.phase(name, state["steps"], state))
        state["steps"] += int(stats["steps"])
        metrics[f"train_loss/{name}"] = stats["loss"]
        metrics[f"train_size/{name}"] = float(len(texts))
        state["done"].append(name)
        ck.save_boundary(state["steps"], next_phase, model, state)

    if "transferred" in state["done"]:
        model = place(transfer_projector(model, base, tokenizer))
    ck.load_model(model)  # resumed between phases: the model as that boundary saved it
    names = [sub.name for sub in cfg.substages]
    for i, sub in enumerate(cfg.substages):  # step 1: MLP only, substitute LLM
        fit(sub.name, sub.data, sub.fraction, sub.limit, sub.lr, sub.epochs,
              f"substitute/{sub.name}", names[i + 1] if i + 1 < len(names) else "transfer")
    if "transferred" not in state["done"]:
        evaluate(model, "substitute")
        model = place(transfer_projector(model, base, tokenizer))  # step 2: re-assembly, no tuning
        evaluate(model, "transferred")
        state["done"].append("transferred")
        ck.save_boundary(state["steps"], "align", model, state)
    align = cfg.align  # step 3: MLP only, reasoning LLM
    fit("align", align.data, align.fraction, align.limit, align.lr, align.epochs, "align",
          "aligned")
    evaluate(model, "aligned")
    metrics["resumed_from_step"] = float(ck.resumed_from_step)

    out, version = _save(ctx, model, tokenizer, base_dir, substitute_dir, info.digest)
    return StageOutcome(metrics=metrics, model_dir=out, model_version=version,
                        report=_report(exp.name, metrics))


def _load_models(base_dir: Path, substitute_dir: Path):
    """(the base VLM, its tokenizer, the base VLM's vision tower and projector with the
    substitute LLM on this rank's device); the tokenizers must be the same."""
    # the base model's reasoning LLM waits on the CPU for the transfer (step 2)
    base, tokenizer = load_placed(base_dir, device="cpu"), load_tokenizer(base_dir)
    check_same_tokenizer(tokenizer, load_tokenizer(substitute_dir),
                         "the substitute LLM's tokenizer")
    model = place(swap_llm(base, load_placed(substitute_dir, "causal_lm"), tokenizer))
    return base, tokenizer, model


def _save(ctx: StageContext, model, tokenizer, base_dir: Path, substitute_dir: Path,
          digest: str) -> tuple[Path, str | None]:
    """Save the aligned model with its lineage and register it (parent: the base model)."""
    out = save_model(model, tokenizer, ctx.outputs["model"], {
        "stage": "align_projector", "parent": str(base_dir),
        "config_fingerprint": ctx.exp.fingerprint(), "data_digests": {"dataset": digest},
        "extra": {"substitute_llm": parent_version(substitute_dir) or str(substitute_dir)}})
    version = ctx.register(out, parent=parent_version(base_dir), dataset_digest=digest)
    return out, version


def _train_projector(ctx: StageContext, model, tokenizer, items, lr: float, epochs: int,
                     tag: str, checkpoint=None) -> dict[str, float]:
    """Train only the projector of `model` on `items` (question, response, pixels [3,H,W])."""
    cfg = ctx.exp.align_projector
    set_trainable(model, {"projector"})

    def on_step(step: int, values: dict) -> None:
        ctx.tracker.log_metrics({f"train/{tag}/{k}": v for k, v in values.items()}, step=step)

    return train_sft(model, tokenizer, items, SFTSettings.from_section(cfg, lr=lr, epochs=epochs),
                     on_step=on_step, checkpoint=checkpoint)


class _PixelCache:
    """Images of the data set as the model reads them ([3,H,W] tensors or its family's
    ImageInputs; the vision tower, hence the encoding, is the same before and after the
    transfer), each read once."""

    def __init__(self, model, dataset: Path, image_size: int) -> None:
        self.model, self.dataset, self.image_size = model, dataset, image_size
        self._cache: dict[str, torch.Tensor] = {}

    def items(self, texts: list[AlignText]) -> list[tuple[str, str, torch.Tensor]]:
        missing = sorted({image for *_, image in texts} - set(self._cache))
        if missing:
            loaded = encode_pixels(self.model, [load_image(self.dataset, p) for p in missing],
                                   self.image_size)
            self._cache.update(zip(missing, loaded, strict=True))
        return [(q, r, self._cache[image]) for q, r, image in texts]


def _report(name: str, metrics: dict[str, float]) -> str:
    lines = [f"# align_projector: {name}", "", "| step | val loss | val accuracy | format |",
             "|---|---|---|---|"]
    lines += [f"| {s} | {metrics[f'val_loss/{s}']:.4f} | {metrics[f'val_accuracy/{s}']:.3f} | "
              f"{metrics[f'val_format_rate/{s}']:.3f} |" for s in STEPS]
    lines += ["", "| training | samples | final loss |", "|---|---|---|"]
    lines += [f"| {k.split('/', 1)[1]} | {metrics[k.replace('loss', 'size')]:.0f} | "
              f"{metrics[k]:.4f} |" for k in metrics if k.startswith("train_loss/")]
    return "\n".join(lines) + "\n"
