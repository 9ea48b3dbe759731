"""grpo: R1V2's reinforcement learning, GRPO with hybrid rewards and the SSB, on the latest
model before it: MPO's (R1V2: base -> mpo -> grpo), else SFT's, else the base model.

Method (docs/grpo.md): for each step, `prompts_per_step` training questions with their images,
`group_size` sampled responses each; reward r = w_acc * accuracy + w_fmt * format
(+ w_rm * the reward model's score, when the DAG trains one); advantages normalised within
each group; the Selective Sample Buffer swaps zero-advantage samples for buffered
non-zero-advantage ones (weighted by |A|) when the batch's effective share falls below its
target; clipped surrogate updates of the parts named in `grpo.trainable` (default: the
projector only, R1V2's best), optional k3 KL to the start model. A monitor flags reward
hacking (reward-model score up, accuracy not; or the RM-vs-rule gap, the "MPO threshold") and
format collapse, and can stop the run; its flags (and the start model's) go into the model's
metadata for the promotion gate. After training: greedy validation accuracy, save
(safetensors), register with `r1vflow.parent` = the start model's version.

Departures from the paper: group size, clip range, buffer sizes and the monitor's thresholds
are not given by the reports and are config values here (so is the policy loss, `grpo.loss`:
R1V2's clipped GRPO by default, GSPO or Dr. GRPO by name); the reward-model term defaults to
weight 0 (its score is still logged and watched when a reward model is trained); rollouts
come from the generation engine (`generation:`; vLLM colocated where it serves the model, the
same code on a CPU and on GPUs), synced after every optimizer step. Resumable checkpoints
(`checkpoint_every`, `checkpoint_minutes`) go to the stage's checkpoint root; the
`checkpoints` output is their index.json, as mpo's.

    r1vflow run pipelines/configs/tiny.yaml --set grpo.steps=40 --set grpo.ssb.enabled=false
"""

from __future__ import annotations

from r1vflow.data.io import load_split, read_info
from r1vflow.eval.scoring import sample_pixels, score_model
from r1vflow.generation import build_engine
from r1vflow.models.devices import load_placed
from r1vflow.models.families import fixed_image_tokens
from r1vflow.models.families.images import ImageBatch, image_texts, stack_images
from r1vflow.models.io import save_model
from r1vflow.models.lora import apply_lora
from r1vflow.models.reward import RewardScorer, load_reward_scorer
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.models.vlm import set_trainable
from r1vflow.rl.batch import encode_vlm_prompts
from r1vflow.rl.grpo import GRPOPrompt, GRPOResult, prefilter_pool, train_grpo
from r1vflow.rl.rewards import (
    HybridReward,
    accuracy_reward,
    format_reward,
    hybrid_reward,
    make_reward_model_reward,
)
from r1vflow.rl.rollout import Rollout
from r1vflow.stages.common import StageContext, StageOutcome, monitor_flags, parent_version


def reward_model_score_fn(scorer: RewardScorer):
    """score_fn(prompts, completions) for `make_reward_model_reward`: the reward model's score
    of (question, image, response), on 0..1 (calibrated 0..5 / 5) when it is calibrated, raw
    otherwise. `prompts` are the `GRPOPrompt`s the loop passes to reward functions."""

    def score(prompts: list[GRPOPrompt], completions: list[str]) -> list[float]:
        questions = [p.text for p in prompts]
        pixels = stack_images([p.pixel_values for p in prompts])
        if scorer.calibration is None:
            return scorer.score(questions, pixels, completions)
        return [s / 5.0 for s in scorer.score_0to5(questions, pixels, completions)]

    return score


def build_reward(accuracy: float, format_: float, reward_model: float,
                 scorer: RewardScorer | None = None) -> HybridReward:
    """The hybrid reward. accuracy and format are always computed (and logged, even at weight
    0); the reward-model term whenever a reward model is given (weight 0: logged and watched
    by the monitor only)."""
    fns = {"accuracy": accuracy_reward, "format": format_reward}
    weights = {"accuracy": accuracy, "format": format_}
    if scorer is not None:
        fns["reward_model"] = make_reward_model_reward(reward_model_score_fn(scorer))
        weights["reward_model"] = reward_model
    elif reward_model > 0:
        raise ValueError(
            f"grpo.reward_weights.reward_model is {reward_model} but the grpo stage got no "
            "reward model: enable the train_reward_model stage, or set the weight to 0")
    return hybrid_reward(fns, weights)


def build_prompts(model, tokenizer, samples, dataset, image_size: int,
                  max_prompt_tokens: int) -> list[GRPOPrompt]:
    """One GRPOPrompt per sample (chat prompt with image placeholders, image, gold answer)."""
    pixels = sample_pixels(dataset, samples, image_size, model)
    ids = encode_vlm_prompts(tokenizer, [s.question for s in samples],
                             image_texts(pixels, fixed_image_tokens(model)))
    longest = max(len(i) for i in ids)
    if longest > max_prompt_tokens:
        raise ValueError(f"grpo: a prompt has {longest} tokens but grpo.max_length - "
                         f"grpo.max_new_tokens leaves {max_prompt_tokens}; raise grpo.max_length")
    items = pixels.items if isinstance(pixels, ImageBatch) else pixels
    return [GRPOPrompt(s.id, i, s.answer, s.question, items[k])
            for k, (s, i) in enumerate(zip(samples, ids, strict=True))]


