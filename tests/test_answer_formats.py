"""Final answers in every format the official graders read, for MATH-500, AIME 2024,
OlympiadBench and MathVision: PRM800K's ``# Answer`` section, ``\\boxed{}``, R1's ``<answer>``
tags and "The answer is ...". Every expected extraction and verdict below was worked out by hand
from the published rules (PRM800K grader.py, AIME's integer answer, OlympiadBench's element
pairing, MATH-V's evaluate.py); the comment beside each says why."""

from __future__ import annotations

import pytest

from r1vflow.eval.benchmarks import aime2024, math500, mathvision, olympiadbench
from r1vflow.eval.benchmarks.common import Item, answer_phrase, answer_section, math_answer
from r1vflow.eval.benchmarks.prm800k import grade_answer

T = "<think>Let me work it out.</think>"


def item(answer, **fields) -> Item:
    return Item(id="x", question="q", prompt="q", images=[], answer=answer, fields=fields)


# ------------------------------------------------------------------ MATH-500 (PRM800K grader)
MATH500 = [
    # PRM800K's own format: steps, "# Answer", the answer. \frac12 is braced by the MATH
    # normalisation -> \frac{1}{2}: right.
    ("prm800k_section", "\\frac{1}{2}", "I halve 1.\n\n# Answer\n\n\\frac12", "\\frac12", True),
    # the README's example solution: 320,000 against the gold 40,\!000: wrong
    ("prm800k_section_wrong", "40,\\!000",
     "So the factor is $2^9\\cdot 5^4 = 320,\\!000$.\n\n# Answer\n\n320,000", "320,000", False),
    # 40,000 equals 40,\!000 once "\!" is dropped: right
    ("prm800k_section_thousands", "40,\\!000", "Hence 40,000.\n\n# Answer\n\n40,000", "40,000",
     True),
    # a box is unwrapped; \dfrac -> \frac: right
    ("boxed", "\\frac{1}{2}", "So $x = \\boxed{\\dfrac{1}{2}}$.", "\\dfrac{1}{2}", True),
    # R1's answer tag; 0.5 is normalised to \frac{1}{2}: right
    ("answer_tag", "\\frac{1}{2}", T + "<answer>0.5</answer>", "0.5", True),
    # "The answer is", $ dropped; 2/4 is an unreduced fraction, which PRM800K refuses: wrong
    ("answer_is_unreduced", "\\frac{1}{2}", "Thus the answer is $\\frac{2}{4}$.", "\\frac{2}{4}",
     False),
    # Minerva's "Final Answer: The final answer is $x$. I hope it is correct.": right
    ("final_answer_is", "\\frac{1}{2}",
     "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}",
     True),
    # the # Answer section is the final word, after an earlier box: 5 against 4: wrong
    ("section_after_box", "4", "We get \\boxed{4}. Recheck: 5.\n\n# Answer\n\n5", "5", False),
    # an interval read from "The answer is ... ." with the grader's element rules: right
    ("answer_is_interval", "(-\\infty,3]", "The answer is $(-\\infty, 3]$.", "(-\\infty, 3]",
     True),
]


@pytest.mark.parametrize(("gold", "response", "extracted", "correct"),
                         [c[1:] for c in MATH500], ids=[c[0] for c in MATH500])
def test_math500_every_format(gold, response, extracted, correct):
    verdict = math500.grade(item(gold), response)
    assert verdict.extracted == extracted
    assert verdict.correct is correct
    assert grade_answer(extracted, gold) is correct  # the grader on the extracted answer


def test_math500_answer_section_was_graded_on_the_whole_text_before():
    """The bug of issue 22: the whole response is no answer PRM800K accepts; its section is."""
    response = "I halve 1.\n\n# Answer\n\n\\frac12"
    assert not grade_answer(response, "\\frac{1}{2}")
    assert math500.grade(item("\\frac{1}{2}"), response).correct


