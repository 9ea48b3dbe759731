"""R1V's composition with InternViT as the vision tower: a tiny random standalone InternViT
checkpoint in its published (remote-code) layout is converted onto transformers'
InternVLVisionModel without running its code, composed with a tiny Qwen2 LLM and substitute,
and checked: converted tensors, exact round trip, missing / extra tensors named, InternVL's
image preprocessing, a forward, the projector swap and a few SFT steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from r1vflow.models.families import PROCESSOR_ATTR, encode_pixels, family_of
from r1vflow.models.families import internvl_chat as chat
from r1vflow.models.families.fixtures import build_composition_parts, intern_vit_config
from r1vflow.models.families.images import image_kwargs, image_texts, stack_images
from r1vflow.models.importer import import_composition, load_intern_vit
from r1vflow.models.io import load_model, read_metadata
from r1vflow.models.processing import encode_prompts
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.models.vlm import part_sizes, set_trainable, swap_llm

from conftest import assert_sft_lowers_the_loss, edited_checkpoint
from conftest import random_image as image

IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return build_composition_parts(tmp_path_factory.mktemp("parts"), vision="internvit")


@pytest.fixture(scope="module")
def imported(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    return import_composition(parts["vision"], parts["llm"], root / "llava",
                              substitute=parts["substitute"],
                              substitute_output=root / "substitute")


def _expected(config: dict) -> dict[str, tuple[int, ...]]:
    from transformers import InternVLVisionConfig, InternVLVisionModel

    with torch.device("meta"):
        model = InternVLVisionModel(InternVLVisionConfig(**chat.vision_native_config(config)))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_the_fixture_is_the_published_standalone_layout(parts):
    names = load_file(str(parts["vision"] / "model.safetensors")).keys()
    assert "encoder.layers.1.attn.qkv.weight" in names
    assert "embeddings.class_embedding" in names
    assert not [n for n in names if n.startswith(("vision_model.", "mlp1.", "language_model."))]


def test_conversion_maps_hand_picked_tensors_and_round_trips_exactly(parts):
    source = load_file(str(parts["vision"] / "model.safetensors"))
    native = chat.vision_to_native(source, _expected(intern_vit_config()))
    d = intern_vit_config()["hidden_size"]
    qkv = source["encoder.layers.1.attn.qkv.weight"]
    assert torch.equal(native["encoder.layer.1.attention.q_proj.weight"], qkv[:d])
    assert torch.equal(native["encoder.layer.1.attention.k_proj.weight"], qkv[d:2 * d])
    assert torch.equal(native["encoder.layer.1.attention.v_proj.weight"], qkv[2 * d:])
    assert torch.equal(native["embeddings.cls_token"], source["embeddings.class_embedding"])
    assert torch.equal(native["encoder.layer.0.lambda_2"], source["encoder.layers.0.ls2"])
    assert torch.equal(native["embeddings.patch_embeddings.projection.weight"],
                       source["embeddings.patch_embedding.weight"])
    back = chat.vision_to_standalone(native)
    assert back.keys() == source.keys()
    assert all(torch.equal(back[k], source[k]) for k in source)


def test_imported_tower_holds_the_source_tensors(parts, imported):
    source = load_file(str(parts["vision"] / "model.safetensors"))
    model = load_model(imported["base_model"])
    assert model.config.vision_config.model_type == "internvl_vision"
    assert model.config.vision_feature_select_strategy == "default"  # InternVL drops the CLS
    tower = model.model.vision_tower.state_dict()
    d = intern_vit_config()["hidden_size"]
    assert torch.equal(tower["encoder.layer.0.attention.v_proj.weight"],
                       source["encoder.layers.0.attn.qkv.weight"][2 * d:])
    assert torch.equal(tower["encoder.layer.1.mlp.fc2.weight"],
                       source["encoder.layers.1.mlp.fc2.weight"])
    assert torch.equal(tower["embeddings.position_embeddings"],
                       source["embeddings.position_embedding"])
    back = chat.vision_to_standalone(tower)
    assert back.keys() == source.keys()
    assert all(torch.equal(back[k], source[k]) for k in source)
    meta = read_metadata(imported["base_model"])["extra"]
    assert meta["vision_converted_from"] == "intern_vit_6b"
    assert set(meta["source_files"]["vision"]) == {"config.json", "model.safetensors"}
    sizes = part_sizes(model)
    assert sizes["vision"] == sum(t.numel() for t in source.values())


def _broken(parts, tmp_path, edit):
    return edited_checkpoint(parts["vision"], tmp_path / "vision", edit)


def test_a_missing_tensor_is_named(parts, tmp_path):
    broken = _broken(parts, tmp_path, lambda t: t.pop("encoder.layers.1.ls2"))
    with pytest.raises(ValueError, match=r"InternViT checkpoint lacks 1 tensor.*"
                                         r"'encoder\.layers\.1\.ls2'.*encoder\.layer\.1\.lambda_2"):
        import_composition(broken, parts["llm"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_extra_tensor_is_named(parts, tmp_path):
    def add(tensors):
        tensors["encoder.layers.0.attn.rotary.freq"] = torch.zeros(4)
    broken = _broken(parts, tmp_path, add)
    with pytest.raises(ValueError, match=r"InternViT checkpoint has 1 tensor\(s\).*"
                                         r"'encoder\.layers\.0\.attn\.rotary\.freq'"):
        import_composition(broken, parts["llm"], tmp_path / "out")


def test_a_whole_vlm_tensor_is_extra_in_a_vision_tower(parts, tmp_path):
    def add(tensors):
        tensors["mlp1.1.weight"] = torch.zeros(4, 4)
    broken = _broken(parts, tmp_path, add)
    with pytest.raises(ValueError, match=r"has 1 tensor\(s\).*'mlp1\.1\.weight'"):
        load_intern_vit(broken)


def test_a_shape_mismatch_is_named(parts, tmp_path):
    def shrink(tensors):
        tensors["encoder.layers.0.mlp.fc1.weight"] = tensors[
            "encoder.layers.0.mlp.fc1.weight"][:32].contiguous()
    broken = _broken(parts, tmp_path, shrink)
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.mlp\.fc1\.weight: \(32, 32\) "
                                         r"!= \(64, 32\)"):
        load_intern_vit(broken)


def test_preprocessing_is_internvl_s_square_resize_and_imagenet_normalisation(imported):
    model = load_model(imported["base_model"])
    processor = getattr(model, PROCESSOR_ATTR)
    size = intern_vit_config()["image_size"]
    assert (processor.size["height"], processor.size["width"]) == (size, size)
    picture = image(40, 96, 3)  # not square: InternVL resizes, it does not crop
    items = encode_pixels(model, [picture], 32)
    resized = np.asarray(picture.resize((size, size), Image.Resampling.BICUBIC), np.float64)
    reference = ((resized / 255.0 - IMAGENET[0]) / IMAGENET[1]).transpose(2, 0, 1)
    got = items[0].tensors["pixel_values"][0].double().numpy()
    assert got.shape == (3, size, size)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    patches = (size // intern_vit_config()["patch_size"]) ** 2
    assert items[0].text == "<image>" * patches  # the CLS token is dropped


def test_forward_swap_and_sft_lower_the_loss(imported):
    torch.manual_seed(0)
    model = load_model(imported["base_model"])
    tokenizer = load_tokenizer(imported["base_model"])
    assert family_of(model).name == "llava"
    pixels = encode_pixels(model, [image(32, 32, i) for i in range(4)], 32)
    images = stack_images(pixels[:2])
    prompts = encode_prompts(tokenizer, ["how many?"] * 2, image_texts(images, None))
    kwargs = image_kwargs(images, torch.device("cpu"), torch.float32)
    substitute = load_model(imported["substitute_llm"], kind="causal_lm")
    swapped = swap_llm(model, substitute, tokenizer)
    with torch.no_grad():
        logits = model(**prompts, **kwargs).logits
        assert logits.shape[:2] == prompts["input_ids"].shape and torch.isfinite(logits).all()
        assert swapped(**prompts, **kwargs).logits.shape == logits.shape
    set_trainable(model, {"projector", "llm"})
    assert_sft_lowers_the_loss(model, tokenizer, pixels)


def test_vllm_rollouts_refuse_an_internvit_composition(imported):
    """vLLM's Llava cannot build the InternViT tower: backend vllm is refused naming it, and
    auto falls back to transformers saying why."""
    from r1vflow.config.generation import GenerationConfig
    from r1vflow.generation import choose_backend
    from r1vflow.models.families import read_config

    config = read_config(imported["base_model"])
    with pytest.raises(ValueError, match=r"not 'internvl_vision'.*generation\.backend to auto"):
        choose_backend(GenerationConfig(backend="vllm"), config)
    backend, why = choose_backend(GenerationConfig(backend="auto"), config)
    assert backend == "transformers" and "internvl_vision" in why


def test_r1v_preset_composes_r1v_s_own_parts():
    from r1vflow.config import load_experiment

    from conftest import PRESETS

    exp = load_experiment(PRESETS / "r1v-38b.yaml")
    pretrained = exp.model.pretrained
    assert (pretrained.vision_model, pretrained.llm_model, pretrained.substitute_llm_model) == (
        "OpenGVLab/InternViT-6B-448px-V2_5", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        "Qwen/Qwen2.5-32B-Instruct")
    # vLLM's Llava cannot build an InternViT tower
    assert exp.generation_for("grpo").backend == "transformers"
    assert "siglip-so400m" not in (PRESETS / "r1v-38b.yaml").read_text().lower()