def build_rollout(exp, model, tokenizer) -> Rollout:
    """The rollouts of `exp.grpo` on the engine its `generation` settings choose (the stage log
    says which); with truncated importance sampling the transformers backend also returns
    log-probabilities."""
    cfg = exp.grpo
    settings = exp.generation_for("grpo").model_copy(update={"batch_size": cfg.batch_size})
    engine = build_engine(settings, model, tokenizer)
    return Rollout(engine, cfg.max_new_tokens, cfg.temperature,
                   logprobs=engine.backend == "vllm" or cfg.tis_cap is not None)


START_INPUTS = ("mpo_model", "sft_model", "base_model")  # the first one given is the start


def start_model(ctx: StageContext):
    """The model GRPO starts from: MPO's when the DAG runs it, else SFT's, else the base."""
    for name in START_INPUTS:
        if name in ctx.inputs:
            return ctx.input(name)
    raise ValueError(f"stage grpo got none of its start models {START_INPUTS}")


def run(ctx: StageContext) -> StageOutcome:
    exp, cfg = ctx.exp, ctx.exp.grpo
    sft_dir, dataset = start_model(ctx), ctx.input("dataset")
    info = read_info(dataset)
    model, tokenizer = load_placed(sft_dir), load_tokenizer(sft_dir)
    trainable = set_trainable(model, set(cfg.trainable))
    trainable = apply_lora(model, cfg.lora) or trainable  # lora: adapters on the LLM
    train, val = load_split(dataset, "train"), load_split(dataset, "val")
    prompts = build_prompts(model, tokenizer, train, dataset, exp.data.image_size,
                            cfg.max_length - cfg.max_new_tokens)
    w = cfg.reward_weights
    scorer = None
    if "reward_model" in ctx.inputs:
        scorer = load_reward_scorer(ctx.input("reward_model"), cfg.batch_size, cfg.max_length)
    reward = build_reward(w.accuracy, w.format, w.reward_model, scorer)
    rollout = build_rollout(exp, model, tokenizer)
    extra: dict[str, float] = {}
    if cfg.ssb.prefilter:
        prompts, extra = prefilter_pool(prompts, rollout, reward, cfg.group_size,
                                        cfg.batch_size, cfg.seed)
        if not prompts:
            raise ValueError("grpo.ssb.prefilter kept no prompt: every group had equal rewards")

    def on_step(step: int, values: dict) -> None:
        ctx.tracker.log_metrics({f"train/{k}": v for k, v in values.items()}, step=step)

    meta = {"stage": "grpo", "parent": str(sft_dir), "config_fingerprint": exp.fingerprint(),
            "data_digests": {"dataset": info.digest}}
    ck = ctx.checkpointer()
    result = train_grpo(model, tokenizer, prompts, reward, rollout, cfg,
                        checkpoint=ck.phase("train"), on_step=on_step, progress=True)
    scored, _ = score_model(model, tokenizer, val[:cfg.val_limit], dataset,
                            exp.data.image_size, max_new_tokens=cfg.val_max_new_tokens,
                            batch_size=cfg.val_batch_size, engine=rollout.engine)
    rollout.engine.close()
    if "checkpoints" in ctx.outputs:  # the resumable checkpoints (as mpo's)
        ck.write_index(ctx.outputs["checkpoints"])
    flags = {**monitor_flags(sft_dir), **{f"grpo/{k}": v for k, v in result.flags.items()}}
    out = save_model(model, tokenizer, ctx.outputs["model"],
                     {**meta, "extra": {"monitor_flags": flags}})
    version = ctx.register(out, parent=parent_version(sft_dir), dataset_digest=info.digest)
    metrics = {
        **result.summary, **extra,
        "val_accuracy": scored["accuracy"], "val_format_rate": scored["format_rate"],
        "train_size": float(len(prompts)),
        "resumed_from_step": float(ck.resumed_from_step),
        **{f"trainable_params_{k}": float(v) for k, v in trainable.items()},
    }
    return StageOutcome(metrics=metrics, model_dir=out, model_version=version,
                        report=_report(exp.name, metrics, result))


def _report(name: str, metrics: dict[str, float], result: GRPOResult) -> str:
    lines = [f"# grpo: {name}", ""]
    if result.stop_reason:
        lines += [f"**Stopped early by the monitor:** {result.stop_reason}", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    lines += ["", "## Per step", "", "| step | reward | accuracy | format | eff. before | "
              "eff. after | replay | loss |", "|---" * 8 + "|"]
    for i, h in enumerate(result.history, start=1):
        lines.append(f"| {i} | {h['reward_mean']:.3f} | {h.get('accuracy', 0):.3f} | "
                     f"{h.get('format_rate', 0):.3f} | {h['effective_ratio_before']:.2f} | "
                     f"{h['effective_ratio_after']:.2f} | {h['replay_fraction']:.2f} | "
                     f"{h['loss']:.4f} |")
    return "\n".join(lines) + "\n"
