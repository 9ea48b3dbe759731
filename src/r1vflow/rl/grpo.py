"""The GRPO loop (R1V2): rollouts, hybrid rewards, group advantages, SSB, clipped updates.

One step:
  1. draw `prompts_per_step` prompts (shuffled passes over the pool; each rank its own);
  2. sample G = `group_size` completions per prompt from the rollout backend;
  3. score them with the hybrid reward (each component kept for logging and the monitor);
  4. A = group_advantages(r, G) (mean-centred, divided by the group std unless disabled);
  5. SSB (when given): if the share of non-zero advantages is below the target, swap
     zero-advantage samples for buffered ones drawn by |A| (stored old log-probs and A);
  6. old log-probs of the fresh samples, once per rollout batch; then `ppo_epochs` optimizer
     steps on the policy loss `grpo.loss` names (r1vflow.rl.core: grpo, gspo, dr_grpo; + k3 KL
     to a frozen reference when kl_coef > 0); after each, the trainable weights go to the
     rollout engine (`sync_policy`);
  7. offer the fresh non-zero-advantage samples to the SSB; monitor; log; checkpoint.

The run's settings are its `grpo` config section (`GRPOConfig`, read as is: no keyword copy);
the SSB and the monitor are built from its `ssb` and `monitor` parts. Checkpoints go through
`PhaseCheckpoint` only (r1vflow.train.checkpoint): engine, RNGs and the loop's `GRPOState`.

Zero-advantage rows give exactly zero policy loss, so when kl_coef == 0 they are not run
through the model: the loss is computed on the other rows and rescaled by their share (rows
for "seq-mean-token-mean" and "seq-mean-token-sum-norm", tokens for "token-mean"), which
equals the loss over the whole batch. With ppo_epochs == 1 the old log-probs are the detached
log-probs of that single forward (same weights), so no extra pass is needed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from r1vflow.models.distributed import rank_world
from r1vflow.models.families.images import ImageInput, stack_images
from r1vflow.models.generate import Completion
from r1vflow.rl.batch import completion_logprobs, loss_scale, sequence_batch
from r1vflow.rl.core import LossSettings, PolicyLoss, get_policy_loss, kl_k3, tis_weights
from r1vflow.rl.core import group_advantages as compute_advantages
from r1vflow.rl.monitor import RewardMonitor
from r1vflow.rl.rewards import HybridReward
from r1vflow.rl.rollout import Rollout
from r1vflow.rl.ssb import Candidate, SelectiveSampleBuffer, prefilter_prompts
from r1vflow.train.checkpoint import PhaseCheckpoint
from r1vflow.train.engine import TrainEngine, training_progress

if TYPE_CHECKING:  # the config section is only read (duck-typed): no pydantic import at run time
    from r1vflow.config import GRPOConfig

__all__ = ["GRPOPrompt", "GRPOResult", "GRPOState", "prefilter_pool", "summarize",
           "sync_policy", "train_grpo"]

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
    flags: dict[str, str] = field(default_factory=dict)  # monitor flag -> its first message


@dataclass
class GRPOState:
    """The loop's own resume state, saved with every checkpoint (`to_dict`: plain values and
    tensors) beside the engine's weights, optimizer and schedule and the RNG states.

    history: the metrics of the steps done; stop_reason / flags: the monitor's (as in
    GRPOResult); sampler: the prompt sampler's generator and queue; ssb: the buffer's entries
    and generator (None without SSB); monitor: its window, best format mean and streaks.
    """

    history: list[dict[str, float]]
    stop_reason: str | None
    flags: dict[str, str]
    sampler: dict[str, Any]
    ssb: dict[str, Any] | None
    monitor: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain values and tensors (a copy; a weights-only `torch.load` reads them back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> GRPOState:
        return cls(**saved)


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
class _Run:
    """The fixed parts of one run that every step uses."""

    cfg: GRPOConfig
    engine: TrainEngine
    ref: torch.nn.Module | None  # frozen start model for the KL term (kl_coef > 0)
    rollout: Rollout
    reward: HybridReward
    ssb: SelectiveSampleBuffer | None
    loss: PolicyLoss  # the registered policy loss `cfg.loss` names
    settings: LossSettings
    pad_id: int
    trainable: list[str]  # the names `sync_policy` pushes after each optimizer step


def _optimize(run: _Run, rows: list[_Row]):
    """ppo_epochs policy-loss updates on `rows`; returns (metrics, old log-probs of fresh
    rows)."""
    cfg, model = run.cfg, run.engine.model
    effective = [i for i, r in enumerate(rows) if abs(r.advantage) > _EPS]
    train = list(range(len(rows))) if run.ref is not None else effective
    lengths = [len(r.completion) for r in rows]
    scale = loss_scale(lengths, train, run.settings.aggregation) if train else 0.0
    train = train or [0]  # keep a graph: every rank must take part in the step
    sub = [rows[i] for i in train]
    advantages = torch.tensor([r.advantage for r in sub])
    old = ref_lp = weights = None
    if cfg.ppo_epochs > 1:
        with torch.no_grad():
            old, _ = _forward(model, sub, run.pad_id)
    if run.ref is not None:
        with torch.no_grad():
            ref_lp, _ = _forward(run.ref, sub, run.pad_id)
    metrics: dict[str, float] = {}
    clipped: list[float] = []
    kls: list[float] = []
    for _ in range(cfg.ppo_epochs):
        logprobs, mask = _forward(model, sub, run.pad_id)
        if old is None:
            old = logprobs.detach()
        if weights is None:
            weights = _tis(sub, old, cfg.tis_cap)
        replayed = torch.tensor([r.replayed for r in sub]).unsqueeze(1)
        behaviour = torch.where(replayed, _pad_old(sub, mask.shape[1]), old)
        out = run.loss(logprobs, behaviour, advantages, mask, run.settings, weights)
        loss = scale * out.loss
        if ref_lp is not None:
            kl = kl_k3(logprobs, ref_lp, mask, run.settings.aggregation,
                       run.settings.max_new_tokens)
            loss = loss + cfg.kl_coef * kl
            kls.append(float(kl.detach()))
        metrics.update(loss=float(loss.detach()), **run.engine.step(loss))
        clipped.append(out.clip_fraction)
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


def sync_policy(rollout: Rollout, policy: torch.nn.Module,
                names: Sequence[str] | None = None) -> float:
    """Push the policy's weights into the rollout engine, so that it samples the policy being
    trained: all of them (`names` None: at the start, after a restore) or the trainable ones
    after an optimizer step. Returns the seconds it took. The one place where the trainer's
    weights reach the engine."""
    return rollout.sync(policy, names)


def _grpo_step(run: _Run, batch: list[GRPOPrompt], step: int, seed: int) -> dict[str, float]:
    group_size = run.cfg.group_size
    start = time.perf_counter()
    completions = _rollout(run.rollout, batch, group_size, seed)
    rolled = time.perf_counter()
    scores = _score(run.reward, batch, completions, group_size)
    adv = compute_advantages(torch.tensor(scores.total), group_size, run.cfg.scale_by_std)
    scored = time.perf_counter()
    rows = [_Row(batch[i // group_size], list(c.token_ids), float(a), rollout_logprobs=c.logprobs)
            for i, (c, a) in enumerate(zip(completions, adv.tolist(), strict=True))]
    rows, ssb_stats = _apply_ssb(rows, run.ssb, step)
    train_metrics, fresh_old = _optimize(run, rows)
    if run.ssb is not None:
        run.ssb.add([Candidate(rows[i].prompt.id, rows[i].prompt, rows[i].completion, lp,
                               rows[i].advantage) for i, lp in fresh_old.items()], step)
        ssb_stats["buffer_size"] = float(len(run.ssb))
    synced = time.perf_counter()
    sync_s = sync_policy(run.rollout, run.engine.module, run.trainable)
    end = time.perf_counter()
    tokens = sum(len(c.token_ids) for c in completions)
    return {
        **_step_metrics(scores, completions, adv), **ssb_stats, **train_metrics,
        **logprob_gap(completions, fresh_old),
        "rollout_s": rolled - start, "reward_s": scored - rolled, "train_s": synced - scored,
        "sync_s": sync_s if run.rollout.engine.backend != "transformers" else 0.0,
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


def _check_args(n_prompts: int, cfg: GRPOConfig, engine: str) -> None:
    """What the config section cannot check alone (its own fields are validated there)."""
    problems = []
    if n_prompts < 1:
        problems.append("no training prompts")
    if cfg.zero_stage == 3 and engine != "vllm":
        problems.append("zero_stage 3 needs rollouts on vLLM (generation.backend vllm): "
                        "transformers' generate on partitioned weights would need every "
                        "rank at every decoding step")
    if problems:
        raise ValueError("train_grpo: " + "; ".join(problems))


class _Loop:
    """The loop's mutable state: prompt sampler, SSB, monitor and the result so far."""

    def __init__(self, prompts: Sequence[GRPOPrompt], cfg: GRPOConfig, rank: int) -> None:
        self.prompts = prompts
        self.sampler = _PromptSampler(len(prompts), cfg.prompts_per_step, cfg.seed + 7919 * rank)
        self.ssb = (SelectiveSampleBuffer.from_config(cfg.ssb, seed=cfg.seed)
                    if cfg.ssb.enabled else None)
        self.monitor = RewardMonitor.from_config(cfg.monitor)
        self.result = GRPOResult(history=[], summary={})

    def batch(self) -> list[GRPOPrompt]:
        return [self.prompts[i] for i in self.sampler.next()]

    def state(self) -> GRPOState:
        r = self.result
        return GRPOState(r.history, r.stop_reason, r.flags, self.sampler.state_dict(),
                         self.ssb.state_dict() if self.ssb is not None else None,
                         self.monitor.state_dict())

    def restore(self, saved: dict[str, Any] | None, steps: int) -> int:
        """Put a checkpoint's `GRPOState` (as saved: `to_dict`) back; returns the first step
        still to run (1 without a checkpoint)."""
        if saved is None:
            return 1
        state = GRPOState.from_dict(saved)
        self.result = GRPOResult(state.history, {}, state.stop_reason, state.flags)
        self.sampler.load_state_dict(state.sampler)
        if self.ssb is not None and state.ssb is not None:
            by_id = {p.id: p for p in self.prompts}
            self.ssb.load_state_dict(state.ssb, by_id.__getitem__)
        self.monitor.load_state_dict(state.monitor)
        return steps + 1 if state.stop_reason else len(state.history) + 1

    def record(self, step: int, metrics: dict[str, float]) -> bool:
        """Feed one step's rewards (averaged over ranks) to the monitor (its metrics go into
        `metrics`, its flags and stop reason into the result) and append the step to the
        history; returns whether to stop."""
        acc, fmt, rm = _global_mean([metrics.get(k, 0.0) for k in (
            "reward/accuracy", "reward/format", "reward/reward_model")])
        status = self.monitor.update(step, acc, fmt,
                                     rm if "reward/reward_model" in metrics else None)
        metrics.update({f"monitor/{k}": v for k, v in status.metrics.items()})
        self.result.stop_reason = status.reason
        for message in status.messages:
            self.result.flags.setdefault(message.split(":")[0], f"step {step}: {message}")
        self.result.history.append(metrics)
        return status.stop


