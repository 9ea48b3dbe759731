"""AL-CoTD: the length controller, the scorers, the acceptance rule, the distill stage and SFT
on its output."""

import json
import math

import pytest
import torch

from r1vflow.data.alcotd import (
    combined_difficulty,
    difficulty_buckets,
    integration_rule,
    length_penalty,
    spearman,
    text_rule,
    vision_rule,
)
from r1vflow.data.io import load_split, read_info
from r1vflow.data.schema import Sample
from r1vflow.models.generate import Completion
from r1vflow.models.io import read_model_metadata
from r1vflow.train.distill import _accept, distill_metrics

from conftest import MicroChain


def test_length_penalty_by_hand():
    # S = (0.5 + 2 * 0.25 + 1 * 1.0) / 4 = 0.5; P = exp(1.2 * 0.5)
    assert combined_difficulty(0.5, 0.25, 1.0, beta=2.0, gamma=1.0) == 0.5
    assert length_penalty(0.5, 0.25, 1.0, alpha=1.2, beta=2.0, gamma=1.0) == pytest.approx(
        math.exp(0.6))
    assert length_penalty(1.0, 1.0, 1.0, 1.2, 1.0, 1.0) == 1.0  # hardest: no penalty
    assert length_penalty(0.0, 0.0, 0.0, 1.0, 1.0, 1.0) == 2.0  # min(2, e)
    assert length_penalty(0.0, 0.0, 0.0, 0.5, 1.0, 1.0) == pytest.approx(math.exp(0.5))
    with pytest.raises(ValueError, match="S_t must be in"):
        length_penalty(0.5, 1.5, 0.5, 1.0, 1.0, 1.0)


def _s(question, objects, reasoning="a. b."):
    return Sample(id="x", family="counting", split="train", image="i.png", question=question,
                  reasoning=reasoning, answer="1", meta={"objects": objects})


def test_rule_scorers_rank_demanding_questions_higher():
    few = _s("What is the sum of the two digits?", [{"digit": 1, "side": "left"},
                                                     {"digit": 2, "side": "right"}])
    crowded = _s("How many red objects are there?", [{"colour": "red"}] * 6,
                 "a. b. c. d. e. f. g.")
    side = _s("Which side has more objects, left or right?", [{"colour": "red"}] * 2)
    assert vision_rule([crowded]) == [0.5 + 0.5 * 6 / 8]
    assert vision_rule([few]) == [0.5 + 0.5 * 0.75]
    assert text_rule([crowded]) == [1.0] and text_rule([few]) == [2 / 6]
    # how-questions 0.5 base; "Which side ... more ... left ... right" 0.2 + 4 x 0.2 (clipped)
    assert integration_rule([crowded]) == [pytest.approx(0.5 + 0.1 * 5)]
    assert integration_rule([side]) == [1.0]
    assert integration_rule([few]) == [pytest.approx(0.2 + 0.1)]


def test_spearman_and_buckets_by_hand():
    # d = [0, 1, 1, 0]: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert difficulty_buckets([0.9, 0.1, 0.5, 0.3, 0.7, 0.2]) == [2, 0, 1, 1, 2, 0]


def test_accept_needs_gold_answer_and_format():
    samples = [_s("q?", []), _s("q?", []), _s("q?", [])]
    completions = {0: Completion("<think>a.</think><answer>1</answer>", [1, 2], True),
                   1: Completion("<think>a.</think><answer>2</answer>", [1], True),
                   2: Completion("a. 1", [1], True)}
    assert _accept(completions, samples, None, None, 0.5) == {0}
    judge = lambda batch, pixels, texts: [0.4] * len(texts)  # noqa: E731 (a plain judge)
    assert _accept(completions, samples, torch.zeros(3, 3, 2, 2), judge, 0.5) == set()
    assert _accept(completions, samples, torch.zeros(3, 3, 2, 2), judge, 0.3) == {0}


