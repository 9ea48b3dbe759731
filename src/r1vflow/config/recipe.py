"""The recipe's sections: model, data and one pydantic model per stage. Changing any of these
changes what is trained (and the experiment's fingerprint)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from r1vflow.config.base import Part, Strict

# --------------------------------------------------------------------------- model & data


class TinyModelConfig(Strict):
    """A small Llava-style VLM built from scratch (SigLIP vision tower + MLP projector + Qwen2 LM)."""

    patch_size: int = Field(8, gt=0, description="Vision patch size in pixels.")
    vision_hidden_size: int = Field(64, gt=0, description="Vision tower width.")
    vision_layers: int = Field(2, gt=0, description="Vision tower depth.")
    vision_heads: int = Field(4, gt=0, description="Vision attention heads.")
    llm_hidden_size: int = Field(128, gt=0, description="Language model width.")
    llm_layers: int = Field(3, gt=0, description="Language model depth.")
    llm_heads: int = Field(4, gt=0, description="Language model attention heads.")
    llm_intermediate_size: int = Field(256, gt=0, description="Language model MLP width.")
    vocab_size: int = Field(512, ge=64, description="Size of the BPE vocabulary trained locally.")
    max_position_embeddings: int = Field(512, gt=0, description="Longest sequence the LM accepts.")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        for width, heads, name in (
            (self.vision_hidden_size, self.vision_heads, "vision"),
            (self.llm_hidden_size, self.llm_heads, "llm"),
        ):
            if width % heads:
                raise ValueError(
                    f"{name}_hidden_size ({width}) must be divisible by {name}_heads ({heads})"
                )
        return self


class PretrainedModelConfig(Strict):
    """Released checkpoints (the reports' 38B setups). Loaded with from_pretrained on a cluster."""

    vision_model: str = Field(description="Vision encoder id or path, e.g. OpenGVLab/InternViT-6B-448px-V1-5.")
    llm_model: str = Field(description="Reasoning LLM id or path, e.g. Qwen/QwQ-32B.")
    substitute_llm_model: str | None = Field(
        None, description="Instruct LLM of the same family used for projector pre-training (R1V).")
    base_model_uri: str = Field(
        description="Store URI of the assembled base VLM (vision + projector + LLM), e.g. "
                    "s3://models/r1v2/base; the pipeline imports it instead of running bootstrap.")
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class ModelConfig(Strict):
    kind: Literal["tiny", "pretrained"] = Field("tiny", description="Build tiny models or load released ones.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    pretrained: PretrainedModelConfig | None = None

    @model_validator(mode="after")
    def _pretrained_given(self) -> ModelConfig:
        if self.kind == "pretrained" and self.pretrained is None:
            raise ValueError("model.kind is 'pretrained' but model.pretrained is missing: "
                             "give vision_model and llm_model")
        return self


Family = Literal["counting", "digit_arithmetic", "comparison"]


class DataConfig(Strict):
    families: list[Family] = Field(
        default_factory=lambda: ["counting", "digit_arithmetic", "comparison"],
        min_length=1, description="Procedural task families to synthesize (see docs/tasks.md).")
    image_size: int = Field(32, ge=16, description="Square image side in pixels.")
    max_objects: int = Field(4, ge=1, le=12, description="Most objects in a counting/comparison scene.")
    seed: int = Field(0, description="Seed of the data synthesis.")


# --------------------------------------------------------------------------- stages


class BootstrapConfig(Strict):
    """Tiny presets only: build a tokenizer, a vision encoder and an LLM, and pretrain them briefly."""

    vision_steps: int = Field(300, ge=0, description="Attribute-prediction steps for the vision tower.")
    vision_examples: int = Field(2000, gt=0, description="Synthetic images for vision pretraining.")
    llm_steps: int = Field(400, ge=0, description="Language-modelling steps for the LLM.")
    llm_texts: int = Field(4000, gt=0, description="Synthetic documents for LLM pretraining.")
    substitute_llm_steps: int | None = Field(
        None, ge=0, description="Language-modelling steps for the substitute LLM (same "
                                "architecture, caption/instruction text); None: llm_steps.")
    vision_lr: float = Field(1e-3, gt=0, description="Learning rate of vision pretraining.")
    vision_batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0, description="Learning rate of LLM pretraining.")
    batch_size: int = Field(32, gt=0, description="Batch size of LLM pretraining.")
    max_length: int = Field(160, gt=0, description="Token budget per LLM pretraining document.")


class SynthesizeDataConfig(Strict):
    num_train: int = Field(2000, gt=0)
    num_val: int = Field(200, gt=0)
    num_test: int = Field(300, gt=0)
    num_captions: int | None = Field(None, ge=0, description="Caption pairs; default one per train image.")
    num_preference_pairs: int | None = Field(
        None, ge=0, description="Chosen/rejected pairs for the reward model; default one per train sample.")


class TrainSettings(Strict):
    """Engine, batch and validation settings of every training stage (align_projector included)."""

    batch_size: int = Field(16, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps with linear warmup.")
    max_length: int = Field(192, gt=0, description="Token budget per training sequence.")
    backend: Literal["torch", "deepspeed"] = Field(
        "torch", description="Training engine: plain torch (one process; several ranks need "
                             "deepspeed) or DeepSpeed ZeRO.")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage (deepspeed backend).")
    seed: int = 0
    val_limit: int = Field(256, gt=0, description="Val samples generated for val_accuracy/*.")
    val_max_new_tokens: int = Field(64, gt=0, description="Completion budget of validation.")
    val_batch_size: int = Field(64, gt=0, description="Prompts per validation generate call.")
    checkpoint_every: int | None = Field(
        None, ge=1, description="Save a resumable checkpoint (model, optimizer, scheduler, "
                                "data position, RNG) every N optimizer steps; None: by time only.")
    checkpoint_minutes: float | None = Field(
        30.0, gt=0, description="Save a resumable checkpoint when this many minutes passed "
                                "since the last one; None: by steps only. Every phase's last "
                                "step is saved too (docs/reliability.md).")
    keep_checkpoints: int = Field(2, ge=1, description="Newest resumable checkpoints kept.")


class TrainConfig(TrainSettings):
    """Settings shared by the training stages that train whole parts (sft, reward model, grpo)."""

    epochs: int = Field(1, ge=1, description="Passes over the stage's data.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    trainable: list[Part] = Field(
        default_factory=lambda: ["projector", "llm"], min_length=1,
        description="Which parts receive gradients: any of vision, projector, llm.")


AlignData = Literal["captions", "cot", "all"]


class ProjectorSubStage(Strict):
    """One MLP-only sub-stage of R1V stage 1, against the frozen substitute LLM."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$", description="Label in logs and metric names.")
    data: AlignData = Field(
        "all", description="captions: image descriptions; cot: the train split's step-by-step "
                           "responses; all: both.")
    fraction: float = Field(1.0, gt=0, le=1, description="Share of that data (seeded subset).")
    limit: int | None = Field(None, gt=0, description="At most this many samples after fraction.")
    lr: float = Field(gt=0, description="Peak learning rate (AdamW).")
    epochs: int = Field(1, ge=1)


class ProjectorAlignStep(Strict):
    """R1V stage 1 step 3: MLP-only training again, now with the reasoning LLM (frozen)."""

    data: AlignData = Field("cot", description="Which data (as in a sub-stage).")
    fraction: float = Field(1.0, gt=0, le=1, description="Share of that data (seeded subset).")
    limit: int | None = Field(None, gt=0, description="At most this many samples after fraction.")
    lr: float = Field(4e-5, gt=0, description="Peak learning rate; not given by the report.")
    epochs: int = Field(1, ge=1)


def _paper_substages() -> list[ProjectorSubStage]:
    # R1V: full set (2M, lr 2e-4), 200K quality subset (4e-5), 40K chain-of-thought (4e-5).
    return [ProjectorSubStage(name="full", data="all", lr=2e-4),
            ProjectorSubStage(name="quality", data="all", fraction=0.1, lr=4e-5),
            ProjectorSubStage(name="cot", data="cot", fraction=0.02, lr=4e-5)]


class AlignProjectorConfig(TrainSettings):
    """R1V stage 1: MLP sub-stages on the substitute LLM, transfer to the reasoning LLM, align.

    Only the projector ever trains; the transfer step has no settings (it checks that hidden
    size and tokenizer match and fails otherwise)."""

    substages: list[ProjectorSubStage] = Field(
        default_factory=_paper_substages, min_length=1,
        description="Step 1, in order (the report uses three).")
    align: ProjectorAlignStep = Field(default_factory=ProjectorAlignStep)
    weight_decay: float = Field(0.05, ge=0, description="Report: 0.05.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Report: 3%.")

    @model_validator(mode="after")
    def _unique_names(self) -> AlignProjectorConfig:
        names = [s.name for s in self.substages]
        if len(set(names)) != len(names):
            raise ValueError(f"align_projector.substages: names must be unique, got {names}")
        return self


class ScoreCalibrationConfig(Strict):
    """Raw reward -> 0..5: linear between two anchors fitted on the val pairs, clipped."""

    low_quantile: float = Field(
        0.5, ge=0, le=1, description="This quantile of the val rejected scores maps to 0.")
    high_quantile: float = Field(
        0.5, ge=0, le=1, description="This quantile of the val chosen scores maps to 5.")


class RewardModelConfig(TrainConfig):
    """Skywork-VL Reward: the VLM + a scalar value head, pairwise (Bradley-Terry) loss."""

    lr: float = Field(1e-5, gt=0, description="Peak learning rate (report: 1e-5).")
    epochs: int = Field(2, ge=1, description="Passes over the train pairs (report: 2).")
    trainable: list[Part] = Field(
        default_factory=lambda: ["projector", "llm"], min_length=1,
        description="Parts that train besides the value head; the report freezes the vision "
                    "encoder.")
    likelihood_term: bool = Field(
        False, description="Add a learned multiple of the response's mean log-probability under "
                           "the model's LM head to the value head's output (not in the report; "
                           "tiny models need it to rank within a CPU budget).")
    nll_weight: float = Field(
        0.0, ge=0, description="Add this x the chosen responses' negative log-likelihood to the "
                               "pairwise loss (not in the report; grounds the likelihood term).")
    cross_prompt: bool = Field(
        False, description="Rank every chosen response of a batch above every rejected one, "
                           "whatever the question, so one threshold separates good from bad "
                           "(what filtering needs; not in the report).")
    calibration: ScoreCalibrationConfig = Field(default_factory=ScoreCalibrationConfig)


class IterativeSFTConfig(Strict):
    """R1V stage 2's iterations t = 1..T after iteration 0 (which trains on all of D).

    D_t = {(x, y) in D: RM(x, y) >= tau_t} union E_{t-1}, the train samples the previous
    model answered wrongly. Defaults are the report's (T = 4, tau 2..5, lr 1e-4 then 2e-5)."""

    iterations: int = Field(4, ge=1, description="T (report: 4).")
    tau: list[float] = Field(
        default_factory=lambda: [2.0, 3.0, 4.0, 5.0],
        description="Reward threshold (0..5) of iterations 1..T, non-decreasing (report: 2,3,4,5).")
    lr: list[float] = Field(
        default_factory=lambda: [1e-4, 2e-5, 2e-5, 2e-5],
        description="Peak learning rate of iterations 1..T (report: 1e-4, then 2e-5).")
    epochs: int = Field(1, ge=1, description="Passes over D_t at each iteration.")
    error_set: bool = Field(
        True, description="Add E_{t-1}, the train samples the previous model got wrong.")
    error_scan_limit: int | None = Field(
        512, gt=0, description="Train samples answered per iteration to find E (bounds the "
                               "time); None: all.")
    noisy_fraction: float = Field(
        0.5, ge=0, le=1, description="D also holds rejected responses of train preference "
                                      "pairs, this many per train sample (mixed-quality data "
                                      "for the reward model to filter; not in the report).")

    @model_validator(mode="after")
    def _per_iteration_lists(self) -> IterativeSFTConfig:
        for name in ("tau", "lr"):
            values = getattr(self, name)
            if len(values) != self.iterations:
                raise ValueError(f"sft.iterative.{name} has {len(values)} values but "
                                 f"sft.iterative.iterations is {self.iterations}: give one per "
                                 "iteration 1..T")
        if any(not 0 <= t <= 5 for t in self.tau):
            raise ValueError(f"sft.iterative.tau values are reward scores on the 0..5 scale, "
                             f"got {self.tau}")
        if any(b < a for a, b in zip(self.tau, self.tau[1:], strict=False)):
            raise ValueError(f"sft.iterative.tau must be non-decreasing (rising thresholds), "
                             f"got {self.tau}")
        if any(lr <= 0 for lr in self.lr):
            raise ValueError(f"sft.iterative.lr values must be > 0, got {self.lr}")
        return self


class SFTConfig(TrainConfig):
    """SFT on the reasoning data; with `iterative`, R1V stage 2's reward-filtered iterations."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate (iteration 0's when iterative).")
    iterative: IterativeSFTConfig | None = Field(
        None, description="R1V iterative SFT (needs train_reward_model); null: one plain pass.")


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
    scale_by_std: bool = Field(True, description="Divide advantages by the group std "
                                                 "(False: Dr. GRPO, mean-centred only).")
    aggregation: Literal["seq-mean-token-mean", "token-mean"] = Field(
        "seq-mean-token-mean", description="Loss over tokens: per-sequence mean then mean "
                                           "(GRPO), or mean over all tokens (DAPO).")
    ssb: SSBConfig = Field(default_factory=SSBConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    rollout: Literal["transformers", "vllm"] = Field(
        "transformers", description="Rollout backend; vllm needs a GPU and the 'gpu' extra.")
    checkpoint_every: int | None = Field(
        None, ge=1, description="Every N steps: save a resumable checkpoint and the policy as a "
                                "model in the checkpoints/ output; None: by time only.")

    @model_validator(mode="after")
    def _grpo_consistent(self) -> GRPOConfig:
        if self.epochs != 1:
            raise ValueError("grpo.epochs is unused: set grpo.steps instead (epochs must stay 1)")
        if self.zero_stage == 3:
            raise ValueError("grpo supports zero_stage 0-2: rollouts need the full weights "
                             "on every process")
        if self.max_new_tokens >= self.max_length:
            raise ValueError(f"grpo.max_new_tokens ({self.max_new_tokens}) must be below "
                             f"grpo.max_length ({self.max_length}), which also holds the prompt")
        return self


class EvaluateConfig(Strict):
    split: Literal["val", "test"] = Field("test", description="Which split to score.")
    limit: int | None = Field(None, gt=0, description="Score only the first N samples.")
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(64, gt=0)
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding.")
    num_samples: int = Field(1, ge=1, description="Samples per question; pass@1 is their mean.")
