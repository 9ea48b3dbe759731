"""Training engine, SFT and bootstrap pretraining on tiny hand-made data."""

from __future__ import annotations

import math

import pytest
import torch

from r1vflow.models.processing import IGNORE_INDEX, encode_sft_batch
from r1vflow.models.tokenizer import train_tokenizer
from r1vflow.models.vlm import (
    assemble_vlm,
    build_tiny_llm,
    build_tiny_vision,
    num_image_tokens,
    set_trainable,
)
from r1vflow.train.bootstrap import (
    PretrainSettings,
    encode_texts,
    pretrain_llm,
    pretrain_vision,
    standardize,
)
from r1vflow.train.engine import TrainEngine, lr_factor, param_groups
from r1vflow.train.sft import SFTSettings, eval_loss, train_sft

CORPUS = [
    "How many red circles are there? <think>red circle, red circle. 2 red circles.</think>"
    "<answer>2</answer>",
    "What is the sum of the two digits? <think>left digit is 3. right digit is 4. 3 + 4 = 7."
    "</think><answer>7</answer>",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def tiny_vlm(tokenizer):
    torch.manual_seed(0)
    vision = build_tiny_vision(16, 8, 32, 1, 2)
    llm = build_tiny_llm(len(tokenizer), 32, 2, 2, 64, 128)
    return assemble_vlm(vision, llm, tokenizer)


def items(n: int = 8) -> list[tuple[str, str, torch.Tensor]]:
    """Half the images are dark and answer 0, half bright and answer 1."""
    out = []
    for i in range(n):
        bright = i % 2
        pixels = torch.full((3, 16, 16), 0.8 if bright else -0.8)
        out.append(("How many?", f"<think>{bright}.</think><answer>{bright}</answer>", pixels))
    return out


@pytest.mark.parametrize(
    ("step", "schedule", "expected"),
    [
        (0, "cosine", 0.5),
        (1, "cosine", 1.0),
        (2, "cosine", 1.0),
        (6, "cosine", 0.5),
        (10, "cosine", 0.0),
        (6, "linear", 0.5),
        (4, "linear", 0.75),
        (12, "linear", 0.0),
    ],
)
def test_lr_factor_warmup_then_decay(step, schedule, expected):
    assert lr_factor(step, warmup_steps=2, total_steps=10, schedule=schedule) == pytest.approx(
        expected
    )


def test_param_groups_skip_decay_on_biases_and_frozen_params():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].requires_grad_(False)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert [p.shape for p in no_decay["params"]] == [torch.Size([4])] * 3
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, 0.1)


def test_engine_clips_and_schedules():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    engine = TrainEngine(
        model, lr=0.1, weight_decay=0.0, warmup_ratio=0.5, total_steps=4, grad_clip=0.5
    )
    before = model.weight.detach().clone()
    stats = engine.step((model(torch.ones(2, 4)) * 100).sum())
    assert stats["lr"] == pytest.approx(0.05) and stats["grad_norm"] > 100
    assert engine.current_lr() == pytest.approx(0.1)
    assert not torch.equal(before, model.weight)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        engine.step(model(torch.ones(1, 4)).sum() * float("nan"))
    with pytest.raises(ValueError, match="zero_stage=2 needs backend='deepspeed'"):
        TrainEngine(model, 0.1, 0.0, 0.0, 4, zero_stage=2)


def test_train_sft_reduces_response_loss(tokenizer):
    model = tiny_vlm(tokenizer)
    counts = set_trainable(model, {"projector", "llm"})
    assert counts["vision"] == 0
    data = items()
    before = eval_loss(model, tokenizer, data, batch_size=3, max_length=64)
    seen = []
    result = train_sft(
        model,
        tokenizer,
        data,
        SFTSettings(epochs=10, batch_size=4, lr=1e-2, warmup_ratio=0.1, max_length=64, seed=0,
                    progress=False),
        on_step=lambda s, m: seen.append((s, m)),
    )
    stats = result.summary
    after = eval_loss(model, tokenizer, data, batch_size=3, max_length=64)
    assert stats["steps"] == 20 and [s for s, _ in seen] == list(range(1, 21))
    assert [m for _, m in seen] == result.history and result.items == 10 * len(data)
    assert {"loss", "lr", "grad_norm", "epoch"} <= set(seen[0][1])
    assert stats["tokens_per_s"] > 0 and stats["loss"] < stats["first_loss"]
    assert after < 0.3 * before


