"""The answer grader that came with the MATH-500 split (openai/prm800k, ``grading/grader.py``),
re-implemented rule for rule, not copied.

An answer is right when (a) the Hendrycks MATH normalisation of both strings is equal, or (b) a
second normalisation (units, ``\\text{}``, thousands separators, LaTeX turned into plain text)
gives equal strings, or tuple/interval elements pair up and each pair is equal under
``sympy.simplify`` (unreduced fractions and integers must match exactly).

Departure: the official grader turns LaTeX into text with ``pylatexenc``, which r1vflow does not
install; `latex_to_text` below reproduces its output for the macros MATH answers use
(``\\frac{a}{b}`` -> ``a/b`` without parentheses, as pylatexenc writes it; ``\\sqrt``; Greek
letters; ``\\text``; ...). Agreement with the official grader is measured in docs/evaluation.md.
Like the official grader, sympy parses the answer (``parse_expr``), but only strings with at
most two distinct letters that contain no ``^{``/``^(`` are ever parsed.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["grade_answer", "latex_to_text", "mathd_normalize", "sympy_normalize"]


# ------------------------------------------------------------------ Hendrycks MATH normalisation
def _enclosing_text(s: str) -> str:
    m = re.search(r"^\\text\{(?P<text>.+?)\}$", s)
    return m.group("text") if m else s


def _brace_fracs(s: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{b}`` -> ``\frac{1}{b}``; raises on ``\frac`` at
    the end (the caller then keeps the answer as it was)."""
    head, *pieces = s.split("\\frac")
    out = head
    for piece in pieces:
        if piece[0] == "{":
            out += "\\frac" + piece
        elif len(piece) < 2:
            return s
        elif piece[1] != "{":
            out += "\\frac{" + piece[0] + "}{" + piece[1] + "}" + piece[2:]
        else:
            out += "\\frac{" + piece[0] + "}" + piece[1:]
    return out


def _slash_to_frac(s: str) -> str:
    parts = s.split("/")
    if len(parts) == 2 and all(re.fullmatch(r"-?\d+", p) for p in parts):
        a, b = int(parts[0]), int(parts[1])
        if s == f"{a}/{b}":
            return f"\\frac{{{a}}}{{{b}}}"
    return s


def _mathd_strip(s: str) -> str:
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"),
                     ("dfrac", "frac"), ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""),
                     ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    if "\\text{ " in s:  # a unit on the right; more than one is not handled (raises)
        before, _ = s.split("\\text{ ")
        s = before
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 3" -> "3"
        s = sides[1]
    head, *pieces = s.split("\\sqrt")
    s = head + "".join("\\sqrt" + (p if p[0] == "{" else "{" + p[0] + "}" + p[1:])
                       for p in pieces)
    s = _brace_fracs(s.replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_to_frac(s)


def mathd_normalize(answer: str | None) -> str | None:
    """Hendrycks MATH ``normalize_answer``: on any failure the (``\\text``-unwrapped) answer."""
    if answer is None:
        return None
    answer = answer.strip()
    try:
        answer = _enclosing_text(answer).strip()
        return _mathd_strip(answer)
    except (ValueError, IndexError):
        return answer


# ------------------------------------------------------------------ LaTeX -> text
_WORDS = {"pi": "pi", "infty": "inf", "cup": "U", "cdot": "*", "times": "*", "circ": "∘",
          "pm": "±", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "dots": "…", "ldots": "…",
          "cdots": "⋯", "emptyset": "∅", "cap": "∩", "to": "→", "div": "÷", "prime": "'"}
_NAMES = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "max", "min", "det",
          "arcsin", "arccos", "arctan", "gcd", "lim"}
_KEEP_ARG = {"text", "textbf", "textit", "textrm", "mathrm", "mathbf", "mathit", "operatorname",
             "overline", "boldsymbol", "mathbb", "emph", "hat", "vec", "bar"}
