"""The GRPO loop (R1V2): rollouts, hybrid rewards, group advantages, SSB, clipped updates.

One step:
  1. draw `prompts_per_step` prompts (shuffled passes over the pool; each rank its own);
  2. sample G = `group_size` completions per prompt from the rollout backend;
  3. score them with the hybrid reward (each component kept for logging and the monitor);
  4. A = group_advantages(r, G) (mean-centred, divided by the group std unless disabled);
  5. SSB (when given): if the share of non-zero advantages is below the target, swap
     zero-advantage samples for buffered ones drawn by |A| (stored old log-probs and A);
  6. old log-probs of the fresh samples, once per rollout batch; then `ppo_epochs` optimizer
     steps on the clipped surrogate (+ k3 KL to a frozen reference when kl_coef > 0);
  7. offer the fresh non-zero-advantage samples to the SSB; monitor; log; checkpoint.

Zero-advantage rows give exactly zero policy loss, so when kl_coef == 0 they are not run
through the model: the loss is computed on the other rows and rescaled by their share (rows
for "seq-mean-token-mean", tokens for "token-mean"), which equals the loss over the whole
batch. With ppo_epochs == 1 the old log-probs are the detached log-probs of that single
forward (same weights), so no extra pass is needed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from r1vflow.models.distributed import rank_world
from r1vflow.models.families.images import ImageInput, stack_images
from r1vflow.models.generate import Completion
from r1vflow.models.io import save_model
from r1vflow.rl.batch import completion_logprobs, loss_scale, sequence_batch
from r1vflow.rl.core import Aggregation, clip_fraction, kl_k3, policy_loss, tis_weights
from r1vflow.rl.core import group_advantages as compute_advantages
from r1vflow.rl.monitor import RewardMonitor
from r1vflow.rl.rewards import HybridReward
from r1vflow.rl.rollout import Rollout
from r1vflow.rl.ssb import Candidate, SelectiveSampleBuffer, prefilter_prompts
from r1vflow.train.checkpoint import PhaseCheckpoint
from r1vflow.train.engine import Backend, TrainEngine, training_progress

if TYPE_CHECKING:  # the config section is only read (duck-typed): no pydantic import at run time
    from r1vflow.config import GRPOConfig

__all__ = ["GRPO_SETTINGS", "GRPOPrompt", "GRPOResult", "grpo_settings", "prefilter_pool",
           "summarize", "train_grpo"]

StepCallback = Callable[[int, dict[str, float]], None]
_EPS = 1e-6


@dataclass(frozen=True)
class GRPOPrompt:
    """A training prompt: tokenized prompt, gold answer, text for reward models, image.

    token_ids: the full prompt (chat template, image placeholders); pixel_values: [3,H,W] or
    its family's `ImageInput` (r1vflow.models.families.images), or None for a text-only policy.
    """

    id: str
    token_ids: list[int]
    answer: str
    text: str
    pixel_values: torch.Tensor | ImageInput | None = None


@dataclass
class GRPOResult:
    """Per-step metrics, summary means, and why training stopped early (if it did)."""

    history: list[dict[str, float]]
    summary: dict[str, float]
    stop_reason: str | None = None
    checkpoints: list[Path] = field(default_factory=list)
    flags: dict[str, str] = field(default_factory=dict)  # monitor flag -> its first message


@dataclass
class _Row:
    prompt: GRPOPrompt
    completion: list[int]
    advantage: float
    old_logprobs: torch.Tensor | None = None  # [T]; set for replayed rows
    replayed: bool = False
    rollout_logprobs: tuple[float, ...] | None = None  # the engine's, for fresh rows


def _global_mean(values: list[float]) -> list[float]:
    """Mean of each value over all ranks (identity in one process)."""
    _, world = rank_world()
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / world).tolist()


class _PromptSampler:
    """Shuffled passes over the pool, `k` prompts at a time."""

    def __init__(self, n: int, k: int, seed: int) -> None:
        self.n, self.k = n, k
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = [int(i) for i in state["order"]]

    def next(self) -> list[int]:
        while len(self.order) < self.k:
            self.order += self.rng.permutation(self.n).tolist()
        picked, self.order = self.order[: self.k], self.order[self.k :]
        return picked


def _rollout(
    rollout: Rollout, prompts: list[GRPOPrompt], group_size: int, seed: int
) -> list[Completion]:
    pixels = None
    if prompts[0].pixel_values is not None:
        pixels = stack_images([p.pixel_values for p in prompts])
    groups = rollout.generate([p.token_ids for p in prompts], pixels, group_size, seed)
    return [c for group in groups for c in group]


def _score(reward: HybridReward, prompts: list[GRPOPrompt], completions: list[Completion], g: int):
    """Reward breakdown; reward functions get the `GRPOPrompt` of each completion as
    keyword `prompts` (text and image, for a reward model)."""
    answers = [p.answer for p in prompts for _ in range(g)]
    per_completion = [p for p in prompts for _ in range(g)]
    return reward.breakdown([c.text for c in completions], answers, prompts=per_completion)


def prefilter_pool(
    prompts: Sequence[GRPOPrompt],
    rollout: Rollout,
    reward: HybridReward,
    group_size: int,
    batch_prompts: int,
    seed: int,
) -> tuple[list[GRPOPrompt], dict[str, float]]:
    """Offline SSB: one rollout pass over the pool; keep prompts whose group had non-zero
    advantage. Returns (kept prompts, {"prefilter_kept", "prefilter_total"})."""
    rewards: list[float] = []
    for start in range(0, len(prompts), batch_prompts):
        chunk = list(prompts[start : start + batch_prompts])
        completions = _rollout(rollout, chunk, group_size, seed + start)
        rewards += _score(reward, chunk, completions, group_size).total
    kept_ids = set(prefilter_prompts([p.id for p in prompts], rewards, group_size))
    kept = [p for p in prompts if p.id in kept_ids]
    return kept, {"prefilter_kept": float(len(kept)), "prefilter_total": float(len(prompts))}


def _apply_ssb(
    rows: list[_Row], ssb: SelectiveSampleBuffer | None, step: int
) -> tuple[list[_Row], dict[str, float]]:
    """Swap zero-advantage rows for SSB entries; returns the batch and the SSB statistics."""
    advantages = [r.advantage for r in rows]
    if ssb is None:
        ratio = sum(abs(a) > _EPS for a in advantages) / len(rows)
        return rows, {"effective_ratio_before": ratio, "effective_ratio_after": ratio,
                      "buffer_size": 0.0, "replay_fraction": 0.0, "replayed": 0.0}
    entries, stats = ssb.fill(advantages, len(rows), step)
    zero = [i for i, a in enumerate(advantages) if abs(a) <= _EPS]
    rows = list(rows)
    for i, entry in zip(zero, entries, strict=False):
        rows[i] = _Row(entry.prompt, list(entry.response), entry.advantage,
                       entry.old_logprobs, replayed=True)
    return rows, stats


def _pad_old(rows: list[_Row], width: int) -> torch.Tensor:
    """Stored old log-probs of replayed rows, right-padded to [M, width] (0 elsewhere)."""
    out = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        if r.old_logprobs is not None:
            out[i, : r.old_logprobs.numel()] = r.old_logprobs
    return out


def _tis(rows: list[_Row], old: torch.Tensor, cap: float | None) -> torch.Tensor | None:
    """Truncated importance weights min(exp(trainer - rollout log-prob), cap) per token of the
    fresh rows that carry the engine's log-probabilities (1 elsewhere); None when off."""
    if cap is None:
        return None
    rollout = torch.zeros_like(old)
    fresh = torch.zeros_like(old, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r.rollout_logprobs is not None and not r.replayed:
            n = min(len(r.rollout_logprobs), old.shape[1])
            rollout[i, :n] = torch.tensor(r.rollout_logprobs[:n], dtype=old.dtype)
            fresh[i, :n] = True
    return torch.where(fresh, tis_weights(old.detach(), rollout, cap), torch.ones_like(old))


def _forward(model, rows: list[_Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = sequence_batch([r.prompt.token_ids for r in rows], [r.completion for r in rows],
                           pad_id)
    pixels = None
    if rows[0].prompt.pixel_values is not None:
        pixels = stack_images([r.prompt.pixel_values for r in rows])
    logprobs = completion_logprobs(model, batch, pixels)
    return logprobs, batch["completion_mask"].to(logprobs.device)


@dataclass
class _Opt:
    """The optimisation settings of one run (internal; `train_grpo` takes them flat)."""

    ppo_epochs: int
    clip_low: float
    clip_high: float
    kl_coef: float
    aggregation: Aggregation
    pad_id: int
    tis_cap: float | None = None


def _optimize(engine: TrainEngine, ref: torch.nn.Module | None, rows: list[_Row], opt: _Opt):
    """ppo_epochs clipped updates on `rows`; returns (metrics, old log-probs of fresh rows)."""
    effective = [i for i, r in enumerate(rows) if abs(r.advantage) > _EPS]
    train = list(range(len(rows))) if ref is not None else effective
    lengths = [len(r.completion) for r in rows]
    scale = loss_scale(lengths, train, opt.aggregation) if train else 0.0
    train = train or [0]  # keep a graph: every rank must take part in the step
    sub = [rows[i] for i in train]
    advantages = torch.tensor([r.advantage for r in sub])
    old = ref_lp = None
    if opt.ppo_epochs > 1:
        with torch.no_grad():
            old, _ = _forward(engine.model, sub, opt.pad_id)
    if ref is not None:
        with torch.no_grad():
            ref_lp, _ = _forward(ref, sub, opt.pad_id)
    metrics: dict[str, float] = {}
    clipped: list[float] = []
    kls: list[float] = []
    weights = None
    for _ in range(opt.ppo_epochs):
        logprobs, mask = _forward(engine.model, sub, opt.pad_id)
        if old is None:
            old = logprobs.detach()
        if weights is None:
            weights = _tis(sub, old, opt.tis_cap)
        replayed = torch.tensor([r.replayed for r in sub]).unsqueeze(1)
        behaviour = torch.where(replayed, _pad_old(sub, mask.shape[1]), old)
        loss = scale * policy_loss(logprobs, behaviour, advantages, mask, opt.clip_low,
                                   opt.clip_high, opt.aggregation, weights)
        if ref_lp is not None:
            kl = kl_k3(logprobs, ref_lp, mask, opt.aggregation)
            loss = loss + opt.kl_coef * kl
            kls.append(float(kl.detach()))
        stats = engine.step(loss)
        clipped.append(clip_fraction(logprobs.detach(), behaviour, advantages, mask,
                                     opt.clip_low, opt.clip_high))
        metrics.update(loss=float(loss.detach()), **stats)
    metrics["clip_fraction"] = sum(clipped) / len(clipped)
    if weights is not None:
        metrics["tis_weight_mean"] = float((weights * mask).sum() / mask.sum().clamp(min=1))
    if kls:
        metrics["kl"] = sum(kls) / len(kls)  # mean over the epochs, like clip_fraction
    fresh_old = {i: old[k][: len(rows[i].completion)]
                 for k, i in enumerate(train) if not rows[i].replayed}
    return metrics, fresh_old


def _step_metrics(scores, completions: list[Completion], adv: torch.Tensor) -> dict[str, float]:
    total = torch.tensor(scores.total)
    metrics = {
        "reward_mean": float(total.mean()),
        "reward_std": float(total.std()) if total.numel() > 1 else 0.0,
        "advantage_abs_mean": float(adv.abs().mean()),
        "completion_tokens_mean": sum(len(c.token_ids) for c in completions) / len(completions),
        "finished_rate": sum(c.finished for c in completions) / len(completions),
    }
    for name, values in scores.components.items():
        metrics[f"reward/{name}"] = sum(values) / len(values)
    if "accuracy" in scores.components:
        metrics["accuracy"] = metrics["reward/accuracy"]
    if "format" in scores.components:
        metrics["format_rate"] = metrics["reward/format"]
    return metrics


def logprob_gap(completions: Sequence[Completion],
                trainer: dict[int, torch.Tensor]) -> dict[str, float]:
    """|engine - trainer| log-probability per token over the completions the trainer scored
    (`trainer`: completion index -> its [T] log-probs): mean and max. Empty without the
    engine's log-probabilities."""
    gaps = [torch.tensor(completions[i].logprobs[:len(lp)]) - lp.float().cpu()
            for i, lp in trainer.items() if completions[i].logprobs is not None]
    if not gaps:
        return {}
    flat = torch.cat(gaps).abs()
    return {"logprob_gap_mean": float(flat.mean()), "logprob_gap_max": float(flat.max())}


def _grpo_step(engine, ref, rollout: Rollout, reward, batch: list[GRPOPrompt], opt: _Opt,
               ssb: SelectiveSampleBuffer | None, group_size: int, scale_by_std: bool,
               step: int, seed: int) -> dict[str, float]:
    start = time.perf_counter()
    completions = _rollout(rollout, batch, group_size, seed)
    rolled = time.perf_counter()
    scores = _score(reward, batch, completions, group_size)
    adv = compute_advantages(torch.tensor(scores.total), group_size, scale_by_std)
    scored = time.perf_counter()
    rows = [_Row(batch[i // group_size], list(c.token_ids), float(a), rollout_logprobs=c.logprobs)
            for i, (c, a) in enumerate(zip(completions, adv.tolist(), strict=True))]
    rows, ssb_stats = _apply_ssb(rows, ssb, step)
    train_metrics, fresh_old = _optimize(engine, ref, rows, opt)
    if ssb is not None:
        ssb.add([Candidate(rows[i].prompt.id, rows[i].prompt, rows[i].completion, lp,
                           rows[i].advantage) for i, lp in fresh_old.items()], step)
        ssb_stats["buffer_size"] = float(len(ssb))
    synced = time.perf_counter()
    sync_s = rollout.sync(engine.module, rollout.names)
    end = time.perf_counter()
    tokens = sum(len(c.token_ids) for c in completions)
    return {
        **_step_metrics(scores, completions, adv), **ssb_stats, **train_metrics,
        **logprob_gap(completions, fresh_old),
        "rollout_s": rolled - start, "reward_s": scored - rolled, "train_s": synced - scored,
        "sync_s": sync_s if rollout.engine.backend != "transformers" else 0.0,
        "step_s": end - start, "completion_tokens": float(tokens),
        "rollout_tokens_per_s": tokens / max(rolled - start, 1e-9),
        "tokens_per_s": tokens / (end - start), "prompts_per_s": len(batch) / (end - start),
    }


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """Run summary: means over steps, throughput over the whole run, and the late (second
    half) effective ratios; effective_ratio_mean is after SSB, _before_mean before it."""
    if not history:
        return {"steps": 0.0}

    def mean(key: str, rows=history) -> float:
        values = [h[key] for h in rows if key in h]
        return sum(values) / len(values) if values else float("nan")

    seconds = sum(h["step_s"] for h in history)
    late = history[len(history) // 2 :]
    out = {
        "steps": float(len(history)),
        "seconds": seconds,
        "tokens_per_s": sum(h["completion_tokens"] for h in history) / seconds,
        "prompts_per_s": sum(h["prompts_per_s"] * h["step_s"] for h in history) / seconds,
        "effective_ratio_mean": mean("effective_ratio_after"),
        "effective_ratio_before_mean": mean("effective_ratio_before"),
        "effective_ratio_late": mean("effective_ratio_after", late),
        "effective_ratio_before_late": mean("effective_ratio_before", late),
        "replay_fraction_mean": mean("replay_fraction"),
    }
    components = sorted({k for h in history for k in h if k.startswith("reward/")})
    rolled = sum(h["rollout_s"] for h in history)
    out["rollout_tokens_per_s"] = sum(h["completion_tokens"] for h in history) / max(rolled, 1e-9)
    gaps = [h["logprob_gap_max"] for h in history if "logprob_gap_max" in h]
    if gaps:  # the rollout/trainer mismatch: mean of the steps' means, largest token gap
        out["logprob_gap_max"] = max(gaps)
        out["logprob_gap_mean"] = mean("logprob_gap_mean")
    for key in ("reward_mean", "accuracy", "format_rate", "loss", "clip_fraction", "kl",
                "rollout_s", "reward_s", "train_s", "sync_s", "completion_tokens_mean",
                "tis_weight_mean", *components):
        if any(key in h for h in history):
            out[f"{key}_mean"] = mean(key)
    for key in ("accuracy", "format_rate", "reward_mean"):
        if any(key in h for h in late):
            out[f"{key}_late"] = mean(key, late)
    return out


def _reference(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def _check_args(n_prompts: int, steps: int, prompts_per_step: int, group_size: int,
                ppo_epochs: int, kl_coef: float, zero_stage: int, engine: str) -> None:
    problems = []
    if n_prompts < 1:
        problems.append("no training prompts")
    if steps < 1 or prompts_per_step < 1 or ppo_epochs < 1:
        problems.append(f"steps ({steps}), prompts_per_step ({prompts_per_step}) and ppo_epochs "
                        f"({ppo_epochs}) must be >= 1")
    if group_size < 2:
        problems.append(f"group_size must be >= 2 (advantages are relative), got {group_size}")
    if kl_coef < 0:
        problems.append(f"kl_coef must be >= 0, got {kl_coef}")
    if zero_stage == 3:
        if engine != "vllm":
            problems.append("zero_stage 3 needs rollouts on vLLM (generation.backend vllm): "
                            "transformers' generate on partitioned weights would need every "
                            "rank at every decoding step")
    if problems:
        raise ValueError("train_grpo: " + "; ".join(problems))


# The `train_grpo` keywords that a `grpo` config section (GRPOConfig) sets, under the same names.
GRPO_SETTINGS = ("steps", "prompts_per_step", "group_size", "lr", "ppo_epochs", "weight_decay",
                 "warmup_ratio", "clip_low", "clip_high", "kl_coef", "scale_by_std",
                 "aggregation", "backend", "zero_stage", "seed", "checkpoint_every", "tis_cap")


def grpo_settings(cfg: GRPOConfig) -> dict[str, Any]:
    """`train_grpo`'s run settings from a `grpo` config section: `train_grpo(..., **grpo_settings(
    cfg), ssb=..., monitor=...)`. The objects (SSB, monitor, rollout, reward) and the
    checkpoint directory come separately: `SelectiveSampleBuffer.from_config(cfg.ssb)`,
    `RewardMonitor.from_config(cfg.monitor)`."""
    return {name: getattr(cfg, name) for name in GRPO_SETTINGS}


def _loop_state(result: GRPOResult, sampler: _PromptSampler,
                ssb: SelectiveSampleBuffer | None, monitor: RewardMonitor | None) -> dict:
    """Everything the loop needs to go on after a restart (plain values and tensors)."""
    return {"history": result.history, "stop_reason": result.stop_reason,
            "saved": [str(p) for p in result.checkpoints], "sampler": sampler.state_dict(),
            "ssb": ssb.state_dict() if ssb is not None else None,
            "monitor": monitor.state_dict() if monitor is not None else None}


def _restore_loop(state: dict | None, result: GRPOResult, sampler: _PromptSampler,
                  ssb: SelectiveSampleBuffer | None, monitor: RewardMonitor | None,
                  prompts: Sequence[GRPOPrompt], steps: int) -> int:
    """Put a checkpoint's loop state back; returns the first step still to run."""
    if state is None:
        return 1
    result.history[:] = state["history"]
    result.stop_reason = state["stop_reason"]
    result.checkpoints[:] = [Path(p) for p in state["saved"]]
    sampler.load_state_dict(state["sampler"])
    if ssb is not None and state["ssb"] is not None:
        by_id = {p.id: p for p in prompts}
        ssb.load_state_dict(state["ssb"], by_id.__getitem__)
    if monitor is not None and state["monitor"] is not None:
        monitor.load_state_dict(state["monitor"])
    return steps + 1 if result.stop_reason else len(result.history) + 1


def _watch(monitor: RewardMonitor, step: int, metrics: dict[str, float],
           result: GRPOResult) -> bool:
    """Feed one step's rewards (averaged over ranks) to the monitor: its metrics go into
    `metrics`, its flags and stop reason into `result`; returns whether to stop."""
    acc, fmt, rm = _global_mean([metrics.get(k, 0.0) for k in (
        "reward/accuracy", "reward/format", "reward/reward_model")])
    status = monitor.update(step, acc, fmt, rm if "reward/reward_model" in metrics else None)
    metrics.update({f"monitor/{k}": v for k, v in status.metrics.items()})
    result.stop_reason = status.reason
    for message in status.messages:
        result.flags.setdefault(message.split(":")[0], f"step {step}: {message}")
    return status.stop


def train_grpo(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[GRPOPrompt],
    reward: HybridReward,
    rollout: Rollout,
    *,
    steps: int,
    prompts_per_step: int,
    group_size: int,
    lr: float,
    ppo_epochs: int = 1,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    scale_by_std: bool = True,
    aggregation: Aggregation = "seq-mean-token-mean",
    ssb: SelectiveSampleBuffer | None = None,
    monitor: RewardMonitor | None = None,
    backend: Backend = "torch",
    zero_stage: int = 0,
    seed: int = 0,
    checkpoint_every: int | None = None,
    tis_cap: float | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_metadata: dict | None = None,
    checkpoint: PhaseCheckpoint | None = None,
    on_step: StepCallback | None = None,
    progress: bool = True,
) -> GRPOResult:
    """Train `model` in place with GRPO for `steps` steps (see the module docstring).

    `model`'s trainable parameters (set beforehand, e.g. with `set_trainable`) are updated
    through `TrainEngine` (torch/DDP, or DeepSpeed ZeRO 0-2; under torchrun every rank draws its
    own prompts and gradients are averaged). `rollout` must sample from `model` (it is synced
    after every step). `reward.breakdown` components named "accuracy", "format" and
    "reward_model" feed the metrics and the monitor. `ssb=None` disables the buffer.
    Checkpoints (safetensors, `save_model`) go to checkpoint_dir/step-NNNNNN every
    `checkpoint_every` steps with `checkpoint_metadata` (stage, parent, config_fingerprint).
    `checkpoint` (r1vflow.train.checkpoint) saves and restores the whole loop state (engine,
    RNG, prompt sampler, SSB contents, monitor window, history) so that a killed run resumes.
    `on_step(step, metrics)` is called on rank 0 after every step. Returns the history, a
    `summarize` summary and the monitor's stop reason if it stopped the run.
    """
    _check_args(len(prompts), steps, prompts_per_step, group_size, ppo_epochs, kl_coef,
                zero_stage, rollout.engine.backend)
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("train_grpo: checkpoint_every needs a checkpoint_dir")
    ref = _reference(model) if kl_coef > 0 else None
    engine = TrainEngine(model, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                         total_steps=steps * ppo_epochs, backend=backend, zero_stage=zero_stage)
    rank, _ = rank_world()  # after the engine: DeepSpeed sets up torch.distributed
    rollout.sync(engine.module)
    rollout.names = [n for n, p in engine.module.named_parameters() if p.requires_grad]
    opt = _Opt(ppo_epochs, clip_low, clip_high, kl_coef, aggregation, tokenizer.pad_token_id,
               tis_cap)
    sampler = _PromptSampler(len(prompts), prompts_per_step, seed + 7919 * rank)
    history: list[dict[str, float]] = []
    result = GRPOResult(history=history, summary={})
    restored = checkpoint.restore(engine) if checkpoint is not None else None
    first = _restore_loop(restored, result, sampler, ssb, monitor, prompts, steps)
    if restored is not None:
        rollout.sync(engine.module)
    with training_progress(progress and rank == 0) as bar:
        task = bar.add_task("grpo", total=steps, completed=first - 1, loss=float("nan"),
                            tok_s=0.0)
        for step in range(first, steps + 1):
            batch = [prompts[i] for i in sampler.next()]
            metrics = _grpo_step(engine, ref, rollout, reward, batch, opt, ssb, group_size,
                                 scale_by_std, step, seed * 1_000_003 + step * 7_919 + rank)
            stop = monitor is not None and _watch(monitor, step, metrics, result)
            history.append(metrics)
            bar.update(task, advance=1, loss=metrics["loss"], tok_s=metrics["tokens_per_s"])
            if rank == 0 and on_step is not None:
                on_step(step, metrics)
            if rank == 0 and checkpoint_every and (step % checkpoint_every == 0 or stop):
                path = checkpoint_dir / f"step-{step:06d}"
                meta = {**(checkpoint_metadata or {}), "extra": {"step": step}}
                result.checkpoints.append(save_model(engine.module, tokenizer, path, meta))
            if checkpoint is not None:
                checkpoint.step(step, engine, lambda: _loop_state(result, sampler, ssb, monitor),
                                last=step == steps or stop)
            if stop:
                break
    engine.release()
    result.summary = {**summarize(history), "weight_syncs": float(rollout.syncs),
                      "stopped_early": float(result.stop_reason is not None)}
    return result
