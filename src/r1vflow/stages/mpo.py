"""mpo: R1V2's Mixed Preference Optimization on the start model (base, or SFT/aligned if run).

Method (docs/mpo.md): preference pairs are made the R1V2 way: `mpo.pairs.samples_per_prompt`
responses per train prompt sampled from the start model, checked by rules (answer correct,
format, reasoning steps present, answer consistent with the reasoning) and, when the DAG trains
one, scored by the reward model; a passing response is paired with a failing (or much lower
scored) one (r1vflow.pref.pairs). `mpo.pairs.source` adds or uses synthesize_data's pairs.
Then L = w_dpo*DPO + w_bco*BCO + w_nll*NLL(chosen) (r1vflow.pref.loss) with the reference
log-probs computed once from the start model, only `mpo.trainable` updating (adapter-only by
default, R1V2's best), through the shared training engine. An optional probe feeds the monitor
the RM score and rule accuracy of fresh samples (the "MPO threshold": stop when the gap grows).
After training: greedy validation accuracy, save, register with `r1vflow.parent` = the start
model's version; monitor flags go into the model's metadata (`extra.monitor_flags`) for the
promotion gate.

Departures: the report gives no weights, beta, margins or threshold; all are config values
(defaults: InternVL-MPO's weights 0.8/0.2/1.0, beta 0.1).

    r1vflow run pipelines/configs/tiny-r1v2.yaml --set mpo.epochs=2
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from r1vflow.data.io import load_preferences, load_split, read_info
from r1vflow.eval.grading import format_ok
from r1vflow.eval.scoring import sample_pixels, score_model
from r1vflow.generation import build_engine
from r1vflow.models.devices import load_placed
from r1vflow.models.families import fixed_image_tokens
from r1vflow.models.generate import generate_completions
from r1vflow.models.io import save_model
from r1vflow.models.lora import apply_lora
from r1vflow.models.reward import RewardScorer, load_reward_scorer
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.models.vlm import set_trainable
from r1vflow.pref.data import PairRow, SamplingSettings, encode_items, sample_pairs, synthetic_pairs
from r1vflow.pref.pairs import PairReport, check_rules
from r1vflow.pref.train import MPOResult, MPOSettings, reference_logprobs, train_mpo
from r1vflow.rl.monitor import RewardMonitor
from r1vflow.stages.common import StageContext, StageOutcome, monitor_flags, parent_version

START_INPUTS = ("sft_model", "aligned_model", "base_model")  # the first one given is the start


def start_model(ctx: StageContext) -> Path:
    """The model MPO starts from: the latest stage before it that the DAG runs."""
    for name in START_INPUTS:
        if name in ctx.inputs:
            return ctx.input(name)
    raise ValueError(f"stage {ctx.stage} got none of its start models {START_INPUTS}")


def rm_score_fn(scorer: RewardScorer):
    """rm(questions, pixels, responses) on 0..1: calibrated 0..5 / 5, raw when uncalibrated."""
    def score(questions, pixels, responses):
        if scorer.calibration is None:
            return scorer.score(questions, pixels, responses)
        return [s / 5.0 for s in scorer.score_0to5(questions, pixels, responses)]
    return score


def build_pairs(ctx: StageContext, model, tokenizer, train, rm) -> tuple[list[PairRow],
                                                                          PairReport]:
    """The preference pairs: sampled from `model` on the engine `mpo.generation` chooses (freed
    before training), and/or synthesize_data's pairs."""
    cfg, dataset = ctx.exp.mpo, ctx.input("dataset")
    p = cfg.pairs
    report, rows = PairReport(), []
    if p.source in ("sampled", "both"):
        prompts = train[: p.prompts]
        settings = SamplingSettings(p.samples_per_prompt, p.temperature, p.max_new_tokens,
                                    cfg.val_batch_size, p.min_steps, p.rule_margin,
                                    p.rm_margin, p.gold_chosen, cfg.seed)
        pixels = sample_pixels(dataset, prompts, ctx.exp.data.image_size, model)
        engine = build_engine(ctx.exp.generation_for("mpo").model_copy(
            update={"batch_size": cfg.val_batch_size}), model, tokenizer)
        try:
            rows, report = sample_pairs(engine, tokenizer, prompts, pixels, settings, rm)
        finally:
            engine.close()
    if p.source in ("synthetic", "both"):
        rows += synthetic_pairs(load_preferences(dataset), report)
    if not rows:
        raise ValueError(f"mpo made no preference pairs (dropped: {dict(report.dropped)}); "
                         "set mpo.pairs.gold_chosen, lower mpo.pairs.rule_margin or use "
                         "mpo.pairs.source: both")
    return rows, report


def make_probe(ctx: StageContext, model, tokenizer, train, rm):
    """probe(model) -> greedy rule accuracy, format rate (and RM score) on `probe_size`
    train prompts: what the monitor watches during MPO (images encoded for `model`)."""
    cfg, dataset = ctx.exp.mpo, ctx.input("dataset")
    samples = train[: cfg.probe_size]
    pixels = sample_pixels(dataset, samples, ctx.exp.data.image_size, model)

    def probe(model) -> dict[str, float]:
        texts = [g[0].text for g in generate_completions(
            model, tokenizer, [s.question for s in samples], pixels, cfg.pairs.max_new_tokens,
            cfg.val_batch_size)]
        right = [check_rules(t, s.answer, 1)["answer_correct"]
                 for t, s in zip(texts, samples, strict=True)]
        out = {"accuracy": sum(right) / len(right),
               "format_rate": sum(map(format_ok, texts)) / len(texts)}
        if rm is not None:
            scores = rm([s.question for s in samples], pixels, texts)
            out["reward_model"] = sum(scores) / len(scores)
        return out

    return probe


