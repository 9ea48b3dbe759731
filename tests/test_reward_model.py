"""Reward model: the pairwise loss and its metrics on hand-made numbers, the 0..5 calibration,
last-token scoring, safetensors save/load with the head, a short training run, and the
train_reward_model stage on a micro data set."""

from __future__ import annotations

import json
import math

import pytest
import torch

from r1vflow.models.reward import (
    HEAD_CONFIG,
    RewardModel,
    ScoreCalibration,
    load_reward_model,
    load_reward_scorer,
    mean_response_logprob,
    reward_scores,
    save_reward_model,
)
from r1vflow.models.tokenizer import train_tokenizer
from r1vflow.models.vlm import assemble_vlm, build_tiny_llm, build_tiny_vision, set_trainable
from r1vflow.train.reward import (
    RewardSettings,
    fit_calibration,
    pairwise_loss,
    pairwise_metrics,
    train_reward,
)

CORPUS = [
    "How many red circles are there? <think>red circle, red circle. 2 red circles.</think>"
    "<answer>2</answer>",
    "What is the sum of the two digits? <think>left digit is 3. right digit is 4. 3 + 4 = 7."
    "</think><answer>7</answer>",
] * 20
META = {"stage": "train_reward_model", "parent": None, "config_fingerprint": "test"}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def tiny_reward_model(tokenizer, likelihood_term: bool = False) -> RewardModel:
    torch.manual_seed(0)
    vision = build_tiny_vision(image_size=16, patch_size=8, hidden_size=32, num_layers=1,
                               num_heads=2)
    llm = build_tiny_llm(len(tokenizer), 32, 1, 2, 64, max_position_embeddings=128)
    return RewardModel(assemble_vlm(vision, llm, tokenizer), likelihood_term)


# --------------------------------------------------------------------------- pure functions


def test_pairwise_loss_on_hand_computed_values():
    chosen = torch.tensor([1.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0])
    loss = pairwise_loss(chosen, rejected)
    # (-log sigmoid(1) - log sigmoid(0)) / 2 = (0.3132617 + 0.6931472) / 2
    assert loss.item() == pytest.approx(0.5032044, abs=1e-6)
    loss.backward()
    # d/dc -log sigmoid(c - r) = -(1 - sigmoid(c - r)), halved by the mean
    assert chosen.grad.tolist() == pytest.approx([-(1 - 1 / (1 + math.exp(-1))) / 2, -0.25])


def test_cross_prompt_loss_compares_every_chosen_with_every_rejected():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, -1.0])
    # differences chosen_i - rejected_j: [[1, 3], [-1, 1]]
    expected = sum(-math.log(1 / (1 + math.exp(-d))) for d in (1, 3, -1, 1)) / 4
    assert pairwise_loss(chosen, rejected, cross_prompt=True).item() == pytest.approx(expected)
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-1))))


def test_pairwise_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        pairwise_loss(torch.zeros(2), torch.zeros(3))


def test_pairwise_metrics_on_hand_computed_values():
    metrics = pairwise_metrics([2.0, 1.0, 0.0], [1.0, 1.0, -1.0])
    assert metrics["pairwise_accuracy"] == pytest.approx(2 / 3)  # the tie counts as wrong
    assert metrics["cross_accuracy"] == pytest.approx(5 / 9)  # 3 + 1 + 1 of 9 combinations
    assert metrics["margin_mean"] == pytest.approx(2 / 3)
    assert metrics["chosen_score_mean"] == pytest.approx(1.0)
    assert metrics["chosen_score_std"] == pytest.approx(math.sqrt(2 / 3))
    assert metrics["rejected_score_mean"] == pytest.approx(1 / 3)
    assert metrics["rejected_score_std"] == pytest.approx(math.sqrt(8 / 9))
    with pytest.raises(ValueError, match="equally many"):
        pairwise_metrics([1.0], [])


def test_calibration_maps_quantile_anchors_to_0_and_5():
    calibration = fit_calibration([1.0, 2.0, 3.0], [-1.0, 0.0, 1.0], 0.5, 0.5)
    assert (calibration.low, calibration.high) == (0.0, 2.0)
    scaled = calibration.to_scale(torch.tensor([0.0, 1.0, 2.0, 3.0, -5.0]))
    assert scaled.tolist() == [0.0, 2.5, 5.0, 5.0, 0.0]
    upper = fit_calibration([1.0, 2.0, 3.0], [-1.0, 0.0, 1.0], 0.0, 1.0)
    assert (upper.low, upper.high) == (-1.0, 3.0)


def test_calibration_fails_when_the_model_does_not_separate():
    with pytest.raises(ValueError, match="not above"):
        fit_calibration([0.0, 0.0], [1.0, 1.0], 0.5, 0.5)
    with pytest.raises(ValueError, match="high > low"):
        ScoreCalibration(low=1.0, high=1.0)


