"""Tokenizer, VLM assembly, freezing, projector transfer, safetensors I/O, encoding, generation."""

from __future__ import annotations

import json

import pytest
import torch

from r1vflow.models.generate import generate_completions, generate_responses
from r1vflow.models.io import load_model, read_model_metadata, save_model
from r1vflow.models.processing import (
    IGNORE_INDEX,
    build_prompt,
    encode_prompts,
    encode_sft_batch,
)
from r1vflow.models.tokenizer import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    load_tokenizer,
    special_token_id,
    train_tokenizer,
)
from r1vflow.models.vlm import (
    assemble_vlm,
    build_tiny_llm,
    build_tiny_vision,
    num_image_tokens,
    part_sizes,
    set_trainable,
    swap_llm,
)

CORPUS = [
    "How many red circles are there? <think>red circle, red circle. 2 red circles.</think>"
    "<answer>2</answer>",
    "What is the sum of the two digits? <think>left digit is 3. right digit is 4. 3 + 4 = 7."
    "</think><answer>7</answer>",
    "Which side has more objects, left or right? left: blue square. right: nothing.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def tiny_vlm(tokenizer, llm_layers: int = 2, llm_hidden: int = 32):
    torch.manual_seed(0)
    vision = build_tiny_vision(
        image_size=16, patch_size=8, hidden_size=32, num_layers=1, num_heads=2
    )
    llm = build_tiny_llm(len(tokenizer), llm_hidden, llm_layers, 2, 64, max_position_embeddings=128)
    return assemble_vlm(vision, llm, tokenizer)


@pytest.fixture(scope="module")
def vlm(tokenizer):
    return tiny_vlm(tokenizer)


def test_special_tokens_are_single_ids(tokenizer):
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in SPECIAL_TOKENS]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(SPECIAL_TOKENS)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>"
    assert tokenizer.decode(tokenizer.encode("<think>x</think>"), skip_special_tokens=True) == (
        "<think>x</think>"
    )


def test_vocab_too_small_is_rejected():
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_tokenizer(CORPUS, vocab_size=100)


def test_chat_template_round_trips(tokenizer, tmp_path):
    messages = [
        {"role": "user", "content": "<image><image>\nWhat is 12 + 3?"},
        {"role": "assistant", "content": "<think>12 + 3 = 15.</think><answer>15</answer>"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>user\n<image><image>\nWhat is 12 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>12 + 3 = 15.</think><answer>15</answer><|im_end|>\n"
    )
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.apply_chat_template(messages, tokenize=False) == text
    assert again.encode(text) == tokenizer.encode(text)


def test_vlm_forward_fills_image_tokens(tokenizer, vlm):
    n = num_image_tokens(vlm)
    assert n == (16 // 8) ** 2
    assert vlm.config.image_token_id == special_token_id(tokenizer, IMAGE_TOKEN)
    batch = encode_prompts(tokenizer, ["How many?", "What is the sum of the two digits?"], n)
    assert int((batch["input_ids"] == vlm.config.image_token_id).sum()) == 2 * n
    # What the projector produced and what the LLM received, captured by hooks: independent of
    # how a transformers release shapes `image_hidden_states` (a tensor in 5.23, a list in 5.24).
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        vlm.model.multi_modal_projector.register_forward_hook(
            lambda _m, _a, out: seen.__setitem__("features", out.detach())),
        vlm.model.language_model.register_forward_pre_hook(
            lambda _m, _a, kw: seen.__setitem__("embeds", kw["inputs_embeds"].detach()),
            with_kwargs=True),
    ]
    try:
        out = vlm(**batch, pixel_values=torch.randn(2, 3, 16, 16))
    finally:
        for hook in hooks:
            hook.remove()
    assert out.logits.shape == (2, batch["input_ids"].shape[1], vlm.config.text_config.vocab_size)
    features = seen["features"].reshape(-1, vlm.config.text_config.hidden_size)
    assert features.shape == (2 * n, vlm.config.text_config.hidden_size)
    image_positions = batch["input_ids"] == vlm.config.image_token_id
    torch.testing.assert_close(seen["embeds"][image_positions], features)
    text_ids = batch["input_ids"][~image_positions]
    torch.testing.assert_close(seen["embeds"][~image_positions],
                               vlm.get_input_embeddings()(text_ids).detach())
    wrong = encode_prompts(tokenizer, ["How many?"], n - 1)
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        vlm(**wrong, pixel_values=torch.randn(1, 3, 16, 16))


def test_assemble_copies_the_llm_weights(tokenizer):
    torch.manual_seed(1)
    vision = build_tiny_vision(16, 8, 32, 1, 2)
    llm = build_tiny_llm(len(tokenizer), 32, 2, 2, 64, 128).eval()
    vlm = assemble_vlm(vision, llm, tokenizer).eval()
    ids = torch.tensor([tokenizer.encode("How many red circles are there?")])
    with torch.no_grad():
        torch.testing.assert_close(vlm(input_ids=ids).logits, llm(input_ids=ids).logits)


@pytest.mark.parametrize(
    "parts", [{"projector"}, {"projector", "llm"}, {"vision", "projector", "llm"}, {"vision"}]
)
def test_set_trainable_freezes_the_other_parts(tokenizer, parts):
    model = tiny_vlm(tokenizer)
    counts = set_trainable(model, parts)
    sizes = part_sizes(model)
    assert counts == {name: sizes[name] if name in parts else 0 for name in sizes}
    batch = encode_sft_batch(tokenizer, [("How many?", "<answer>2</answer>")], 4, 64)
    model(**batch, pixel_values=torch.randn(1, 3, 16, 16)).loss.backward()
    modules = {
        "vision": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "llm": model.model.language_model,
    }
    for name, module in modules.items():
        grads = [p.grad for p in module.parameters()]
        if name in parts:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads), name


