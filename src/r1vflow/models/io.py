"""Model directories: safetensors weights + tokenizer + `r1vflow_model.json` lineage metadata.

Every model a stage produces is a directory that `from_pretrained` loads as is. Beside the
weights sits `r1vflow_model.json` naming the stage that made it, its parent model, the digests
of the data it saw and the fingerprint of the resolved config. Weights are only ever written and
read as safetensors (transformers 5 writes nothing else; loading passes `use_safetensors=True`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from r1vflow.storage.atomic import atomic_dir, write_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# transformers (and torch) are imported where models are saved or loaded, so that the metadata
# functions below stay light for callers that only read lineage (r1vflow.stages.common).
METADATA_FILE = "r1vflow_model.json"
ModelKind = Literal["vlm", "causal_lm", "vision"]
MODEL_KINDS: tuple[ModelKind, ...] = ("vlm", "causal_lm", "vision")


def _loader(kind: ModelKind, directory: Path):
    import transformers

    if kind == "vlm":  # the family's class, from config.json's model_type
        from r1vflow.models.families import detect_family, model_class, read_config

        return model_class(detect_family(read_config(directory)))
    return {"causal_lm": transformers.AutoModelForCausalLM,
            "vision": transformers.AutoModel}[kind]


class ModelMetadata(BaseModel):
    """Lineage facts stored next to a model's weights."""

    model_config = ConfigDict(extra="forbid")

    stage: str = Field(description="stage that produced the model, e.g. 'sft'")
    parent: str | None = Field(
        description="The model it started from: its registered version ('name/version') once "
                    "registered, else its path; None if new")
    model_version: str | None = Field(
        default=None, description="This model's registered MLflow version ('name/version')")
    data_digests: dict[str, str] = Field(
        default_factory=dict, description="data set name -> digest"
    )
    config_fingerprint: str = Field(description="fingerprint of the resolved experiment config")
    created_at: str = Field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"),
        description="UTC time the model was saved (ISO 8601)",
    )
    kind: ModelKind | None = Field(default=None, description="how to load it (set by save_model)")
    extra: dict[str, Any] = Field(default_factory=dict, description="free-form facts (metrics...)")


def _kind_of(model: PreTrainedModel) -> ModelKind:
    from r1vflow.models.families import FAMILIES, NATIVE

    if type(model).__name__ in {FAMILIES[name].model_class for name in NATIVE}:
        return "vlm"
    if hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        return "causal_lm"
    return "vision"


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    metadata: dict[str, Any],
) -> Path:
    """Write `model` (safetensors), `tokenizer` (if given) and validated metadata to `out_dir`.
    A model with LoRA adapters (r1vflow.models.lora) is written merged, with the adapter in
    `out_dir/adapter` (peft's format): whoever loads the directory needs no peft.

    `metadata` needs keys stage, parent, config_fingerprint; optional data_digests, created_at,
    extra. Raises ValueError naming the bad field.
    """
    try:
        meta = ModelMetadata(**{"kind": _kind_of(model), **metadata})
    except ValidationError as err:
        raise ValueError(f"invalid model metadata for {out_dir}: {err}") from err
    out = Path(out_dir)
    from r1vflow.models.lora import save_pretrained

    with atomic_dir(out) as tmp:  # a killed save leaves the old directory, never half a model
        save_pretrained(model, tmp, meta.parent)  # LoRA: merged weights, adapter in adapter/
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        from r1vflow.models.families import PROCESSOR_ATTR

        processor = getattr(model, PROCESSOR_ATTR, None)
        if processor is not None:  # the family's image processor travels with the weights
            processor.save_pretrained(tmp)
        unsafe = [p.name for p in tmp.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
        if unsafe:
            raise RuntimeError(f"save_pretrained wrote non-safetensors weights in {out}: "
                               f"{unsafe}")
        (tmp / METADATA_FILE).write_text(meta.model_dump_json(indent=2) + "\n")
    return out


def read_model_metadata(model_dir: str | Path) -> ModelMetadata:
    """Parse `<model_dir>/r1vflow_model.json`; FileNotFoundError / ValueError name the file."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model metadata file missing: {path}")
    try:
        return ModelMetadata.model_validate_json(path.read_text())
    except ValidationError as err:
        raise ValueError(f"corrupt model metadata in {path}: {err}") from err


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """`r1vflow_model.json` as a dict, validated by ModelMetadata (one schema)."""
    return read_model_metadata(model_dir).model_dump()


def write_metadata(model_dir: str | Path, meta: dict[str, Any]) -> None:
    """Validate and atomically rewrite `r1vflow_model.json`."""
    write_text(Path(model_dir) / METADATA_FILE,
               ModelMetadata(**meta).model_dump_json(indent=2) + "\n")


def parent_version(model_dir: str | Path) -> str | None:
    """The registered version ('name/version') of an input model, for `r1vflow.parent`."""
    return read_model_metadata(model_dir).model_version


def _check_weights(directory: Path) -> None:
    from safetensors import safe_open

    config = directory / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"model config missing: {config}")
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt model config {config}: {err}") from err
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # safetensors raises its own SafetensorError / OSError types
            raise ValueError(f"corrupt safetensors file {file}: {err}") from err


def load_model(model_dir: str | Path, kind: ModelKind = "vlm",
               zero3: dict[str, Any] | None = None) -> PreTrainedModel:
    """Load a model saved by `save_model` from a local directory, safetensors only.

    kind: "vlm" (the class of its family, r1vflow.models.families, from config.json; the image
    processor saved beside it is attached as `r1vflow_image_processor`), "causal_lm"
    (AutoModelForCausalLM) or "vision" (AutoModel, e.g. SiglipVisionModel). The tokenizer
    loads with `r1vflow.models.tokenizer.load_tokenizer(model_dir)`.
    zero3: the ZeRO-3 DeepSpeed config the stage will train with
    (`r1vflow.train.engine.zero3_load_config`): the model is built under `deepspeed.zero.Init`
    and every rank holds only its partition of each parameter (`param.ds_numel` is the full
    size); only a ZeRO-3 TrainEngine can run it, and `release()` gathers it back.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {sorted(MODEL_KINDS)}")
    directory = Path(model_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    _check_weights(directory)
    from r1vflow.models.distributed import zero3_init

    try:
        with zero3_init(zero3):
            model = _loader(kind, directory).from_pretrained(
                directory, use_safetensors=True, local_files_only=True
            )
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"cannot load {kind} model from {directory}: {err}") from err
    if kind == "vlm":
        from r1vflow.models.families import PROCESSOR_ATTR, load_image_processor

        processor = load_image_processor(directory)
        if processor is not None:
            setattr(model, PROCESSOR_ATTR, processor)
    model.eval()
    return model
