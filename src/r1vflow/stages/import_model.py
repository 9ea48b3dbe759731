"""import_model: released checkpoints -> the run's base model (model.kind 'pretrained').

With `model.pretrained.source`: a whole VLM (qwen2_5_vl, qwen3_vl, internvl, or the
internvl_chat layout of Skywork-R1V/R1V2, converted without running its remote code). With
`vision_model` + `llm_model`: R1V's composition (vision tower + new MLP projector + reasoning
LLM), and with `substitute_llm_model` also the substitute LLM align_projector trains against.
Each model is written as an r1vflow model directory (r1vflow.models.importer), published and
registered in MLflow with no parent: the root of the run's lineage, tagged with its source and
family; the sha256 of every source file is in its r1vflow_model.json.

On a cluster a source may be a hub id: it is downloaded at `model.pretrained.revisions[id]`
(a pinned commit; a hub id without one is refused) with the token of the HF_TOKEN variable (a Secret),
safetensors, configs and tokenizer files only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1vflow.models.importer import import_checkpoint, import_composition
from r1vflow.models.io import read_metadata
from r1vflow.stages.common import StageContext, StageOutcome

# What a hub download fetches: never pickled weights, never remote code.
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def resolve_checkpoint(name: str, revision: str | None) -> Path:
    """A local checkpoint directory for `name`: itself when it is one, else a hub download of
    `revision` (required)."""
    path = Path(name)
    if path.is_dir():
        return path
    if revision is None:
        raise ValueError(f"{name!r} is no local directory; as a hub id it needs a pinned "
                         f"commit in model.pretrained.revisions ({name}: <commit>) to be "
                         "reproducible")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=HUB_FILES,
                                  token=os.environ.get("HF_TOKEN") or None))


def run(ctx: StageContext) -> StageOutcome:
    cfg, fingerprint = ctx.exp.model.pretrained, ctx.exp.fingerprint()
    if cfg.source is not None:
        base = import_checkpoint(resolve_checkpoint(cfg.source, cfg.revisions.get(cfg.source)),
                                 ctx.outputs["base_model"], cfg.family, cfg.dtype,
                                 cfg.min_pixels, cfg.max_pixels, fingerprint)
        made = {"base_model": base}
        source = cfg.source
    else:
        def local(name: str) -> Path:
            return resolve_checkpoint(name, cfg.revisions.get(name))

        substitute = local(cfg.substitute_llm_model) if cfg.substitute_llm_model else None
        made = import_composition(
            local(cfg.vision_model), local(cfg.llm_model), ctx.outputs["base_model"],
            substitute=substitute, substitute_output=ctx.outputs.get("substitute_llm"),
            dtype=cfg.dtype, fingerprint=fingerprint)
        source = f"{cfg.vision_model} + {cfg.llm_model}"
    family = read_metadata(made["base_model"])["extra"]["family"]
    ctx.extra_tags = {**ctx.extra_tags, "r1vflow.source": source,
                      "r1vflow.revisions": json.dumps(cfg.revisions, sort_keys=True),
                      "r1vflow.family": family}
    version = ctx.register(made["base_model"], parent=None, dataset_digest=None)
    if "substitute_llm" in made:
        ctx.register(made["substitute_llm"], parent=None, dataset_digest=None,
                     suffix="-substitute")
    elif "substitute_llm" in ctx.outputs:  # an output KFP expects: say why it holds no model
        note = {"substitute_llm": None, "reason": "model.pretrained names no substitute LLM"}
        (ctx.outputs["substitute_llm"] / "none.json").write_text(json.dumps(note) + "\n")
    metrics = _sizes(made["base_model"])
    report = (f"# import_model: {ctx.exp.name}\n\nSource `{source}` (family {family}), "
              f"imported as `{version or made['base_model']}`.\n\n| part | parameters |\n"
              "|---|---|\n" + "".join(f"| {k} | {v:,.0f} |\n" for k, v in metrics.items()))
    return StageOutcome(metrics=metrics, model_dir=made["base_model"], model_version=version,
                        report=report)


def _sizes(model_dir: Path) -> dict[str, float]:
    """Parameters per part, counted on the model built on the meta device (no weights)."""
    import torch
    from transformers import AutoConfig

    from r1vflow.models.families import detect_family, model_class, read_config
    from r1vflow.models.vlm import part_sizes

    cls = model_class(detect_family(read_config(model_dir)))
    with torch.device("meta"):
        model = cls(AutoConfig.from_pretrained(str(model_dir), local_files_only=True))
    return {f"params_{k}": float(v) for k, v in part_sizes(model).items()}