def test_mean_response_logprob_on_hand_computed_values():
    # vocab 2; position 0 predicts token 1 with p = 0.5, position 1 predicts token 0 with
    # p = sigmoid(2) = 0.8808; only the last two tokens are the response
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]]])  # [1, 3, 2]
    ids, response = torch.tensor([[1, 1, 0]]), torch.tensor([[0, 1, 1]])
    expected = (math.log(0.5) + math.log(1 / (1 + math.exp(-2)))) / 2
    assert mean_response_logprob(logits, ids, response).item() == pytest.approx(expected)
    only_last = torch.tensor([[0, 0, 1]])
    assert mean_response_logprob(logits, ids, only_last).item() == pytest.approx(
        math.log(1 / (1 + math.exp(-2))))


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("likelihood_term", [False, True])
def test_scores_do_not_depend_on_the_padding(tokenizer, likelihood_term):
    model = tiny_reward_model(tokenizer, likelihood_term).eval()
    pixels = torch.randn(2, 3, 16, 16)
    short, long = "<answer>2</answer>", "<think>red circle, red circle.</think><answer>2</answer>"
    together = reward_scores(model, tokenizer, ["q", "q"], pixels, [short, long], 8, 128)
    alone = reward_scores(model, tokenizer, ["q"], pixels[:1], [short], 8, 128)
    assert together[0] == pytest.approx(alone[0], abs=1e-5)
    assert together[0] != pytest.approx(together[1], abs=1e-6)
    with pytest.raises(ValueError, match="one of each"):
        reward_scores(model, tokenizer, ["q"], pixels, [short, long], 8, 128)


def test_save_load_keeps_the_head_and_calibration(tokenizer, tmp_path):
    model = tiny_reward_model(tokenizer, likelihood_term=True)
    torch.nn.init.normal_(model.value_head.linear.weight)
    model.value_head.likelihood_weight.data.fill_(0.25)
    out = save_reward_model(model, tokenizer, tmp_path / "rm", META, ScoreCalibration(-1.0, 2.0))
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "model.safetensors", "value_head.safetensors"]
    loaded, calibration = load_reward_model(out)
    assert calibration == ScoreCalibration(-1.0, 2.0)
    assert loaded.value_head.likelihood_weight.item() == 0.25
    assert torch.equal(loaded.value_head.linear.weight, model.value_head.linear.weight)
    pixels = torch.randn(1, 3, 16, 16)
    args = (["q"], pixels, ["<answer>7</answer>"])
    scorer = load_reward_scorer(out, batch_size=4, max_length=128)
    assert scorer.score(*args) == pytest.approx(reward_scores(model, tokenizer, *args, 4, 128),
                                                abs=1e-5)
    raw = scorer.score(*args)[0]
    assert scorer.score_0to5(*args)[0] == pytest.approx(min(5, max(0, 5 * (raw + 1) / 3)),
                                                        abs=1e-5)


def test_load_names_a_missing_or_mismatched_head(tokenizer, tmp_path):
    model = tiny_reward_model(tokenizer)
    out = save_reward_model(model, tokenizer, tmp_path / "rm", META, None)
    config = json.loads((out / HEAD_CONFIG).read_text())
    (out / HEAD_CONFIG).write_text(json.dumps({**config, "hidden_size": 7}))
    with pytest.raises(ValueError, match="hidden_size 7"):
        load_reward_model(out)
    (out / "value_head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="value_head.safetensors"):
        load_reward_model(out)


def test_training_separates_an_easy_pair_set(tokenizer):
    model = tiny_reward_model(tokenizer)
    set_trainable(model.vlm, {"projector", "llm"})
    torch.manual_seed(1)
    pairs = [("How many red circles are there?", "<think>red circle.</think><answer>1</answer>",
              "1 1 1", torch.randn(3, 16, 16)) for _ in range(8)]
    stats = train_reward(model, tokenizer, pairs, RewardSettings(
        epochs=10, batch_size=4, lr=3e-3, max_length=128, seed=0, progress=False)).summary
    assert stats["loss"] < 0.5 * stats["first_loss"]
    assert stats["accuracy"] == 1.0
    frozen = dict(model.vlm.model.vision_tower.named_parameters())
    assert all(not p.requires_grad for p in frozen.values())


# --------------------------------------------------------------------------- the stage


def test_stage_reports_pairwise_metrics_and_saves_a_loadable_model(micro_inputs):
    outcome = micro_inputs.run("train_reward_model", {"base_model": "base_model",
                                                      "dataset": "dataset"}, {"model": "rm"})
    metrics = outcome.metrics
    for key in ("pairwise_accuracy", "chosen_score_mean", "chosen_score_std",
                "rejected_score_mean", "rejected_score_std", "calibration_low",
                "calibration_high", "pairwise_accuracy_broken_format"):
        assert key in metrics
    assert 0 <= metrics["pairwise_accuracy"] <= 1
    assert metrics["trainable_params_vision"] == 0  # frozen by default, as in the report
    model, calibration = load_reward_model(outcome.model_dir)
    assert calibration.low == pytest.approx(metrics["calibration_low"])
    assert isinstance(model, RewardModel)
