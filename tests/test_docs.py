"""Docs that the code and the docs point at exist, and docs/architecture.md lists every stage and
every package (in its layer drawing, in the order tests/test_layout.py's LAYERS checks, and in its
one-line-per-package table)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where a `docs/<name>.md` mention may sit: folders searched recursively, and single files.
SEARCHED = ("src", "components", "pipelines", "tests", "docs", "images", "manifests",
            "experiments", "scripts", "README.md", "pyproject.toml", "Makefile", "requirements.in")
SKIPPED_SUFFIXES = {".pyc", ".png", ".jpg", ".gz", ".whl", ".so"}
DOC_PATH = re.compile(r"(?<![\w./-])docs/([A-Za-z0-9_-]+)\.md\b")


def _files(root: Path):
    for name in SEARCHED:
        path = root / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if (file.is_file() and "__pycache__" not in file.parts
                        and file.suffix not in SKIPPED_SUFFIXES):
                    yield file


def doc_mentions(root: Path) -> dict[str, list[str]]:
    """`docs/<name>.md` -> the `file:line`s that mention it."""
    found: dict[str, list[str]] = {}
    for file in _files(root):
        try:
            text = file.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in DOC_PATH.finditer(line):
                where = f"{file.relative_to(root)}:{number}"
                found.setdefault(f"docs/{match.group(1)}.md", []).append(where)
    return found


def missing_docs(root: Path) -> dict[str, list[str]]:
    return {doc: where for doc, where in doc_mentions(root).items() if not (root / doc).is_file()}


def test_every_mentioned_doc_exists():
    mentions = doc_mentions(ROOT)
    assert "docs/architecture.md" in mentions and "docs/recipe.md" in mentions
    missing = missing_docs(ROOT)
    assert not missing, f"mentioned but missing (write them or fix the mention): {missing}"


def test_checker_finds_a_missing_doc(tmp_path):
    d = "docs/"  # spelled apart so that this file mentions no missing doc itself
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text(f"see {d}here.md and {d}gone.md\n")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "m.py").write_text(f'"""As ../shared/{d}x.md says."""\n'
                                                   f"# {d}also-gone.md\n")
    assert missing_docs(tmp_path) == {f"{d}gone.md": [f"{d}here.md:1"],
                                      f"{d}also-gone.md": ["src/pkg/m.py:2"]}


def _table_stages() -> dict[str, str]:
    """stage name -> module, read with ast from the Stage(...) calls of the stage table."""
    tree = ast.parse((ROOT / "src/r1vflow/config/stage_table.py").read_text())
    stages = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "Stage" and len(node.args) >= 2):
            name, module = (a.value for a in node.args[:2])
            stages[name] = module
    return stages


def test_architecture_lists_every_stage_of_the_table():
    stages = _table_stages()
    assert "grpo" in stages and "evaluate" in stages
    text = (ROOT / "docs/architecture.md").read_text()
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^\| `([a-z_]+)`(?: \(always\))? \| `([a-z0-9_.]+)` \|", text, re.M)}
    assert rows == stages, ("docs/architecture.md's stage table differs from "
                            "src/r1vflow/config/stage_table.py: regenerate it")


def packages_on_disk(root: Path) -> set[str]:
    """The packages of r1vflow: every folder of src/r1vflow/ with an __init__.py, plus the
    flat packages components/ and pipelines/ (r1vflow.components, r1vflow.pipelines)."""
    found = {p.parent.name for p in (root / "src/r1vflow").glob("*/__init__.py")}
    return found | {name for name in ("components", "pipelines") if (root / name).is_dir()}


def drawn_layers(text: str) -> tuple[tuple[str, ...], ...]:
    """The rows of the first drawing (```) of docs/architecture.md, bottom first: each row the
    `name/` entries it names (a path such as src/r1vflow/x.py in a description is not one)."""
    block = text.split("```", 2)[1]
    rows = [tuple(re.findall(r"(?<![\w/])([a-z]+)/(?=\s|$)", line)) for line in block.splitlines()]
    return tuple(reversed([row for row in rows if row]))


def table_packages(text: str) -> set[str]:
    """Packages with a line in the one-line-per-package table (`| \`r1vflow.<name>\` ...`)."""
    return set(re.findall(r"^\| `r1vflow\.([a-z_]+)`", text, re.M))


def test_architecture_names_every_package():
    from test_layout import LAYERS

    packages = packages_on_disk(ROOT)
    assert {"pref", "generation", "stages", "components"} <= packages
    text = (ROOT / "docs/architecture.md").read_text()
    drawn = drawn_layers(text)
    assert drawn == LAYERS, ("docs/architecture.md's layer drawing (bottom up) differs from "
                             f"LAYERS in tests/test_layout.py: {drawn} != {LAYERS}")
    assert {p for row in drawn for p in row} == packages, (
        "packages missing from (or gone but still in) the layer drawing of docs/architecture.md: "
        f"{packages ^ {p for row in drawn for p in row}}")
    missing = packages - table_packages(text)
    assert not missing, f"packages without a line in docs/architecture.md's table: {missing}"


def test_package_checkers_on_a_small_tree(tmp_path):
    for name in ("config", "storage", "pref"):
        (tmp_path / "src/r1vflow" / name).mkdir(parents=True)
        (tmp_path / "src/r1vflow" / name / "__init__.py").write_text("")
    (tmp_path / "src/r1vflow/notapackage").mkdir()  # no __init__.py
    (tmp_path / "pipelines").mkdir()
    assert packages_on_disk(tmp_path) == {"config", "storage", "pref", "pipelines"}
    text = ("intro naming src/r1vflow/ and `components/`\n```\n top  cli/  bench/   commands\n"
            "      data/ models/   the machinery (src/r1vflow/x.py)\n bottom config/  models\n```\n"
            "| `r1vflow.config` | x |\n| `r1vflow.pref` (`pref/`) | y |\n| r1vflow.data | z |\n")
    assert drawn_layers(text) == (("config",), ("data", "models"), ("cli", "bench"))
    assert table_packages(text) == {"config", "pref"}
