"""An ordinary question/answer(/solution) file runs with the README's one switch
(`data.source.kind=files`): the stages that need pairs, captions or solutions adapt, each
change said in one line (r1vflow.data.needs.adapt), unless the experiment set it itself."""

from r1vflow.config import load_experiment
from r1vflow.data.needs import adapt, problems

from conftest import PRESETS

FILES = ["data.source.kind=files", "data.source.path=/data/my.jsonl"]


def test_a_question_answer_file_gets_derived_pairs_cot_alignment_and_answer_targets():
    exp = load_experiment(PRESETS / "smoke.yaml", FILES)
    columns = {"image", "question", "answer"}
    assert problems(exp, columns)  # as the preset stands: pairs, captions, solutions missing
    notes = adapt(exp, columns)
    assert len(notes) == 3
    assert notes[0].startswith("data.source: no chosen/rejected columns, so derive_pairs=true")
    assert notes[1].startswith("data.source: no solution column, so answer_only_sft=true")
    assert notes[2] == ("align_projector: no caption column, so its captions step(s) "
                        "(captions) train on data: cot")
    assert exp.data.source.derive_pairs and exp.data.source.answer_only_sft
    assert {s.data for s in exp.align_projector.substages} == {"cot"}
    assert problems(exp, columns) == []
    assert adapt(exp, columns) == []  # nothing left to change


def test_a_solution_column_keeps_reasoning_targets():
    exp = load_experiment(PRESETS / "smoke.yaml", FILES)
    notes = adapt(exp, {"image", "question", "answer", "solution", "caption"})
    assert notes == [notes[0]] and "derive_pairs=true" in notes[0]
    assert not exp.data.source.answer_only_sft
    assert "captions" in {s.data for s in exp.align_projector.substages}


def test_what_the_experiment_sets_itself_is_left_alone():
    exp = load_experiment(PRESETS / "smoke.yaml", [*FILES, "data.source.derive_pairs=false"])
    notes = adapt(exp, {"image", "question", "answer", "solution", "caption"})
    assert notes == [] and not exp.data.source.derive_pairs
    assert any("no chosen column" in p for p in problems(exp, {"image", "question", "answer",
                                                                "solution", "caption"}))