def _start(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
           prompts: Sequence[GRPOPrompt], reward: HybridReward, rollout: Rollout,
           cfg: GRPOConfig) -> tuple[_Run, _Loop, int]:
    """Reference model, training engine, policy loss, the loop's state and this rank; the
    rollout engine is not synced yet."""
    loss = get_policy_loss(cfg.loss)
    ref = _reference(model) if cfg.kl_coef > 0 else None
    engine = TrainEngine(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         warmup_ratio=cfg.warmup_ratio, total_steps=cfg.steps * cfg.ppo_epochs,
                         backend=cfg.backend, zero_stage=cfg.zero_stage)
    rank, _ = rank_world()  # after the engine: DeepSpeed sets up torch.distributed
    loop = _Loop(prompts, cfg, rank)
    settings = LossSettings(cfg.clip_low, cfg.clip_high, cfg.aggregation, rollout.max_new_tokens)
    trainable = [n for n, p in engine.module.named_parameters() if p.requires_grad]
    run = _Run(cfg, engine, ref, rollout, reward, loop.ssb, loss, settings,
               tokenizer.pad_token_id, trainable)
    return run, loop, rank


def train_grpo(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[GRPOPrompt],
    reward: HybridReward,
    rollout: Rollout,
    cfg: GRPOConfig,
    *,
    checkpoint: PhaseCheckpoint | None = None,
    on_step: StepCallback | None = None,
    progress: bool = True,
) -> GRPOResult:
    """Train `model` in place with GRPO for `cfg.steps` steps (see the module docstring).

    `cfg` is the run's `grpo` config section (GRPOConfig): steps, batch, optimizer, loss,
    clip, KL, TIS, engine, seed, and the SSB (`cfg.ssb`, off unless enabled) and monitor
    (`cfg.monitor`) this function builds. `model`'s trainable parameters (set beforehand, e.g.
    with `set_trainable`) are updated through `TrainEngine` (torch/DDP, or DeepSpeed ZeRO
    0-3; under torchrun every rank draws its own prompts and gradients are averaged).
    `rollout` must sample from `model` (`sync_policy` after every optimizer step; the loss's
    token budget is its max_new_tokens). `reward.breakdown` components named "accuracy",
    "format" and "reward_model" feed the metrics and the monitor. `checkpoint`
    (r1vflow.train.checkpoint) saves and restores the whole run (engine, RNGs, `GRPOState`)
    so that a killed run resumes. `on_step(step, metrics)` is called on rank 0 after every
    step. Returns the history, a `summarize` summary and the monitor's stop reason and flags.
    """
    _check_args(len(prompts), cfg, rollout.engine.backend)
    run, loop, rank = _start(model, tokenizer, prompts, reward, rollout, cfg)
    first = loop.restore(checkpoint.restore(run.engine) if checkpoint is not None else None,
                         cfg.steps)
    sync_policy(rollout, run.engine.module)
    with training_progress(progress and rank == 0) as bar:
        task = bar.add_task("grpo", total=cfg.steps, completed=first - 1, loss=float("nan"),
                            tok_s=0.0)
        for step in range(first, cfg.steps + 1):
            metrics = _grpo_step(run, loop.batch(), step,
                                 cfg.seed * 1_000_003 + step * 7_919 + rank)
            stop = loop.record(step, metrics)
            bar.update(task, advance=1, loss=metrics["loss"], tok_s=metrics["tokens_per_s"])
            if rank == 0 and on_step is not None:
                on_step(step, metrics)
            if checkpoint is not None:
                checkpoint.step(step, run.engine, lambda: loop.state().to_dict(),
                                last=step == cfg.steps or stop)
            if stop:
                break
    run.engine.release()
    result = loop.result
    result.summary = {**summarize(result.history), "weight_syncs": float(rollout.syncs),
                      "stopped_early": float(result.stop_reason is not None)}
    return result
