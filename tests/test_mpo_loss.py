"""The MPO loss: hand-computed values, the BCO shift helper, and equality with TRL's DPOTrainer
(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights) on the same model and batch."""

import math

import pytest
import torch

from r1vflow.pref.loss import BCODelta, mpo_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# beta 0.5: c = 0.5 * ([-1, -4] - [-2, -3]) = [0.5, -0.5]; r = 0.5 * ([-3, -2] - [-2, -2]) =
# [-0.5, 0]; c - r = [1, -0.5]; -logsigmoid(x) = softplus(-x).
INPUTS = dict(chosen_logps=torch.tensor([-1.0, -4.0]), rejected_logps=torch.tensor([-3.0, -2.0]),
              ref_chosen_logps=torch.tensor([-2.0, -3.0]),
              ref_rejected_logps=torch.tensor([-2.0, -2.0]), chosen_nll=torch.tensor([0.8, 1.2]))
DPO = (0.31326168751822286 + 0.9740769841801067) / 2  # softplus(-1), softplus(0.5)
# delta 0.25: pair 1 softplus(-0.25) + softplus(-0.75), pair 2 softplus(0.75) + softplus(-0.25)
BCO = (0.9628104259937436 + 1.7128104259937436) / 2


def test_hand_computed_terms():
    assert DPO == pytest.approx((softplus(-1.0) + softplus(0.5)) / 2, abs=1e-12)
    loss, stats = mpo_loss(**INPUTS, beta=0.5, w_dpo=1.0, w_bco=0.5, w_nll=0.2, delta=0.25)
    assert float(loss) == pytest.approx(DPO + 0.5 * BCO + 0.2 * 1.0, abs=1e-6)
    assert float(loss) == pytest.approx(1.5125745488460365, abs=1e-6)
    assert stats["loss/dpo"] == pytest.approx(DPO, abs=1e-6)
    assert stats["loss/bco"] == pytest.approx(BCO, abs=1e-6)
    assert stats["loss/nll"] == pytest.approx(1.0, abs=1e-6)
    assert stats["rewards/chosen"] == pytest.approx(0.0, abs=1e-7)
    assert stats["rewards/rejected"] == pytest.approx(-0.25, abs=1e-7)
    assert stats["rewards/margins"] == pytest.approx(0.25, abs=1e-7)
    assert stats["rewards/accuracy"] == 0.5  # pair 1 c > r, pair 2 not
    assert stats["rewards/mean"] == pytest.approx(-0.125, abs=1e-7)  # mean of [0, -0.25]
    assert stats["bco_delta"] == 0.25


def test_each_weight_selects_its_term():
    only = {"dpo": (1, 0, 0), "bco": (0, 1, 0), "nll": (0, 0, 1)}
    expected = {"dpo": DPO, "bco": BCO, "nll": 1.0}
    for name, (a, b, c) in only.items():
        loss, _ = mpo_loss(**INPUTS, beta=0.5, w_dpo=a, w_bco=b, w_nll=c, delta=0.25)
        assert float(loss) == pytest.approx(expected[name], abs=1e-6), name


def test_gradient_flows_to_policy_not_reference():
    inputs = {k: v.clone().requires_grad_(True) for k, v in INPUTS.items()}
    loss, _ = mpo_loss(**inputs, beta=0.5, w_dpo=1.0, w_bco=1.0, w_nll=1.0)
    loss.backward()
    assert inputs["chosen_logps"].grad.abs().sum() > 0
    assert inputs["ref_chosen_logps"].grad is None
    # d/dc of the DPO term for pair 1: -sigmoid(-(c - r)) * beta / B = -sigmoid(-1) * 0.5 / 2
    only_dpo = {k: v.clone().requires_grad_(True) for k, v in INPUTS.items()}
    loss, _ = mpo_loss(**only_dpo, beta=0.5, w_dpo=1.0, w_bco=0.0, w_nll=0.0)
    loss.backward()
    sig = 1 / (1 + math.exp(1.0))
    assert float(only_dpo["chosen_logps"].grad[0]) == pytest.approx(-sig * 0.25, abs=1e-6)


@pytest.mark.parametrize("bad", [
    dict(chosen_logps=torch.zeros(3)), dict(chosen_nll=torch.zeros(2, 1)),
])
def test_shape_errors_name_the_inputs(bad):
    with pytest.raises(ValueError, match="same 1-D shape"):
        mpo_loss(**{**INPUTS, **bad}, beta=0.1, w_dpo=1, w_bco=1, w_nll=1)


def test_bad_weights_and_beta():
    with pytest.raises(ValueError, match="beta must be > 0"):
        mpo_loss(**INPUTS, beta=0.0, w_dpo=1, w_bco=1, w_nll=1)
    with pytest.raises(ValueError, match="not all 0"):
        mpo_loss(**INPUTS, beta=0.1, w_dpo=0, w_bco=0, w_nll=0)


