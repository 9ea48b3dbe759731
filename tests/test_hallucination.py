"""Hallucination on the synthetic families: gold responses never, misread scenes always."""

import pytest

from r1vflow.data.io import load_preferences, load_split
from r1vflow.data.schema import Sample
from r1vflow.data.synth import synthesize
from r1vflow.eval.hallucination import hallucinated, hallucination_rate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("halluc")
    synthesize(out, families=["counting", "digit_arithmetic", "comparison"], num_train=120,
               num_val=4, num_test=4, image_size=32, seed=3, progress=False)
    return out


def test_gold_responses_are_clean_and_misreadings_are_caught(dataset):
    train = load_split(dataset, "train")
    assert hallucination_rate(train, [s.response() for s in train]) == 0.0
    by_key = {(s.question, s.image): s for s in train}
    miscounts = [(p, by_key[(p.question, p.image)]) for p in load_preferences(dataset)
                 if p.kind == "miscount" and (p.question, p.image) in by_key]
    assert len(miscounts) >= 20
    assert all(hallucinated(p.rejected, s) for p, s in miscounts)
    # a wrong final answer with faithful reasoning names nothing that is not there
    wrong = [(p, by_key[(p.question, p.image)]) for p in load_preferences(dataset)
             if p.kind == "wrong_answer" and (p.question, p.image) in by_key]
    assert not any(hallucinated(p.rejected, s) for p, s in wrong)


def _sample(family, objects, **meta):
    return Sample(id="s", family=family, split="test", image="i.png", question="q?",
                  reasoning="r", answer="1", meta={"objects": objects, **meta})


def test_each_kind_of_claim():
    scene = [{"colour": "red", "shape": "circle", "side": "left"},
             {"colour": "blue", "shape": "square", "side": "right"}]
    counting = _sample("counting", scene, colour="red", shape=None)
    assert hallucinated("<think>red circle top-left. 1 red object.</think>", counting) is False
    assert hallucinated("<think>green circle top-left.</think>", counting) is True
    assert hallucinated("<think>red circle top-left. 2 red objects.</think>", counting) is True
    comparison = _sample("comparison", scene, colours=["red", "blue"])
    assert hallucinated("1 on the left. 1 on the right. 1 red.", comparison) is False
    assert hallucinated("2 on the left.", comparison) is True
    assert hallucinated("red: circle. 3 red.", comparison) is True
    digits = _sample("digit_arithmetic", [{"digit": 4, "side": "left"},
                                          {"digit": 7, "side": "right"}])
    assert hallucinated("left digit is 4. right digit is 7.", digits) is False
    assert hallucinated("left digit is 4. right digit is 1.", digits) is True
    assert hallucinated("anything", _sample("counting", [])) is None
    assert hallucination_rate([counting, digits], ["green circle", "left digit is 4."]) == 0.5
