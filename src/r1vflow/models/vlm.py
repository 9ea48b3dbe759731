"""Vision encoder + MLP projector + LLM assembled as a standard `LlavaForConditionalGeneration`.

The Llava composition in transformers accepts any vision and text backbone, saves with
`save_pretrained` and is served by vLLM, so the same model class runs the tiny CPU presets (a
SigLIP-style ViT and a Qwen2-style LLM built here from scratch) and the cluster runs (real
checkpoints via `load_pretrained_parts`). The projector is Llava's 2-layer GELU MLP, R1V's
"adapter". `swap_llm` implements R1V's projector transfer: the MLP trained on a substitute LLM
is moved onto the reasoning LLM with the same hidden size.
"""

from __future__ import annotations

import copy

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from r1vflow.models.devices import model_device
from r1vflow.models.families import PARTS, PROCESSOR_ATTR, part_parameters
from r1vflow.models.families.images import CLS_TOWERS, llava_image_tokens
from r1vflow.models.tokenizer import IMAGE_TOKEN, special_token_id


def build_tiny_vision(
    image_size: int, patch_size: int, hidden_size: int, num_layers: int, num_heads: int
) -> SiglipVisionModel:
    """A randomly initialised SigLIP vision tower: [B,3,S,S] -> [B,(S/P)^2,hidden_size] features."""
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    if hidden_size % num_heads:
        raise ValueError(
            f"vision hidden_size={hidden_size} is not divisible by num_heads={num_heads}"
        )
    config = SiglipVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        vision_use_head=False,
    )
    return SiglipVisionModel(config)