def test_metrics_by_hand():
    records = [
        {"difficulty": 0.1, "penalty": 1.8, "attempts": 1, "accepted": True, "chain_tokens": 10,
         "first_correct": True, "first_tokens": 10},
        {"difficulty": 0.5, "penalty": 1.4, "attempts": 2, "accepted": True, "chain_tokens": 20,
         "first_correct": False, "first_tokens": 12},
        {"difficulty": 0.9, "penalty": 1.1, "attempts": 3, "accepted": False,
         "chain_tokens": None, "first_correct": False, "first_tokens": 30},
    ]
    m = distill_metrics(records)
    assert m["acceptance_rate"] == pytest.approx(2 / 3)
    assert m["attempts_mean"] == 2.0
    assert m["chain_tokens_mean/bucket_0"] == 10 and m["chain_tokens_mean/bucket_1"] == 20
    assert "chain_tokens_mean/bucket_2" not in m  # its only sample was not accepted
    assert m["length_difficulty_spearman"] == pytest.approx(1.0)
    assert (m["penalty_min"], m["penalty_max"]) == (1.1, 1.8)
    assert m["adaptive_first_accuracy"] == pytest.approx(1 / 3)
    assert m["adaptive_first_tokens_mean"] == pytest.approx(52 / 3)


# ----------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def distill_chain(micro_inputs, micro_experiment):
    from r1vflow.config import experiment_from_dict

    data = micro_experiment.model_dump(mode="json")
    data["distill"] = {"limit": 12, "max_attempts": 2, "max_new_tokens": 16, "batch_size": 16,
                       "compare_limit": 6, "alpha": 1.0}
    chain = MicroChain(micro_inputs.root, experiment_from_dict(data, []))
    outcome = chain.run("distill", {"base_model": "base_model", "dataset": "dataset"},
                        {"distilled": "distilled"})
    return chain, outcome


def test_distill_stage_writes_a_dataset_with_records(distill_chain):
    chain, outcome = distill_chain
    out, source = chain.root / "distilled", chain.root / "dataset"
    records = [json.loads(line) for line in (out / "distill.jsonl").read_text().splitlines()]
    assert len(records) == 12
    cfg = chain.exp.distill
    for r in records:  # P follows from the recorded scores by the formula
        assert r["penalty"] == pytest.approx(length_penalty(
            r["s_v"], r["s_t"], r["s_i"], cfg.alpha, cfg.beta, cfg.gamma))
        assert r["attempts"] in (1, 2) and (r["accepted"] or r["attempts"] == 2)
    m = outcome.metrics
    assert m["acceptance_rate"] == sum(r["accepted"] for r in records) / 12
    assert m["penalty_max"] == max(r["penalty"] for r in records) <= 2.0
    assert {"fixed_accuracy", "fixed_tokens_mean", "adaptive_compare_accuracy"} <= set(m)
    # on_failure=template: every train sample is still there; the info describes the new set
    train, original = load_split(out, "train"), load_split(source, "train")
    assert [s.id for s in train] == [s.id for s in original]
    info = read_info(out)
    assert info.files["distill"] == "distill.jsonl" and info.digest != read_info(source).digest
    accepted = {r["id"] for r in records if r["accepted"]}
    for new, old in zip(train, original, strict=True):
        if new.id not in accepted:  # templated: the reference chain stays
            assert new.reasoning == old.reasoning


def test_sft_trains_on_the_distilled_dataset(distill_chain):
    from r1vflow.config import experiment_from_dict

    chain, _ = distill_chain
    data = chain.exp.model_dump(mode="json")
    data["sft"] = {**data["sft"], "iterative": None, "epochs": 1, "val_limit": 4,
                   "val_max_new_tokens": 8}
    data["train_reward_model"] = None
    sft = MicroChain(chain.root, experiment_from_dict(data, []))
    sft.run("sft", {"base_model": "base_model", "dataset": "dataset",
                    "distilled_dataset": "distilled"},
            {"model": "sft_distilled", "iterations": "sft_distilled_iters"})
    meta = read_model_metadata(chain.root / "sft_distilled")
    assert meta.data_digests["dataset"] == read_info(chain.root / "distilled").digest
