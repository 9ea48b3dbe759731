"""The reinforcement-learning sections: `grpo` (with its reward weights, SSB and monitor) and
`mpo` (with its pair sampling). Split from recipe.py, which holds the other stage sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from r1vflow.config.base import Part, Strict
from r1vflow.config.generation import GenerationOverride
from r1vflow.config.recipe import _GEN, TrainConfig


class RewardWeights(Strict):
    """Hybrid reward r = accuracy * r_rule + format * r_format + reward_model * r_RM (R1V2)."""

    accuracy: float = Field(1.0, ge=0, description="Weight of the rule accuracy reward (0/1).")
    format: float = Field(1.0, ge=0, description="Weight of the <think>/<answer> format reward (0/1).")
    reward_model: float = Field(
        0.0, ge=0, description="Weight of the reward model's score; > 0 needs a trained reward "
                               "model (train_reward_model stage).")


class SSBConfig(Strict):
    """Selective Sample Buffer (R1V2) against vanishing advantages; sizes are not in the paper."""

    enabled: bool = Field(True, description="Replay buffered non-zero-advantage samples.")
    capacity: int = Field(512, ge=1, description="Samples kept in the buffer.")
    max_age_steps: int = Field(8, ge=0, description="Drop samples older than this many steps.")
    target_effective_ratio: float = Field(
        0.7, ge=0, le=1, description="Top a batch's share of non-zero advantages up to this.")
    max_replay_fraction: float = Field(
        0.5, ge=0, le=1, description="At most this share of a batch is replayed samples.")
    prefilter: bool = Field(
        False, description="Offline SSB: before training, one rollout pass over the prompt pool "
                           "keeps only prompts whose group had non-zero advantage.")


class MonitorThresholds(Strict):
    rm_rise: float = Field(
        0.2, ge=0, description="Reward-model score rise over a window that, with accuracy not "
                               "rising, flags reward hacking.")
    accuracy_min_rise: float = Field(
        0.0, description="Accuracy rise over the window that clears an RM rise.")
    format_drop: float = Field(
        0.3, ge=0, description="Drop of the windowed format rate below its best that flags "
                               "format collapse.")
    rm_accuracy_gap: float | None = Field(
        None, ge=0, description="The 'MPO threshold' (R1V2, undefined there): windowed mean "
                                "reward-model score (0..1) minus windowed rule accuracy above "
                                "which reward hacking is flagged; None: not watched.")


class MonitorConfig(Strict):
    """Reward-hacking / format-collapse monitor (R1V2's calibrated reward thresholds)."""

    window: int = Field(10, ge=2, description="Steps per window (compares its two halves).")
    thresholds: MonitorThresholds = Field(default_factory=MonitorThresholds)
    stop_on_flag: bool = Field(False, description="Stop training once a flag holds `patience` steps.")
    patience: int = Field(3, ge=1, description="Consecutive flagged steps before stopping.")


class GRPOConfig(TrainConfig):
    """R1V2 GRPO with hybrid rewards and the SSB. The batch of a step is prompts_per_step x
    group_size responses; `epochs` is unused (`steps` sets the length) and `batch_size` is the
    number of prompts per rollout `generate` call."""

    trainable: list[Part] = Field(
        default_factory=lambda: ["projector"], min_length=1,
        description="Parts that train; adapter-only (projector) was R1V2's best.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW, cosine decay).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps with linear warmup.")
    batch_size: int = Field(64, gt=0, description="Prompts per rollout generate call.")
    group_size: int = Field(8, ge=2, description="Responses per prompt (G).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per step, on each process.")
    steps: int = Field(50, ge=1, description="GRPO steps (rollout batches).")
    ppo_epochs: int = Field(1, ge=1, description="Optimizer steps per rollout batch.")
    max_new_tokens: int = Field(64, gt=0, description="Completion budget per response.")
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    clip_low: float = Field(0.2, ge=0, lt=1, description="Ratio clip below: 1 - clip_low.")
    clip_high: float = Field(0.2, ge=0, description="Ratio clip above: 1 + clip_high.")
    kl_coef: float = Field(0.0, ge=0, description="k3 KL to the frozen SFT model; 0 = off "
                                                  "(no reference model is built).")
    reward_weights: RewardWeights = Field(default_factory=RewardWeights)
    loss: Literal["grpo", "gspo", "dr_grpo"] = Field(
        "grpo", description="Policy loss (r1vflow.rl.core; docs/grpo.md): grpo (clipped "
                            "per-token ratios), gspo (one clipped ratio per sequence; give it a "
                            "clip range of a few 1e-4) or dr_grpo (Dr. GRPO: sets scale_by_std "
                            "false and aggregation seq-mean-token-sum-norm).")
    scale_by_std: bool = Field(True, description="Divide advantages by the group std "
                                                 "(False: Dr. GRPO, mean-centred only).")
    aggregation: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = Field(
        "seq-mean-token-mean", description="Loss over tokens: per-sequence mean then mean "
                                           "(GRPO), mean over all tokens (DAPO), or the sum "
                                           "over tokens / (responses x max_new_tokens) "
                                           "(Dr. GRPO).")
    ssb: SSBConfig = Field(default_factory=SSBConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    tis_cap: float | None = Field(
        None, gt=0, description="Truncated importance sampling: weight each token by "
                                "min(trainer / rollout probability, tis_cap), correcting for "
                                "the generation engine's numerics (verl, TRL); null: off.")
    generation: GenerationOverride | None = Field(None, description=_GEN)
    checkpoint_every: int | None = Field(
        None, ge=1, description="Every N steps: save a resumable checkpoint (policy, optimizer, "
                                "prompt sampler, SSB, monitor, RNG); None: by time only.")

    @model_validator(mode="before")
    @classmethod
    def _dr_grpo_defaults(cls, data: object) -> object:
        """loss dr_grpo: Dr. GRPO's advantages and normaliser, unless the section sets them."""
        if isinstance(data, dict) and data.get("loss") == "dr_grpo":
            return {"scale_by_std": False, "aggregation": "seq-mean-token-sum-norm", **data}
        return data

    @model_validator(mode="after")
    def _grpo_consistent(self) -> GRPOConfig:
        if self.loss == "dr_grpo" and (self.scale_by_std
                                       or self.aggregation != "seq-mean-token-sum-norm"):
            raise ValueError("grpo.loss dr_grpo divides no advantage by the group std and "
                             "sums the loss over tokens / (responses x max_new_tokens): drop "
                             "grpo.scale_by_std and grpo.aggregation (they follow the loss)")
        if self.epochs != 1:
            raise ValueError("grpo.epochs is unused: set grpo.steps instead (epochs must stay 1)")
        if self.max_new_tokens >= self.max_length:
            raise ValueError(f"grpo.max_new_tokens ({self.max_new_tokens}) must be below "
                             f"grpo.max_length ({self.max_length}), which also holds the prompt")
        return self


class MPOPairsConfig(Strict):
    """How MPO's preference pairs are made (R1V2: the reward model plus rule constraints; the
    report gives no sizes or margins, so all of these are choices made here)."""

    source: Literal["sampled", "synthetic", "both"] = Field(
        "sampled", description="sampled: responses of the start model to train prompts, checked "
                               "by rules (and the reward model); synthetic: synthesize_data's "
                               "preferences.jsonl; both: the two together.")
    prompts: int | None = Field(
        256, gt=0, description="Train prompts sampled from (the first N); None: all.")
    samples_per_prompt: int = Field(4, ge=2, description="Responses sampled per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of those responses.")
    max_new_tokens: int = Field(64, gt=0, description="Completion budget of a sampled response.")
    min_steps: int = Field(2, ge=1, description="Reasoning sentences the 'steps' rule asks for.")
    rule_margin: int = Field(
        1, ge=1, le=4, description="Rules a rejected response must fail (of answer_correct, "
                                   "format, steps, consistency).")
    rm_margin: float = Field(
        0.2, ge=0, description="When every response passes the rules: reward-model score gap "
                               "(0..1 scale) between chosen and rejected that still makes a pair.")
    gold_chosen: bool = Field(
        True, description="A prompt with no passing response takes its reference response as "
                          "chosen (else it is dropped).")


class MPOConfig(TrainConfig):
    """R1V2 Mixed Preference Optimization: L = w_dpo*DPO + w_bco*BCO + w_nll*NLL(chosen).
    Weights and beta are not given by the report; the defaults are InternVL-MPO's (also TRL's
    MPO example: loss_weights 0.8, 0.2, 1.0)."""

    trainable: list[Part] = Field(
        default_factory=lambda: ["projector"], min_length=1,
        description="Parts that train; adapter-only (projector) was R1V2's best.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW, cosine decay).")
    batch_size: int = Field(8, gt=0, description="Preference pairs per optimizer step.")
    beta: float = Field(0.1, gt=0, description="DPO/BCO temperature beta.")
    w_dpo: float = Field(0.8, ge=0, description="Weight of the DPO (sigmoid) term.")
    w_bco: float = Field(0.2, ge=0, description="Weight of the BCO term.")
    w_nll: float = Field(1.0, ge=0, description="Weight of the chosen responses' NLL.")
    bco_delta_decay: float | None = Field(
        0.99, ge=0, lt=1, description="BCO shift: exponential moving average of past batch mean "
                                      "rewards with this decay (null: use bco_delta_window).")
    bco_delta_window: int | None = Field(
        None, ge=1, description="BCO shift: plain mean of the last N batch mean rewards "
                                "(set bco_delta_decay to null to use it).")
    pairs: MPOPairsConfig = Field(default_factory=MPOPairsConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    probe_every: int | None = Field(
        None, ge=1, description="Every N steps sample `probe_size` train prompts and feed their "
                                "rule accuracy, format rate and reward-model score to the "
                                "monitor (the MPO threshold); None: no probe.")
    probe_size: int = Field(32, ge=1, description="Prompts per probe.")
    generation: GenerationOverride | None = Field(None, description=_GEN)

    @model_validator(mode="after")
    def _mpo_consistent(self) -> MPOConfig:
        if (self.bco_delta_decay is None) == (self.bco_delta_window is None):
            raise ValueError("mpo: set exactly one of bco_delta_decay and bco_delta_window "
                             "(the other null)")
        if self.w_dpo + self.w_bco + self.w_nll == 0:
            raise ValueError("mpo: w_dpo, w_bco and w_nll are all 0; give at least one weight")
        return self
