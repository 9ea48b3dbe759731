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
The run is an `IterativeSFT` (what it trains on: `SFTData`; what it has done, the context of
every checkpoint: `SFTState`), one `run_iteration(t)` per iteration.

With the distill stage (AL-CoTD) the train chains are the model's own (its output data set);
with `sft.iterative.distill` AL-CoTD runs again before every iteration t >= 1 on the current
model and the gold items of D take the new chains (re-scored by the reward model).

Departure: the report's D has real mixed-quality responses; here the synthetic responses are all
correct, so rejected responses of the preference pairs stand in for the low-quality part.

    r1vflow run pipelines/configs/tiny.yaml --set sft.trainable='[projector]'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from r1vflow.data.io import load_image, load_preferences, load_split, read_info
from r1vflow.data.schema import Sample
from r1vflow.eval.scoring import score_model
from r1vflow.models.devices import load_placed
from r1vflow.models.families import encode_pixels
from r1vflow.models.families.images import stack_images
from r1vflow.models.io import save_model
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
from r1vflow.train.sft import SFTSettings, eval_loss, train_sft

SCORE_BATCH = 64


def run(ctx: StageContext) -> StageOutcome:
    sft = IterativeSFT.prepare(ctx)
    for t in range(sft.state.iteration, sft.last_iteration + 1):
        sft.run_iteration(t)
    return sft.finish()


@dataclass
class SFTState:
    """What the stage has done, saved as the context of every checkpoint: a rerun skips it."""

    parent: str | None  # the version the next registered model descends from
    previous: str  # that model's directory (its metadata's parent)
    iteration: int = 0  # the iteration being trained, or the next one at a boundary
    steps: int = 0  # optimizer steps of all iterations so far (one curve across them)
    metrics: dict[str, float] = field(default_factory=dict)
    saved: list[str] = field(default_factory=list)  # iterations saved and registered: iter_<t>
    pointers: dict[str, dict | None] = field(default_factory=dict)  # iter_<t> -> its pointer
    chosen: list[int] = field(default_factory=list)  # D_t of iteration t >= 1: indices into D
    sizes: dict[str, int] = field(default_factory=dict)  # |filtered part|, |D_t|, |E|, noisy

    @classmethod
    def begin(cls, start: Path, resumed: dict | None) -> SFTState:
        """The state of a fresh run from the model at `start`, or the one a checkpoint saved."""
        return cls(**{**asdict(cls(parent_version(start), str(start))), **(resumed or {})})

    def context(self) -> dict:
        """The checkpoint's JSON context."""
        return asdict(self)


@dataclass
class SFTData:
    """What sft trains and validates on."""

    train: list[Sample]  # the train split (the gold items of D, in order)
    val: list[Sample]
    pool: list[PoolItem]  # D
    pixels: dict  # image path -> its pixels ([3,H,W] or an ImageInput), each image once
    scores: list[float]  # the reward model's 0..5 score of every item of D ([]: not iterative)
    digest: str  # the data set's

    @classmethod
    def load(cls, ctx: StageContext, dataset: Path, model) -> SFTData:
        """The splits, D and its pixels (for `model`'s family), D scored by the reward model
        when sft is iterative."""
        cfg, it = ctx.exp.sft, ctx.exp.sft.iterative
        train = load_split(dataset, "train")
        val = load_split(dataset, "val")[:cfg.val_limit]
        pool = build_pool(train, load_preferences(dataset) if it else [],
                          it.noisy_fraction if it else 0.0, cfg.seed)
        pixels = _pixels(model, dataset, [p.image for p in pool] + [s.image for s in val],
                         ctx.exp.data.image_size)
        scores = _reward_scores(ctx, pool, pixels) if it else []
        return cls(train, val, pool, pixels, scores, read_info(dataset).digest)


