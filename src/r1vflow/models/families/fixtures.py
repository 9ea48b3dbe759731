"""Tiny random-weight checkpoints in each family's *published* layout (tests, pretrained-smoke).

Nothing is downloaded: every checkpoint is built with `from_config` + `save_pretrained` (the
`internvl_chat` one is written tensor by tensor under the names of the released remote-code
checkpoints, since its classes are remote code), with a byte-level BPE tokenizer trained here
in the style of a hub tokenizer: ChatML markers and the family's image tokens, but none of
R1V's tags (`<think>`...), which import adds. Images of 32x32 (the synthetic data) map to a
few image tokens.

    build_checkpoint("qwen2_5_vl", "ckpt/qwen")       # config.json, model.safetensors, ...
    build_composition_parts("ckpt/parts")            # parts/vision, parts/llm, parts/substitute
    build_composition_parts("ckpt/p", vision="internvit")   # vision/ a standalone InternViT
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from r1vflow.models.families.base import FAMILIES_WITH_CHECKPOINTS

CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
FAMILY_TOKENS = {
    "qwen2_5_vl": ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
    "qwen3_vl": ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
    "internvl": ("<img>", "</img>", "<IMG_CONTEXT>"),
    "internvl_chat": ("<img>", "</img>", "<IMG_CONTEXT>"),
    "llava": (),
}
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VOCAB = 400
# head_dim 32: the smallest head size vLLM's CPU attention serves (it refused 8), so that every
# family's tiny checkpoint is servable by vLLM in the tests.
TEXT = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 1024, "tie_word_embeddings": False}


def hub_style_tokenizer(extra: tuple[str, ...], seed: int = 0):
    """A ChatML BPE tokenizer with `extra` special tokens (and no R1V tags)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from r1vflow.data.synth import text_corpus

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 16, special_tokens=[*CHATML, *extra],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(text_corpus("reasoning", 200, seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _ids(tokenizer, family: str) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    if family.startswith("qwen"):
        return {"image_token_id": vocab["<|image_pad|>"], "video_token_id": vocab["<|video_pad|>"],
                "vision_start_token_id": vocab["<|vision_start|>"],
                "vision_end_token_id": vocab["<|vision_end|>"]}
    return {"image_token_id": vocab["<IMG_CONTEXT>"]}


def _native_model(family: str, ids: dict[str, int]):
    import transformers

    rope = {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0}
    if family == "qwen2_5_vl":
        config = transformers.Qwen2_5_VLConfig(
            text_config={**TEXT, "rope_parameters": rope},
            vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64,
                           "num_heads": 2, "out_hidden_size": 64, "patch_size": 14,
                           "spatial_merge_size": 2, "temporal_patch_size": 2,
                           "window_size": 56, "fullatt_block_indexes": [1]}, **ids)
        return transformers.Qwen2_5_VLForConditionalGeneration(config)
    if family == "qwen3_vl":
        config = transformers.Qwen3VLConfig(
            text_config={**TEXT, "head_dim": 32,
                         "rope_parameters": {**rope, "mrope_section": [6, 5, 5],
                                             "mrope_interleaved": True}},
            vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64,
                           "num_heads": 4, "out_hidden_size": 64, "patch_size": 16,
                           "spatial_merge_size": 2, "temporal_patch_size": 2,
                           "deepstack_visual_indexes": [1], "num_position_embeddings": 64},
            **ids)
        return transformers.Qwen3VLForConditionalGeneration(config)
    config = transformers.InternVLConfig(
        text_config={**TEXT, "model_type": "qwen2"},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": [28, 28],
                       "patch_size": [14, 14]},
        image_seq_length=1, **ids)
    return transformers.InternVLForConditionalGeneration(config)


