"""Experiment configuration: one pydantic model per stage, composed into one `Experiment`.

An experiment file is YAML. It is validated strictly (unknown keys are errors), can be changed from
the command line with `--set a.b=c`, and is identified by a fingerprint: the sha256 of the resolved
config without the fields that do not change what is trained (name, description, tracking, storage).

    exp = load_experiment("pipelines/configs/smoke.yaml", overrides=["sft.lr=1e-3"])
    exp.fingerprint()
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

STAGES: tuple[str, ...] = (
    "bootstrap",
    "synthesize_data",
    "align_projector",
    "sft",
    "train_reward_model",
    "grpo",
    "evaluate",
)
StageName = Literal[
    "bootstrap", "synthesize_data", "align_projector", "sft", "train_reward_model", "grpo",
    "evaluate",
]
Part = Literal["vision", "projector", "llm"]
# Fields that name or place a run but do not change what it computes.
# Resources only place the work (node pool, GPU count, retries); the recipe is the same.
_NOT_FINGERPRINTED = ("name", "description", "tracking", "storage", "cluster", "schedule",
                      "resources")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class TrainConfig(Strict):
    """Settings shared by every training stage."""

    epochs: int = Field(1, ge=1, description="Passes over the stage's data.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(16, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps with linear warmup.")
    max_length: int = Field(192, gt=0, description="Token budget per training sequence.")
    trainable: list[Part] = Field(
        default_factory=lambda: ["projector", "llm"], min_length=1,
        description="Which parts receive gradients: any of vision, projector, llm.")
    backend: Literal["torch", "deepspeed"] = Field(
        "torch", description="Training engine: plain torch (one process) or DeepSpeed ZeRO.")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage (deepspeed backend).")
    seed: int = 0


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


class AlignProjectorConfig(Strict):
    """R1V stage 1: MLP sub-stages on the substitute LLM, transfer to the reasoning LLM, align.

    Only the projector ever trains; the transfer step has no settings (it checks that hidden
    size and tokenizer match and fails otherwise)."""

    substages: list[ProjectorSubStage] = Field(
        default_factory=_paper_substages, min_length=1,
        description="Step 1, in order (the report uses three).")
    align: ProjectorAlignStep = Field(default_factory=ProjectorAlignStep)
    batch_size: int = Field(16, gt=0)
    weight_decay: float = Field(0.05, ge=0, description="Report: 0.05.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Report: 3%.")
    max_length: int = Field(192, gt=0, description="Token budget per training sequence.")
    val_limit: int = Field(256, gt=0, description="Val samples generated for val_accuracy/*.")
    backend: Literal["torch", "deepspeed"] = "torch"
    zero_stage: Literal[0, 1, 2, 3] = 0
    seed: int = 0

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
        None, ge=1, description="Save a checkpoint every N steps; None: final model only.")

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


# --------------------------------------------------------------------------- platform


_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"


class Toleration(Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class ResourceSpec(Strict):
    """Where, on what and how a stage runs on a cluster (pipelines/k8s.py compiles it into the IR).

    The local runner uses only `nodes` x `procs_per_node` (a torchrun with that many CPU processes);
    everything else is for Kubernetes. With nodes > 1 the stage's KFP task only launches and watches
    a Kubeflow Trainer TrainJob (it gets `cluster.launcher_cpu/memory`); cpu, memory, accelerators,
    node selector and tolerations then describe each TrainJob node instead.
    """

    cpu: str | None = Field(None, pattern=_QUANTITY,
                            description="CPU request, e.g. '8' or '500m' (also the limit unless cpu_limit).")
    cpu_limit: str | None = Field(None, pattern=_QUANTITY, description="CPU limit; default: cpu.")
    memory: str | None = Field(None, pattern=_QUANTITY,
                               description="Memory request, e.g. '64Gi' (also the limit unless memory_limit).")
    memory_limit: str | None = Field(None, pattern=_QUANTITY, description="Memory limit; default: memory.")
    accelerator_type: str | None = Field(None, description="e.g. nvidia.com/gpu or a GKE accelerator name.")
    accelerator_count: int | None = Field(None, ge=1)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    nodes: int = Field(1, ge=1, description="Machines; > 1 runs the stage as a Kubeflow Trainer TrainJob.")
    procs_per_node: int = Field(
        1, ge=1, description="torchrun processes per machine (one per GPU); locally nodes x procs "
                             "CPU processes under gloo.")
    timeout_seconds: int | None = Field(
        None, gt=0, description="Pod activeDeadlineSeconds (and the TrainJob's); None: no limit.")
    retries: int = Field(0, ge=0, le=10, description="KFP retries of a failed task (transient failures).")
    retry_backoff_seconds: int = Field(60, ge=0, description="Wait before the first retry.")
    retry_backoff_factor: float = Field(2.0, ge=1.0, description="Multiplier of the wait per retry.")
    retry_backoff_max_seconds: int = Field(3600, gt=0, description="Longest wait between retries.")
    caching: bool = Field(True, description="Let KFP reuse a previous result of this exact task.")
    scratch_size: str | None = Field(
        None, pattern=_QUANTITY,
        description="Generic ephemeral volume (a PVC living with the pod) mounted at /scratch.")
    scratch_storage_class: str | None = Field(
        None, description="StorageClass of the scratch volume; None: the cluster default.")

    _quantities_as_text = field_validator(
        "cpu", "cpu_limit", "memory", "memory_limit", "scratch_size", mode="before")(
        lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)

    @model_validator(mode="after")
    def _consistent(self) -> ResourceSpec:
        if (self.accelerator_type is None) != (self.accelerator_count is None):
            raise ValueError("give accelerator_type and accelerator_count together")
        if self.accelerator_count is not None and self.procs_per_node > self.accelerator_count:
            raise ValueError(f"procs_per_node ({self.procs_per_node}) exceeds accelerator_count "
                             f"({self.accelerator_count}): each process drives one accelerator")
        if self.scratch_storage_class and not self.scratch_size:
            raise ValueError("scratch_storage_class needs scratch_size")
        return self


class StorageConfig(Strict):
    backend: Literal["file", "s3"] = Field("file", description="Where model checkpoints are kept.")
    endpoint: str | None = Field(None, description="S3 endpoint host:port (credentials come from env).")
    bucket: str = "r1vflow"
    prefix: str = "artifacts"
    secure: bool = False


class TrackingConfig(Strict):
    tracking_uri: str | None = Field(
        None, description="MLflow URI; default: $MLFLOW_TRACKING_URI, else sqlite in the output dir.")
    experiment_name: str | None = Field(None, description="MLflow experiment; default: r1vflow-<name>.")
    register_models: bool = Field(True, description="Register every produced model as a version.")
    promotion_metric: str = Field(
        "accuracy", description="evaluate metric (of the final model) that decides promotion.")
    promotion_min_delta: float = Field(
        0.0, ge=0, description="How much the candidate must beat the champion by.")


ImageRoleName = Literal["base", "trainer", "rollout"]


class ClusterConfig(Strict):
    """Names of what the cluster provides (docs/cluster.md): none of it changes what is computed.

    Credentials never appear here or in a compiled pipeline: tasks read them from Secrets.
    """

    s3_secret: str = Field(
        "r1vflow-s3-credentials",
        description="Secret with keys access_key/secret_key -> AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.")
    mlflow_secret: str | None = Field(
        None, description="Secret with keys username/password -> MLFLOW_TRACKING_USERNAME/PASSWORD "
                          "(an MLflow server with basic auth); None: the server needs no login.")
    settings_configmap: str = Field(
        "r1vflow-settings", description="ConfigMap with the S3 endpoint/bucket, MLflow URI, "
                                        "TrainJob namespace and training runtime.")
    service_account: str | None = Field(
        None, description="Service account the KFP run uses (submit); None: KFP's default.")
    trainjob_namespace: str | None = Field(
        None, description="Namespace of multi-node TrainJobs; None: $R1VFLOW_TRAINJOB_NAMESPACE.")
    training_runtime: str | None = Field(
        None, description="ClusterTrainingRuntime of TrainJobs; None: $R1VFLOW_TRAINING_RUNTIME.")
    images: dict[ImageRoleName, str] = Field(
        default_factory=dict, description="Image overrides per role (base/trainer/rollout), "
                                          "e.g. a private registry mirror.")
    image_pull_secrets: list[str] = Field(default_factory=list)
    launcher_cpu: str = Field("1", pattern=_QUANTITY,
                              description="CPU of a task that only launches and watches a TrainJob.")
    launcher_memory: str = Field("4Gi", pattern=_QUANTITY,
                                 description="Memory of a task that launches a TrainJob.")

    _quantities_as_text = field_validator("launcher_cpu", "launcher_memory", mode="before")(
        lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)


# --------------------------------------------------------------------------- experiment

# 5 cron fields (minute first) or 6 (seconds first, KFP's form), or a robfig/cron descriptor.
_CRON = re.compile(r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
                   r"|[0-9A-Za-z*/,?#-]+( +[0-9A-Za-z*/,?#-]+){4,5})$")


class Experiment(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Run name (lowercase, dashes).")
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    bootstrap: BootstrapConfig | None = Field(
        default_factory=BootstrapConfig, description="Tiny presets only; null on clusters.")
    synthesize_data: SynthesizeDataConfig = Field(default_factory=SynthesizeDataConfig)
    align_projector: AlignProjectorConfig | None = Field(
        None, description="R1V projector alignment with LLM transfer; null skips it (SFT then "
                          "starts from the base model).")
    sft: SFTConfig = Field(default_factory=SFTConfig)
    train_reward_model: RewardModelConfig | None = Field(
        None, description="Multimodal reward model (for iterative SFT); null skips it.")
    grpo: GRPOConfig | None = Field(
        None, description="R1V2 GRPO after SFT; null skips the stage.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    resources: dict[StageName, ResourceSpec] = Field(
        default_factory=dict, description="Per-stage cluster resources, keyed by stage name.")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    schedule: str | None = Field(
        None, exclude=True,
        description="Cron schedule: `r1vflow gitops apply --host` makes the experiment a KFP "
                    "recurring run (5 fields, or 6 with seconds first, or @daily/@weekly...). "
                    "Not fingerprinted and not compiled into the pipeline (docs/gitops.md).")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not _CRON.match(value.strip()):
            raise ValueError("not a cron schedule: give 5 fields (minute hour "
                             "day-of-month month day-of-week), 6 with seconds first, or a "
                             "descriptor such as @daily or @weekly")
        return value.strip() if value else value

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if self.model.kind == "tiny":
            if self.bootstrap is None:
                raise ValueError("model.kind 'tiny' needs the bootstrap stage (it builds the tiny models)")
            if self.data.image_size % self.model.tiny.patch_size:
                raise ValueError(f"data.image_size ({self.data.image_size}) must be a multiple of "
                                 f"model.tiny.patch_size ({self.model.tiny.patch_size})")
        elif self.bootstrap is not None:
            raise ValueError("bootstrap builds tiny models only: set bootstrap to null "
                             "for model.kind 'pretrained'")
        if self.align_projector is not None and self.bootstrap is None:
            raise ValueError("align_projector trains against the substitute LLM that bootstrap "
                             "builds; with model.kind 'pretrained' set align_projector to null")
        if self.sft.iterative is not None and self.train_reward_model is None:
            raise ValueError("sft.iterative filters D with the reward model: enable "
                             "train_reward_model, or set sft.iterative to null")
        return self

    def stages(self) -> list[str]:
        """The enabled stages, in DAG order."""
        return [s for s in STAGES if getattr(self, s, None) is not None]

    def fingerprint(self) -> str:
        """sha256 of the resolved config, ignoring fields that do not change what is computed."""
        data = self.model_dump(mode="json", exclude=set(_NOT_FINGERPRINTED))
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- loading


class ConfigError(ValueError):
    """An experiment file or override is invalid; the message names every bad field path."""


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `r1vflow schema` lists every field)"
        elif e["type"] == "literal_error" or "input" not in e:
            pass
        else:
            msg += f" (got {e['input']!r})"
        lines.append(f"  {path}: {msg}")
    return "invalid experiment:\n" + "\n".join(lines)


_EXPONENT_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _parse_value(raw: str) -> Any:
    """YAML, plus what YAML 1.1 leaves as a string but a person means as a number ('2e-5')."""
    if not raw.strip():
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:  # e.g. '@daily': '@' is reserved in YAML; the text is meant
        return raw.strip()
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value):
        return float(value)
    return value


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (numbers, lists...)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    path, raw = assignment.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {assignment!r} has an empty key path")
    value = _parse_value(raw)
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def experiment_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Experiment:
    data = json.loads(json.dumps(data))  # deep copy, plain types
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"experiment file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return experiment_from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON strings (MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, dict)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def json_schema() -> dict[str, Any]:
    return Experiment.model_json_schema()