_SYMBOLS = {",": " ", ";": " ", ":": " ", " ": " ", "!": "", "{": "{", "}": "}", "%": "%",
            "$": "$", "&": "&", "#": "#", "_": "_", "\\": "\n"}


class _Latex:
    """A tiny recursive reader of the LaTeX that appears in math answers."""

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def arg(self) -> str:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1
        if self.i >= len(self.s):
            return ""
        if self.s[self.i] == "{":
            self.i += 1
            return self.seq(until="}")
        if self.s[self.i] == "\\":
            return self.macro()
        self.i += 1
        return self.s[self.i - 1]

    def macro(self) -> str:
        self.i += 1  # the backslash
        m = re.match(r"[A-Za-z]+", self.s[self.i:])
        if not m:
            char = self.s[self.i:self.i + 1]
            self.i += 1
            return _SYMBOLS.get(char, char)
        name = m.group(0)
        self.i += len(name)
        if name in ("frac", "dfrac", "tfrac"):
            top = self.arg()
            return f"{top}/{self.arg()}"
        if name == "sqrt":
            if self.s[self.i:self.i + 1] == "[":
                self.i = self.s.index("]", self.i) + 1  # the root's degree is dropped
            return f"sqrt({self.arg()})"
        if name in _KEEP_ARG:
            return self.arg()
        if name == "begin":
            return self.environment(self.arg())
        if name in ("mbox", "end"):
            self.arg()
            return ""
        if name in _WORDS or name in _NAMES:
            return _WORDS.get(name, name)
        try:
            case = "CAPITAL" if name[0].isupper() else "SMALL"
            return unicodedata.lookup(f"GREEK {case} LETTER {name.upper()}")
        except KeyError:
            return ""  # left, right, quad, displaystyle, unknown macros: nothing

    def environment(self, env: str) -> str:
        """A matrix as ``[ a b; c d ]`` (rows ``;``, cells by spaces), as pylatexenc writes it;
        other environments as their content."""
        end = self.s.find(f"\\end{{{env}}}", self.i)
        end = len(self.s) if end == -1 else end
        if env == "array":
            self.arg()  # the column spec
        body, self.i = self.s[self.i:end], end + len(f"\\end{{{env}}}")
        if not env.endswith("matrix") and env != "array":
            return _Latex(body).seq()
        rows = [" ".join(_Latex(cell).seq().strip() for cell in row.split("&"))
                for row in body.split("\\\\")]
        return "[ " + "; ".join(rows) + " ]"

    def seq(self, until: str | None = None) -> str:
        out = []
        while self.i < len(self.s):
            char = self.s[self.i]
            if char == until:
                self.i += 1
                break
            if char == "\\":
                out.append(self.macro())
            elif char == "{":
                self.i += 1
                out.append(self.seq(until="}"))
            elif char in "$}":
                self.i += 1
            else:
                out.append(char)
                self.i += 1
        return "".join(out)


def latex_to_text(expr: str) -> str:
    """Plain text of a LaTeX answer, as the official grader feeds it to sympy: ``\\frac{a}{b}``
    -> ``a/b``, ``\\sqrt{x}`` -> ``sqrt(x)``, ``\\pi`` -> ``pi``, ``\\cdot``/``\\times`` -> ``*``,
    ``\\infty`` -> ``inf``, ``\\cup`` -> ``U``, ``\\text{x}`` -> ``x``, a matrix -> ``[ 1; 2 ]``,
    braces dropped."""
    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    return _Latex(expr.replace("\\frac", " \\frac")).seq().strip()


# ------------------------------------------------------------------ the grader's normalisation
_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day",
          "week", "month", "year", "foot", "feet", "inch", "yard")
_GOOD_COMMA = re.compile(r"(\d)(,)(\d\d\d)($|\D)")


def _drop_thousands_commas(expr: str) -> str:
    while True:
        shorter = _GOOD_COMMA.sub(r"\1\3\4", expr)
        if shorter == expr:
            return expr
        expr = shorter


