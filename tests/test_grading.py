"""Grading: answer extraction fallbacks, correctness, format, scoring, pass@k."""

import math

import pytest

from r1vflow.eval.grading import extract_answer, format_ok, is_correct, pass_at_k, score_responses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>2+2</think><answer> 4 </answer>", "4"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),  # last tag wins
        ("<think>so 7</think><answer>  </answer>", None),  # empty answer is no answer
        (r"so the result is \boxed{\frac{1}{2}} and 9", r"\frac{1}{2}"),  # boxed beats numbers
        (r"\boxed{1} then \boxed{{a}+{b}}", "{a}+{b}"),  # last boxed, nested braces
        ("the answer is 3/4.", "3/4"),
        ("x = 5 so -2.5 remains", "-2.5"),
        ("we count 10,000 apples", "10000"),
        ("after step-3", "3"),
        ("3 cubes, so Yes", "yes"),
        ("is it left? no, it is RIGHT", "right"),
        ("yes, there are 4", "4"),  # whichever comes last
        ("I pick (B)", "B"),
        ("answer: C) the red one", "C"),
        ("totally junk", None),
        ("v2 x2", None),  # digits glued to words are not numbers
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_non_string_is_none():
    assert extract_answer(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("11", "11.0"),
        ("11.0", "11"),
        (r"\frac{22}{2}", "11"),
        ("1/2", "0.5"),
        ("0.5", "1/2"),
        ("-3", "-3.0"),
        ("007", "7"),  # plain integers compare by value
        ("+4", "4"),
        ("$7$", "7"),
        ("Yes.", "yes"),
        ("LEFT", "left"),
        ("(B)", "B"),
        ("b)", "B"),
    ],
)
def test_is_correct_equivalent(pred, gold):
    assert is_correct(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        (None, "3"),
        ("", "3"),
        ("4", "3"),
        ("-4", "4"),
        ("0.49", "0.5"),
        ("no", "yes"),
        ("C", "B"),
        ("(C)", "B"),
        ("left", "right"),
        ("}{\\frac{", "3"),  # junk never raises
        ("\\sqrt{", "\\sqrt{2}"),
        ("3", ""),
    ],
)
def test_is_correct_wrong(pred, gold):
    assert not is_correct(pred, gold)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<think>a</think><answer>b</answer>", True),
        ("  <think>\nreason\n</think>\n<answer>42</answer>\n", True),
        ("<think></think><answer>b</answer>", True),
        ("<think>a</think><answer> </answer>", False),  # empty answer
        ("<answer>b</answer><think>a</think>", False),  # wrong order
        ("hi <think>a</think><answer>b</answer>", False),  # text outside
        ("<think>a</think>x<answer>b</answer>", False),  # text between
        ("<think>a</think><answer>b</answer><answer>c</answer>", False),  # two answers
        ("<think>a<think>b</think><answer>c</answer>", False),  # two thinks
        ("<answer>b</answer>", False),
        ("b", False),
    ],
)
def test_format_ok(text, ok):
    assert format_ok(text) is ok


def test_score_responses():
    golds = ["4", "yes", "B"]
    responses = [
        "<think>2+2</think><answer>4.0</answer>",  # correct, formatted
        "I believe no",  # wrong, unformatted
        "<think>x</think> (B)",  # correct via fallback, unformatted
    ]
    out = score_responses(golds, responses)
    assert out["correct"] == [True, False, True]
    assert out["format"] == [True, False, False]
    assert out["n"] == 3
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["format_rate"] == pytest.approx(1 / 3)
    assert out["mean_response_chars"] == pytest.approx((38 + 12 + 20) / 3)


def test_score_responses_rejects_bad_input():
    with pytest.raises(ValueError, match="2 golds but 1 responses"):
        score_responses(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="no responses"):
        score_responses([], [])


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n - c < k: every draw of k contains a correct one
    assert pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - math.comb(7, 4) / math.comb(10, 4))


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)])
def test_pass_at_k_rejects_bad_args(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)
