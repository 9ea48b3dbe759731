"""Reward-model training and MPO over 2 ranks (torchrun, gloo on CPU) equal one process on the
same global batches, with each rank computing its share of every batch (r1vflow.train.loop).

Why the numbers must agree (hand reasoning, as in tests/test_ddp.py for SFT): both losses are
means over the pairs of a batch (the pairwise loss -log sigmoid(r_c - r_r), and MPO's
w_dpo * DPO + w_bco * BCO + w_nll * NLL per pair). Rank r takes the pairs r, r + 2, ... of each
global batch and the loop multiplies its loss by 2 x (its pairs / the batch's pairs) before
DistributedDataParallel averages the two ranks' gradients: the average is the gradient of the
mean over the whole batch, also when the shares differ (a batch of 3: 2 and 1 pairs) and when
one rank has none (a batch of 1: rank 1 recomputes rank 0's pair at weight 0). Same gradient,
same clipping, same AdamW step on both ranks: the 2-rank weights equal each other exactly and
one process's up to float summation order (the tolerances below). The step metrics are the
pair-weighted means over the ranks, so they are one process's too, and BCO's shift, updated
with the mean reward over the ranks, is the same number on both ranks and in one process.

With sharding switched off (every rank computing the whole batch) the weights would still
agree; what fails then is the count of pairs each rank trained on, and the pairs it saw.
This file is also the torchrun worker (`python -m torch.distributed.run ... FILE OUT`).
"""

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

CHOSEN = "<think>red circle. 1 red circle.</think><answer>1</answer>"
REJECTED = "<think>blue square. 3 blue squares.</think><answer>3</answer>"
CORPUS = [f"How many red circles are there? {CHOSEN} {REJECTED} q0 q1 q2 q3 q4 q5 q6"] * 30
N_REWARD, N_MPO = 7, 5  # batches of 4: [4, 3] and [4, 1] per epoch
# Per-step metrics agree to float summation order. The weights too, but AdamW divides each
# gradient by its running RMS: where a gradient is near 0 (the lm_head row of a token that no
# pair contains) a float-order difference becomes a visible one, so the weights are compared
# to 1e-4, a thirtieth of one step at lr 3e-3 (the largest measured gap: 1.8e-5).
LOSS_RTOL, PARAM_ATOL = 1e-5, 1e-4


def _tokenizer():
    from r1vflow.models.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS, vocab_size=300)


def _vlm(tokenizer):
    from r1vflow.models.vlm import assemble_vlm, build_tiny_llm, build_tiny_vision

    torch.manual_seed(0)
    vision = build_tiny_vision(image_size=16, patch_size=8, hidden_size=32, num_layers=1,
                               num_heads=2)
    llm = build_tiny_llm(len(tokenizer), 32, 1, 2, 64, max_position_embeddings=256)
    return assemble_vlm(vision, llm, tokenizer)


@contextmanager
def _record(trainer_cls, name_of):
    """Inside, `trainer_cls.loss` records the ids of every share it is given."""
    seen: list[list[str]] = []
    original = trainer_cls.loss

    def loss(self, model, batch):
        seen.append([name_of(self, item) for item in batch])
        return original(self, model, batch)

    trainer_cls.loss = loss
    try:
        yield seen
    finally:
        trainer_cls.loss = original


