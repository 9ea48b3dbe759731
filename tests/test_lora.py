"""LoRA (r1vflow.models.lora): the `lora` config field, adapters on the LLM only, SFT with
adapters learns, the merged model that save_model writes reloads without peft and generates
what the adapter model generates, the adapter beside it is peft's format (checked by loading it
with peft's own `PeftModel.from_pretrained`), a resumable checkpoint restores the adapters, and
vLLM serves the merged weights after a sync. The whole DAG with LoRA is in
test_lora_pipeline.py."""

from __future__ import annotations

import json

import pytest
import torch

from r1vflow.config import LoRAConfig
from r1vflow.config.loading import ConfigError, load_experiment
from r1vflow.generation import Sampling, TransformersEngine
from r1vflow.models.families import encode_pixels
from r1vflow.models.families.fixtures import build_composition_parts
from r1vflow.models.families.images import stack_images
from r1vflow.models.generate import prompt_ids
from r1vflow.models.importer import import_composition
from r1vflow.models.io import load_model, save_model
from r1vflow.models.lora import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    apply_lora,
    has_lora,
    lora_layers,
)
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.models.vlm import set_trainable
from r1vflow.train.engine import TrainEngine

from conftest import random_image

SMOKE = "pipelines/configs/smoke.yaml"
QUESTIONS = ["How many circles are there?", "What is 3 plus 4?"]
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An imported tiny Llava composition (SigLIP tower with its own q/k/v projections, Qwen2
    LLM, head size 32 so that vLLM's CPU backend serves it)."""
    root = tmp_path_factory.mktemp("lora")
    parts = build_composition_parts(root / "parts")
    return import_composition(parts["vision"], parts["llm"], root / "base",
                              substitute=parts["substitute"],
                              substitute_output=root / "sub")["base_model"]


def adapted(base_dir, parts=("projector",), rank=4, seed=0):
    torch.manual_seed(seed)
    model = load_model(base_dir)
    set_trainable(model, set(parts))
    counts = apply_lora(model, LoRAConfig(rank=rank))
    return model, counts


def prompts(model, tokenizer):
    images = stack_images(list(encode_pixels(
        model, [random_image(32, 32, 1), random_image(32, 32, 2)], 32)))
    return prompt_ids(tokenizer, QUESTIONS, images, model.config), images


def greedy(model, tokenizer, ids, images) -> list[tuple[int, ...]]:
    out = TransformersEngine(model, tokenizer).generate(ids, images, Sampling(max_new_tokens=12))
    return [g[0].token_ids for g in out]


def kick(model, seed: int = 1, scale: float = 0.3) -> None:
    """Random adapters (B starts at zero, so a fresh adapter changes nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


# --------------------------------------------------------------------------- config


def test_set_turns_lora_on_with_defaults_and_null_means_full_weights():
    exp = load_experiment(SMOKE, ["sft.lora.rank=8", "grpo.lora.rank=8"])
    assert exp.sft.lora.rank == 8 and exp.sft.lora.scale_alpha == 16.0
    assert exp.sft.lora.dropout == 0.0 and set(exp.sft.lora.target_modules) == PROJECTIONS
    assert exp.grpo.lora.rank == 8
    plain = load_experiment(SMOKE)
    assert plain.sft.lora is None and plain.grpo.lora is None
    assert plain.train_reward_model.lora is None
    exp = load_experiment(SMOKE, ["train_reward_model.lora.rank=4", "mpo.lora.rank=2",
                                  "mpo.lora.alpha=3", "mpo.lora.target_modules=[q_proj]"])
    assert exp.train_reward_model.lora.rank == 4
    assert (exp.mpo.lora.scale_alpha, exp.mpo.lora.target_modules) == (3.0, ["q_proj"])


@pytest.mark.parametrize(("override", "message"), [
    ("sft.lora.rank=0", "sft.lora.rank"),
    ("sft.lora.alpha=0", "sft.lora.alpha"),
    ("sft.lora.dropout=1", "sft.lora.dropout"),
    ("sft.lora.target_modules=[q_proj, q_proj]", "names each module once"),
    ("sft.lora.target_modules=['model.q_proj']", "sft.lora.target_modules.0"),
    ("sft.lora.target_modules=[]", "sft.lora.target_modules"),
])
def test_nonsense_lora_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(SMOKE, ["sft.lora.rank=8", override])


def test_lora_under_zero3_is_refused_with_a_way_out():
    with pytest.raises(ConfigError, match="zero_stage 2"):
        load_experiment(SMOKE, ["sft.lora.rank=8", "sft.backend=deepspeed",
                                "sft.zero_stage=3"])


# --------------------------------------------------------------------------- adapters


def test_adapters_sit_on_the_llm_only_and_start_as_the_base_model(base):
    reference = load_model(base).eval()
    tokenizer = load_tokenizer(base)
    model, counts = adapted(base, parts=("projector", "llm"))  # llm: through its adapters
    layers = lora_layers(model)
    assert layers and all(n.startswith("model.language_model.") for n, _ in layers)
    assert {n.rsplit(".", 1)[-1] for n, _ in layers} == PROJECTIONS
    # the SigLIP tower has q/k/v projections too: none of them is adapted
    assert any(".self_attn.q_proj" in n for n, _ in model.model.vision_tower.named_modules())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n.startswith("model.multi_modal_projector.") for n in trainable)
    assert any(n.startswith("model.multi_modal_projector.") for n in trainable)
    text = reference.config.text_config
    n_layers, hidden, inter = text.num_hidden_layers, text.hidden_size, text.intermediate_size
    kv = text.num_key_value_heads * (hidden // text.num_attention_heads)
    # rank 4: A [4, in] + B [out, 4] per layer, by hand from the LLM's shapes
    per_layer = 4 * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + inter) * 2
                     + (inter + hidden))
    assert counts["llm"] == n_layers * per_layer
    assert counts["vision"] == 0
    ids, images = prompts(model, tokenizer)
    assert greedy(model.eval(), tokenizer, ids, images) == greedy(reference, tokenizer, ids,
                                                                  images)


def test_an_unknown_target_module_is_refused_naming_it(base):
    model = load_model(base)
    with pytest.raises(ValueError, match=r"\['qkv'\].*q_proj"):
        apply_lora(model, LoRAConfig(rank=4, target_modules=["q_proj", "qkv"]))
    assert not has_lora(model)


def test_sft_with_lora_lowers_the_loss_and_leaves_the_base_weights(base):
    """The SFT loss (the model's own, on the response tokens) of one fixed batch falls by more
    than 1 nat in 30 AdamW steps on the adapters alone; no base weight moves."""
    from r1vflow.models.families import fixed_image_tokens
    from r1vflow.models.families.images import image_kwargs, image_texts
    from r1vflow.models.processing import encode_sft_batch
    from r1vflow.train.sft import eval_loss

    tokenizer = load_tokenizer(base)
    model, counts = adapted(base, parts=("llm",), rank=8)  # llm listed: it trains as LoRA
    assert counts["projector"] == 0 and counts["llm"] > 0
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}
    images = list(encode_pixels(model, [random_image(32, 32, i) for i in range(4)], 32))
    items = [(f"How many circles? ({i})", f"<think>I count {i}.</think><answer>{i}</answer>",
              images[i]) for i in range(4)]
    pixels = stack_images(images)
    batch = encode_sft_batch(tokenizer, [(q, r) for q, r, _ in items],
                             image_texts(pixels, fixed_image_tokens(model)), 256)
    batch.update(image_kwargs(pixels, torch.device("cpu"), torch.float32))
    before = eval_loss(model, tokenizer, items, batch_size=4, max_length=256)
    engine = TrainEngine(model, lr=1e-2, weight_decay=0.0, warmup_ratio=0.0, total_steps=30)
    model.train()
    for _ in range(30):
        engine.step(model(**batch).loss)
    after = eval_loss(model.eval(), tokenizer, items, batch_size=4, max_length=256)
    assert after < before - 1.0, (before, after)
    for name, param in model.named_parameters():
        if ".lora_" not in name:
            assert torch.equal(param, frozen[name]), name


def test_the_merged_model_reloads_and_generates_as_the_adapter_model(base, tmp_path):
    from peft import PeftModel

    tokenizer = load_tokenizer(base)
    model, _ = adapted(base)
    kick(model)
    model.eval()
    out = save_model(model, tokenizer, tmp_path / "sft",
                     {"stage": "sft", "parent": str(base), "config_fingerprint": "f"})
    adapter = out / ADAPTER_DIR
    assert (adapter / ADAPTER_CONFIG).is_file() and (adapter / ADAPTER_WEIGHTS).is_file()
    saved = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert (saved["peft_type"], saved["r"], saved["lora_alpha"]) == ("LORA", 4, 8.0)
    assert saved["base_model_name_or_path"] == str(base)
    merged = load_model(out).eval()  # plain transformers: no adapter layers, no peft
    assert not has_lora(merged)
    # one layer by hand: W + B @ A * alpha / r
    name = "model.language_model.layers.1.mlp.down_proj"
    layer = model.get_submodule(name)
    want = (layer.base_layer.weight + layer.lora_B["default"].weight
            @ layer.lora_A["default"].weight * (8.0 / 4))
    torch.testing.assert_close(merged.get_submodule(name).weight, want)
    ids, images = prompts(model, tokenizer)
    ours = greedy(model, tokenizer, ids, images)
    assert greedy(merged, tokenizer, ids, images) == ours
    assert ours != greedy(load_model(base).eval(), tokenizer, ids, images)  # the adapter mattered
    # peft itself reads the adapter onto the start model: same tokens
    peft_model = PeftModel.from_pretrained(load_model(base), str(adapter)).eval()
    assert greedy(peft_model, tokenizer, ids, images) == ours


def test_a_checkpoint_restores_the_adapters(base, tmp_path):
    model, _ = adapted(base)
    kick(model, seed=3)
    engine = TrainEngine(model, lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, total_steps=4)
    engine.save_state(tmp_path / "state")
    fresh, _ = adapted(base, seed=5)  # other random A matrices, B zero
    other = TrainEngine(fresh, lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, total_steps=4)
    other.load_state(tmp_path / "state")
    lora = [n for n, _ in model.named_parameters() if ".lora_" in n]
    assert lora
    ours, theirs = dict(model.named_parameters()), dict(fresh.named_parameters())
    for name in lora:
        assert torch.equal(ours[name], theirs[name]), name


# --------------------------------------------------------------------------- vLLM


def test_vllm_serves_the_merged_weights_after_a_sync(base):
    """GRPO's sync pushes the trainable names (lora_A / lora_B, projector): the engine takes
    each adapted layer's merged weight under its base name and then generates, greedily,
    what transformers generates with the adapters."""
    from r1vflow.config.generation import GenerationConfig
    from r1vflow.generation import build_engine

    tokenizer = load_tokenizer(base)
    model, _ = adapted(base)
    model.eval()
    ids, images = prompts(model, tokenizer)
    engine = build_engine(GenerationConfig(backend="vllm", max_model_len=512), model, tokenizer,
                          say=None)
    try:
        start = greedy(model, tokenizer, ids, images)
        assert [c[0].token_ids for c in engine.generate(ids, images, Sampling(12))] == start
        kick(model, seed=2)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert any(".lora_B." in n for n in names)
        engine.sync(model, names)
        want = greedy(model, tokenizer, ids, images)
        assert want != start  # the adapters changed the model
        assert [c[0].token_ids for c in engine.generate(ids, images, Sampling(12))] == want
    finally:
        engine.close()