def run(ctx: StageContext) -> StageOutcome:
    exp, cfg = ctx.exp, ctx.exp.mpo
    start, dataset = start_model(ctx), ctx.input("dataset")
    info = read_info(dataset)
    model, tokenizer = load_placed(start), load_tokenizer(start)
    trainable = set_trainable(model, set(cfg.trainable))
    trainable = apply_lora(model, cfg.lora) or trainable  # lora: adapters on the LLM
    train, val = load_split(dataset, "train"), load_split(dataset, "val")
    rm = None
    if "reward_model" in ctx.inputs:
        rm = rm_score_fn(load_reward_scorer(ctx.input("reward_model"), cfg.val_batch_size,
                                            cfg.max_length))
    ck = ctx.checkpointer()
    rows, report, refs = _pairs_and_refs(ctx, ck, model, tokenizer, train, rm)
    pixels = sample_pixels(dataset, rows, exp.data.image_size, model)
    items = encode_items(tokenizer, rows, pixels, fixed_image_tokens(model), cfg.max_length)
    if refs is None:  # computed once per training, then kept in the checkpoint context
        refs = reference_logprobs(model, items, tokenizer.pad_token_id, cfg.batch_size)
    meta = {"stage": "mpo", "parent": str(start), "config_fingerprint": exp.fingerprint(),
            "data_digests": {"dataset": info.digest}}
    context = {"pairs": [row.__dict__ for row in rows], "refs": refs.tolist(),
               "by_rule": dict(report.by_rule), "dropped": dict(report.dropped)}

    def on_step(step: int, values: dict) -> None:
        ctx.tracker.log_metrics({f"train/{k}": v for k, v in values.items()}, step=step)

    result = train_mpo(
        model, items, refs, MPOSettings.from_section(cfg), pad_id=tokenizer.pad_token_id,
        probe=make_probe(ctx, model, tokenizer, train, rm) if cfg.probe_every else None,
        monitor=RewardMonitor.from_config(cfg.monitor), on_step=on_step,
        checkpoint=ck.phase("train", context=context))
    scored, _ = score_model(model, tokenizer, val[: cfg.val_limit], dataset, exp.data.image_size,
                            max_new_tokens=cfg.val_max_new_tokens, batch_size=cfg.val_batch_size)
    flags = {**monitor_flags(start), **{f"mpo/{k}": v for k, v in result.flags.items()}}
    out = save_model(model, tokenizer, ctx.outputs["model"],
                     {**meta, "extra": {"monitor_flags": flags}})
    _write_pairs(ctx, rows)
    if "checkpoints" in ctx.outputs:  # the index grpo writes too (Checkpointer.write_index)
        ck.write_index(ctx.outputs["checkpoints"])
    version = ctx.register(out, parent=parent_version(start), dataset_digest=info.digest)
    metrics = {**result.summary, **report.metrics(), "val_accuracy": scored["accuracy"],
               "val_format_rate": scored["format_rate"], "train_pairs": float(len(items)),
               "monitor_flags": float(len(result.flags)),
               "resumed_from_step": float(ck.resumed_from_step),
               **{f"trainable_params_{k}": float(v) for k, v in trainable.items()}}
    return StageOutcome(metrics=metrics, model_dir=out, model_version=version,
                        report=_report(exp.name, metrics, result, report))


def _pairs_and_refs(ctx: StageContext, ck, model, tokenizer, train, rm):
    """(pairs, their report, reference log-probs [N, 2] or None): from the resumed
    checkpoint's context when there is one (no sampling, no reference pass), else sampled."""
    saved = ck.resumed.context if ck.resumed is not None else {}
    if "pairs" not in saved:
        return (*build_pairs(ctx, model, tokenizer, train, rm), None)
    report = PairReport(Counter(saved["by_rule"]), Counter(saved["dropped"]))
    refs = torch.tensor(saved["refs"], dtype=torch.float32)
    return [PairRow(**row) for row in saved["pairs"]], report, refs


def _write_pairs(ctx: StageContext, rows: list[PairRow]) -> None:
    """pairs/pairs.jsonl: the training pairs with the rule that made each."""
    folder = ctx.outputs.get("pairs")
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row.__dict__) for row in rows]
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")


def _report(name: str, metrics: dict, result: MPOResult, pairs: PairReport) -> str:
    lines = [f"# mpo: {name}", ""]
    if result.stop_reason:
        lines += [f"**Stopped early by the monitor:** {result.stop_reason}", ""]
    for flag, message in result.flags.items():
        lines.append(f"- monitor flag `{flag}`: {message}")
    lines += ["", "| pairs by rule | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(pairs.by_rule.items())]
    lines += [f"| dropped: {k} | {v} |" for k, v in sorted(pairs.dropped.items())]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"


__all__ = ["rm_score_fn", "run", "start_model"]
