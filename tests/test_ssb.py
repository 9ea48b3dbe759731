"""Selective Sample Buffer: weighted replay, eviction, expiry, caps, offline prefilter."""

from collections import Counter

import pytest
import torch

from r1vflow.rl.ssb import Candidate, SelectiveSampleBuffer, prefilter_prompts


def cand(pid, adv, n_tokens=2):
    return Candidate(
        prompt_id=pid,
        prompt={"q": pid},
        response=f"resp-{pid}",
        old_logprobs=torch.full((n_tokens,), -1.0),
        advantage=adv,
    )


def make(**kw):
    args = {
        "capacity": 10,
        "max_age_steps": 100,
        "target_effective_ratio": 1.0,
        "max_replay_fraction": 1.0,
        "seed": 0,
    }
    args.update(kw)
    return SelectiveSampleBuffer(**args)


def test_add_keeps_only_nonzero_advantage():
    buf = make()
    assert buf.add([cand("a", 0.0), cand("b", 0.5), cand("c", -1e-9), cand("d", -0.3)], step=1) == 2
    assert [(e.prompt_id, e.advantage, e.step) for e in buf.entries] == [
        ("b", 0.5, 1),
        ("d", -0.3, 1),
    ]
    e = buf.entries[0]
    assert e.prompt == {"q": "b"} and e.response == "resp-b"
    assert torch.equal(e.old_logprobs, torch.full((2,), -1.0))


def test_sampling_frequency_proportional_to_abs_advantage():
    buf = make(max_age_steps=10**6)
    advs = {"a": 1.0, "b": -2.0, "c": 3.0, "d": -4.0}  # weights 0.1, 0.2, 0.3, 0.4
    buf.add([cand(p, a) for p, a in advs.items()], step=0)
    counts = Counter()
    draws = 20000
    for step in range(draws):
        # batch of 2 with one zero advantage -> exactly one replacement drawn
        entries, stats = buf.fill([0.7, 0.0], batch_size=2, step=step)
        assert len(entries) == 1 and stats["replay_fraction"] == 0.5
        counts[entries[0].prompt_id] += 1
    for pid, adv in advs.items():
        assert counts[pid] / draws == pytest.approx(abs(adv) / 10.0, abs=0.015)


def test_fill_draws_without_replacement_and_is_deterministic():
    def run(seed):
        buf = make(seed=seed)
        buf.add([cand(str(i), float(i + 1)) for i in range(6)], step=0)
        entries, _ = buf.fill([0.0] * 4, batch_size=4, step=0)
        return [e.prompt_id for e in entries]

    first = run(7)
    assert len(first) == 4 and len(set(first)) == 4
    assert run(7) == first


def test_capacity_evicts_oldest_then_lowest_abs_advantage():
    buf = make(capacity=3)
    buf.add([cand("old-big", 9.0), cand("old-small", 0.1)], step=1)
    buf.add([cand("new-small", 0.2), cand("new-mid", -0.5)], step=2)
    # 4 entries > capacity 3: the oldest entry with the lowest |A| goes first
    assert sorted(e.prompt_id for e in buf.entries) == ["new-mid", "new-small", "old-big"]
    buf.add([cand("newest", 0.3)], step=3)
    assert sorted(e.prompt_id for e in buf.entries) == ["new-mid", "new-small", "newest"]
    # within one step, the lowest |A| is evicted
    buf.add([cand("n4a", 1.0), cand("n4b", -2.0), cand("n4c", 0.05)], step=4)
    assert sorted(e.prompt_id for e in buf.entries) == ["n4a", "n4b", "n4c"]
    buf.add([cand("n5", 0.01)], step=5)
    assert sorted(e.prompt_id for e in buf.entries) == ["n4a", "n4b", "n5"]


def test_expire_by_max_age():
    buf = make(max_age_steps=2)
    buf.add([cand("s1", 1.0)], step=1)
    buf.add([cand("s2", 1.0)], step=2)
    assert buf.expire(step=3) == 0  # age 2 is still allowed
    assert buf.expire(step=4) == 1  # s1 is 3 steps old
    assert [e.prompt_id for e in buf.entries] == ["s2"]
    # fill expires too: at step 10 nothing is left to replay
    entries, stats = buf.fill([0.0, 0.0], batch_size=2, step=10)
    assert entries == [] and stats["buffer_size"] == 0.0


def test_replay_capped_by_max_replay_fraction():
    buf = make(max_replay_fraction=0.25)
    buf.add([cand(str(i), 1.0) for i in range(10)], step=0)
    entries, stats = buf.fill([0.0] * 8, batch_size=8, step=1)  # target would want 8
    assert len(entries) == 2
    assert stats == {
        "effective_ratio_before": 0.0,
        "effective_ratio_after": 0.25,
        "buffer_size": 10.0,
        "replay_fraction": 0.25,
        "replayed": 2.0,
    }


def test_replay_only_up_to_target():
    buf = make(target_effective_ratio=0.6)
    buf.add([cand(str(i), 1.0) for i in range(10)], step=0)
    # 10 samples, 2 effective; target 6 -> 4 replayed
    entries, stats = buf.fill([1.0, -1.0] + [0.0] * 8, batch_size=10, step=1)
    assert len(entries) == 4
    assert stats["effective_ratio_before"] == pytest.approx(0.2)
    assert stats["effective_ratio_after"] == pytest.approx(0.6)


def test_no_replay_when_batch_meets_target():
    buf = make(target_effective_ratio=0.5)
    buf.add([cand("a", 1.0)], step=0)
    entries, stats = buf.fill([1.0, 0.0], batch_size=2, step=1)
    assert entries == []
    assert stats["effective_ratio_before"] == stats["effective_ratio_after"] == 0.5
    assert stats["replay_fraction"] == 0.0


def test_remove_on_replay():
    buf = make(remove_on_replay=True)
    buf.add([cand("a", 1.0), cand("b", 2.0)], step=0)
    entries, stats = buf.fill([0.0], batch_size=1, step=0)
    assert len(entries) == 1 and len(buf) == 1 and stats["buffer_size"] == 1.0
    assert buf.entries[0].prompt_id != entries[0].prompt_id


def test_config_and_fill_validation():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        make(capacity=0)
    with pytest.raises(ValueError, match=r"target_effective_ratio must be in \[0, 1\]"):
        make(target_effective_ratio=1.5)
    with pytest.raises(ValueError, match="got 3 advantages for batch_size=2"):
        make().fill([0.0, 0.0, 0.0], batch_size=2, step=0)


def test_prefilter_prompts():
    rewards = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0.5, 0.5, 2.0]  # 4 prompts x 3
    assert prefilter_prompts(["p0", "p1", "p2", "p3"], rewards, group_size=3) == ["p1", "p3"]
    assert prefilter_prompts(["a", "b"], torch.tensor([[1.0, 2.0], [3.0, 3.0]]), 2) == ["a"]
    with pytest.raises(ValueError, match="12 rewards for 3 prompts with group_size=3"):
        prefilter_prompts(["p0", "p1", "p2"], rewards, group_size=3)
