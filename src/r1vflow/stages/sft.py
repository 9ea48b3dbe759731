"""sft: supervised fine-tuning on the synthetic reasoning data; R1V's iterative SFT (stage 2).

The model starts from the aligned model (align_projector) or, when that stage is off, the base
model. The loss covers the assistant's tokens only (<think>...</think><answer>...</answer> and
the end marker); only the parts in `sft.trainable` receive gradients.

Without `sft.iterative`: one pass over the train split. With it (R1V stage 2):
- D = the train samples with their gold responses + `noisy_fraction` x |train| rejected
  responses of train preference pairs (mixed quality, like the report's D; see
  r1vflow.train.iterative). Every item of D gets a reward score on 0..5 once, from the
  calibrated reward model (train_reward_model).
- iteration 0 trains M0 on all of D at `sft.lr`;
- iteration t = 1..T trains M_t from M_{t-1} on {score >= tau_t} union E_{t-1} at
  `iterative.lr[t-1]`, where E_{t-1} are the train samples (up to `error_scan_limit`, drawn
  afresh each iteration) that M_{t-1} answers wrongly, greedily, with their gold responses.
Metrics per iteration: `train_size/iter_<t>` (the filtered part, before E: it cannot grow with
tau), `train_total/iter_<t>`, `error_set_size/iter_<t>` (|E_{t-1}|), `noisy_kept/iter_<t>`,
`val_accuracy/iter_<t>`. Every iteration's model is saved and registered as a new version of
the sft model whose `r1vflow.parent` is the previous iteration's (iteration 0's: the start
model's); the last one is the stage's `model`, the others sit in `iterations/iter_<t>`.

With the distill stage (AL-CoTD) the train chains are the model's own (its output data set);
with `sft.iterative.distill` AL-CoTD runs again before every iteration t >= 1 on the current
model and the gold items of D take the new chains (re-scored by the reward model).

Departure: the report's D has real mixed-quality responses; here the synthetic responses are all
correct, so rejected responses of the preference pairs stand in for the low-quality part.

    r1vflow run pipelines/configs/tiny.yaml --set sft.trainable='[projector]'
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from r1vflow.data.io import load_image, load_preferences, load_split, read_info
from r1vflow.eval.scoring import score_model
from r1vflow.models.devices import place
from r1vflow.models.families import encode_pixels
from r1vflow.models.families.images import stack_images
from r1vflow.models.io import load_model, save_model
from r1vflow.models.lora import apply_lora
from r1vflow.models.reward import load_reward_scorer
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.models.vlm import set_trainable
from r1vflow.stages.common import StageContext, StageOutcome, parent_version
from r1vflow.storage.atomic import write_text
from r1vflow.train.engine import zero3_load_config
from r1vflow.train.iterative import (
    PoolItem,
    answered_wrongly,
    build_pool,
    scan_subset,
    select_iteration,
)
from r1vflow.train.sft import eval_loss, train_sft

SCORE_BATCH = 64


def run(ctx: StageContext) -> StageOutcome:
    exp, cfg, it = ctx.exp, ctx.exp.sft, ctx.exp.sft.iterative
    start = ctx.input("aligned_model" if "aligned_model" in ctx.inputs else "base_model")
    # AL-CoTD (the distill stage) rewrote the train chains when it ran
    dataset = ctx.input("distilled_dataset" if "distilled_dataset" in ctx.inputs else "dataset")
    info = read_info(dataset)
    ck = ctx.checkpointer()
    # ZeRO-3: every rank loads only its partition (a resume between iterations loads the
    # boundary's full state dict into the model instead, so it loads whole)
    zero3 = None if ck.resumed and ck.resumed.boundary else zero3_load_config(
        cfg.backend, cfg.zero_stage, cfg.lr, cfg.weight_decay)
    model, tokenizer = place(load_model(start, "vlm", zero3=zero3)), load_tokenizer(start)
    trainable = set_trainable(model, set(cfg.trainable))
    trainable = apply_lora(model, cfg.lora) or trainable  # lora: adapters on the LLM
    train = load_split(dataset, "train")
    val = load_split(dataset, "val")[:cfg.val_limit]
    pool = build_pool(train, load_preferences(dataset) if it else [],
                      it.noisy_fraction if it else 0.0, cfg.seed)
    pixels = _pixels(model, dataset, [p.image for p in pool] + [s.image for s in val],
                     exp.data.image_size)
    scores = _reward_scores(ctx, pool, pixels) if it else []
    iterations_dir = ctx.outputs.get("iterations")
    if it is not None and iterations_dir is None:
        raise ValueError("sft.iterative saves every iteration's model: the sft component must "
                         "give the stage an 'iterations' output")
    # The stage's own state, saved with every checkpoint: a rerun skips what it records.
    state = {"iteration": 0, "steps": 0, "metrics": {}, "parent": parent_version(start),
             "previous": str(start), "saved": [], "pointers": {},
             **(ck.resumed.context if ck.resumed else {})}
    ck.load_model(model)  # resumed between iterations: the model the next one starts from
    _restore_iterations(ctx, ck, iterations_dir, state)
    metrics = state["metrics"]
    if it is not None:
        metrics.update(_score_summary(pool, scores))
    last_t = it.iterations if it else 0
    for t in range(state["iteration"], last_t + 1):
        phase = f"iter_{t}"
        if not (ck.resumed and ck.resumed.phase == phase and not ck.resumed.boundary):
            if t and it.distill:  # AL-CoTD again with M_{t-1}, before E_{t-1} and D_t
                metrics.update(_redistill(ctx, model, tokenizer, train, pool, scores, pixels, t))
            state.update(iteration=t, **_iteration_data(ctx, model, tokenizer, train, pixels,
                                                        scores, t))
        chosen = state["chosen"] if t else list(range(len(pool)))
        stats = _train(ctx, model, tokenizer, [pool[i] for i in chosen], pixels,
                       it.lr[t - 1] if t else cfg.lr, it.epochs if t else cfg.epochs, t,
                       state["steps"], ck.phase(phase, state["steps"], state))
        state["steps"] += int(stats["steps"])
        metrics.update({f"train_loss/{phase}": stats["loss"],
                        **_validate(ctx, model, tokenizer, val, pixels, phase)})
        if t == 0:
            metrics["train_size/iter_0"] = float(len(pool))
        else:
            metrics.update({f"{k}/{phase}": float(v) for k, v in state["sizes"].items()})
        if t < last_t:  # every iteration but the last is registered as it ends
            _register_iteration(ctx, ck, model, tokenizer, iterations_dir, info.digest, state)
    _write_index(iterations_dir, state["saved"])
    version = _register(ctx, model, tokenizer, ctx.outputs["model"], state["parent"],
                        info.digest, Path(state["previous"]))
    last = f"iter_{last_t}"
    metrics.update({
        "train_size": float(len(pool)), "train_tokens_per_s": float(stats["tokens_per_s"]),
        "val_loss": metrics[f"val_loss/{last}"], "val_accuracy": metrics[f"val_accuracy/{last}"],
        "val_format_rate": metrics[f"val_format_rate/{last}"],
        "resumed_from_step": float(ck.resumed_from_step),
        **{f"trainable_params_{k}": float(v) for k, v in trainable.items()}})
    report = (f"# sft: {exp.name}\n\n| metric | value |\n|---|---|\n"
              + "".join(f"| {k} | {v:.4g} |\n" for k, v in metrics.items()))
    return StageOutcome(metrics=metrics, model_dir=ctx.outputs["model"], model_version=version,
                        report=report)


def _iteration_data(ctx: StageContext, model, tokenizer, train, pixels, scores: list[float],
                    t: int) -> dict:
    """D_t of iteration t >= 1 (from the model M_{t-1} as it is now) and its sizes; {} for 0."""
    if t == 0:
        return {}
    it = ctx.exp.sft.iterative
    errors = _error_set(ctx, model, tokenizer, train, pixels, t) if it.error_set else []
    chosen, n_filtered = select_iteration(scores, it.tau[t - 1], errors)
    pool_gold = len(train)  # the gold items come first in D
    return {"chosen": chosen, "sizes": {
        "train_size": n_filtered, "train_total": len(chosen), "error_set_size": len(errors),
        "noisy_kept": sum(i >= pool_gold for i in chosen)}}


def _register_iteration(ctx: StageContext, ck, model, tokenizer, iterations_dir: Path,
                        digest: str, state: dict) -> None:
    """Save and register iteration `state["iteration"]`'s model, then checkpoint the boundary
    (so a rerun neither retrains nor registers it again)."""
    name = f"iter_{state['iteration']}"
    out = iterations_dir / name
    version = _register(ctx, model, tokenizer, out, state["parent"], digest,
                        Path(state["previous"]))
    pointer = ctx.published.get(out.resolve())
    if pointer is None:  # no object store: the checkpointer keeps a copy for a rerun
        ck.keep_artifact(name, out)
    state.update(iteration=state["iteration"] + 1, parent=version, previous=str(out),
                 saved=[*state["saved"], name], pointers={**state["pointers"], name: pointer})
    ck.save_boundary(state["steps"], f"iter_{state['iteration']}", model, state)


def _restore_iterations(ctx: StageContext, ck, iterations_dir: Path | None, state: dict) -> None:
    """Put the iterations a previous attempt registered back into the iterations output: a
    pointer when they were published, else the checkpointer's copy."""
    from r1vflow.storage.pointers import write_pointer

    for name in state["saved"]:
        out = iterations_dir / name
        pointer = state["pointers"].get(name)
        if pointer is not None:
            write_pointer(out, pointer)
            ctx.published[out.resolve()] = pointer
        else:
            ck.restore_artifact(name, out)


