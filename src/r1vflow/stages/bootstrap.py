"""bootstrap (tiny presets only): the stand-in for downloading pretrained InternViT and QwQ.

1. Train a BPE tokenizer on the synthetic vocabulary, with <image>, <think>, </think>, <answer>,
   </answer> and chat markers as single tokens and a chat template.
2. Build a SigLIP vision tower and pretrain it to predict scene attributes (colour/shape counts,
   digit classes) on images drawn from a seed stream disjoint from the data set's.
3. Build a Qwen2 LLM and pretrain it on text-only reasoning documents (the tasks stated in words,
   with <think>/<answer>), so it can count and add before it ever sees an image.
4. Assemble vision + fresh MLP projector + LLM as a transformers Llava model: the base VLM.
5. Build a second LLM of the same architecture and tokenizer, the *substitute* of R1V stage 1
   (an instruct model in the report), and pretrain it on plain caption / question-answer text
   without <think>: output `substitute_llm`, registered as `<name>-bootstrap-substitute`.

Departure from the paper: R1V starts from released checkpoints; here everything is built and
pretrained in about a minute so that the later stages start from parts that know something.
"""

from __future__ import annotations

import hashlib

import torch

from r1vflow.data.synth import text_corpus, tokenizer_corpus, vision_pretraining_set
from r1vflow.models.io import save_model
from r1vflow.models.tokenizer import train_tokenizer
from r1vflow.models.vlm import assemble_vlm, build_tiny_llm, build_tiny_vision, part_sizes
from r1vflow.stages.common import StageContext, StageOutcome
from r1vflow.train.bootstrap import llm_settings, pretrain_llm, pretrain_vision, vision_settings

# Seed offsets keep bootstrap's synthetic data apart from synthesize_data's (same base seed).
_VISION_SEED, _TEXT_SEED, _CAPTION_SEED = 10_007, 20_011, 30_011
# Offsets of the weight initialisations (vision tower, LLM, projector, substitute LLM): each
# build starts from its own seed, so the base models are a function of the config alone.
_INIT_VISION, _INIT_LLM, _INIT_PROJECTOR, _INIT_SUBSTITUTE = 1, 2, 3, 4


def _digest(texts: list[str], targets) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
    h.update(targets.numpy().tobytes())
    return h.hexdigest()


def run(ctx: StageContext) -> StageOutcome:
    exp, cfg, tiny = ctx.exp, ctx.exp.bootstrap, ctx.exp.model.tiny
    seed = exp.data.seed
    tokenizer = train_tokenizer(tokenizer_corpus(seed), tiny.vocab_size)

    torch.manual_seed(seed + _INIT_VISION)
    vision = build_tiny_vision(exp.data.image_size, tiny.patch_size, tiny.vision_hidden_size,
                               tiny.vision_layers, tiny.vision_heads)
    images, targets = vision_pretraining_set(cfg.vision_examples, exp.data.image_size,
                                             seed + _VISION_SEED)
    vision_stats = pretrain_vision(vision, images, targets, vision_settings(cfg, seed),
                                   on_step=_log_steps(ctx, "vision"))

    torch.manual_seed(seed + _INIT_LLM)
    llm = build_tiny_llm(tiny.vocab_size, tiny.llm_hidden_size, tiny.llm_layers, tiny.llm_heads,
                         tiny.llm_intermediate_size, tiny.max_position_embeddings)
    texts = text_corpus("reasoning", cfg.llm_texts, seed + _TEXT_SEED)
    llm_stats = pretrain_llm(llm, tokenizer, texts, llm_settings(cfg, seed),
                             on_step=_log_steps(ctx, "llm"))

    torch.manual_seed(seed + _INIT_PROJECTOR)
    vlm = assemble_vlm(vision, llm, tokenizer)
    digest = _digest(texts, targets)
    out = save_model(vlm, tokenizer, ctx.outputs["base_model"], {
        "stage": "bootstrap", "parent": None, "config_fingerprint": exp.fingerprint(),
        "data_digests": {"bootstrap_corpus": digest}})
    ctx.tracker.log_dataset(f"{exp.name}-bootstrap-corpus", digest,
                            "procedural:r1vflow.data.synth", "pretraining")
    version = ctx.register(out, parent=None, dataset_digest=digest)
    sizes = part_sizes(vlm)
    metrics = {
        "vision_loss": float(vision_stats["loss"]),
        "llm_loss": float(llm_stats["loss"]),
        **_substitute_llm(ctx, tokenizer),
        "tokenizer_size": float(len(tokenizer)),
        **{f"params_{part}": float(n) for part, n in sizes.items()},
    }
    report = (f"# bootstrap: {exp.name}\n\nTokenizer: {len(tokenizer)} tokens. Parameters: "
              + ", ".join(f"{k} {v:,}" for k, v in sizes.items())
              + f".\n\nVision attribute loss {metrics['vision_loss']:.4f}, "
              f"LLM loss {metrics['llm_loss']:.4f}.\n")
    return StageOutcome(metrics=metrics, model_dir=out, model_version=version, report=report)


def _log_steps(ctx: StageContext, part: str):
    """on_step for a pretraining loop: `train/<part>/<metric>` per step (the report's curves)."""

    def on_step(step: int, values: dict) -> None:
        ctx.tracker.log_metrics({f"train/{part}/{k}": v for k, v in values.items()}, step=step)

    return on_step


def _substitute_llm(ctx: StageContext, tokenizer) -> dict[str, float]:
    """Pretrain, save and register the substitute LLM when the DAG asks for it; its metrics."""
    if "substitute_llm" not in ctx.outputs:
        return {}
    exp, cfg, tiny = ctx.exp, ctx.exp.bootstrap, ctx.exp.model.tiny
    torch.manual_seed(exp.data.seed + _INIT_SUBSTITUTE)
    llm = build_tiny_llm(tiny.vocab_size, tiny.llm_hidden_size, tiny.llm_layers, tiny.llm_heads,
                         tiny.llm_intermediate_size, tiny.max_position_embeddings)
    texts = text_corpus("caption", cfg.llm_texts, exp.data.seed + _CAPTION_SEED)
    steps = cfg.llm_steps if cfg.substitute_llm_steps is None else cfg.substitute_llm_steps
    stats = pretrain_llm(llm, tokenizer, texts, llm_settings(cfg, exp.data.seed, steps),
                         on_step=_log_steps(ctx, "substitute_llm"))
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    out = save_model(llm, tokenizer, ctx.outputs["substitute_llm"], {
        "stage": "bootstrap", "parent": None, "config_fingerprint": exp.fingerprint(),
        "data_digests": {"substitute_corpus": digest}})
    ctx.register(out, parent=None, dataset_digest=digest, suffix="-substitute")
    return {"substitute_llm_loss": float(stats["loss"])}
