"""sft: supervised fine-tuning on the synthetic reasoning data.

The loss covers the assistant's tokens only (<think>...</think><answer>...</answer> and the end
marker); the prompt and the image tokens are masked. Only the parts named in `sft.trainable`
(vision / projector / llm) receive gradients. After training the stage reports validation loss
and greedy validation accuracy, saves the model (safetensors) and registers it with
`r1vflow.parent` = the base model's version.

    r1vflow run pipelines/configs/tiny.yaml --set sft.trainable='[projector]'
"""

from __future__ import annotations

from r1vflow.data.io import load_split, read_info
from r1vflow.eval.scoring import sample_pixels, score_model
from r1vflow.models.io import load_model, save_model
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.models.vlm import set_trainable
from r1vflow.stages.common import StageContext, StageOutcome, parent_version
from r1vflow.train.sft import eval_loss, train_sft

VAL_ACCURACY_LIMIT = 256  # validation samples generated for val_accuracy


def run(ctx: StageContext) -> StageOutcome:
    exp, cfg = ctx.exp, ctx.exp.sft
    base, dataset = ctx.input("base_model"), ctx.input("dataset")
    info = read_info(dataset)
    model, tokenizer = load_model(base, "vlm"), load_tokenizer(base)
    trainable = set_trainable(model, set(cfg.trainable))

    train = load_split(dataset, "train")
    val = load_split(dataset, "val")
    pixels = sample_pixels(dataset, train, exp.data.image_size)
    items = [(s.question, s.response(), pixels[i]) for i, s in enumerate(train)]

    def on_step(step: int, m: dict) -> None:
        ctx.tracker.log_metrics({f"train/{k}": v for k, v in m.items()}, step=step)

    stats = train_sft(model, tokenizer, items, epochs=cfg.epochs, batch_size=cfg.batch_size,
                      lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
                      max_length=cfg.max_length, seed=cfg.seed, on_step=on_step,
                      progress=True, backend=cfg.backend, zero_stage=cfg.zero_stage)
    val_pixels = sample_pixels(dataset, val, exp.data.image_size)
    val_items = [(s.question, s.response(), val_pixels[i]) for i, s in enumerate(val)]
    val_loss = eval_loss(model, tokenizer, val_items, batch_size=cfg.batch_size,
                         max_length=cfg.max_length)
    scored, _ = score_model(model, tokenizer, val[:VAL_ACCURACY_LIMIT], dataset,
                            exp.data.image_size, max_new_tokens=exp.evaluate.max_new_tokens,
                            batch_size=exp.evaluate.batch_size)

    out = save_model(model, tokenizer, ctx.outputs["model"], {
        "stage": "sft", "parent": str(base), "config_fingerprint": exp.fingerprint(),
        "data_digests": {"dataset": info.digest}})
    version = ctx.register(out, parent=parent_version(base), dataset_digest=info.digest)
    metrics = {
        "train_loss": float(stats["loss"]),
        "train_tokens_per_s": float(stats["tokens_per_s"]),
        "train_steps": float(stats["steps"]),
        "train_size": float(len(train)),
        "val_loss": float(val_loss),
        "val_accuracy": scored["accuracy"],
        "val_format_rate": scored["format_rate"],
        **{f"trainable_params_{k}": float(v) for k, v in trainable.items()},
    }
    report = (f"# sft: {exp.name}\n\n| metric | value |\n|---|---|\n"
              + "".join(f"| {k} | {v:.4g} |\n" for k, v in metrics.items()))
    return StageOutcome(metrics=metrics, model_dir=out, model_version=version, report=report)
