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


# --------------------------------------------------------------------------- registered losses
# The `batch` fixture again: ratios seq 0 (1.5, 1.1, 0.5) with A = +1, seq 1 (0.5, 1.5) with
# A = -1 (third slot padding); per-token clipped terms (clip 0.2) -1.2, -1.1, -0.5 | 0.8, 1.5.


def test_registry_names_and_unknown_name():
    from r1vflow.rl.core import POLICY_LOSSES, get_policy_loss, register_policy_loss

    assert set(POLICY_LOSSES) == {"grpo", "gspo", "dr_grpo"}
    with pytest.raises(ValueError, match="unknown grpo.loss 'ppo'; known policy losses: "
                                         "dr_grpo, grpo, gspo"):
        get_policy_loss("ppo")
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register_policy_loss("grpo")(lambda *a: None)
    assert set(POLICY_LOSSES) == {"grpo", "gspo", "dr_grpo"}


def test_config_offers_exactly_the_registered_losses():
    from typing import get_args

    from r1vflow.config import GRPOConfig
    from r1vflow.rl.core import POLICY_LOSSES

    assert set(get_args(GRPOConfig.model_fields["loss"].annotation)) == set(POLICY_LOSSES)
    assert GRPOConfig().loss == "grpo"


def test_grpo_loss_clip_higher_by_hand(batch):
    from r1vflow.rl.core import LossSettings, get_policy_loss

    # clip_high 0.6: ratio 1.5 with A > 0 is inside 1.6 now; ratio 0.5 with A < 0 still
    # clipped at 0.8: seq 0 -(1.5 + 1.1 + 0.5) / 3, seq 1 (0.8 + 1.5) / 2
    out = get_policy_loss("grpo")(**batch, settings=LossSettings(0.2, 0.6))
    assert out.loss.item() == pytest.approx((-3.1 / 3 + 2.3 / 2) / 2, abs=1e-6)
    assert out.clip_fraction == pytest.approx(1 / 5)  # seq 1 token 0 only
    token = get_policy_loss("grpo")(**batch, settings=LossSettings(0.2, 0.2, "token-mean"))
    assert token.loss.item() == pytest.approx((-2.8 + 2.3) / 5, abs=1e-6)
    assert token.clip_fraction == pytest.approx(2 / 5)


def test_dr_grpo_loss_divides_the_token_sum_by_sequences_times_budget(batch):
    from r1vflow.rl.core import LossSettings, get_policy_loss

    # sum of the valid terms -2.8 + 2.3 = -0.5 over N x L = 2 x 4 tokens
    settings = LossSettings(0.2, 0.2, "seq-mean-token-sum-norm", max_new_tokens=4)
    out = get_policy_loss("dr_grpo")(**batch, settings=settings)
    assert out.loss.item() == pytest.approx(-0.5 / 8, abs=1e-7)
    out.loss.backward()
    # d/dlp of -r * A is -r * A for unclipped tokens; clipped ones (1.5 high, 0.5 low) get 0
    expected = torch.tensor([[0.0, -1.1 / 8, -0.5 / 8], [0.0, 1.5 / 8, 0.0]])
    torch.testing.assert_close(batch["logprobs"].grad, expected)
    assert out.clip_fraction == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="dr_grpo divides the token sum"):
        get_policy_loss("dr_grpo")(**batch, settings=LossSettings())


def test_gspo_loss_uses_one_clipped_ratio_per_sequence(batch):
    from r1vflow.rl.core import LossSettings, get_policy_loss

    # s_0 = (1.5 * 1.1 * 0.5) ** (1/3) = 0.825 ** (1/3) ~ 0.9379 (A = +1, inside [0.9, 1.1]);
    # s_1 = (0.5 * 1.5) ** (1/2) = 0.75 ** 0.5 ~ 0.8660 (A = -1, below 0.9: clipped to 0.9)
    s0, s1 = 0.825 ** (1 / 3), 0.75 ** 0.5
    assert s1 < 0.9
    out = get_policy_loss("gspo")(**batch, settings=LossSettings(0.1, 0.1))
    # every token of a sequence carries its sequence's term: -s_0 and max(s_1, 0.9) = 0.9
    assert out.loss.item() == pytest.approx((-s0 + 0.9) / 2, abs=1e-6)
    assert out.clip_fraction == pytest.approx(2 / 5)  # the 2 valid tokens of seq 1
    out.loss.backward()
    # token form: d s_i,t / d lp_t = s_i, so each valid token of seq 0 gets -A * s_0 / 3 / 2
    # (token mean in the sequence, mean over 2 sequences); seq 1 is clipped: no gradient
    expected = torch.tensor([[-s0 / 6] * 3, [0.0, 0.0, 0.0]])
    torch.testing.assert_close(batch["logprobs"].grad, expected)


def test_gspo_loss_token_mean_and_no_clip(batch):
    from r1vflow.rl.core import LossSettings, get_policy_loss

    s0, s1 = 0.825 ** (1 / 3), 0.75 ** 0.5  # both inside the clip range 0.2
    out = get_policy_loss("gspo")(**batch, settings=LossSettings(0.2, 0.2, "token-mean"))
    assert out.loss.item() == pytest.approx((3 * -s0 + 2 * s1) / 5, abs=1e-6)
    assert out.clip_fraction == 0.0


def test_masked_aggregate_and_kl_with_the_constant_normaliser():
    values = torch.tensor([[1.0, 3.0], [5.0, 7.0], [9.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    # valid sum 1 + 3 + 5 = 9 over N x L = 3 x 4
    got = masked_aggregate(values, mask, "seq-mean-token-sum-norm", norm=4)
    assert got.item() == pytest.approx(9 / 12)
    with pytest.raises(ValueError, match="give norm >= 1"):
        masked_aggregate(values, mask, "seq-mean-token-sum-norm")
    ref = torch.tensor([[LOG(2.0), 5.0]])  # one valid token: 2 - log 2 - 1, over 1 x 3
    val = kl_k3(torch.zeros(1, 2), ref, torch.tensor([[1, 0]]), "seq-mean-token-sum-norm", 3)
    assert val.item() == pytest.approx((1 - LOG(2.0)) / 3, abs=1e-6)