# ------------------------------------------------------------------ AIME 2024
AIME = [
    ("prm800k_section", "204", "Adding up gives 204.\n\n# Answer\n\n204", "204", True),
    ("boxed", "204", T + "Hence $\\boxed{204}$.", "204", True),
    ("answer_tag", "204", T + "<answer>240</answer>", "240", False),
    # the last integer of the whole text is 3; of the phrase's answer, 204: right
    ("answer_is", "204", "The answer is 204. I checked 3 cases.", "204", True),
    # leading zeros as AIME answer sheets write them: 033 = 33
    ("section_leading_zero", "33", "# Answer\n\n033", "33", True),
]


@pytest.mark.parametrize(("gold", "response", "extracted", "correct"),
                         [c[1:] for c in AIME], ids=[c[0] for c in AIME])
def test_aime_every_format(gold, response, extracted, correct):
    verdict = aime2024.grade(item(gold), response)
    assert (verdict.extracted, verdict.correct) == (extracted, correct)


# ------------------------------------------------------------------ OlympiadBench
OLYMPIAD = [
    # 0.5 is no string match for $\frac{1}{2}$ and not a plain number there; math-verify
    # finds them equal: right
    ("prm800k_section", ["$\\frac{1}{2}$"], "# Answer\n\n0.5", "0.5", True),
    ("boxed", ["$\\frac{1}{2}$"], T + "So \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", True),
    ("answer_tag", ["$\\frac{1}{2}$"], T + "<answer>1/3</answer>", "1/3", False),
    # two answers in another order pair up element by element: right
    ("answer_is_two", ["3, 5"], "So the answer is $5, 3$.", "5, 3", True),
    # one of the two is missing: wrong
    ("answer_is_one_missing", ["3, 5"], "The answer is 5.", "5", False),
]


@pytest.mark.parametrize(("gold", "response", "extracted", "correct"),
                         [c[1:] for c in OLYMPIAD], ids=[c[0] for c in OLYMPIAD])
def test_olympiadbench_every_format(gold, response, extracted, correct):
    verdict = olympiadbench.grade(item(gold, error=None), response)
    assert (verdict.extracted, verdict.correct) == (extracted, correct)


# ------------------------------------------------------------------ MathVision
OPTIONS = ["1", "2", "3", "4", "5"]
MATHVISION = [
    ("prm800k_section", "C", OPTIONS, "Counting gives 3.\n\n# Answer\n\nC", "C", True),
    # the gold option's text (C is "3") counts as the answer, as MATH-V's is_equal does
    ("boxed_option_text", "C", OPTIONS, T + "\\boxed{3}", "3", True),
    ("answer_tag_letter", "C", OPTIONS, T + "<answer>(B)</answer>", "B", False),
    # MATH-V's phrase list: "the correct answer is"; (C) is the letter C
    ("correct_answer_is", "C", OPTIONS, "The correct answer is (C). It fits.", "C", True),
    ("answer_is_free_form", "12", [], "Measuring, the answer is 12.", "12", True),
    ("answer_should_be", "12", [], "I think the answer should be 13", "13", False),
]


@pytest.mark.parametrize(("gold", "options", "response", "extracted", "correct"),
                         [c[1:] for c in MATHVISION], ids=[c[0] for c in MATHVISION])
def test_mathvision_every_format(gold, options, response, extracted, correct):
    verdict = mathvision.grade(item(gold, options=options), response)
    assert (verdict.extracted, verdict.correct) == (extracted, correct)


# ------------------------------------------------------------------ the extraction rules
@pytest.mark.parametrize(("text", "answer"), [
    ("the answer is 3.5.", "3.5"),  # a decimal point is no sentence end
    ("The answer is: $x^2$", "x^2"),
    ("the answer is 4. Then more text", "4"),
    ("The answer is 7\nand more lines", "7"),
    ("no phrase here", None),
    ("the answer is .", None),  # nothing after the phrase
])
def test_answer_phrase(text, answer):
    assert answer_phrase(text) == answer


def test_answer_section_takes_the_last_heading_line_only():
    assert answer_section("a\n# Answer\n\n1\n\n# Answer\n\n2\n") == "2"
    assert answer_section("see the # Answer heading below") is None  # not a heading line
    assert math_answer("<answer>\\boxed{9}</answer>") == "9"  # tags, then the box
    assert math_answer("<think>The answer is 2.</think>It is 3") == "It is 3"  # no phrase after