def reward_run(tokenizer):
    """(model, result, the ids of each share this process trained on)."""
    from r1vflow.models.reward import RewardModel
    from r1vflow.models.vlm import set_trainable
    from r1vflow.train import reward
    from r1vflow.train.reward import RewardSettings, train_reward

    model = RewardModel(_vlm(tokenizer))
    set_trainable(model.vlm, {"projector", "llm"})
    # the head's bias shifts chosen and rejected alike: its gradient is 0 in exact arithmetic,
    # and AdamW would turn the float noise left of it into steps of size lr
    model.value_head.linear.bias.requires_grad_(False)
    pixels = torch.randn(N_REWARD, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    pairs = [(f"How many red circles are there? q{i}", CHOSEN, REJECTED + f" q{i}", pixels[i])
             for i in range(N_REWARD)]
    settings = RewardSettings(epochs=2, batch_size=4, lr=3e-3, warmup_ratio=0.1,
                              max_length=128, seed=0, progress=False, nll_weight=0.1)
    with _record(reward._Reward, lambda self, item: item[0].split()[-1]) as seen:
        result = train_reward(model, tokenizer, pairs, settings)
    return model, result, seen


def mpo_run(tokenizer):
    """(model, result, the ids of each share this process trained on)."""
    from r1vflow.models.vlm import num_image_tokens, set_trainable
    from r1vflow.pref import train
    from r1vflow.pref.data import PairRow, encode_items
    from r1vflow.pref.train import MPOSettings, reference_logprobs, train_mpo

    model = _vlm(tokenizer)
    set_trainable(model, {"projector", "llm"})
    rows = [PairRow(f"q{i}", f"How many red circles are there? q{i}", "x.png", CHOSEN,
                    REJECTED, "r") for i in range(N_MPO)]
    pixels = torch.randn(N_MPO, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    items = encode_items(tokenizer, rows, pixels, num_image_tokens(model), 200)
    refs = reference_logprobs(model, items, tokenizer.pad_token_id, 4)
    settings = MPOSettings(epochs=2, batch_size=4, lr=3e-3, warmup_ratio=0.1, seed=0,
                           bco_delta_decay=0.5, progress=False)
    with _record(train._MPO, lambda self, index: self.items[index].id) as seen:
        result = train_mpo(model, items, refs, settings, pad_id=tokenizer.pad_token_id)
    return model, result, seen


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _worker(out: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    tokenizer = _tokenizer()
    report = {}
    for name, run in (("reward", reward_run), ("mpo", mpo_run)):
        model, result, seen = run(tokenizer)
        final = _flat(model)
        gathered = [torch.zeros_like(final) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, final)
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, {"history": result.history, "items": result.items,
                                          "seen": seen})
        report[name] = {"params": final.tolist(), "ranks": everyone,
                        "max_param_diff": max(float((g - final).abs().max()) for g in gathered)}
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"world": dist.get_world_size(), **report}))
    dist.barrier()
    dist.destroy_process_group()  # gloo's threads must not outlive the interpreter


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The worker's report of both trainings over 2 ranks."""
    out = tmp_path_factory.mktemp("ddp_loop") / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", str(Path(__file__).resolve()), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["world"] == 2
    return report


def _shares(batches: list[list[str]], rank: int, world: int = 2) -> list[list[str]]:
    """Rank `rank`'s share of every global batch (items rank, rank + world, ...)."""
    return [batch[rank::world] for batch in batches]


def _check_equal_to_one_process(report, single_model, single, seen, n_items) -> None:
    """2 ranks against one process (`single_model`, its result `single`, the global batches
    it saw): the same weights, the same per-step metrics on both ranks, and each rank trained
    on its share of every batch, the shares disjoint and together the whole batch."""
    rank0, rank1 = report["ranks"]
    assert report["max_param_diff"] == 0.0  # gradients averaged: one model on both ranks
    share0, share1 = _shares(seen, 0), _shares(seen, 1)
    assert rank0["seen"] == share0
    # an empty share recomputes the batch's first item at weight 0 (DDP stays in step)
    assert rank1["seen"] == [s or b[:1] for s, b in zip(share1, seen, strict=True)]
    assert (rank0["items"], rank1["items"]) == (sum(map(len, share0)), sum(map(len, share1)))
    assert rank0["items"] + rank1["items"] == single.items == 2 * n_items  # 2 epochs
    # the metrics are the means over the ranks: the same on both, and one process's
    assert rank0["history"] == rank1["history"]
    assert len(rank0["history"]) == len(single.history)
    for key in single.history[0]:
        got = [h[key] for h in rank0["history"]]
        assert got == pytest.approx([h[key] for h in single.history], rel=LOSS_RTOL,
                                    abs=1e-7), key
    torch.testing.assert_close(torch.tensor(report["params"]), _flat(single_model), rtol=0,
                               atol=PARAM_ATOL)


@pytest.mark.slow
def test_two_rank_reward_training_equals_one_process(two_ranks):
    from r1vflow.models.reward import RewardModel

    torch.set_num_threads(1)
    tokenizer = _tokenizer()
    model, single, seen = reward_run(tokenizer)
    assert [len(b) for b in seen] == [4, 3, 4, 3]  # shares of 2 + 2, then 2 + 1 pairs
    _check_equal_to_one_process(two_ranks["reward"], model, single, seen, N_REWARD)
    untrained = RewardModel(_vlm(tokenizer))
    assert (_flat(model) - _flat(untrained)).abs().max() > 1e-3  # not two untrained models


@pytest.mark.slow
def test_two_rank_mpo_equals_one_process_with_one_bco_shift(two_ranks):
    torch.set_num_threads(1)
    tokenizer = _tokenizer()
    model, single, seen = mpo_run(tokenizer)
    assert [len(b) for b in seen] == [4, 1, 4, 1]  # the batch of 1: rank 1 has no share
    report = two_ranks["mpo"]
    _check_equal_to_one_process(report, model, single, seen, N_MPO)
    deltas = [h["bco_delta"] for h in report["ranks"][0]["history"]]
    assert deltas[0] == 0.0 and len(set(deltas)) > 2  # the shift moved, the same on each rank
    assert deltas == pytest.approx([h["bco_delta"] for h in single.history], rel=LOSS_RTOL)
    assert (_flat(model) - _flat(_vlm(tokenizer))).abs().max() > 1e-3


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
