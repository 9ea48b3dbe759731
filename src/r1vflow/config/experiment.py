"""The experiment: every section composed, cross-section checks, the enabled stages and the
fingerprint."""

from __future__ import annotations

import hashlib
import json
import re

from pydantic import Field, ValidationInfo, field_validator, model_validator

from r1vflow.config.base import Strict
from r1vflow.config.generation import GenerationConfig, merged
from r1vflow.config.platform import ClusterConfig, ResourceSpec, StorageConfig, TrackingConfig
from r1vflow.config.recipe import (
    AlignProjectorConfig,
    BootstrapConfig,
    DataConfig,
    DistillConfig,
    EvaluateConfig,
    ModelConfig,
    PretrainedModelConfig,
    RewardModelConfig,
    SFTConfig,
    SynthesizeDataConfig,
)
from r1vflow.config.rl import (
    GRPOConfig,
    MPOConfig,
)
from r1vflow.config.stage_table import GENERATING_STAGES, STAGES, StageName

SLICE_CONTEXT = "r1vflow_slice"


def is_slice(info: ValidationInfo) -> bool:
    """True while validating one task's config slice (r1vflow.config.slicing): cross-section
    checks were made on the whole experiment before it was sliced and are skipped."""
    return bool(info.context and info.context.get(SLICE_CONTEXT))

# Fields that name or place a run but do not change what it computes.
# Resources only place the work (node pool, GPU count, retries); the recipe is the same.
_NOT_FINGERPRINTED = ("name", "description", "tracking", "storage", "cluster", "schedule",
                      "resources")
_NOT_FINGERPRINTED_STAGE_FIELDS = ("checkpoint_every", "checkpoint_minutes", "keep_checkpoints")

# --------------------------------------------------------------------------- experiment

# 5 cron fields (minute first) or 6 (seconds first, KFP's form), or a robfig/cron descriptor.
_CRON = re.compile(r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
                   r"|[0-9A-Za-z*/,?#-]+( +[0-9A-Za-z*/,?#-]+){4,5})$")