def test_bco_delta_window():
    delta = BCODelta(window=2)
    assert delta.value == 0.0
    assert delta.update(1.0) == 1.0
    assert delta.update(3.0) == 2.0
    assert delta.update(-1.0) == 1.0  # (3 + -1) / 2: the first value left the window


def test_bco_delta_decay_and_state():
    delta = BCODelta(decay=0.9)
    assert delta.update(2.0) == 2.0  # starts at the first value
    assert delta.update(0.0) == pytest.approx(1.8)
    assert delta.update(1.0) == pytest.approx(0.9 * 1.8 + 0.1)
    copy = BCODelta(decay=0.9)
    copy.load_state_dict(delta.state_dict())
    assert copy.update(5.0) == pytest.approx(delta.update(5.0))


def test_bco_delta_needs_exactly_one_setting():
    for kwargs in ({}, {"window": 3, "decay": 0.5}):
        with pytest.raises(ValueError, match="exactly one"):
            BCODelta(**kwargs)
    with pytest.raises(ValueError, match="decay must be in"):
        BCODelta(decay=1.0)


# ----------------------------------------------------------------------------- TRL reference
PAIRS = [
    ("How many red circles are there?", " 2 red circles.", " 3 red circles, 1 blue."),
    ("What is the sum of the two digits?", " 3 + 4 = 7.", " 3 + 4 = 8, so 8."),
    ("Which side has more objects?", " left has more.", " right."),
    ("How many squares are there?", " 1 square.", " 2 squares and 1 circle."),
]


def _text_tokenizer():
    from r1vflow.models.tokenizer import train_tokenizer

    corpus = [f"{q}{c}{r}" for q, c, r in PAIRS] * 30
    return train_tokenizer(corpus, vocab_size=300)


def _policy_and_reference(tokenizer):
    from r1vflow.models.vlm import build_tiny_llm

    torch.manual_seed(0)
    policy = build_tiny_llm(len(tokenizer), 32, 2, 2, 64, max_position_embeddings=128)
    ref = build_tiny_llm(len(tokenizer), 32, 2, 2, 64, max_position_embeddings=128)
    return policy.float(), ref.float().eval()


def _trl_batch_and_loss(tmp_path, policy, ref, tokenizer, weights, beta):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, beta=beta,
                     loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=list(weights),
                     per_device_train_batch_size=len(PAIRS), report_to="none",
                     save_strategy="no", bf16=False, gradient_checkpointing=False,
                     dataloader_num_workers=0, disable_tqdm=True, max_length=None)
    data = Dataset.from_list([{"prompt": q, "chosen": c, "rejected": r} for q, c, r in PAIRS])
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data,
                         processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {k: v.to("cpu") if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    return batch, float(loss)


def _our_inputs(batch, policy, ref, pad_id):
    """The same rows through our pair forward: prompt and completion ids as TRL tokenized."""
    from r1vflow.pref.train import PrefItem, pair_logprobs

    ids, attn, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    rows = []
    for i in range(ids.shape[0]):
        valid = attn[i].bool()
        rows.append((ids[i][valid & ~comp[i].bool()].tolist(), ids[i][comp[i].bool()].tolist()))
    b = len(rows) // 2
    items = [PrefItem(str(i), rows[i][0], rows[i][1], rows[b + i][1]) for i in range(b)]
    with torch.no_grad():
        chosen, rejected, nll, tokens = pair_logprobs(policy, items, pad_id)
        ref_chosen, ref_rejected, _, _ = pair_logprobs(ref, items, pad_id)
    return chosen, rejected, ref_chosen, ref_rejected, nll, tokens


@pytest.mark.parametrize("weights", [(0.8, 0.2, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.5)])
def test_equals_trl_dpo_trainer(tmp_path, weights):
    """TRL 1.16: bco_pair has no shift (delta 0) and sft is the batch's token-mean NLL; fed that
    NLL and delta 0, our loss equals TRL's to 1e-5."""
    beta = 0.3
    tokenizer = _text_tokenizer()
    policy, ref = _policy_and_reference(tokenizer)
    batch, trl_loss = _trl_batch_and_loss(tmp_path, policy, ref, tokenizer, weights, beta)
    chosen, rejected, ref_c, ref_r, nll, tokens = _our_inputs(batch, policy, ref,
                                                              tokenizer.pad_token_id)
    token_mean_nll = (nll * tokens).sum() / tokens.sum()
    w_dpo, w_bco, w_nll = weights
    ours, _ = mpo_loss(chosen, rejected, ref_c, ref_r, token_mean_nll.expand(len(PAIRS)), beta,
                       w_dpo, w_bco, w_nll, delta=0.0)
    assert float(ours) == pytest.approx(trl_loss, abs=1e-5)
    if w_nll and len(set(tokens.tolist())) > 1:
        # our own convention (every pair weighs the same) differs from TRL's token mean
        per_pair, _ = mpo_loss(chosen, rejected, ref_c, ref_r, nll, beta, w_dpo, w_bco, w_nll)
        assert abs(float(per_pair) - trl_loss) > 1e-4
