"""The recipe's sections: model, data and one pydantic model per stage. Changing any of these
changes what is trained (and the experiment's fingerprint)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from r1vflow.config.base import Part, Seed, Strict
from r1vflow.config.benchmarks import BenchmarkConfig
from r1vflow.config.data_source import ContaminationConfig, DataSourceConfig
from r1vflow.config.generation import GenerationOverride

_GEN = "This stage's changes to the experiment's `generation:` section (null: as it says)."

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
    """Released checkpoints, imported by the `import_model` stage (r1vflow.models.importer) as
    the run's base model: a whole VLM (`source`), or R1V's composition (`vision_model` +
    `llm_model`, optionally `substitute_llm_model`), or an already imported model
    (`base_model_uri`)."""

    source: str | None = Field(
        None, description="Whole-VLM checkpoint: a local directory, or on a cluster a hub id "
                          "with `revision` (qwen2_5_vl, qwen3_vl, internvl, internvl_chat).")
    family: Literal["qwen2_5_vl", "qwen3_vl", "internvl", "internvl_chat"] | None = Field(
        None, description="Override the family read from the source's config.json.")
    revisions: dict[str, str] = Field(
        default_factory=dict,
        description="Hub id -> pinned revision (commit) of each checkpoint named by a hub id "
                    "(source, vision_model, llm_model, substitute_llm_model); import refuses "
                    "a hub id without one. Local directories need none.")
    vision_model: str | None = Field(
        None, description="Composition: SigLIP / CLIP vision tower checkpoint (directory or "
                          "hub id). InternViT-6B is remote code: import it as part of an "
                          "internvl_chat `source` instead.")
    llm_model: str | None = Field(
        None, description="Composition: the reasoning LLM, e.g. "
                          "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B.")
    substitute_llm_model: str | None = Field(
        None, description="Composition: instruct LLM of the same family and hidden size used "
                          "for projector pre-training (R1V's align_projector).")
    base_model_uri: str | None = Field(
        None, description="Shortcut: store URI of a model `r1vflow models import` already "
                          "wrote (e.g. s3://models/r1v2/base); the DAG then imports that "
                          "artifact and runs no import_model stage.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weights dtype of the imported model (float32 on CPUs).")
    min_pixels: int | None = Field(
        None, gt=0, description="Qwen-VL image processors: fewest pixels an image is "
                                "resized to (fewer image tokens below it are padded up).")
    max_pixels: int | None = Field(
        None, gt=0, description="Qwen-VL image processors: most pixels an image keeps "
                                "(bounds its image tokens).")

    @model_validator(mode="after")
    def _one_way(self) -> PretrainedModelConfig:
        composition = self.vision_model is not None or self.llm_model is not None
        ways = [self.source is not None, composition, self.base_model_uri is not None]
        if sum(ways) != 1:
            raise ValueError("model.pretrained: give exactly one of source (a whole VLM), "
                             "vision_model + llm_model (R1V's composition) or base_model_uri "
                             "(an already imported model)")
        if composition and (self.vision_model is None or self.llm_model is None):
            raise ValueError("model.pretrained: the composition needs both vision_model and "
                             "llm_model")
        if self.substitute_llm_model is not None and not composition:
            raise ValueError("model.pretrained.substitute_llm_model belongs to the composition "
                             "(vision_model + llm_model)")
        if self.family is not None and self.source is None:
            raise ValueError("model.pretrained.family names the family of `source`")
        return self


class ModelConfig(Strict):
    kind: Literal["tiny", "pretrained"] = Field("tiny", description="Build tiny models or load released ones.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    pretrained: PretrainedModelConfig | None = None

    @model_validator(mode="after")
    def _pretrained_given(self) -> ModelConfig:
        if self.kind == "pretrained" and self.pretrained is None:
            raise ValueError("model.kind is 'pretrained' but model.pretrained is missing: "
                             "give source, or vision_model and llm_model")
        return self


Family = Literal["counting", "digit_arithmetic", "comparison"]


class DataConfig(Strict):
    families: list[Family] = Field(
        default_factory=lambda: ["counting", "digit_arithmetic", "comparison"],
        min_length=1, description="Procedural task families to synthesize (see docs/tasks.md).")
    image_size: int = Field(32, ge=16, description="Square image side in pixels.")
    max_objects: int = Field(4, ge=1, le=12, description="Most objects in a counting/comparison scene.")
    seed: Seed = Field(0, description="Seed of the data synthesis.")
    source: DataSourceConfig = Field(
        default_factory=DataSourceConfig,
        description="synthetic (the families above), files or hub (docs/data.md).")
    on_bad_row: Literal["fail", "skip"] = Field(
        "fail", description="files/hub: a row that fails validation stops the import (fail) or "
                            "is left out, counted as rows_skipped and listed in the report (skip).")
    contamination: ContaminationConfig = Field(
        default_factory=ContaminationConfig,
        description="files/hub: training samples shared with evaluation sets (docs/data.md).")

    @model_validator(mode="after")
    def _import_settings_need_import(self) -> DataConfig:
        if self.source.kind == "synthetic" and self.contamination.references:
            raise ValueError("data.contamination checks imported data (data.source.kind files "
                             "or hub); synthetic tasks share nothing with public benchmarks: "
                             "remove data.contamination.references or import your data")
        return self


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
        "torch", description="Training engine: plain torch (DistributedDataParallel over "
                             "several ranks) or DeepSpeed ZeRO.")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage (deepspeed backend).")
    seed: Seed = 0
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

    @model_validator(mode="after")
    def _zero_needs_deepspeed(self) -> TrainSettings:
        if self.backend == "torch" and self.zero_stage:
            raise ValueError(f"zero_stage {self.zero_stage} is a DeepSpeed setting: set backend: "
                             "deepspeed, or zero_stage: 0 for the torch backend (DDP)")
        return self


# The attention and MLP projections of the LLMs r1vflow serves (Qwen2/2.5/3, Llama, Mistral,
# InternVL's and R1V's Qwen2 LLMs all name them so).
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ModuleName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class LoRAConfig(Strict):
    """LoRA (the peft library) on the LLM: its base weights stay frozen and each targeted linear
    layer W learns W + B@A * alpha/rank (r1vflow.models.lora; docs/models.md, LoRA)."""

    rank: int = Field(gt=0, le=4096, description="r: the rank of A [r, in] and B [out, r].")
    alpha: float | None = Field(
        None, gt=0, description="Scale numerator: the update is B@A * alpha/rank; null: 2 x rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: list(LLM_PROJECTIONS), min_length=1,
        description="The LLM's linear layers that get adapters, by the last part of their "
                    "module name (default: its attention and MLP projections); a name the "
                    "LLM lacks is refused, named, when the model loads.")

    @property
    def scale_alpha(self) -> float:
        """alpha, with its default (2 x rank) filled in."""
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    @model_validator(mode="after")
    def _unique_targets(self) -> LoRAConfig:
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"lora.target_modules names each module once, got "
                             f"{self.target_modules}")
        return self


class TrainConfig(TrainSettings):
    """Settings shared by the training stages that train whole parts (sft, reward model, mpo,
    grpo)."""

    epochs: int = Field(1, ge=1, description="Passes over the stage's data.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    trainable: list[Part] = Field(
        default_factory=lambda: ["projector", "llm"], min_length=1,
        description="Which parts receive gradients: any of vision, projector, llm.")
    lora: LoRAConfig | None = Field(
        None, description="Train the LLM through LoRA adapters instead of its full weights "
                          "(whether or not `trainable` names llm; the other parts listed "
                          "there train in full); the stage saves the merged model and the "
                          "adapter beside it, in <model>/adapter. null: no adapters.")

    @model_validator(mode="after")
    def _lora_not_under_zero3(self) -> TrainConfig:
        if self.lora is not None and self.zero_stage == 3:
            raise ValueError("lora with zero_stage 3 is not supported: the adapters are added "
                             "after the model loads, which ZeRO-3 has partitioned by then; use "
                             "zero_stage 2 (the adapters' optimizer state is small) or lora: "
                             "null")
        return self


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

    @model_validator(mode="after")
    def _likelihood_term_not_under_zero3(self) -> RewardModelConfig:
        if self.likelihood_term and self.zero_stage == 3:
            raise ValueError("train_reward_model.likelihood_term's weight is a 0-dim parameter, "
                             "which DeepSpeed ZeRO-3 cannot partition: use zero_stage 0-2, or "
                             "likelihood_term: false")
        return self


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
    distill: bool = Field(
        False, description="Re-run AL-CoTD with the current model before each iteration "
                           "t >= 1, as R1V does (needs the distill stage).")

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


class DistillConfig(Strict):
    """R1V AL-CoTD: the current model writes each train sample's chain at repetition penalty
    P = min(2, exp(alpha * (1 - (S_v + beta*S_t + gamma*S_I) / (1 + beta + gamma)))); chains
    with the gold answer (and the judge's approval, when on) replace the templated ones. The
    report gives no alpha, beta, gamma, attempts or temperature (choices made here)."""

    alpha: float = Field(1.0, ge=0, description="Controller strength alpha (P = 1 at S = 1).")
    beta: float = Field(1.0, ge=0, description="Weight of the text score S_t.")
    gamma: float = Field(1.0, ge=0, description="Weight of the integration score S_I.")
    vision_scorer: Literal["vision_rule", "question_only_probe"] = Field(
        "vision_rule", description="S_v: from the scene (objects, digits), or also the "
                                   "question-only probe (the model answers with a blank image: "
                                   "right means the image was not needed).")
    text_scorer: Literal["text_rule", "judge"] = Field(
        "text_rule", description="S_t: from the reference chain's steps and the question, or "
                                 "the judge (1 - the reward model's score of the reference "
                                 "response; needs train_reward_model).")
    integration_scorer: Literal["integration_rule"] = Field(
        "integration_rule", description="S_I: how/why vs what/where, spatial references, "
                                        "objects in the scene.")
    judge: bool = Field(False, description="The reward model also checks each accepted chain "
                                           "(needs train_reward_model).")
    judge_threshold: float = Field(0.5, ge=0, le=1, description="Judge score (0..1) to accept.")
    max_attempts: int = Field(3, ge=1, description="Generations per sample before giving up.")
    on_failure: Literal["drop", "template"] = Field(
        "template", description="A sample without an accepted chain: drop it, or keep its "
                                "templated reference chain.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the chains.")
    max_new_tokens: int = Field(64, gt=0, description="Completion budget of a chain.")
    batch_size: int = Field(64, gt=0, description="Prompts per generate call.")
    limit: int | None = Field(None, gt=0, description="Distil the first N train samples (the "
                                                      "rest keep templated chains); None: all.")
    compare_limit: int = Field(200, ge=1, description="Prompts of the fixed-penalty comparison.")
    fixed_penalty: float = Field(1.0, gt=0, description="The comparison's fixed penalty.")
    generation: GenerationOverride | None = Field(None, description=_GEN)
    seed: Seed = 0


class SFTConfig(TrainConfig):
    """SFT on the reasoning data; with `iterative`, R1V stage 2's reward-filtered iterations."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate (iteration 0's when iterative).")
    iterative: IterativeSFTConfig | None = Field(
        None, description="R1V iterative SFT (needs train_reward_model); null: one plain pass.")


class EvaluateConfig(Strict):
    split: Literal["val", "test"] = Field("test", description="Which split to score.")
    limit: int | None = Field(None, gt=0, description="Score only the first N samples.")
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(64, gt=0)
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding.")
    num_samples: int = Field(1, ge=1, description="Samples per question; pass@1 is their mean.")
    benchmarks: list[BenchmarkConfig] = Field(
        default_factory=list, description="Published benchmarks scored on every model besides "
                                          "the data set's test split (docs/evaluation.md).")
    generation: GenerationOverride | None = Field(None, description=_GEN)
    max_hallucination_rate: float | None = Field(
        None, ge=0, le=1, description="A candidate whose hallucination rate (synthetic scenes) "
                                      "is above this is flagged and never promoted; None: not "
                                      "checked (the rate is still reported).")

    @model_validator(mode="after")
    def _unique_benchmarks(self) -> EvaluateConfig:
        names = [b.name for b in self.benchmarks]
        if len(names) != len(set(names)):
            raise ValueError(f"evaluate.benchmarks names each benchmark once; got {names}")
        return self
