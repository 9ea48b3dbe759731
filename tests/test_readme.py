"""Every command of the README (its first block and the "Using it" block) and the first command
of each doc, run as the text spells it on a fresh checkout (the tracked files, no runs/, no
MLflow store), so docs and code cannot drift apart: each must exit 0 and print no traceback.

Light commands run for real. Long ones run as a dry run: `r1vflow run ...` as `r1vflow validate`
with the same config and `--set`s (the checks a run makes before any task starts), `make X` as
`make -n X`; the rest (servers, benchmarks, commands whose arguments are placeholders such as
RUN_ID or MODEL_URI) with `--help`, which still fails on an unknown command or option. README
commands spell `.venv/bin/...`; a doc's `r1vflow ...` runs with the venv entered (its bin/ on
PATH), as the README says.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import clean_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
PLACEHOLDER = re.compile(r"^(URL|PORT|RUN_ID|MODEL_URI|MODEL_DIR|OUT|DIR|D|CONFIG|FAMILY|BUCKET)$|"
                         r"\.\.\.|"
                         r"PORT|^/data/|^\[|^<")
REAL = {("validate",), ("compile",), ("schema",), ("submit",), ("gitops", "plan")}
RUN_ONLY = {"--output-dir": 1, "--stack": 1, "--runner": 1, "--verbose": 0, "-v": 0}


def readme_commands() -> list[str]:
    """The README's commands: its first fenced block, then the "Using it" block."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    using = text.index("## Using it")
    using_block = next(b for b in blocks if text.index(b) > using)
    lines = [*blocks[0].splitlines(), *using_block.splitlines()]
    out = []
    for line in lines:
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if command and not command.startswith(("#", "r=")):
            out.append(command.replace("$r ", ".venv/bin/r1vflow "))
    return out


def readme_inline_commands() -> list[str]:
    """The commands the README names in its prose (`make lock`, `r1vflow models import`, ...):
    those of this project, without `a|b` alternatives (`pip install` is pip's, not ours)."""
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"`((?:r1vflow|make) [^`\n|]*)`", text)
    return list(dict.fromkeys(c.strip() for c in found))


def _joined(lines: list[str], i: int) -> str:
    command = lines[i].strip()
    while command.endswith("\\"):
        i += 1
        command = command[:-1] + " " + lines[i].strip()
    return re.sub(r"\s+#\s.*$", "", command).strip()


def first_doc_command(doc: Path) -> str | None:
    """A doc's first command of this project (r1vflow, make, the venv's python): in its first
    fenced block that has one, else in its inline code."""
    text = doc.read_text()
    starts = re.compile(r"^(r1vflow |make |\.venv/bin/)")
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if starts.match(line.strip()):
                return _joined(lines, i)
    inline = re.findall(r"`((?:r1vflow|make|\.venv/bin/\S+) [^`\n]*)`", text)
    return inline[0] if inline else None


def as_run(command: str) -> list[str]:
    """What the test runs for `command` (see the module docstring)."""
    words = shlex.split(command)
    if words[0] == "make":
        return ["make", "-n", *words[1:]]
    if not words[0].endswith("r1vflow"):
        return [*words, "--help"]
    sub = tuple(words[1:3])
    if any(PLACEHOLDER.search(w) for w in words[1:]):
        return [*words, "--help"]
    if sub[:1] == ("run",) and len(words) > 2:
        kept, skip = [words[0], "validate"], 0
        for word in words[2:]:
            if skip:
                skip -= 1
            elif word in RUN_ONLY:
                skip = RUN_ONLY[word]
            else:
                kept.append(word)
        return kept
    if sub[:1] in REAL or sub[:2] in REAL:
        return words
    return [*words, "--help"]


def _copy_checkout(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def _own_data(checkout: Path) -> None:
    """What the README's and docs/data.md's own-data commands name: an ordinary
    question/answer/solution JSONL with images (no pairs, no captions)."""
    from PIL import Image

    for folder, name in ((checkout, "my.jsonl"), (checkout / "my_data", "train.jsonl")):
        (folder / "img").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(12):
            Image.new("RGB", (16, 16), (20 * i, 0, 0)).save(folder / "img" / f"{i}.png")
            rows.append({"image": f"img/{i}.png", "question": "How many red squares are there?",
                         "answer": str(i % 4), "solution": f"I count {i % 4}."})
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return _copy_checkout(tmp_path_factory.mktemp("fresh-checkout"))


def _commands() -> list[tuple[str, str]]:
    found = [("README.md", c) for c in readme_commands()]
    found += [("README.md prose", c) for c in readme_inline_commands()
              if c not in readme_commands()]
    for doc in sorted((ROOT / "docs").glob("*.md")):
        command = first_doc_command(doc)
        if command:
            found.append((f"docs/{doc.name}", command))
    return found


@pytest.mark.parametrize(("where", "command"), _commands())
def test_the_command_works_as_written(checkout, where, command):
    argv = as_run(command)
    env = clean_env()
    if where != "README.md":  # prose and docs write `r1vflow`: the venv entered, as the README says
        env["PATH"] = f"{checkout / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if "my.jsonl" in command or "my_data" in command:
        _own_data(checkout)
    result = subprocess.run(argv, cwd=checkout, capture_output=True, text=True, env=env,
                            timeout=600)
    printed = result.stdout + result.stderr
    assert result.returncode == 0, f"{where}: {command}\nran: {argv}\n{printed[-3000:]}"
    assert "Traceback" not in printed, f"{where}: {command}\n{printed[-3000:]}"
    assert not (checkout / "mlflow.db").exists(), f"{where}: {command} made ./mlflow.db"


def test_every_readme_block_command_is_covered():
    """The parser sees the README's commands (a changed layout must not make this test empty)."""
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    assert ".venv/bin/r1vflow validate pipelines/configs/smoke.yaml --set sft.lr=1e-3" in commands
    assert len(commands) >= 20
    plans = {c: as_run(c) for c in commands}
    assert plans[".venv/bin/r1vflow gitops plan --json"][-1] == "--json"  # for real
    assert plans["make demo"] == ["make", "-n", "demo"]
    runs = [p for c, p in plans.items() if " run " in c]
    assert runs and all(p[1] in ("validate", "run") for p in runs)


def test_lineage_without_a_store_creates_none_and_says_how_to_give_one(checkout):
    result = subprocess.run([".venv/bin/r1vflow", "lineage", "smoke-grpo", "1"], cwd=checkout,
                            capture_output=True, text=True, env=clean_env(), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no MLflow store given or found" in result.stderr
    assert "--run-dir" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (checkout / "mlflow.db").exists()


def test_a_hub_checkpoint_without_a_revision_is_refused_before_anything_runs(checkout):
    """qwen2.5-vl-7b pins no revision: validate and run refuse it in one line naming the field,
    and run starts nothing (no output dir)."""
    out = checkout / "runs" / "q"
    for command in (["validate", "pipelines/configs/qwen2.5-vl-7b.yaml"],
                    ["run", "pipelines/configs/qwen2.5-vl-7b.yaml", "--output-dir", str(out)]):
        result = subprocess.run([".venv/bin/r1vflow", *command], cwd=checkout,
                                capture_output=True, text=True, env=clean_env(), timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith("error: model.pretrained.revisions: no pinned commit for "
                                    "the hub id Qwen/Qwen2.5-VL-7B-Instruct")
    assert not out.exists()