def _image_processor(family: str):
    import transformers

    if family.startswith("qwen"):
        patch = 14 if family == "qwen2_5_vl" else 16
        side = patch * 2  # one merged token
        return transformers.Qwen2VLImageProcessorPil(
            patch_size=patch, merge_size=2, temporal_patch_size=2,
            min_pixels=side * side * 4, max_pixels=side * side * 64)
    return transformers.GotOcr2ImageProcessorPil(
        size={"height": 28, "width": 28}, crop_to_patches=True, min_patches=1, max_patches=4,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def build_checkpoint(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random checkpoint of a whole-VLM `family` in its published layout at `out_dir`."""
    if family not in FAMILIES_WITH_CHECKPOINTS:
        raise ValueError(f"no tiny checkpoint for {family!r}; choose from "
                         f"{FAMILIES_WITH_CHECKPOINTS} (llava: build_composition_parts)")
    out = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = hub_style_tokenizer(FAMILY_TOKENS[family], seed)
    if family == "internvl_chat":
        _write_internvl_chat(tokenizer, out)
    else:
        model = _native_model(family, _ids(tokenizer, family))
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _image_processor(family).save_pretrained(out)
    return out


def build_composition_parts(out_dir: str | Path, seed: int = 0,
                            vision: str = "siglip") -> dict[str, Path]:
    """A vision tower (`vision`: "siglip", or "internvit": a standalone InternViT in its
    remote-code layout), a Qwen2 LLM and a substitute LLM of the same tokenizer, each a
    published checkpoint directory under `out_dir` (vision/, llm/, substitute/)."""
    import transformers

    out = Path(out_dir)
    torch.manual_seed(seed)
    if vision == "internvit":
        build_intern_vit(out / "vision", seed)
    elif vision == "siglip":
        tower = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, vision_use_head=False))
        tower.save_pretrained(out / "vision")
        transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(
            out / "vision")
    else:
        raise ValueError(f"no tiny vision tower {vision!r}; choose siglip or internvit")
    tokenizer = hub_style_tokenizer((), seed)
    for name in ("llm", "substitute"):
        llm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TEXT))
        llm.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    return {name: out / name for name in ("vision", "llm", "substitute")}


def internvl_chat_config(tokenizer) -> dict:
    """config.json of a tiny checkpoint in the remote-code layout (InternVLChatModel)."""
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": 28,
        "min_dynamic_patch": 1, "max_dynamic_patch": 4, "ps_version": "v2",
        "select_layer": -1, "template": "internvl2_5", "use_thumbnail": True,
        "vision_config": {
            "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
            "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "image_size": 28, "patch_size": 14,
            "qk_normalization": True, "qkv_bias": False, "norm_type": "rms_norm",
            "layer_norm_eps": 1e-6, "hidden_act": "gelu"},
        "llm_config": {**TEXT, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
    }


def _write_internvl_chat(tokenizer, out: Path) -> None:
    """Tensors named as in Skywork-R1V / InternVL-Chat releases (InternViT-6B style: fused
    qkv without bias, RMS norms, q/k norms, layer scales), written with safetensors."""
    import transformers
    from safetensors.torch import save_file

    config = internvl_chat_config(tokenizer)
    tensors = {f"vision_model.{k}": t for k, t in _intern_vit_tensors(config["vision_config"])
               .items()}
    d = config["vision_config"]["hidden_size"]
    hidden = TEXT["hidden_size"]
    tensors.update({
        "mlp1.0.weight": torch.ones(4 * d), "mlp1.0.bias": torch.zeros(4 * d),
        "mlp1.1.weight": torch.randn(hidden, 4 * d) * 0.02, "mlp1.1.bias": torch.zeros(hidden),
        "mlp1.3.weight": torch.randn(hidden, hidden) * 0.02, "mlp1.3.bias": torch.zeros(hidden),
    })
    llm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TEXT))
    tensors.update({f"language_model.{k}": t.contiguous() for k, t in llm.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def intern_vit_config() -> dict:
    """config.json of a tiny standalone InternViT (OpenGVLab/InternViT-6B-448px-* layout)."""
    return {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "auto_map": {"AutoConfig": "configuration_intern_vit.InternVisionConfig",
                     "AutoModel": "modeling_intern_vit.InternVisionModel"},
        "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
        "num_hidden_layers": 2, "image_size": 28, "patch_size": 14, "num_channels": 3,
        "qk_normalization": True, "qkv_bias": False, "norm_type": "rms_norm",
        "layer_norm_eps": 1e-6, "hidden_act": "gelu", "torch_dtype": "float32"}


def build_intern_vit(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random standalone InternViT checkpoint (config.json + model.safetensors, tensors
    named as InternVisionModel names them: `embeddings.*`, `encoder.layers.*`)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    torch.manual_seed(seed)
    config = intern_vit_config()
    out.mkdir(parents=True, exist_ok=True)
    save_file(_intern_vit_tensors(config), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def _intern_vit_tensors(v: dict) -> dict[str, torch.Tensor]:
    """InternViT-6B style vision tensors (fused qkv without bias, RMS norms, q/k norms, layer
    scales), named as in InternVisionModel."""
    d, i, patch = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    tensors: dict[str, torch.Tensor] = {
        "embeddings.class_embedding": torch.randn(1, 1, d),
        "embeddings.patch_embedding.weight": torch.randn(d, 3, patch, patch) * 0.02,
        "embeddings.patch_embedding.bias": torch.zeros(d),
        "embeddings.position_embedding":
            torch.randn(1, (v["image_size"] // patch) ** 2 + 1, d) * 0.02,
    }
    for layer in range(v["num_hidden_layers"]):
        p = f"encoder.layers.{layer}."
        tensors.update({
            p + "attn.qkv.weight": torch.randn(3 * d, d) * 0.02,
            p + "attn.q_norm.weight": torch.ones(d), p + "attn.k_norm.weight": torch.ones(d),
            p + "attn.proj.weight": torch.randn(d, d) * 0.02, p + "attn.proj.bias": torch.zeros(d),
            p + "ls1": torch.full((d,), 0.1), p + "ls2": torch.full((d,), 0.1),
            p + "norm1.weight": torch.ones(d), p + "norm2.weight": torch.ones(d),
            p + "mlp.fc1.weight": torch.randn(i, d) * 0.02, p + "mlp.fc1.bias": torch.zeros(i),
            p + "mlp.fc2.weight": torch.randn(d, i) * 0.02, p + "mlp.fc2.bias": torch.zeros(d),
        })
    return tensors
