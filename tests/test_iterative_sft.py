"""Iterative SFT (R1V stage 2): the filtering rule on hand-made scores, the error set, the pool
D, and the stage on micro models with every iteration registered in a walkable lineage."""

from __future__ import annotations

import json

import mlflow
import pytest

from r1vflow.data.schema import PreferencePair, Sample
from r1vflow.train.iterative import build_pool, scan_subset, select_iteration, wrong_indices


def sample(i: int) -> Sample:
    return Sample(id=f"s{i}", family="counting", split="train", image=f"images/s{i}.png",
                  question="How many red objects are there?", reasoning=f"{i} red objects.",
                  answer=str(i), meta={})


def pair(i: int, split: str = "train") -> PreferencePair:
    return PreferencePair(id=f"p{i}", split=split, image=f"images/s{i}.png",
                          question="How many red objects are there?",
                          chosen=f"<think>{i} red objects.</think><answer>{i}</answer>",
                          rejected=f"<think>{i} red objects.</think><answer>{i + 1}</answer>",
                          kind="wrong_answer", answer=str(i))


# --------------------------------------------------------------------------- the rule


def test_filter_keeps_scores_at_or_above_tau_and_adds_the_errors():
    scores = [0.5, 2.0, 3.5, 5.0, 4.2]
    assert select_iteration(scores, 2.0, []) == ([1, 2, 3, 4], 4)
    assert select_iteration(scores, 4.0, []) == ([3, 4], 2)
    assert select_iteration(scores, 5.0, []) == ([3], 1)
    # E is a set union: index 3 already passes, index 0 comes in only as an error
    assert select_iteration(scores, 4.0, [0, 3]) == ([0, 3, 4], 2)
    sizes = [select_iteration(scores, tau, [0])[1] for tau in (2.0, 3.0, 4.0, 5.0)]
    assert sizes == [4, 3, 2, 1]  # the filtered part shrinks as tau rises; E is not counted
    with pytest.raises(ValueError, match="outside D"):
        select_iteration(scores, 2.0, [5])


def test_wrong_indices_grade_the_extracted_answers():
    golds = ["2", "left", "7", "3"]
    responses = ["<think>2 red.</think><answer>2</answer>", "<answer>right</answer>",
                 "so the sum is 7", "<think>3</think><answer></answer>"]
    assert wrong_indices(golds, responses) == [1, 3]
    with pytest.raises(ValueError, match="2 gold answers but 1"):
        wrong_indices(golds[:2], responses[:1])


def test_pool_is_gold_samples_then_rejected_train_responses():
    train = [sample(i) for i in range(4)]
    pairs = [pair(i) for i in range(3)] + [pair(9, split="val")]
    pool = build_pool(train, pairs, noisy_fraction=0.5, seed=0)
    assert [p.gold for p in pool] == [True] * 4 + [False] * 2
    assert [p.response for p in pool[:4]] == [s.response() for s in train]
    noisy = pool[4:]
    assert {p.source for p in noisy} <= {"p0", "p1", "p2"}  # never a val pair
    assert all(p.response.endswith(f"{int(p.source[1:]) + 1}</answer>") for p in noisy)
    assert build_pool(train, pairs, 0.5, seed=0) == pool
    assert len(build_pool(train, [], 0.0, seed=0)) == 4
    with pytest.raises(ValueError, match="asks for 4 noisy responses but the data set has 3"):
        build_pool(train, pairs, noisy_fraction=1.0, seed=0)


def test_scan_subset_is_bounded_and_seeded():
    assert scan_subset(5, None, "a") == [0, 1, 2, 3, 4]
    assert scan_subset(5, 9, "a") == [0, 1, 2, 3, 4]
    picked = scan_subset(50, 10, "a")
    assert len(set(picked)) == 10 and picked == sorted(picked) and picked == scan_subset(50, 10, "a")
    assert picked != scan_subset(50, 10, "b")


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def iterative_run(micro_inputs):
    chain = micro_inputs
    chain.run("align_projector", {"base_model": "base_model", "substitute_llm": "substitute_llm",
                                  "dataset": "dataset"}, {"model": "sft-aligned"})
    chain.run("train_reward_model", {"base_model": "base_model", "dataset": "dataset"},
              {"model": "sft-rm"})
    return chain.run("sft", {"aligned_model": "sft-aligned", "reward_model": "sft-rm",
                             "dataset": "dataset"},
                     {"model": "sft-model", "iterations": "sft-iterations"})


def test_stage_reports_every_iteration(iterative_run, micro_experiment):
    it = micro_experiment.sft.iterative
    metrics = iterative_run.metrics
    sizes = [metrics[f"train_size/iter_{t}"] for t in range(1, it.iterations + 1)]
    assert sizes == sorted(sizes, reverse=True)  # rising tau never lets the filtered part grow
    assert metrics["train_size/iter_0"] == metrics["pool_gold"] + metrics["pool_noisy"]
    assert metrics["pool_noisy"] == round(it.noisy_fraction * metrics["pool_gold"])
    for t in range(1, it.iterations + 1):
        assert 0 <= metrics[f"error_set_size/iter_{t}"] <= it.error_scan_limit
        assert metrics[f"train_total/iter_{t}"] >= metrics[f"train_size/iter_{t}"]
        assert 0 <= metrics[f"val_accuracy/iter_{t}"] <= 1
    assert metrics["val_accuracy"] == metrics[f"val_accuracy/iter_{it.iterations}"]


def test_every_iteration_is_a_version_whose_parent_is_the_previous(iterative_run, micro_inputs,
                                                                    micro_experiment):
    root = micro_inputs.root
    index = json.loads((root / "sft-iterations" / "index.json").read_text())
    assert index["iterations"] == [f"iter_{t}" for t in range(micro_experiment.sft.iterative
                                                               .iterations)]
    mlflow.set_tracking_uri(micro_inputs.uri)
    client = mlflow.MlflowClient()
    chain, version = [], iterative_run.model_version
    while version:
        name, number = version.split("/")
        tags = client.get_model_version(name, number).tags
        chain.append(tags["r1vflow.stage"])
        version = tags["r1vflow.parent"]
    iterations = micro_experiment.sft.iterative.iterations
    assert chain == ["sft"] * (iterations + 1) + ["align_projector", "bootstrap"]