@dataclass
class IterativeSFT:
    """One sft run: iteration 0 on all of D, then (with `sft.iterative`) iterations 1..T on the
    filtered D_t union E_{t-1} (see the module doc); without `sft.iterative` only iteration 0."""

    ctx: StageContext
    model: Any
    tokenizer: Any
    trainable: dict[str, int]  # trainable parameters per part
    data: SFTData
    state: SFTState
    last_stats: Any = None  # the last iteration's training result

    @classmethod
    def prepare(cls, ctx: StageContext) -> IterativeSFT:
        """Load the start model, the data and D, score D, and restore what a checkpoint saved."""
        it = ctx.exp.sft.iterative
        start = ctx.input("aligned_model" if "aligned_model" in ctx.inputs else "base_model")
        # AL-CoTD (the distill stage) rewrote the train chains when it ran
        dataset = ctx.input("distilled_dataset" if "distilled_dataset" in ctx.inputs
                            else "dataset")
        if it is not None and ctx.outputs.get("iterations") is None:
            raise ValueError("sft.iterative saves every iteration's model: the sft component "
                             "must give the stage an 'iterations' output")
        model, tokenizer, trainable = _load_start(ctx, start)
        data = SFTData.load(ctx, dataset, model)
        ck = ctx.checkpointer()
        sft = cls(ctx, model, tokenizer, trainable, data,
                  SFTState.begin(start, ck.resumed.context if ck.resumed else None))
        ck.load_model(model)  # resumed between iterations: the model the next one starts from
        sft.restore_iterations()
        if it is not None:
            sft.state.metrics.update(_score_summary(data.pool, data.scores))
        return sft

    @property
    def last_iteration(self) -> int:
        it = self.ctx.exp.sft.iterative
        return it.iterations if it else 0

    @property
    def iterations_dir(self) -> Path | None:
        return self.ctx.outputs.get("iterations")

    def run_iteration(self, t: int) -> None:
        """Choose D_t (unless a checkpoint inside this iteration holds it), train M_t on it,
        validate; every iteration but the last is registered as it ends."""
        cfg, it, ck = self.ctx.exp.sft, self.ctx.exp.sft.iterative, self.ctx.checkpointer()
        state, metrics, phase, pool = self.state, self.state.metrics, f"iter_{t}", self.data.pool
        if not (ck.resumed and ck.resumed.phase == phase and not ck.resumed.boundary):
            if t and it.distill:  # AL-CoTD again with M_{t-1}, before E_{t-1} and D_t
                metrics.update(self.redistill(t))
            state.iteration = t
            if t:
                self.choose(t)
        chosen = state.chosen if t else list(range(len(pool)))
        stats = self.train_on([pool[i] for i in chosen], it.lr[t - 1] if t else cfg.lr,
                              it.epochs if t else cfg.epochs, t,
                              ck.phase(phase, state.steps, state.context()))
        state.steps += int(stats["steps"])
        metrics.update({f"train_loss/{phase}": stats["loss"], **self.validate(phase)})
        if t == 0:
            metrics["train_size/iter_0"] = float(len(pool))
        else:
            metrics.update({f"{k}/{phase}": float(v) for k, v in state.sizes.items()})
        self.last_stats = stats
        if t < self.last_iteration:
            self.register_iteration()

    def choose(self, t: int) -> None:
        """D_t of iteration t >= 1, from the model M_{t-1} as it is now, and its sizes."""
        it = self.ctx.exp.sft.iterative
        errors = self.error_set(t) if it.error_set else []
        chosen, n_filtered = select_iteration(self.data.scores, it.tau[t - 1], errors)
        pool_gold = len(self.data.train)  # the gold items come first in D
        self.state.chosen = chosen
        self.state.sizes = {
            "train_size": n_filtered, "train_total": len(chosen), "error_set_size": len(errors),
            "noisy_kept": sum(i >= pool_gold for i in chosen)}

    def register_iteration(self) -> None:
        """Save and register the current iteration's model, then checkpoint the boundary (so a
        rerun neither retrains nor registers it again)."""
        state, ck = self.state, self.ctx.checkpointer()
        name = f"iter_{state.iteration}"
        out = self.iterations_dir / name
        version = self.save_and_register(out)
        pointer = self.ctx.published.get(out.resolve())
        if pointer is None:  # no object store: the checkpointer keeps a copy for a rerun
            ck.keep_artifact(name, out)
        state.iteration += 1
        state.parent, state.previous = version, str(out)
        state.saved = [*state.saved, name]
        state.pointers = {**state.pointers, name: pointer}
        ck.save_boundary(state.steps, f"iter_{state.iteration}", self.model, state.context())

    def restore_iterations(self) -> None:
        """Put the iterations a previous attempt registered back into the iterations output: a
        pointer when they were published, else the checkpointer's copy."""
        from r1vflow.storage.pointers import write_pointer

        for name in self.state.saved:
            out = self.iterations_dir / name
            pointer = self.state.pointers.get(name)
            if pointer is not None:
                write_pointer(out, pointer)
                self.ctx.published[out.resolve()] = pointer
            else:
                self.ctx.checkpointer().restore_artifact(name, out)

    def finish(self) -> StageOutcome:
        """Write the iterations' index, register the last model as the stage's, sum up."""
        ctx, state, metrics = self.ctx, self.state, self.state.metrics
        _write_index(self.iterations_dir, state.saved)
        version = self.save_and_register(ctx.outputs["model"])
        last = f"iter_{self.last_iteration}"
        metrics.update({
            "train_size": float(len(self.data.pool)),
            "train_tokens_per_s": float(self.last_stats["tokens_per_s"]),
            "val_loss": metrics[f"val_loss/{last}"],
            "val_accuracy": metrics[f"val_accuracy/{last}"],
            "val_format_rate": metrics[f"val_format_rate/{last}"],
            "resumed_from_step": float(ctx.checkpointer().resumed_from_step),
            **{f"trainable_params_{k}": float(v) for k, v in self.trainable.items()}})
        report = (f"# sft: {ctx.exp.name}\n\n| metric | value |\n|---|---|\n"
                  + "".join(f"| {k} | {v:.4g} |\n" for k, v in metrics.items()))
        return StageOutcome(metrics=metrics, model_dir=ctx.outputs["model"],
                            model_version=version, report=report)

    def train_on(self, items: list[PoolItem], lr: float, epochs: int, iteration: int,
                 checkpoint=None):
        """One iteration's training; step metrics continue one curve across iterations."""
        cfg, ctx, step_offset = self.ctx.exp.sft, self.ctx, self.state.steps

        def on_step(step: int, values: dict) -> None:
            ctx.tracker.log_metrics({**{f"train/{k}": v for k, v in values.items()},
                                     "train/iteration": float(iteration)},
                                    step=step_offset + step)

        return train_sft(self.model, self.tokenizer,
                         [(p.question, p.response, self.data.pixels[p.image]) for p in items],
                         SFTSettings.from_section(cfg, lr=lr, epochs=epochs), on_step=on_step,
                         checkpoint=checkpoint)

    def validate(self, tag: str) -> dict[str, float]:
        exp, val, pixels = self.ctx.exp, self.data.val, self.data.pixels
        items = [(s.question, s.response(), pixels[s.image]) for s in val]
        loss = eval_loss(self.model, self.tokenizer, items, exp.sft.batch_size,
                         exp.sft.max_length)
        scored, _ = score_model(self.model, self.tokenizer, val, self.ctx.input("dataset"),
                                exp.data.image_size, exp.sft.val_max_new_tokens,
                                exp.sft.val_batch_size)
        return {f"val_loss/{tag}": loss, f"val_accuracy/{tag}": scored["accuracy"],
                f"val_format_rate/{tag}": scored["format_rate"]}

    def redistill(self, t: int) -> dict[str, float]:
        """sft.iterative.distill: AL-CoTD again with the current model; the gold items of D (the
        first len(train), in train order) take the new chains and are scored again."""
        from r1vflow.stages.distill import redistill

        data = self.data
        train, pool, n = data.train, data.pool, len(data.train)
        responses, found = redistill(self.ctx, self.model, self.tokenizer, train,
                                     stack_images([data.pixels[s.image] for s in train]))
        for i, response in enumerate(responses):
            pool[i] = replace(pool[i], response=response)
        data.scores[:n] = _reward_scores(self.ctx, pool[:n], data.pixels)
        keep = ("acceptance_rate", "length_difficulty_spearman", "chain_tokens_mean")
        return {f"distill_{k}/iter_{t}": v for k, v in found.items() if k in keep}

    def error_set(self, t: int) -> list[int]:
        """E_{t-1}: indices (into train, = the gold items of D) the current model answers
        wrongly."""
        exp, it = self.ctx.exp, self.ctx.exp.sft.iterative
        train, pixels = self.data.train, self.data.pixels
        scanned = scan_subset(len(train), it.error_scan_limit, seed=f"{exp.sft.seed}:{t}")
        samples = [train[i] for i in scanned]
        wrong = answered_wrongly(self.model, self.tokenizer, samples,
                                 stack_images([pixels[s.image] for s in samples]),
                                 exp.sft.val_max_new_tokens, exp.sft.val_batch_size)
        return [scanned[i] for i in wrong]

    def save_and_register(self, out: Path) -> str | None:
        """Save the model as it is now to `out` and register it (a new version of the sft
        model, descending from the state's parent)."""
        save_model(self.model, self.tokenizer, out, {
            "stage": "sft", "parent": self.state.previous,
            "config_fingerprint": self.ctx.exp.fingerprint(),
            "data_digests": {"dataset": self.data.digest}})
        return self.ctx.register(out, parent=self.state.parent, dataset_digest=self.data.digest)


def _load_start(ctx: StageContext, start: Path) -> tuple[Any, Any, dict[str, int]]:
    """The start model on this rank's device with its trainable parts (and LoRA adapters when
    `sft.lora` asks), its tokenizer, and the trainable parameter counts."""
    cfg, ck = ctx.exp.sft, ctx.checkpointer()
    # ZeRO-3: every rank loads only its partition (a resume between iterations loads the
    # boundary's full state dict into the model instead, so it loads whole)
    zero3 = None if ck.resumed and ck.resumed.boundary else zero3_load_config(
        cfg.backend, cfg.zero_stage, cfg.lr, cfg.weight_decay)
    model, tokenizer = load_placed(start, zero3=zero3), load_tokenizer(start)
    trainable = set_trainable(model, set(cfg.trainable))
    trainable = apply_lora(model, cfg.lora) or trainable  # lora: adapters on the LLM
    return model, tokenizer, trainable


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


def _write_index(folder: Path | None, names: list[str]) -> None:
    """iterations/index.json: the saved intermediate iterations (kfp.local needs a file)."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "index.json", json.dumps({"iterations": names}, indent=2) + "\n")