def _pixels(model, dataset: Path, images: list[str], image_size: int) -> dict:
    """Each distinct image once, as [3,H,W] or its family's ImageInput."""
    paths = sorted(set(images))
    tensor = encode_pixels(model, [load_image(dataset, p) for p in paths], image_size)
    return dict(zip(paths, tensor, strict=True))


def _reward_scores(ctx: StageContext, pool: list[PoolItem], pixels) -> list[float]:
    """The calibrated 0..5 reward of every item of D."""
    scorer = load_reward_scorer(ctx.input("reward_model"), SCORE_BATCH,
                                ctx.exp.train_reward_model.max_length)
    return scorer.score_0to5([p.question for p in pool],
                             stack_images([pixels[p.image] for p in pool]),
                             [p.response for p in pool])


def _score_summary(pool: list[PoolItem], scores: list[float]) -> dict[str, float]:
    out = {"pool_gold": float(sum(p.gold for p in pool)),
           "pool_noisy": float(sum(not p.gold for p in pool))}
    for label, gold in (("gold", True), ("noisy", False)):
        values = [s for p, s in zip(pool, scores, strict=True) if p.gold == gold]
        if values:
            out[f"rm_score_mean_{label}"] = sum(values) / len(values)
    return out


def _train(ctx: StageContext, model, tokenizer, items: list[PoolItem], pixels, lr: float,
           epochs: int, iteration: int, step_offset: int, checkpoint=None) -> dict[str, float]:
    """One iteration's training; step metrics continue one curve across iterations."""
    cfg = ctx.exp.sft

    def on_step(step: int, values: dict) -> None:
        ctx.tracker.log_metrics({**{f"train/{k}": v for k, v in values.items()},
                                 "train/iteration": float(iteration)}, step=step_offset + step)

    return train_sft(model, tokenizer, [(p.question, p.response, pixels[p.image]) for p in items],
                     epochs=epochs, batch_size=cfg.batch_size, lr=lr,
                     weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
                     max_length=cfg.max_length, seed=cfg.seed, on_step=on_step, progress=True,
                     backend=cfg.backend, zero_stage=cfg.zero_stage, checkpoint=checkpoint)