def test_set_trainable_rejects_unknown_part(vlm):
    with pytest.raises(ValueError, match="unknown trainable parts \\['adapter'\\]"):
        set_trainable(vlm, {"adapter"})


def test_swap_llm_moves_projector_and_checks_compatibility(tokenizer, vlm):
    other = build_tiny_llm(len(tokenizer), 32, 3, 2, 64, 128)
    swapped = swap_llm(vlm, other, tokenizer)
    assert swapped.config.text_config.num_hidden_layers == 3
    for a, b in zip(
        swapped.model.multi_modal_projector.parameters(),
        vlm.model.multi_modal_projector.parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)
    narrow = build_tiny_llm(len(tokenizer), 16, 2, 2, 64, 128)
    with pytest.raises(
        ValueError, match="outputs hidden size 32 but the new LLM has hidden_size=16"
    ):
        swap_llm(vlm, narrow)
    wider_vocab = build_tiny_llm(len(tokenizer) + 10, 32, 2, 2, 64, 128)
    with pytest.raises(ValueError, match="both LLMs must share one tokenizer"):
        swap_llm(vlm, wider_vocab)


def test_save_load_round_trip_is_exact_and_safetensors_only(tokenizer, vlm, tmp_path):
    meta = {"stage": "sft", "parent": "bootstrap", "config_fingerprint": "f00d"}
    save_model(vlm, tokenizer, tmp_path, meta | {"data_digests": {"synth": "abc"}})
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))}
    info = read_model_metadata(tmp_path)
    assert (info.stage, info.parent, info.kind, info.data_digests) == (
        "sft",
        "bootstrap",
        "vlm",
        {"synth": "abc"},
    )
    loaded = load_model(tmp_path, kind="vlm")
    batch = encode_prompts(tokenizer, ["How many?"], num_image_tokens(vlm))
    pixels = torch.randn(1, 3, 16, 16)
    vlm.eval()
    with torch.no_grad():
        assert torch.equal(
            vlm(**batch, pixel_values=pixels).logits, loaded(**batch, pixel_values=pixels).logits
        )
    assert load_tokenizer(tmp_path).encode("How many?") == tokenizer.encode("How many?")


def test_load_errors_name_the_file(tokenizer, vlm, tmp_path):
    with pytest.raises(ValueError, match="config_fingerprint"):
        save_model(vlm, tokenizer, tmp_path / "bad", {"stage": "sft", "parent": None})
    save_model(vlm, None, tmp_path, {"stage": "sft", "parent": None, "config_fingerprint": "x"})
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt safetensors file .*model.safetensors"):
        load_model(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="model config missing: .*config.json"):
        load_model(tmp_path)
    (tmp_path / "r1vflow_model.json").write_text(json.dumps({"stage": 3}))
    with pytest.raises(ValueError, match="corrupt model metadata in .*r1vflow_model.json"):
        read_model_metadata(tmp_path)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_model(tmp_path / "missing")