class Experiment(Strict):
    name: str = Field(
        pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", min_length=1, max_length=37,
        description="Run name: a DNS-1123 label (lowercase letters, digits, inner dashes) of at "
                    "most 37 characters. Kubernetes names are derived from it; the longest, the "
                    "PipelineVersion `r1vflow-<name>-<fingerprint:8>-<IR digest:8>`, adds 26 "
                    "characters and must stay a 63-character label (KFP run names "
                    "`<name>-<fp:8>-<YYYYmmdd-HHMMSS>` add 25; TrainJob names are cut to 40 and "
                    "pod label values to 63 separately).")
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    bootstrap: BootstrapConfig | None = Field(
        default_factory=BootstrapConfig, description="Tiny presets only; null on clusters.")
    synthesize_data: SynthesizeDataConfig = Field(default_factory=SynthesizeDataConfig)
    align_projector: AlignProjectorConfig | None = Field(
        None, description="R1V projector alignment with LLM transfer; null skips it (SFT then "
                          "starts from the base model).")
    distill: DistillConfig | None = Field(
        None, description="R1V AL-CoTD: the model before SFT writes the train chains SFT trains "
                          "on; null: SFT trains on the templated chains.")
    sft: SFTConfig | None = Field(
        default_factory=SFTConfig, description="SFT on the reasoning data; null skips it (R1V2: "
                                               "base -> mpo -> grpo).")
    train_reward_model: RewardModelConfig | None = Field(
        None, description="Multimodal reward model (for iterative SFT); null skips it.")
    mpo: MPOConfig | None = Field(
        None, description="R1V2 Mixed Preference Optimization on the latest model before it "
                          "(base, aligned or SFT); null skips the stage.")
    grpo: GRPOConfig | None = Field(
        None, description="R1V2 GRPO on the latest model before it (MPO, else SFT, else "
                          "base); null skips the stage.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig,
        description="The generation engine of every stage that generates (distill, mpo, grpo, "
                    "evaluate); each can override fields in its own `generation:`.")
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

    def generation_for(self, stage: str) -> GenerationConfig:
        """The generation settings of `stage`: the experiment's, with the stage's overrides."""
        section = getattr(self, stage, None)
        return merged(self.generation, getattr(section, "generation", None))

    def may_generate_on_vllm(self) -> bool:
        """Whether a stage of this run generates with a backend other than transformers (vllm,
        or auto, which takes vLLM where it is installed and serves the model)."""
        enabled = self.stages()
        return any(self.generation_for(stage).backend != "transformers"
                   for stage in GENERATING_STAGES if stage in enabled)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not _CRON.match(value.strip()):
            raise ValueError("not a cron schedule: give 5 fields (minute hour "
                             "day-of-month month day-of-week), 6 with seconds first, or a "
                             "descriptor such as @daily or @weekly")
        return value.strip() if value else value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Experiment:
        if is_slice(info):  # one task's share: the other sections are defaults, not the recipe
            return self
        if self.model.kind == "tiny":
            if self.bootstrap is None:
                raise ValueError("model.kind 'tiny' needs the bootstrap stage (it builds the tiny models)")
            if self.data.image_size % self.model.tiny.patch_size:
                raise ValueError(f"data.image_size ({self.data.image_size}) must be a multiple of "
                                 f"model.tiny.patch_size ({self.model.tiny.patch_size})")
        elif self.bootstrap is not None:
            raise ValueError("bootstrap builds tiny models only: set bootstrap to null "
                             "for model.kind 'pretrained'")
        if self.align_projector is not None and self.bootstrap is None and (
                self.model.pretrained is None or self.model.pretrained.substitute_llm_model is None):
            raise ValueError("align_projector trains against a substitute LLM: bootstrap builds "
                             "one (model.kind 'tiny'); with model.kind 'pretrained' name it in "
                             "model.pretrained.substitute_llm_model (with vision_model and "
                             "llm_model), or set align_projector to null")
        if (self.sft is not None and self.sft.iterative is not None
                and self.train_reward_model is None):
            raise ValueError("sft.iterative filters D with the reward model: enable "
                             "train_reward_model, or set sft.iterative to null")
        if self.distill is not None and self.train_reward_model is None and (
                self.distill.judge or self.distill.text_scorer == "judge"):
            raise ValueError("distill's judge (distill.judge or distill.text_scorer: judge) is "
                             "the reward model: enable train_reward_model, or turn the judge off")
        if (self.sft is not None and self.sft.iterative is not None and self.sft.iterative.distill
                and self.distill is None):
            raise ValueError("sft.iterative.distill repeats AL-CoTD before each iteration with "
                             "the distill section's settings: enable distill, or set it false")
        if (self.grpo is not None and self.grpo.zero_stage == 3
                and self.generation_for("grpo").backend == "transformers"):
            raise ValueError("grpo.zero_stage 3 needs rollouts on vLLM, which gathers the "
                             "partitioned weights module by module for each sync: set "
                             "generation.backend (or grpo.generation.backend) to vllm or auto")
        if (self.grpo is not None and self.grpo.reward_weights.reward_model > 0
                and self.train_reward_model is None):
            raise ValueError("grpo.reward_weights.reward_model > 0 scores rollouts with the "
                             "reward model: enable train_reward_model, or set the weight to 0")
        return self

    @property
    def import_model(self) -> PretrainedModelConfig | None:
        """The import_model stage's settings: model.pretrained when it names checkpoints to
        import (None for tiny models and for an already imported base_model_uri)."""
        pretrained = self.model.pretrained
        if self.model.kind != "pretrained" or pretrained is None or pretrained.base_model_uri:
            return None
        return pretrained

    def stages(self) -> list[str]:
        """The enabled stages, in DAG order."""
        return [s for s in STAGES if getattr(self, s, None) is not None]

    def fingerprint(self) -> str:
        """sha256 of the resolved config, ignoring fields that do not change what is computed."""
        data = self.model_dump(mode="json", exclude=set(_NOT_FINGERPRINTED))
        for section in data.values():  # when to checkpoint does not change what is trained
            if isinstance(section, dict):
                for key in _NOT_FINGERPRINTED_STAGE_FIELDS:
                    section.pop(key, None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()
