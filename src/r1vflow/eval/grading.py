"""Grading model responses: answer extraction, correctness, format checks, pass@k.

All functions are pure and never raise on malformed model output: junk text grades as wrong,
not as an exception. Numeric and LaTeX equivalence ("11" == "11.0" == "\\frac{22}{2}",
"1/2" == "0.5") is delegated to HuggingFace ``math-verify``; words and multiple-choice letters
are compared case-insensitively as strings.

Response format (R1 chat format, see docs/recipe.md): ``<think>...</think><answer>...</answer>``.
"""

from __future__ import annotations

import re
import threading

__all__ = [
    "extract_answer",
    "format_ok",
    "is_correct",
    "pass_at_k",
    "score_responses",
]

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = r"\boxed{"
# A number not glued to a preceding word ("x2", "v1.5" are not numbers): optional minus sign,
# integer (with optional thousands separators) or decimal, optional "/denominator".
_NUMBER_RE = re.compile(
    r"(?<![\w.])(?:-(?=\d))?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?"
)
_CHOICE_WORD_RE = re.compile(r"\b(yes|no|left|right)\b", re.IGNORECASE)
# "(B)" or "B)" where the letter is not part of a longer word.
_CHOICE_LETTER_RE = re.compile(r"(?:\(([A-Z])\)|(?<![\w(])([A-Z])\))")
_MATH_TIMEOUT_S = 5


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, honouring nested braces."""
    start = text.rfind(_BOXED)
    while start != -1:
        i = start + len(_BOXED)
        depth = 1
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len(_BOXED) : i].strip()
            i += 1
        # Unbalanced: try an earlier \boxed{.
        start = text.rfind(_BOXED, 0, start)
    return None


def _last_number_or_choice(text: str) -> str | None:
    """The last number, choice word or choice letter in ``text``, whichever comes last."""
    candidates: list[tuple[int, str]] = []
    numbers = list(_NUMBER_RE.finditer(text))
    if numbers:
        m = numbers[-1]
        candidates.append((m.start(), m.group(0).replace(",", "")))
    words = list(_CHOICE_WORD_RE.finditer(text))
    if words:
        m = words[-1]
        candidates.append((m.start(), m.group(1).lower()))
    letters = list(_CHOICE_LETTER_RE.finditer(text))
    if letters:
        m = letters[-1]
        candidates.append((m.start(), m.group(1) or m.group(2)))
    if not candidates:
        return None
    return max(candidates)[1]


def extract_answer(text: str) -> str | None:
    """Extract the final answer from a model response.

    Order: stripped content of the last ``<answer>...</answer>`` (None if that is empty);
    else the last ``\\boxed{...}`` (nested braces allowed); else whichever comes last of the
    last number (int, decimal, fraction, negative), the last choice word (yes/no/left/right,
    lower-cased) or the last choice letter written "(B)" or "B)" (returned as "B").
    Returns None when nothing matches.
    """
    if not isinstance(text, str):
        return None
    tagged = _ANSWER_RE.findall(text)
    if tagged:
        content = tagged[-1].strip()
        return content or None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    return _last_number_or_choice(text)


_INTEGER = re.compile(r"[+-]?\d+")


def _normalise(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = s.rstrip(".").strip()
    return s.lower()


def _choice_letter(s: str) -> str | None:
    """Choice letter of "B", "(B)", "B)" or "b" as "b"; anything else -> None."""
    m = re.fullmatch(r"\(?\s*([a-zA-Z])\s*\)?", s.strip())
    return m.group(1).lower() if m else None


def _math_equal(pred: str, gold: str) -> bool:
    # Imported here: math-verify brings sympy (about 0.5 s), which the integer fast path of
    # `is_correct` never needs, and every stage's task process imports this module.
    from math_verify import parse, verify

    # math-verify's timeout uses SIGALRM, which only works in the main thread.
    in_main = threading.current_thread() is threading.main_thread()
    timeout = _MATH_TIMEOUT_S if in_main else None
    gold_parsed = parse(gold, parsing_timeout=timeout)
    pred_parsed = parse(pred, parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def is_correct(pred: str | None, gold: str) -> bool:
    """True if ``pred`` matches ``gold``.

    Case-insensitive exact match after stripping ``$`` and a trailing period; a single-letter
    gold also accepts "(B)"/"B)"; otherwise numeric/LaTeX equivalence via math-verify.
    Never raises: None, empty or unparsable predictions are simply wrong.
    """
    if pred is None or not isinstance(pred, str) or not isinstance(gold, str):
        return False
    p, g = _normalise(pred), _normalise(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    if _INTEGER.fullmatch(p) and _INTEGER.fullmatch(g):
        return int(p) == int(g)  # two plain integers: no need for math-verify (the hot path)
    g_letter = _choice_letter(g)
    if g_letter is not None and len(g) == 1:
        return _choice_letter(p) == g_letter
    try:
        return _math_equal(pred, gold)
    except Exception:  # math-verify / sympy can fail in many ways on junk input
        return False


def format_ok(text: str) -> bool:
    """True if ``text`` is exactly one ``<think>...</think>`` then one non-empty
    ``<answer>...</answer>``, with only whitespace before, between and after."""
    if not isinstance(text, str):
        return False
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        if text.count(tag) != 1:
            return False
    m = re.fullmatch(r"\s*<think>.*?</think>\s*<answer>(.*?)</answer>\s*", text, re.DOTALL)
    return bool(m and m.group(1).strip())


def score_responses(golds: list[str], responses: list[str]) -> dict:
    """Grade ``responses[i]`` against ``golds[i]``.

    Returns {"n", "accuracy", "format_rate", "mean_response_chars", "correct": list[bool],
    "format": list[bool]}. Raises ValueError on length mismatch or empty input.
    """
    if len(golds) != len(responses):
        raise ValueError(
            f"score_responses: {len(golds)} golds but {len(responses)} responses; "
            "pass one response per gold answer"
        )
    if not golds:
        raise ValueError("score_responses: no responses to score")
    correct = [is_correct(extract_answer(r), g) for g, r in zip(golds, responses, strict=True)]
    fmt = [format_ok(r) for r in responses]
    n = len(golds)
    return {
        "n": n,
        "accuracy": sum(correct) / n,
        "format_rate": sum(fmt) / n,
        "mean_response_chars": sum(len(r) for r in responses) / n,
        "correct": correct,
        "format": fmt,
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    n samples per problem, c of them correct, k <= n. Computed as a stable product.
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need n >= 1, 0 <= c <= n, 1 <= k <= n; got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