def test_sft_labels_mask_prompt_and_padding_only(tokenizer):
    samples = [
        ("How many?", "<think>2.</think><answer>2</answer>"),
        ("What is 3 + 4?", "<answer>7</answer>"),
    ]
    batch = encode_sft_batch(tokenizer, samples, n_image_tokens=4, max_length=64)
    for row, (question, response) in enumerate(samples):
        prompt = tokenizer.encode(build_prompt(tokenizer, question, 4), add_special_tokens=False)
        answer = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
        length = len(prompt) + len(answer)
        labels = batch["labels"][row].tolist()
        assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert labels[len(prompt) : length] == answer
        assert labels[length:] == [IGNORE_INDEX] * (len(labels) - length)
        assert batch["input_ids"][row, :length].tolist() == prompt + answer
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (len(labels) - length)
        assert set(batch["input_ids"][row, length:].tolist()) <= {tokenizer.pad_token_id}
    with pytest.raises(ValueError, match="sample 0: prompt is .* tokens, max_length=10"):
        encode_sft_batch(tokenizer, samples, n_image_tokens=4, max_length=10)


def test_prompts_are_left_padded(tokenizer):
    batch = encode_prompts(tokenizer, ["How many?", "What is the sum of the two digits?"], 4)
    short, long = batch["attention_mask"].tolist()
    assert long == [1] * len(long) and short[0] == 0 and short[-1] == 1
    assistant = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    for row in batch["input_ids"].tolist():
        assert row[-len(assistant) :] == assistant


def test_greedy_generation_is_deterministic_and_batch_invariant(tokenizer, vlm):
    questions = ["How many?", "What is the sum of the two digits?", "Which side?"]
    pixels = torch.randn(3, 3, 16, 16)
    first = generate_completions(vlm, tokenizer, questions, pixels, 12, batch_size=3)
    again = generate_completions(vlm, tokenizer, questions, pixels, 12, batch_size=2)
    assert [c[0].token_ids for c in first] == [c[0].token_ids for c in again]
    assert all(0 < c[0].num_tokens <= 12 for c in first)
    assert all(vlm.config.image_token_id not in c[0].token_ids for c in first)
    texts = generate_responses(vlm, tokenizer, questions, pixels, 12, batch_size=3)
    assert texts == [[c.text for c in group] for group in first]


def test_sampling_is_seeded_and_grouped(tokenizer, vlm):
    pixels = torch.randn(2, 3, 16, 16)
    args = (vlm, tokenizer, ["How many?", "Which side?"], pixels, 8, 2)
    a = generate_responses(*args, temperature=1.0, num_return_sequences=3, seed=7)
    b = generate_responses(*args, temperature=1.0, num_return_sequences=3, seed=7)
    assert a == b and [len(g) for g in a] == [3, 3]
    with pytest.raises(ValueError, match="greedy decoding"):
        generate_responses(*args, num_return_sequences=2)


def test_load_pretrained_parts_from_local_checkpoints(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        SiglipConfig,
        SiglipModel,
        SiglipTextConfig,
        SiglipVisionConfig,
    )

    from r1vflow.models.vlm import load_pretrained_parts

    vision_cfg = SiglipVisionConfig(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    text_cfg = SiglipTextConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
    )
    SiglipModel(SiglipConfig(text_config=text_cfg, vision_config=vision_cfg)).save_pretrained(
        tmp_path / "siglip"
    )
    vocab = {"<|endoftext|>": 0, "<|im_end|>": 1, **{c: i + 2 for i, c in enumerate("abcde ")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    hub_tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")
    build_tiny_llm(len(vocab), 32, 1, 2, 64, 64).save_pretrained(tmp_path / "llm")
    hub_tokenizer.save_pretrained(tmp_path / "llm")

    vision, llm, tokenizer = load_pretrained_parts(
        str(tmp_path / "siglip"), str(tmp_path / "llm"), dtype=torch.float32
    )
    assert type(vision).__name__ == "SiglipVisionModel"
    assert all(len(tokenizer.encode(t, add_special_tokens=False)) == 1 for t in SPECIAL_TOKENS[1:])
    assert llm.get_input_embeddings().num_embeddings == len(tokenizer) == len(vocab) + 5
    model = assemble_vlm(vision, llm, tokenizer)
    assert num_image_tokens(model) == 4
    save_model(
        model,
        tokenizer,
        tmp_path / "vlm",
        {"stage": "align_projector", "parent": None, "config_fingerprint": "x"},
    )
    assert load_tokenizer(tmp_path / "vlm").encode("<image>abc") == tokenizer.encode("<image>abc")
