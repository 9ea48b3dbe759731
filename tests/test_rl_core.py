"""GRPO core on hand-computed tensors."""

import math

import pytest
import torch

from r1vflow.rl.core import (
    clip_fraction,
    group_advantages,
    kl_k3,
    masked_aggregate,
    policy_loss,
    token_logprobs,
)

LOG = math.log


def test_group_of_equal_rewards_gives_zeros():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), group_size=3)
    assert torch.equal(adv, torch.zeros(6))


def test_group_advantages_2x3_bessel():
    # group 1: [1, 0, 0]: mean 1/3, deviations (2/3, -1/3, -1/3),
    #   var = (4/9 + 1/9 + 1/9) / (3 - 1) = 1/3, std = 1/sqrt(3)
    # group 2: [2, 4, 6]: mean 4, deviations (-2, 0, 2), var = 8 / 2 = 4, std = 2
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 6.0])
    s3 = math.sqrt(3)
    expected = torch.tensor([2 / s3, -1 / s3, -1 / s3, -1.0, 0.0, 1.0])
    adv = group_advantages(rewards, group_size=3, eps=0.0)
    torch.testing.assert_close(adv, expected)
    # default eps only shifts the result by ~1e-6
    torch.testing.assert_close(group_advantages(rewards, 3), expected, atol=1e-5, rtol=0)


def test_group_advantages_without_std_scaling():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 6.0])
    adv = group_advantages(rewards, group_size=3, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, -2.0, 0.0, 2.0]))


def test_group_advantages_validates():
    with pytest.raises(ValueError, match="not a multiple of group_size=4"):
        group_advantages(torch.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(torch.zeros(6), group_size=1)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 3), group_size=3)


# Two sequences, T = 3, old log-probs 0 so ratio = exp(logprobs).
#   seq 0: A = +1, ratios (1.5, 1.1, 0.5), all valid
#     per token -min(r*A, clip(r)*A): 1.5 -> -min(1.5, 1.2) = -1.2 (clipped high)
#                                     1.1 -> -1.1; 0.5 -> -min(0.5, 0.8) = -0.5
#     sum -2.8, mean -2.8/3
#   seq 1: A = -1, ratios (0.5, 1.5, padding 100)
#     0.5 -> -min(-0.5, -0.8) = 0.8 (clipped low); 1.5 -> -min(-1.5, -1.2) = 1.5
#     sum 2.3, mean 1.15
@pytest.fixture
def batch():
    logprobs = torch.tensor([[LOG(1.5), LOG(1.1), LOG(0.5)], [LOG(0.5), LOG(1.5), LOG(100.0)]])
    return {
        "logprobs": logprobs.requires_grad_(),
        "old_logprobs": torch.zeros(2, 3),
        "advantages": torch.tensor([1.0, -1.0]),
        "mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    }


def test_policy_loss_seq_mean_token_mean(batch):
    loss = policy_loss(**batch, aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-2.8 / 3 + 1.15) / 2, abs=1e-6)


def test_policy_loss_token_mean(batch):
    loss = policy_loss(**batch, aggregation="token-mean")
    assert loss.item() == pytest.approx((-2.8 + 2.3) / 5, abs=1e-6)


def test_policy_loss_clipped_tokens_get_no_gradient(batch):
    policy_loss(**batch, aggregation="token-mean").backward()
    grad = batch["logprobs"].grad
    # d/dlp of -r*A = -r*A; token-mean divides by 5 valid tokens
    expected = torch.tensor([[0.0, -1.1 / 5, -0.5 / 5], [0.0, 1.5 / 5, 0.0]])
    torch.testing.assert_close(grad, expected)


def test_policy_loss_asymmetric_clip(batch):
    # clip_high = 0.6: ratio 1.5 with A > 0 is no longer clipped; seq 1 unchanged
    loss = policy_loss(**batch, clip_high=0.6, aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-(1.5 + 1.1 + 0.5) / 3 + 1.15) / 2, abs=1e-6)


def test_policy_loss_padding_does_not_count(batch):
    b = dict(batch)
    b["logprobs"] = batch["logprobs"].detach().clone()
    b["logprobs"][1, 2] = float("inf")  # garbage in the padded slot
    assert policy_loss(**b).item() == pytest.approx((-2.8 / 3 + 1.15) / 2, abs=1e-6)


def test_policy_loss_validates(batch):
    with pytest.raises(ValueError, match="unknown aggregation 'sum'"):
        policy_loss(**batch, aggregation="sum")
    b = dict(batch, advantages=torch.zeros(3))
    with pytest.raises(ValueError, match="advantages has shape"):
        policy_loss(**b)
    b = dict(batch, mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no valid tokens"):
        policy_loss(**b)


def test_clip_fraction(batch):
    # clipped: seq 0 token 0 (A>0, 1.5 > 1.2) and seq 1 token 0 (A<0, 0.5 < 0.8); 5 valid tokens
    assert clip_fraction(**batch) == pytest.approx(2 / 5)
    assert clip_fraction(**batch, clip_low=0.6, clip_high=0.6) == 0.0


def test_masked_aggregate_skips_empty_sequences():
    values = torch.tensor([[1.0, 3.0], [5.0, 7.0], [9.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    assert masked_aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx(3.5)
    assert masked_aggregate(values, mask, "token-mean").item() == pytest.approx(3.0)


def test_kl_k3():
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]])
    mask = torch.ones(2, 2)
    assert kl_k3(lp, lp.clone(), mask).item() == 0.0
    # ref - lp = log 2 on one valid token: 2 - log 2 - 1; second token is padding
    ref = torch.tensor([[LOG(2.0), 5.0]])
    val = kl_k3(torch.zeros(1, 2), ref, torch.tensor([[1, 0]]))
    assert val.item() == pytest.approx(1 - LOG(2.0), abs=1e-6)


def test_token_logprobs():
    logits = torch.tensor([[[0.0, LOG(3.0)], [0.0, 0.0]]])  # [N=1, T=2, V=2]
    tokens = torch.tensor([[1, 0]])
    out = token_logprobs(logits, tokens)
    torch.testing.assert_close(out, torch.tensor([[LOG(0.75), LOG(0.5)]]))
    with pytest.raises(ValueError, match=r"must be \[N, T, V\]"):
        token_logprobs(logits[0], tokens)


def test_tis_weights_and_weighted_loss_by_hand():
    """Truncated importance sampling: w = min(exp(trainer - rollout), cap) per token, and the
    clipped loss weights each token's term by it (A = 1, ratio 1: the term is -w)."""
    import math

    from r1vflow.rl.core import policy_loss, tis_weights

    trainer = torch.tensor([[math.log(0.5), math.log(0.2)]])
    rollout = torch.tensor([[math.log(0.25), math.log(0.4)]])
    weights = tis_weights(trainer, rollout, cap=1.5)
    assert torch.allclose(weights, torch.tensor([[1.5, 0.5]]))  # exp: 2 -> capped 1.5, 0.5
    mask = torch.ones(1, 2)
    loss = policy_loss(trainer, trainer, torch.tensor([1.0]), mask, aggregation="token-mean",
                       weights=weights)
    assert loss.item() == pytest.approx(-(1.5 + 0.5) / 2)
    unweighted = policy_loss(trainer, trainer, torch.tensor([1.0]), mask,
                             aggregation="token-mean")
    assert unweighted.item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="cap must be > 0"):
        tis_weights(trainer, rollout, cap=0.0)