def test_eval_loss_is_token_weighted_mean_over_responses(tokenizer):
    model = tiny_vlm(tokenizer).eval()
    data = items(3)
    n = num_image_tokens(model)
    total, count = 0.0, 0
    for question, response, pixels in data:
        batch = encode_sft_batch(tokenizer, [(question, response)], n, 64)
        with torch.no_grad():
            loss = model(**batch, pixel_values=pixels[None]).loss
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total, count = total + float(loss) * tokens, count + tokens
    assert eval_loss(model, tokenizer, data, batch_size=2, max_length=64) == pytest.approx(
        total / count, rel=1e-5
    )


def test_standardize_hand_computed():
    out = standardize(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    expected = torch.tensor([[-1 / math.sqrt(2), 0.0], [1 / math.sqrt(2), 0.0]])
    torch.testing.assert_close(out, expected)


def test_pretrain_vision_learns_brightness():
    torch.manual_seed(0)
    vision = build_tiny_vision(16, 8, 32, 1, 2)
    level = torch.rand(64)
    images = level[:, None, None, None].expand(64, 3, 16, 16) * 2 - 1
    stats = pretrain_vision(
        vision, images, level[:, None],
        PretrainSettings(steps=60, lr=3e-3, batch_size=16, seed=0, progress=False),
    )
    assert stats["steps"] == 60 and stats["loss"] < 0.3 * stats["first_loss"]
    assert not vision.training


def test_encode_texts_masks_padding_only(tokenizer):
    batch = encode_texts(tokenizer, ["2 red circles.", "7"], max_length=64)
    short = tokenizer.encode("7", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert batch["labels"][1, : len(short)].tolist() == short
    assert (batch["labels"][1, len(short) :] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].tolist() == [1] * len(short) + [0] * (
        batch["input_ids"].shape[1] - len(short)
    )


def test_pretrain_llm_reduces_loss(tokenizer):
    torch.manual_seed(0)
    llm = build_tiny_llm(len(tokenizer), 32, 2, 2, 64, 128)
    stats = pretrain_llm(
        llm,
        tokenizer,
        CORPUS,
        PretrainSettings(steps=40, lr=5e-3, batch_size=8, max_length=64, seed=0, progress=False),
    )
    assert stats["loss"] < 0.5 * stats["first_loss"] and stats["tokens_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_deepspeed_backend_matches_torch(tokenizer, zero_stage):
    pytest.importorskip("deepspeed")
    losses = {}
    for backend, stage in (("torch", 0), ("deepspeed", zero_stage)):
        model = tiny_vlm(tokenizer)
        set_trainable(model, {"projector", "llm"})
        seen: list[float] = []
        train_sft(
            model,
            tokenizer,
            items(),
            SFTSettings(epochs=2, batch_size=4, lr=3e-3, weight_decay=0.01, warmup_ratio=0.1,
                        max_length=64, seed=0, progress=False, backend=backend,
                        zero_stage=stage),
            on_step=lambda s, m, seen=seen: seen.append(m["loss"]),
        )
        losses[backend] = seen
        final = eval_loss(model, tokenizer, items(), batch_size=4, max_length=64)
        losses[backend + "_eval"] = [final]
    assert losses["deepspeed"] == pytest.approx(losses["torch"], rel=1e-4)
    assert losses["deepspeed_eval"] == pytest.approx(losses["torch_eval"], rel=1e-4)
