"""Benchmark scorers pinned to hand-checked verdicts, the R1 answer span, and pass@k aggregation.

tests/data/agreement/{mmmu,mathvista,math500}.jsonl hold our own realistic responses with
verdicts checked by hand against each benchmark's published rules; the same files were scored
with the official code (MMMU eval_utils, MathVista calculate_score/extract_answer, PRM800K
grader) outside this repository: docs/evaluation.md gives the item-by-item agreement.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from r1vflow.eval.benchmarks import (
    BENCHMARKS,
    aime2024,
    get_benchmark,
    math500,
    mathvision,
    mathvista,
    mmmu,
    olympiadbench,
)
from r1vflow.eval.benchmarks.common import Item, answer_span, python_list
from r1vflow.eval.benchmarks.prm800k import grade_answer, latex_to_text
from r1vflow.eval.benchmarks.score import score_predictions

AGREEMENT = Path(__file__).parent / "data" / "agreement"


def _cases(name: str) -> list[dict]:
    lines = (AGREEMENT / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def item(answer, **fields) -> Item:
    return Item(id="x", question="q", prompt="q", images=[], answer=answer, fields=fields)


# ------------------------------------------------------------------ the R1 answer span
@pytest.mark.parametrize(("response", "span"), [
    ("<think>a</think><answer> 4 </answer>", "4"),
    ("<answer>1</answer> later <answer>2</answer>", "2"),  # the last answer block
    ("<think>maybe 3</think>\nSo 5", "So 5"),  # after </think>
    ("just 6", "just 6"),  # the whole text
    ("<think>x</think>so \\boxed{1} or \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),  # last box
    ("<think>\\boxed{9}</think><answer>7</answer>", "7"),  # boxes in think don't count
    ("<answer>\\boxed{x^{2}} m</answer>", "x^{2}"),
    ("<think>unclosed \\boxed{2", "<think>unclosed \\boxed{2"),
])
def test_answer_span(response, span):
    assert answer_span(response) == span


# ------------------------------------------------------------------ hand-checked case files
@pytest.mark.parametrize("case", _cases("mmmu"), ids=lambda c: c["case"])
def test_mmmu_hand_verdicts(case):
    answer = python_list(case["answer"]) if case["answer"].startswith("[") else case["answer"]
    got = mmmu.grade(item(answer, options=case["options"],
                          question_type=case["question_type"]), case["response"])
    assert got.correct is case["correct"]


@pytest.mark.parametrize("case", _cases("mathvista"), ids=lambda c: c["case"])
def test_mathvista_hand_verdicts(case):
    fields = {k: case[k] for k in ("question_type", "answer_type", "choices", "precision")}
    got = mathvista.grade(item(case["answer"], query="q", **fields), case["response"])
    assert got.correct is case["correct"]


@pytest.mark.parametrize("case", _cases("math500"), ids=lambda c: c["case"])
def test_math500_hand_verdicts(case):
    assert grade_answer(answer_span(case["response"]), case["answer"]) is case["correct"]


def test_case_files_are_large_and_mixed():
    for name in ("mmmu", "mathvista", "math500"):
        verdicts = [c["correct"] for c in _cases(name)]
        assert len(verdicts) >= 50 and 15 <= sum(verdicts) <= len(verdicts) - 15, name


# ------------------------------------------------------------------ tricky verdicts, explained
def test_mmmu_option_text_and_lenient_open_rule():
    mc = item("B", options=["1", "10", "100"], question_type="multiple-choice")
    # over five words, no letter: option texts are searched; "1" and "10" start at the same
    # place, the tie goes to the first option, A (the official argmax)
    assert mmmu.grade(mc, "<answer>I computed the final count to be 10 units</answer>"
                      ).extracted == "A"
    assert mmmu.grade(mc, "<answer>10</answer>").extracted is None  # short: no text search
    open_q = item("Transformation", options=[], question_type="open")
    assert mmmu.grade(open_q, "It is called transformation.").correct  # gold inside the tail
    assert mmmu.parse_open("so the answer is 2,000 dollars") == ["2,000 dollars", 2000.0, 0.0]


def test_mmmu_rounds_numbers_to_two_decimals():
    q = item("1.06", options=[], question_type="open")
    assert mmmu.grade(q, "<answer>1.0649</answer>").correct  # 1.06 after rounding
    assert not mmmu.grade(q, "<answer>1.055</answer>").correct  # 1.055 rounds to 1.05 in binary


def test_mathvista_precision_units_and_separators():
    fields = {"question_type": "free_form", "choices": None, "query": "q"}
    money = item("1234.56", answer_type="float", precision=2.0, **fields)
    assert mathvista.grade(money, "<answer>$1,234.558 dollars</answer>").correct
    count = item("12", answer_type="integer", precision=None, **fields)
    assert mathvista.grade(count, "<answer>12.9 cm</answer>").extracted == "12"  # int(float)
    pets = item("a dog", question_type="multi_choice", answer_type="text", precision=None,
                choices=["a cat", "a dog", "a bird"], query="q")
    assert mathvista.grade(pets, "<answer>dog</answer>").extracted == "a dog"  # edit distance
    assert mathvista.edit_distance("kitten", "sitting") == 3


def test_mathvista_judge_needs_openai_package_and_key(monkeypatch):
    from r1vflow.eval.benchmarks.judge import JudgeConfig

    judge = JudgeConfig("http://127.0.0.1:9/v1", "gpt-4o", "R1VFLOW_JUDGE_TEST_KEY")
    bench = get_benchmark("mathvista", judge)
    q = item("12", question_type="free_form", answer_type="integer", choices=None,
             precision=None, query="q")
    assert bench.grade(q, "<answer>12</answer>").correct  # quick rules: no judge call
    monkeypatch.delenv("R1VFLOW_JUDGE_TEST_KEY", raising=False)
    with pytest.raises(RuntimeError, match=r"\$R1VFLOW_JUDGE_TEST_KEY, which is not set"):
        bench.grade(q, "<answer>twelve</answer>")
    monkeypatch.setenv("R1VFLOW_JUDGE_TEST_KEY", "k")
    if importlib.util.find_spec("openai") is None:  # not among r1vflow's dependencies
        with pytest.raises(RuntimeError, match="pip install openai"):
            bench.grade(q, "<answer>twelve</answer>")
    with pytest.raises(ValueError, match="mathvista only"):
        get_benchmark("mmmu", judge)


@pytest.mark.parametrize(("given", "gold", "correct"), [
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),  # similar LaTeX, equal value
    ("\\frac{2}{4}", "\\frac{1}{2}", False),  # unreduced fractions never pass
    ("10^6", "1000000", False),  # integer golds need an integer
    ("3\\sqrt13", "3\\sqrt{13}", False),  # \sqrt13 is sqrt(1) then 3
    ("\\$5.40", "5.4", True),
    ("(x+1)^2", "x^2+2x+1", True),
])
def test_prm800k_grader(given, gold, correct):
    assert grade_answer(given, gold) is correct


def test_latex_to_text_matches_the_official_latex_step():
    # what PRM800K's _parse_latex (pylatexenc) returned for these inputs, run outside the repo
    assert latex_to_text("\\frac{a+b}{2}") == "a+b/2"  # no parentheses, as pylatexenc writes
    assert latex_to_text("\\left( 3, \\frac{\\pi}{2} \\right)") == "( 3,  pi/2 )"
    assert latex_to_text("3\\sqrt{3}") == "3sqrt(3)"
    assert latex_to_text("\\text{east}") == "east"
    assert latex_to_text("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}") == "[ 1 2; 3 4 ]"


def test_math500_reports_math_verify_next_to_prm800k():
    q = item("\\frac{1}{2}")
    verdict = math500.grade(q, "<think>.</think>\\boxed{0.5}")
    assert verdict.correct and verdict.extra == {"math_verify": True}
    verdict = math500.grade(q, "<think>.</think>\\boxed{\\frac{2}{4}}")
    assert not verdict.correct and verdict.extra == {"math_verify": True}  # they differ here


def test_aime_mathvision_olympiad_rules():
    assert aime2024.grade(item("33"), "\\boxed{033}").correct
    assert aime2024.grade(item("1024"), "<answer>1,024</answer>").correct
    assert not aime2024.grade(item("33"), "<answer>thirty-three</answer>").correct
    mc = item("B", options=["1", "2", "3", "4", "5"])
    assert mathvision.grade(mc, "<answer>(B)</answer>").correct
    assert mathvision.grade(mc, "<answer>2</answer>").correct  # the gold option's text
    assert not mathvision.grade(mc, "<answer>C.</answer>").correct
    assert mathvision.grade(item("\\frac{1}{2}", options=[]), "\\boxed{0.5}").correct
    two = Item(id="x", question="q", prompt="q", images=[], answer=["$3$, $-1$"],
               fields={"error": None})
    assert olympiadbench.grade(two, "\\boxed{-1, 3}").correct  # multiple answers pair up
    assert not olympiadbench.grade(two, "\\boxed{3}").correct
    tol = Item(id="x", question="q", prompt="q", images=[], answer=["9.8"], fields={"error": "0.1"})
    assert olympiadbench.grade(tol, "\\boxed{9.72}").correct
    assert not olympiadbench.grade(tol, "\\boxed{9.6}").correct
    assert olympiadbench.split_top_level("a, (1,2), b") == ["a", "(1,2)", "b"]


# ------------------------------------------------------------------ aggregation
def test_pass_at_k_and_breakdowns_by_hand():
    items = {i: Item(id=i, question="q", prompt="q", images=[], answer="5",
                     categories={"level": [lvl], "skill": skills})
             for i, lvl, skills in (("a", "1", ["x", "y"]), ("b", "2", ["x"]))}
    rows = ([{"id": "a", "response": r} for r in ("\\boxed{5}", "\\boxed{4}", "\\boxed{5}")]
            + [{"id": "b", "response": r} for r in ("\\boxed{1}", "\\boxed{2}", "\\boxed{5}")])
    report = score_predictions("aime2024", BENCHMARKS["aime2024"], items, rows)
    assert report["n"] == 2 and report["samples"] == 3
    assert report["accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert report["pass@3"] == 1.0  # every item has a right response among its three
    assert report["breakdowns"]["level"] == {"1": {"n": 1, "accuracy": pytest.approx(2 / 3)},
                                             "2": {"n": 1, "accuracy": pytest.approx(1 / 3)}}
    assert report["breakdowns"]["skill"]["x"]["n"] == 2  # an item counts under each skill
    assert [r["sample"] for r in report["items"]] == [0, 1, 2, 0, 1, 2]
    assert report["items"][1]["response"] == "\\boxed{4}"  # the raw response is kept


def test_unknown_prediction_id_is_one_clear_error():
    from r1vflow.eval.benchmarks import BenchmarkDataError

    items = {"a": item("5")}
    with pytest.raises(BenchmarkDataError, match="id 'zz' is not in the benchmark data"):
        score_predictions("aime2024", BENCHMARKS["aime2024"], items,
                          [{"id": "zz", "response": "5"}])


# ------------------------------------------------------------------ MMMU number patterns
# MMMU's extract_numbers patterns as published (mmmu/utils/eval_utils.py), the reference ours
# must agree with.
OFFICIAL_NUMBER_PATTERNS = (r"-?\b\d{1,3}(?:,\d{3})+\b", r"-?\d+(?:\.\d+)?[eE][+-]?\d+",
                            r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def test_mmmu_number_patterns_find_what_the_official_ones_find_in_linear_time():
    """Issue 23 #7: the official patterns retry from every digit of a run that leads to no
    match (80,000 digits took 125 s); ours start at a run's first digit only. Same findall on
    every string of 30,000 random ones over digits, separators, signs, exponents and letters."""
    import random
    import re
    import time

    ours = (mmmu._NUM_COMMAS, mmmu._NUM_SCI, mmmu._NUM_SIMPLE)
    official = [re.compile(p) for p in OFFICIAL_NUMBER_PATTERNS]
    rng = random.Random(0)
    alphabet = "0123456789" * 3 + ".,-+eE x"
    for _ in range(30_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        for mine, theirs in zip(ours, official, strict=True):
            assert mine.findall(text) == theirs.findall(text), (text, theirs.pattern)
    # by hand: commas -2,000; scientific 1.5e3; simple 1 (the 1.5 of 1.5e3 is refused, its "1"
    # is not), 3 (after "e"), 000 (after the comma), .5
    assert mmmu.parse_open("so 1.5e3 or -2,000 and .5x") == [
        "1.5e3 or -2,000 and .5x", -2000.0, 1500.0, 1.0, 3.0, 0.0, 0.5]
    start = time.perf_counter()
    for hostile in ("7" * 80_000, "7" * 80_000 + "x", "the answer is 1.5" + "0" * 80_000 + "e"):
        mmmu.parse_open(hostile)
    assert time.perf_counter() - start < 3  # official patterns: over 100 s each