def _int_value(x: str) -> int | None:
    try:
        value = float(_drop_thousands_commas(x))
        return int(value) if abs(value - int(round(value))) <= 1e-7 else None
    except (ValueError, OverflowError):
        return None


def sympy_normalize(expr: str | None) -> str | None:
    """The grader's own normalisation before comparing strings or asking sympy."""
    if expr is None:
        return None
    expr = _enclosing_text(expr)
    for old, new in (("\\%", "%"), ("\\$", "$"), ("$", ""), ("%", ""), (" or ", " , "),
                     (" and ", " , "), ("million", "*10^6"), ("billion", "*10^9"),
                     ("trillion", "*10^12")):
        expr = expr.replace(old, new)
    for unit in _UNITS:
        expr = re.sub(unit + r"(es)?(s)? *(\^[0-9]+)?", "", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr[:1] == "{" and expr[-1:] == "}":
        expr = expr[1:-1]
    expr = re.sub(r",\\! *", "", expr)
    try:
        if abs(float(expr) - round(float(expr))) <= 1e-7:
            expr = str(int(round(float(expr))))
    except (ValueError, OverflowError):
        pass
    if "\\" in expr:
        try:
            expr = latex_to_text(expr)
        except ValueError:  # e.g. an unclosed \sqrt[: keep the text as it is
            pass
        for old, new in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"),
                         ("×", "*")):
            expr = expr.replace(old, new)
    expr = re.sub("- *", "-", expr)
    expr = re.sub("([0-9]) +([0-9])", r"\1+\2", expr)  # mixed numbers: "7 3/4" -> "7+3/4"
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    as_int = _int_value(expr)
    return str(int(float(expr.replace(",", "")))) if as_int is not None else expr


# ------------------------------------------------------------------ comparing
def _elements(expr: str) -> list[str]:
    expr = _drop_thousands_commas(expr)
    if not expr:
        return []
    if (len(expr) > 2 and expr[0] in "()[]" and expr[-1] in "()[]"
            and not any(ch in expr[1:-1] for ch in "()[]")):
        return [e.strip() for e in expr[1:-1].split(",")]
    return [expr]


def _sympy_equal(truth: str, given: str) -> bool:
    expr = f"({truth})-({given})"
    letters = {ch for ch in expr.replace("sqrt", "").replace("frac", "") if ch.isalpha()}
    if (len(letters) > 2 or "^{" in expr or "^(" in expr
            or re.search(r"\^[0-9]+\^|\^[0-9][0-9]+", expr)):
        return False  # unknown text or huge powers: sympy might hang
    import sympy
    from sympy.parsing import sympy_parser

    transforms = (sympy_parser.standard_transformations
                  + (sympy_parser.implicit_multiplication_application,))
    try:
        diff = sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transforms)
        return sympy.simplify(diff) == 0
    except Exception:  # sympy fails in many ways on odd input: not equal
        return False


def _element_equal(truth: str, given: str) -> bool:
    fraction = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")
    if fraction.search(truth) and fraction.search(given):
        return truth == given  # unreduced fractions must not pass through simplify
    if (_int_value(truth) is None) != (_int_value(given) is None):
        return False  # an integer answer needs an integer
    return _sympy_equal(truth, given)


def grade_answer(given: str | None, truth: str) -> bool:
    """PRM800K's verdict on an extracted answer against the gold answer."""
    if given is None:
        return False
    if mathd_normalize(truth) == mathd_normalize(given):
        return True
    truth_n, given_n = sympy_normalize(truth), sympy_normalize(given)
    if truth_n == given_n:
        return True
    if not given_n:
        return False
    truth_parts, given_parts = _elements(truth_n), _elements(given_n)
    if len(truth_parts) > 1 and (truth_n[0] != given_n[0] or truth_n[-1] != given_n[-1]):
        return False
    if len(truth_parts) != len(given_parts):
        return False
    return all(_element_equal(t, g) for t, g in zip(truth_parts, given_parts, strict=True))