def _validate(ctx: StageContext, model, tokenizer, val, pixels, tag: str) -> dict[str, float]:
    exp = ctx.exp
    items = [(s.question, s.response(), pixels[s.image]) for s in val]
    loss = eval_loss(model, tokenizer, items, exp.sft.batch_size, exp.sft.max_length)
    scored, _ = score_model(model, tokenizer, val, ctx.input("dataset"), exp.data.image_size,
                            exp.sft.val_max_new_tokens, exp.sft.val_batch_size)
    return {f"val_loss/{tag}": loss, f"val_accuracy/{tag}": scored["accuracy"],
            f"val_format_rate/{tag}": scored["format_rate"]}


def _redistill(ctx: StageContext, model, tokenizer, train, pool: list[PoolItem],
               scores: list[float], pixels, t: int) -> dict[str, float]:
    """sft.iterative.distill: AL-CoTD again with the current model; the gold items of D (the
    first len(train), in train order) take the new chains and are scored again."""
    from r1vflow.stages.distill import redistill

    responses, found = redistill(ctx, model, tokenizer, train,
                                 stack_images([pixels[s.image] for s in train]))
    for i, response in enumerate(responses):
        pool[i] = replace(pool[i], response=response)
    scores[: len(train)] = _reward_scores(ctx, pool[: len(train)], pixels)
    keep = ("acceptance_rate", "length_difficulty_spearman", "chain_tokens_mean")
    return {f"distill_{k}/iter_{t}": v for k, v in found.items() if k in keep}


def _error_set(ctx: StageContext, model, tokenizer, train, pixels, t: int) -> list[int]:
    """E_{t-1}: indices (into train, = the gold items of D) the current model answers wrongly."""
    exp, it = ctx.exp, ctx.exp.sft.iterative
    scanned = scan_subset(len(train), it.error_scan_limit, seed=f"{exp.sft.seed}:{t}")
    samples = [train[i] for i in scanned]
    wrong = answered_wrongly(model, tokenizer, samples,
                             stack_images([pixels[s.image] for s in samples]),
                             exp.sft.val_max_new_tokens, exp.sft.val_batch_size)
    return [scanned[i] for i in wrong]


def _register(ctx: StageContext, model, tokenizer, out: Path, parent: str | None, digest: str,
              parent_dir: Path) -> str | None:
    """Save one iteration's model to `out` and register it (a new version of the sft model)."""
    save_model(model, tokenizer, out, {
        "stage": "sft", "parent": str(parent_dir), "config_fingerprint": ctx.exp.fingerprint(),
        "data_digests": {"dataset": digest}})
    return ctx.register(out, parent=parent, dataset_digest=digest)


def _write_index(folder: Path | None, names: list[str]) -> None:
    """iterations/index.json: the saved intermediate iterations (kfp.local needs a file)."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "index.json", json.dumps({"iterations": names}, indent=2) + "\n")
