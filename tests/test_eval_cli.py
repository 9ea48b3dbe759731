"""`r1vflow eval score` on small files in each benchmark's published layout (our own rows, real
PNGs), the loaders' view of those layouts, and `r1vflow eval run` with a tiny model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from bench_data import (
    png,
    write_aime,
    write_math500,
    write_mathvision,
    write_mathvista,
    write_mmmu,
    write_olympiad,
)
from PIL import Image
from typer.testing import CliRunner

from r1vflow.cli import app
from r1vflow.eval.benchmarks import BenchmarkDataError, iter_items
from r1vflow.eval.benchmarks.run import read_predictions

RED, GREEN, BLUE = (200, 0, 0), (0, 200, 0), (0, 0, 200)
T = "<think>I look at the figure.</think>"


def _mmmu(root: Path) -> Path:
    write_mmmu(root, "Art_Theory", [
        {"id": "validation_Art_Theory_1", "question": "Which colour is <image 1>? <image 2>",
         "options": ["red", "green", "<image 3>"], "answer": "A", "images": [RED, GREEN, BLUE]},
        {"id": "validation_Art_Theory_2", "question": "How many?", "options": [],
         "answer": "['24/7', '3.429']", "question_type": "open"}])
    write_mmmu(root, "Math", [{"id": "validation_Math_1", "question": "1+1?",
                               "options": ["1", "2"], "answer": "B"}])
    write_mmmu(root, "Math", [{"id": "dev_Math_1", "question": "dev", "options": ["1", "2"],
                               "answer": "A"}], split="dev")
    return root


def test_mmmu_loader_reads_the_published_layout(tmp_path):
    root = _mmmu(tmp_path / "MMMU")
    items = {i.id: i for i in iter_items("mmmu", root)}
    assert sorted(items) == ["validation_Art_Theory_1", "validation_Art_Theory_2",
                             "validation_Math_1"]  # validation by default: no dev item
    first = items["validation_Art_Theory_1"]
    assert first.question == "Which colour is <image 1>? <image 2>"
    assert first.fields["options"] == ["red", "green", "<image 3>"]
    colours = [Image.open(io.BytesIO(b)).convert("RGB").getpixel((0, 0)) for b in first.images]
    assert colours == [RED, GREEN, BLUE]  # image_1..image_3 in order, encoded bytes
    assert "(C) <image 3>\n" in first.prompt
    assert items["validation_Art_Theory_2"].answer == ["24/7", "3.429"]
    assert items["validation_Art_Theory_2"].images == []
    assert [i.id for i in iter_items("mmmu", root, subsets=["Math"])] == ["validation_Math_1"]
    assert [i.id for i in iter_items("mmmu", root, split="dev")] == ["dev_Math_1"]
    assert [i.id for i in iter_items("mmmu", root / "Math")] == ["validation_Math_1"]
    assert len(list(iter_items("mmmu", root, limit=2))) == 2


@pytest.mark.parametrize(("name", "path", "message"), [
    ("mmmu", "nowhere", "no such file or directory"),
    ("mmmu", ".", "no <Subject>/validation-"),
    ("mathvista", ".", "no data/testmini-"),
    ("math500", ".", "no test.jsonl here"),
    ("olympiadbench", ".", r"no OE_\* subset"),
    ("gsm8k", ".", "unknown benchmark 'gsm8k'"),
])
def test_loaders_name_a_wrong_layout(tmp_path, name, path, message):
    with pytest.raises(BenchmarkDataError, match=message):
        list(iter_items(name, tmp_path / path))


def _score(tmp_path: Path, name: str, data: Path, rows: list[dict], *extra: str):
    pred, out = tmp_path / f"{name}.pred.jsonl", tmp_path / f"{name}.json"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["eval", "score", "--benchmark", name, "--data", str(data),
                                      "--predictions", str(pred), "--json", str(out), *extra])
    return result, (json.loads(out.read_text()) if out.exists() else None)


def _verdicts(report: dict) -> dict[str, tuple]:
    return {r["id"]: (r["extracted"], r["correct"]) for r in report["items"]}


def test_score_mmmu(tmp_path):
    result, report = _score(tmp_path, "mmmu", _mmmu(tmp_path / "MMMU"), [
        {"id": "validation_Art_Theory_1", "response": T + "<answer>(A) red</answer>"},
        {"id": "validation_Art_Theory_2", "response": T + "<answer>about 3.43</answer>"},
        {"id": "validation_Math_1", "response": T + "The answer is 1"}])
    assert result.exit_code == 0, result.output
    assert report["benchmark"] == "mmmu" and report["n"] == 3
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert _verdicts(report)["validation_Art_Theory_1"] == ("A", True)
    assert _verdicts(report)["validation_Math_1"] == (None, False)  # "1" is no option letter
    assert report["breakdowns"]["subject"] == {"Art_Theory": {"n": 2, "accuracy": 1.0},
                                               "Math": {"n": 1, "accuracy": 0.0}}
    assert "mmmu: n=3 samples=1 accuracy=0.6667" in result.output


MATHVISTA_ROWS = [
    {"pid": "7", "question": "How many?", "answer": "3", "question_type": "free_form",
     "answer_type": "integer", "task": "figure question answering", "skills": ["arithmetic"]},
    {"pid": "8", "question": "Which?", "choices": ["cube", "ball"], "answer": "ball",
     "question_type": "multi_choice", "answer_type": "text", "task": "visual question answering",
     "skills": ["arithmetic", "logical reasoning"]},
    {"pid": "9", "question": "Ratio?", "answer": "0.67", "precision": 2.0,
     "question_type": "free_form", "answer_type": "float", "task": "math word problem",
     "skills": ["algebraic reasoning"]},
]


def test_score_mathvista(tmp_path):
    data = tmp_path / "MathVista"
    write_mathvista(data, MATHVISTA_ROWS)
    result, report = _score(tmp_path, "mathvista", data, [
        {"id": "7", "response": T + "<answer>3 objects</answer>"},
        {"id": "8", "response": T + "<answer>A</answer>"},
        {"id": "9", "response": T + "\\boxed{0.6667}"}])
    assert result.exit_code == 0, result.output
    assert _verdicts(report) == {"7": ("3", True), "8": ("cube", False), "9": ("0.67", True)}
    assert report["breakdowns"]["skill"]["arithmetic"] == {"n": 2, "accuracy": 0.5}
    assert report["breakdowns"]["task"]["math word problem"]["accuracy"] == 1.0
    # the file itself, or the data folder, work as --data too
    assert _score(tmp_path, "mathvista", data / "data", [{"id": "7", "response": "3"}])[1]["n"] == 1


def test_score_math500_with_math_verify_metric(tmp_path):
    data = tmp_path / "MATH-500"
    write_math500(data, [
        {"problem": "Half?", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 1,
         "unique_id": "test/algebra/1.json"},
        {"problem": "Pairs?", "answer": "\\frac{1}{2}", "subject": "Geometry", "level": 3,
         "unique_id": "test/geometry/2.json"}])
    result, report = _score(tmp_path, "math500", data / "test.jsonl", [
        {"id": "test/algebra/1.json", "response": T + "\\boxed{0.5}"},
        {"id": "test/geometry/2.json", "response": T + "\\boxed{\\frac{2}{4}}"}])
    assert result.exit_code == 0, result.output
    assert report["accuracy"] == 0.5  # PRM800K: 2/4 is an unreduced fraction
    assert report["metrics"] == {"math_verify": 1.0}  # math-verify accepts both
    assert report["breakdowns"]["level"] == {"1": {"n": 1, "accuracy": 1.0},
                                             "3": {"n": 1, "accuracy": 0.0}}


def test_score_mathvision_aime_olympiad(tmp_path):
    write_mathvision(tmp_path / "MathVision", [
        {"id": "1", "question": "<image1> Which?", "options": ["A", "B", "C", "D", "E"],
         "answer": "C", "subject": "arithmetic", "level": 2},
        {"id": "2", "question": "<image1> Length?", "options": [], "answer": "12",
         "subject": "metric geometry - length", "level": 3}])
    result, report = _score(tmp_path, "mathvision", tmp_path / "MathVision", [
        {"id": "1", "response": T + "<answer>(C)</answer>"},
        {"id": "2", "response": T + "\\boxed{12.0}"}])
    assert result.exit_code == 0 and report["accuracy"] == 1.0, result.output
    assert report["breakdowns"]["level"]["2"]["n"] == 1
    write_aime(tmp_path / "aime", [{"id": 60, "problem": "Find n.", "answer": "204"},
                                   {"id": 61, "problem": "Find m.", "answer": "25"}])
    rows = [{"id": 60, "response": T + "\\boxed{204}"}, {"id": 60, "response": T + "\\boxed{20}"},
            {"id": 61, "response": T + "\\boxed{24}"}, {"id": 61, "response": T + "\\boxed{26}"}]
    result, report = _score(tmp_path, "aime2024", tmp_path / "aime", rows)
    assert result.exit_code == 0, result.output
    assert report["accuracy"] == 0.25 and report["pass@2"] == 0.5 and report["samples"] == 2
    write_olympiad(tmp_path / "OB", "OE_MM_maths_en_COMP", [
        {"id": 2231, "question": "Find C.", "final_answer": ["$\\frac{1}{2}$"]}])
    write_olympiad(tmp_path / "OB", "OE_TO_physics_en_COMP", [
        {"id": 900, "question": "g?", "final_answer": ["9.8"], "error": "0.1",
         "subfield": "Mechanics"}])
    write_olympiad(tmp_path / "OB", "TP_TO_maths_en_COMP", [
        {"id": 5, "question": "Prove it.", "final_answer": []}])
    result, report = _score(tmp_path, "olympiadbench", tmp_path / "OB", [
        {"id": 2231, "response": T + "\\boxed{0.5}"}, {"id": 900, "response": T + "\\boxed{9.75}"}])
    assert result.exit_code == 0 and report["accuracy"] == 1.0, result.output
    assert sorted(report["breakdowns"]["subset"]) == ["OE_MM_maths_en_COMP",
                                                      "OE_TO_physics_en_COMP"]
    assert len(next(iter_items("olympiadbench", tmp_path / "OB")).images) == 1


@pytest.mark.parametrize(("pred_id", "data", "message"), [
    ("999", "MathVista", "prediction 1: id '999' is not in the benchmark data"),
    ("7", "missing", "missing: no such file or directory"),
])
def test_score_errors_are_one_line(tmp_path, pred_id, data, message):
    write_mathvista(tmp_path / "MathVista", MATHVISTA_ROWS)
    result, report = _score(tmp_path, "mathvista", tmp_path / data,
                            [{"id": pred_id, "response": "3"}])
    assert result.exit_code == 2 and report is None
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_score_names_a_bad_predictions_line(tmp_path):
    write_mathvista(tmp_path / "MathVista", MATHVISTA_ROWS)
    pred, out = tmp_path / "p.jsonl", tmp_path / "o.json"
    pred.write_text('{"id": "7", "response": "3"}\n{"id": "8", "response": \n')
    result = CliRunner().invoke(app, ["eval", "score", "--benchmark", "mathvista", "--data",
                                      str(tmp_path / "MathVista"), "--predictions", str(pred),
                                      "--json", str(out)])
    assert result.exit_code == 2 and f"{pred}:2: not JSON" in result.output
    assert not out.exists()


def test_eval_run_generates_and_scores_with_a_tiny_model(tmp_path, micro_inputs):
    data = tmp_path / "MathVista"
    write_mathvista(data, [dict(r, question="How many?", query="How many?")
                           for r in MATHVISTA_ROWS])
    pred, out = tmp_path / "p.jsonl", tmp_path / "o.json"
    result = CliRunner().invoke(app, [
        "eval", "run", "--model", str(micro_inputs.root / "base_model"), "--benchmark",
        "mathvista", "--data", str(data), "--samples", "2", "--temperature", "1.0",
        "--limit", "2", "--max-new-tokens", "8", "--predictions", str(pred), "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_predictions(pred)
    assert [(r["id"], r["sample"]) for r in rows] == [("7", 0), ("7", 1), ("8", 0), ("8", 1)]
    assert all(isinstance(r["response"], str) and r["tokens"] <= 8 for r in rows)
    report = json.loads(out.read_text())
    assert report["n"] == 2 and report["samples"] == 2 and "pass@2" in report
    assert report["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 4)


def test_eval_run_refuses_greedy_samples(tmp_path):
    result = CliRunner().invoke(app, ["eval", "run", "--model", str(tmp_path), "--benchmark",
                                      "mmmu", "--data", str(tmp_path), "--samples", "3"])
    assert result.exit_code == 2 and "--temperature > 0" in result.output


def test_png_helper_makes_real_pngs():
    assert png(RED)[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_refuses_a_missing_benchmark_path_before_training(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "run", str(Path(__file__).parents[1] / "pipelines" / "configs" / "smoke.yaml"),
        "--output-dir", str(out), "--set",
        f"evaluate.benchmarks=[{{name: mmmu, path: {tmp_path / 'MMMU'}}}]"])
    assert result.exit_code == 2
    assert f"evaluate.benchmarks: no such file or directory: {tmp_path / 'MMMU'}" in result.output
    assert not out.exists()  # nothing ran


def test_package_paths_find_the_shipped_sample():
    from bench_data import TINY_MATHVISTA

    items = list(iter_items("mathvista", "package:r1vflow.eval.benchmarks/samples/mathvista_tiny"))
    assert [(i.id, i.answer) for i in items] == [(r["pid"], r["answer"]) for r in TINY_MATHVISTA]
    first = Image.open(io.BytesIO(items[0].images[0])).convert("RGB")
    assert first.getpixel((0, 0)) == TINY_MATHVISTA[0]["color"]
    with pytest.raises(BenchmarkDataError, match="no installed package 'r1vflow_nope'"):
        list(iter_items("mathvista", "package:r1vflow_nope/x"))


def test_a_response_with_line_separators_stays_one_prediction(tmp_path):
    """JSON lines end at "\\n" only: a generated U+2028, U+0085 or form feed (written raw) is
    part of its response (str.splitlines cut such a file into broken JSON)."""
    from r1vflow.eval.benchmarks.run import write_jsonl

    path = tmp_path / "p.jsonl"
    rows = [{"id": "1", "response": "a\u2028b\x85c\x0cd"}, {"id": "2", "response": "e"}]
    write_jsonl(path, rows)
    assert read_predictions(path) == rows