def build_tiny_llm(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 decoder: ids [B,T] -> logits [B,T,vocab_size]."""
    if hidden_size % num_heads:
        raise ValueError(f"LLM hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config)


def _check_tokenizer_fits(vocab_size: int, tokenizer: PreTrainedTokenizerBase, what: str) -> None:
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"{what} has vocab_size={vocab_size} but the tokenizer has {len(tokenizer)} ids; "
            "use an LLM built for this tokenizer (same tokenizer family)"
        )


def assemble_vlm(
    vision: PreTrainedModel, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> LlavaForConditionalGeneration:
    """Compose vision tower + fresh 2-layer MLP projector + LLM, copying the parts' weights.

    Each image becomes `num_image_tokens(model)` embeddings that replace the `<image>` tokens
    of the prompt (all patches, last vision layer, no CLS token).
    """
    _check_tokenizer_fits(llm.config.vocab_size, tokenizer, "the LLM")
    # a tower that prepends a CLS token (InternViT, CLIP) has it dropped, as InternVL and Llava
    # do: "default" strategy; SigLIP has none: "full"
    strategy = "default" if vision.config.model_type in CLS_TOWERS else "full"
    config = LlavaConfig(
        vision_config=vision.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_id=special_token_id(tokenizer, IMAGE_TOKEN),
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    config.image_seq_length = llava_image_tokens(config)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    _copy_llm_weights(model, llm)
    _set_generation_ids(model, tokenizer)
    return model.to(dtype=model_device(llm)[1])


def _copy_llm_weights(model: LlavaForConditionalGeneration, llm: PreTrainedModel) -> None:
    model.model.language_model.load_state_dict(llm.base_model.state_dict())
    model.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())


def _set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    for cfg in (model.config, model.generation_config):
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.bos_token_id = None


def num_image_tokens(model: LlavaForConditionalGeneration) -> int:
    """How many `<image>` placeholder tokens one image fills (patches, minus CLS for 'default')."""
    return llava_image_tokens(model.config)


def _numel(param: torch.nn.Parameter) -> int:
    """Elements of `param`: its full size also when ZeRO-3 partitioned it (`ds_numel`)."""
    return int(getattr(param, "ds_numel", param.numel()))


def set_trainable(model: PreTrainedModel, parts: set[str]) -> dict[str, int]:
    """Unfreeze exactly `parts` (subset of {"vision","projector","llm"}), freeze the rest.

    The split into parts is the model's family's (r1vflow.models.families). Returns the number
    of trainable parameters per part (0 for frozen parts).
    """
    unknown = set(parts) - PARTS
    if unknown:
        raise ValueError(f"unknown trainable parts {sorted(unknown)}; choose from {sorted(PARTS)}")
    counts: dict[str, int] = {}
    for name, params in part_parameters(model).items():
        for param in params:
            param.requires_grad_(name in parts)
        counts[name] = sum(_numel(p) for p in params if p.requires_grad)
    return counts


def part_sizes(model: PreTrainedModel) -> dict[str, int]:
    """Total parameters per part, trainable or not."""
    return {name: sum(_numel(p) for p in params)
            for name, params in part_parameters(model).items()}


def swap_llm(
    vlm: LlavaForConditionalGeneration,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> LlavaForConditionalGeneration:
    """R1V projector transfer: a new VLM with `vlm`'s vision tower and projector over `llm`.

    The projector's output width must equal the new LLM's hidden size, and the LLM must share the
    VLM's vocabulary (same tokenizer family) so that the `<image>` id and the chat markers keep
    their meaning. Raises ValueError naming the mismatch otherwise. `vlm` is left unchanged.
    """
    old_text = vlm.config.text_config
    if llm.config.hidden_size != old_text.hidden_size:
        raise ValueError(
            f"cannot move the projector: it outputs hidden size {old_text.hidden_size} but the new "
            f"LLM has hidden_size={llm.config.hidden_size}; projector transfer needs an LLM with "
            "the same hidden size as the substitute LLM it was trained on"
        )
    if llm.config.vocab_size != old_text.vocab_size:
        raise ValueError(
            f"cannot move the projector: the VLM's LLM has vocab_size={old_text.vocab_size} but "
            f"the new LLM has vocab_size={llm.config.vocab_size}; both LLMs must share one tokenizer"
        )
    if tokenizer is not None:
        _check_tokenizer_fits(llm.config.vocab_size, tokenizer, "the new LLM")
        image_id = special_token_id(tokenizer, IMAGE_TOKEN)
        if image_id != vlm.config.image_token_id:
            raise ValueError(
                f"tokenizer maps {IMAGE_TOKEN} to id {image_id} but the VLM uses "
                f"image_token_id={vlm.config.image_token_id}; use the VLM's tokenizer"
            )
    config = LlavaConfig(**{**vlm.config.to_dict(), "text_config": llm.config.to_dict()})
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vlm.model.vision_tower.state_dict())
    model.model.multi_modal_projector.load_state_dict(vlm.model.multi_modal_projector.state_dict())
    _copy_llm_weights(model, llm)
    model.generation_config = copy.deepcopy(vlm.generation_config)
    if hasattr(vlm, PROCESSOR_ATTR):  # the same vision tower reads images the same way
        setattr(model, PROCESSOR_ATTR, getattr(vlm, PROCESSOR_ATTR))
    return model.to(dtype=model_device(llm)[1])


def load_pretrained_parts(
    vision_id: str, llm_id: str, dtype: torch.dtype = torch.bfloat16
) -> tuple[PreTrainedModel, PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a vision tower, a causal LM and its tokenizer with `from_pretrained` (cluster path).

    `vision_id` may name a vision-only checkpoint or a dual encoder (SigLIP, CLIP): for the latter
    only the vision tower is loaded. The tokenizer must already contain `<image>` and the tags;
    `add_r1v_tokens` adds the missing ones and resizes the LLM's embeddings.
    """
    from transformers import AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    vision_config = AutoConfig.from_pretrained(vision_id)
    sub = getattr(vision_config, "vision_config", None)
    vision_cls = MODEL_MAPPING[type(sub)] if sub is not None else AutoModel
    vision = vision_cls.from_pretrained(vision_id, dtype=dtype)
    llm = AutoModelForCausalLM.from_pretrained(llm_id, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(llm_id)
    add_r1v_tokens(tokenizer, llm)
    return vision, llm, tokenizer


def add_r1v_tokens(tokenizer: PreTrainedTokenizerBase, llm: PreTrainedModel) -> int:
    """Add `<image>` and the reasoning tags to a pretrained tokenizer where missing; returns count.

    Resizes the LLM's embeddings when the tokenizer outgrows them. Sets pad = eos when unset.
    """
    from tokenizers import AddedToken

    from r1vflow.models.tokenizer import TAG_TOKENS

    vocab = tokenizer.get_vocab()
    added = 0
    if IMAGE_TOKEN not in vocab:
        added += tokenizer.add_special_tokens(
            {"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
        )
    missing = [AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS if t not in vocab]
    added += tokenizer.add_tokens(missing)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer))
    return added
