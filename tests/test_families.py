"""Model families: part splits, image preprocessing against each family's own processor, the
internvl_chat conversion, import and its errors, and a few SFT steps per family. Every
checkpoint is a tiny random one built here in the family's published layout."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from r1vflow.models.families import FAMILIES, encode_pixels, family_of
from r1vflow.models.families import internvl_chat as chat
from r1vflow.models.families.fixtures import (
    TEXT,
    build_checkpoint,
    build_composition_parts,
    hub_style_tokenizer,
)
from r1vflow.models.families.images import (
    image_kwargs,
    image_texts,
    stack_images,
    token_type_kwargs,
)
from r1vflow.models.importer import import_checkpoint, import_composition
from r1vflow.models.io import load_model, read_metadata
from r1vflow.models.processing import encode_prompts
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.models.vlm import part_sizes, set_trainable

from conftest import assert_sft_lowers_the_loss, edited_checkpoint
from conftest import random_image as image

WHOLE = ("qwen2_5_vl", "qwen3_vl", "internvl", "internvl_chat")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    made = {f: build_checkpoint(f, root / f) for f in WHOLE}
    made.update({f"parts/{k}": v for k, v in build_composition_parts(root / "parts").items()})
    return made


@pytest.fixture(scope="module")
def imported(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    made = {f: import_checkpoint(checkpoints[f], root / f) for f in WHOLE}
    parts = import_composition(checkpoints["parts/vision"], checkpoints["parts/llm"],
                               root / "llava", substitute=checkpoints["parts/substitute"],
                               substitute_output=root / "substitute")
    made["llava"], made["substitute"] = parts["base_model"], parts["substitute_llm"]
    return made


# --------------------------------------------------------------------------- parts


@pytest.mark.parametrize("name", ["llava", *WHOLE])
def test_every_parameter_belongs_to_exactly_one_part(imported, name):
    model = load_model(imported[name])
    sizes = part_sizes(model)
    assert sum(sizes.values()) == sum(p.numel() for p in model.parameters())
    assert all(sizes[p] > 0 for p in ("vision", "projector", "llm"))
    counts = set_trainable(model, {"projector"})
    assert counts == {"vision": 0, "projector": sizes["projector"], "llm": 0}


def test_qwen_mergers_are_the_projector():
    qwen3 = FAMILIES["qwen3_vl"]
    assert qwen3.part_of("model.visual.merger.linear_fc1.weight") == "projector"
    assert qwen3.part_of("model.visual.deepstack_merger_list.0.norm.weight") == "projector"
    assert qwen3.part_of("model.visual.blocks.0.attn.qkv.weight") == "vision"
    assert FAMILIES["qwen2_5_vl"].part_of("lm_head.weight") == "llm"
    with pytest.raises(ValueError, match="belongs to no part"):
        qwen3.part_of("value_head.weight")


# --------------------------------------------------------------------------- images


def _reference_processor(name: str):
    """The processor the family's release uses, built here independently of the fixtures."""
    import transformers

    if name == "qwen2_5_vl":
        return transformers.Qwen2VLImageProcessorPil(
            patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=3136,
            max_pixels=50176)
    if name == "qwen3_vl":
        return transformers.Qwen2VLImageProcessorPil(
            patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=4096,
            max_pixels=65536)
    if name == "internvl":
        return transformers.GotOcr2ImageProcessorPil(
            size={"height": 28, "width": 28}, crop_to_patches=True, min_patches=1,
            max_patches=4, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl", "qwen3_vl", "internvl"])
def test_preprocessing_equals_the_family_processor_and_fits_the_model(imported, name):
    model = load_model(imported[name])
    pictures = [image(32, 32, 1), image(40, 96, 2)]
    items = encode_pixels(model, pictures, 32)
    expected = _reference_processor(name)(images=pictures, return_tensors="pt")
    batch = stack_images(items).tensors()
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    if "image_grid_thw" in expected:
        assert torch.equal(batch["image_grid_thw"], expected["image_grid_thw"])
    # the model itself checks that the prompt has one image token per image feature
    tokenizer = load_tokenizer(imported[name])
    images = stack_images(items)
    prompts = encode_prompts(tokenizer, ["how many?", "how many?"], image_texts(images, None))
    with torch.no_grad():
        model(**prompts, **image_kwargs(images, torch.device("cpu"), torch.float32),
              **token_type_kwargs(model, prompts["input_ids"]))


def _n_pad(item, name: str) -> int:
    return item.text.count(FAMILIES[name].image_pad)


def test_qwen_token_count_follows_image_size_and_pixel_bounds(checkpoints, imported, tmp_path):
    model = load_model(imported["qwen2_5_vl"])
    small, wide = encode_pixels(model, [image(32, 32), image(32, 80)], 32)
    # 32x32 -> 28x28 < min_pixels 3136 -> 56x56: 4x4 patches, 2x2 merged = 4 tokens;
    # 32x80 -> 28x84 < 3136 -> 56x112: 4x8 patches = 8 tokens
    assert (_n_pad(small, "qwen2_5_vl"), _n_pad(wide, "qwen2_5_vl")) == (4, 8)
    bounded = import_checkpoint(checkpoints["qwen2_5_vl"], tmp_path / "q", min_pixels=784,
                                max_pixels=1568)
    small, wide = encode_pixels(load_model(bounded), [image(32, 32), image(32, 80)], 32)
    # 28x28 = 784 fits [784, 1568]: 1 token; 28x84 > 1568 -> scaled down to 28x56: 2 tokens
    assert (_n_pad(small, "qwen2_5_vl"), _n_pad(wide, "qwen2_5_vl")) == (1, 2)


# --------------------------------------------------------------------------- internvl_chat


def _expected_native(checkpoints):
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    config = json.loads((checkpoints["internvl_chat"] / "config.json").read_text())
    native = chat.native_config(config, image_token_id=3)
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(InternVLConfig(
            **{k: v for k, v in native.items() if k != "model_type"}))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_internvl_chat_round_trip_is_exact(checkpoints):
    source = load_file(str(checkpoints["internvl_chat"] / "model.safetensors"))
    native = chat.to_native(source, _expected_native(checkpoints))
    assert torch.equal(native["model.vision_tower.encoder.layer.1.attention.k_proj.weight"],
                       source["vision_model.encoder.layers.1.attn.qkv.weight"][32:64])
    assert torch.equal(native["model.multi_modal_projector.linear_2.weight"],
                       source["mlp1.3.weight"])
    back = chat.to_chat(native)
    assert back.keys() == source.keys()
    assert all(torch.equal(back[k], source[k]) for k in source)


def _broken_copy(checkpoints, tmp_path, edit):
    return edited_checkpoint(checkpoints["internvl_chat"], tmp_path / "broken", edit)


def test_internvl_chat_missing_tensor_is_named(checkpoints, tmp_path):
    broken = _broken_copy(checkpoints, tmp_path,
                          lambda t: t.pop("vision_model.encoder.layers.1.ls2"))
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*encoder\.layer\.1\.lambda_2"):
        import_checkpoint(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_internvl_chat_extra_tensor_is_named(checkpoints, tmp_path):
    def add(tensors):
        tensors["vision_model.encoder.layers.0.attn.rotary.freq"] = torch.zeros(4)
    broken = _broken_copy(checkpoints, tmp_path, add)
    with pytest.raises(ValueError, match=r"1 tensor\(s\).*layers\.0\.attn\.rotary\.freq"):
        import_checkpoint(broken, tmp_path / "out")


def test_internvl_chat_shape_mismatch_is_named(checkpoints, tmp_path):
    def shrink(tensors):
        tensors["mlp1.1.weight"] = tensors["mlp1.1.weight"][:, :64].contiguous()
    broken = _broken_copy(checkpoints, tmp_path, shrink)
    width = TEXT["hidden_size"]  # the projector's output: the LLM's width
    with pytest.raises(ValueError, match=rf"linear_1\.weight: \({width}, 64\) != \({width}, 128\)"):
        import_checkpoint(broken, tmp_path / "out")


# --------------------------------------------------------------------------- import


def test_import_records_source_digests_and_adds_r1v_tags(checkpoints, imported):
    meta = read_metadata(imported["qwen2_5_vl"])
    assert (meta["stage"], meta["parent"], meta["extra"]["family"]) == (
        "import_model", None, "qwen2_5_vl")
    config = checkpoints["qwen2_5_vl"] / "config.json"
    assert meta["extra"]["source_files"]["config.json"] == hashlib.sha256(
        config.read_bytes()).hexdigest()
    assert set(meta["extra"]["source_files"]) == {
        p.name for p in checkpoints["qwen2_5_vl"].iterdir()}
    source_vocab = load_tokenizer_raw(checkpoints["qwen2_5_vl"]).get_vocab()
    assert "<think>" not in source_vocab
    tokenizer = load_tokenizer(imported["qwen2_5_vl"])
    assert len(tokenizer.encode("<think>", add_special_tokens=False)) == 1
    assert load_model(imported["qwen2_5_vl"]).get_input_embeddings().num_embeddings >= len(
        tokenizer)
    assert sorted(p.suffix for p in imported["qwen2_5_vl"].glob("model*")) == [".safetensors"]
    assert read_metadata(imported["internvl_chat"])["extra"]["converted_from"] == "internvl_chat"
    assert family_of(load_model(imported["internvl_chat"])).name == "internvl"


def load_tokenizer_raw(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def test_import_refuses_an_unknown_family(checkpoints, tmp_path):
    source = tmp_path / "odd"
    shutil.copytree(checkpoints["qwen2_5_vl"], source)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "paligemma"}))
    with pytest.raises(ValueError, match="model_type 'paligemma', which is no VLM family"):
        import_checkpoint(source, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown model family 'gemma'"):
        import_checkpoint(checkpoints["qwen2_5_vl"], tmp_path / "out", family_name="gemma")


def test_import_refuses_missing_weights(checkpoints, tmp_path):
    source = tmp_path / "noweights"
    shutil.copytree(checkpoints["internvl"], source)
    (source / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights"):
        import_checkpoint(source, tmp_path / "out")


def test_import_refuses_a_tokenizer_of_another_model(checkpoints, tmp_path):
    source = tmp_path / "wrongtok"
    shutil.copytree(checkpoints["qwen2_5_vl"], source)
    hub_style_tokenizer(()).save_pretrained(source)  # no <|image_pad|>
    with pytest.raises(ValueError, match="lacks the qwen2_5_vl image tokens"):
        import_checkpoint(source, tmp_path / "out")


def test_composition_refuses_a_tokenizer_larger_than_the_llm(checkpoints, tmp_path):
    llm = tmp_path / "llm"
    shutil.copytree(checkpoints["parts/llm"], llm)
    bigger = hub_style_tokenizer(())
    bigger.add_tokens([f"<extra_{i}>" for i in range(400 - len(bigger) + 10)])
    bigger.save_pretrained(llm)
    with pytest.raises(ValueError, match="410 ids but the LLM's embeddings hold 400"):
        import_composition(checkpoints["parts/vision"], llm, tmp_path / "out")


def test_composition_refuses_a_substitute_of_another_hidden_size(checkpoints, tmp_path):
    import transformers

    other = tmp_path / "wide"
    config = transformers.Qwen2Config(**{**TEXT, "hidden_size": 48})
    transformers.Qwen2ForCausalLM(config).save_pretrained(other)
    shutil.copy(checkpoints["parts/llm"] / "tokenizer.json", other)
    shutil.copy(checkpoints["parts/llm"] / "tokenizer_config.json", other)
    with pytest.raises(ValueError, match="substitute LLM has hidden_size=48 but the reasoning "
                                         f"LLM {TEXT['hidden_size']}"):
        import_composition(checkpoints["parts/vision"], checkpoints["parts/llm"],
                           tmp_path / "out", substitute=other,
                           substitute_output=tmp_path / "sub")


def test_cli_imports_a_checkpoint(checkpoints, tmp_path):
    from typer.testing import CliRunner

    from r1vflow.cli import app

    result = CliRunner().invoke(app, ["models", "import", str(checkpoints["internvl"]),
                                      "--output", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "m")["extra"]["family"] == "internvl"
    both = CliRunner().invoke(app, ["models", "import", str(checkpoints["internvl"]),
                                    "--vision", "v", "--output", str(tmp_path / "n")])
    assert both.exit_code == 2 and "give SOURCE" in both.output


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", ["llava", *WHOLE])
def test_sft_lowers_the_loss_of_a_fixed_batch(imported, name):
    torch.manual_seed(0)
    model, tokenizer = load_model(imported[name]), load_tokenizer(imported[name])
    set_trainable(model, {"projector", "llm"})
    pixels = encode_pixels(model, [image(32, 32, i) for i in range(4)], 32)
    assert_sft_lowers_the_loss(model, tokenizer, pixels)


# --------------------------------------------------------------------------- devices


def test_run_device_is_the_cpu_without_cuda():
    from r1vflow.models.devices import place, run_device

    assert not torch.cuda.is_available()  # this machine: CUDA paths are not exercised here
    assert run_device() == torch.device("cpu")
    layer = place(torch.nn.Linear(2, 2))
    assert layer.weight.device == torch.device("cpu")


def test_value_head_follows_the_vlm_device_and_dtype(imported):
    from r1vflow.models.reward import RewardModel

    vlm = load_model(imported["qwen2_5_vl"]).to(torch.bfloat16)
    head = RewardModel(vlm).value_head.linear.weight
    assert head.dtype == torch.bfloat16
    with torch.device("meta"):
        meta_vlm = type(vlm)(vlm.config)
    assert RewardModel(meta_vlm).value_head.linear.weight.device.type == "meta"


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", ["r1v-38b", "r1v2-38b", "qwen2.5-vl-7b"])
def test_cluster_presets_import_first_and_place_every_gpu_stage(preset, tmp_path):
    from r1vflow.config import load_experiment
    from r1vflow.pipelines.compile import compile_ir

    from conftest import PRESETS

    exp = load_experiment(PRESETS / f"{preset}.yaml")
    assert exp.stages()[0] == "import_model"
    for stage in exp.stages():
        spec = exp.resources[stage]
        if stage in ("import_model", "synthesize_data"):
            assert spec.accelerator_type is None, stage
        else:
            assert (spec.accelerator_type, spec.accelerator_count > 0) == ("nvidia.com/gpu",
                                                                           True), stage
    text = (PRESETS / f"{preset}.yaml").read_text()
    assert "InternViT-6B-448px-V1-5" not in text  # remote code: only inside internvl_chat
    assert compile_ir(exp, tmp_path / "ir.yaml").is_file()


def test_r1v_preset_aligns_on_the_substitute_and_r1v2_uses_the_hybrid_reward():
    from r1vflow.config import load_experiment

    from conftest import PRESETS

    r1v = load_experiment(PRESETS / "r1v-38b.yaml")
    assert "align_projector" in r1v.stages() and r1v.sft.iterative.iterations == 4
    assert r1v.model.pretrained.substitute_llm_model == "Qwen/Qwen2.5-32B-Instruct"
    r1v2 = load_experiment(PRESETS / "r1v2-38b.yaml")
    assert r1v2.model.pretrained.source == "Skywork/Skywork-R1V2-38B"
    assert r1v2.grpo.trainable == ["projector"] and r1v2.grpo.reward_weights.reward_model > 0


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("pretrained", "message"), [
    ({"source": "a", "vision_model": "v", "llm_model": "l"}, "exactly one of source"),
    ({}, "exactly one of source"),
    ({"vision_model": "v"}, "needs both vision_model and llm_model"),
    ({"source": "a", "substitute_llm_model": "s"}, "substitute_llm_model belongs to the "
                                                   "composition"),
    ({"vision_model": "v", "llm_model": "l", "family": "internvl"}, "family names the family"),
])
def test_pretrained_config_names_the_problem(pretrained, message):
    from r1vflow.config.recipe import PretrainedModelConfig

    with pytest.raises(ValueError, match=message):
        PretrainedModelConfig(**pretrained)


def test_align_projector_needs_a_substitute_llm_with_pretrained_models():
    from r1vflow.config import ConfigError, load_experiment

    from conftest import PRESETS

    with pytest.raises(ConfigError, match="name it in model.pretrained.substitute_llm_model"):
        load_experiment(PRESETS / "r1v-38b.yaml",
                        ["model.pretrained.substitute_llm_model=null"])
    exp = load_experiment(PRESETS / "pretrained-smoke.yaml")
    assert exp.import_model == exp.model.pretrained and exp.stages()[0] == "import_model"
    shortcut = load_experiment(PRESETS / "pretrained-smoke.yaml", [
        "model.pretrained.source=null", "model.pretrained.base_model_uri=s3://m/base"])
    assert "import_model" not in shortcut.stages()


def test_hub_token_secret_reaches_only_the_import_task():
    import yaml

    from r1vflow.config import load_experiment
    from r1vflow.pipelines.compile import ir_text

    from conftest import PRESETS

    exp = load_experiment(PRESETS / "r1v2-38b.yaml", ["cluster.hf_secret=hf-login",
                                                       "evaluate.benchmarks=[]"])  # none from the hub
    docs = list(yaml.safe_load_all(ir_text(exp)))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_token = sorted(name for name, k8s in executors.items()
                        for s in k8s.get("secretAsEnv", []) if s["secretName"] == "hf-login")
    assert with_token == ["exec-import-model"]
    token = next(s for s in executors["exec-import-model"]["secretAsEnv"]
                 if s["secretName"] == "hf-login")
    assert token["keyToEnv"] == [{"secretKey": "token", "envVar": "HF_TOKEN"}]


def test_rollouts_expand_tiled_images_per_sample(imported):
    """InternVL images of several tiles: the rollout repeats each prompt's tiles for its
    samples itself; groups have the asked size and are reproducible by seed, and a prompt
    generated greedily within a batch (left padding, its own tiles) equals it alone."""
    from r1vflow.models.generate import generate_completions
    from r1vflow.rl.batch import encode_vlm_prompts
    from r1vflow.rl.rollout import Rollout

    model, tokenizer = load_model(imported["internvl"]), load_tokenizer(imported["internvl"])
    items = encode_pixels(model, [image(40, 96, 3), image(32, 32, 4)], 32)
    assert [i.tensors["pixel_values"].shape[0] for i in items] == [3, 1]  # 2 tiles + thumbnail
    images = stack_images(items)
    ids = encode_vlm_prompts(tokenizer, ["how many?", "which is larger?"],
                             image_texts(images, None))
    rollout = Rollout.transformers(model, tokenizer, max_new_tokens=6, temperature=1.0,
                                   batch_size=2)
    groups = rollout.generate(ids, images, num_samples=3, seed=5)
    assert [len(g) for g in groups] == [3, 3]
    assert groups == rollout.generate(ids, images, num_samples=3, seed=5)
    alone = generate_completions(model, tokenizer, ["how many?"], images[:1], 6, 1)
    both = generate_completions(model, tokenizer, ["how many?", "which is larger?"], images, 6,
                                2)
    assert alone[0][0].token_ids == both[0][0].token_ids
