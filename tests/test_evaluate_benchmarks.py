"""The evaluate stage with `evaluate.benchmarks`: every model scored on published-layout files,
`bench/<name>/<metric>/<model>` metrics, predictions written, the report's table next to the
reports' numbers."""

from __future__ import annotations

import json

import pytest
from bench_data import write_math500, write_mathvista

from r1vflow.config import ConfigError, load_experiment
from r1vflow.eval.benchmarks.run import read_predictions

from conftest import MICRO, PRESETS, MicroChain

ROWS = [{"pid": "1", "question": "How many?", "answer": "1", "question_type": "free_form",
         "answer_type": "integer", "task": "figure question answering", "skills": ["arithmetic"]},
        {"pid": "2", "question": "Blue?", "choices": ["yes", "no"], "answer": "no",
         "question_type": "multi_choice", "answer_type": "text",
         "task": "visual question answering", "skills": ["logical reasoning"]}]


def test_evaluate_scores_each_model_on_each_benchmark(tmp_path, micro_inputs):
    write_mathvista(tmp_path / "MathVista", ROWS)
    write_math500(tmp_path / "MATH-500", [
        {"problem": "1+1?", "answer": "2", "subject": "Algebra", "level": 1,
         "unique_id": "test/algebra/1.json"}])
    benches = (f"[{{name: mathvista, path: {tmp_path / 'MathVista'}, max_new_tokens: 8}}, "
               f"{{name: math500, path: {tmp_path / 'MATH-500'}, samples: 2, temperature: 1.0}}]")
    exp = load_experiment(PRESETS / "smoke.yaml", [*MICRO, f"evaluate.benchmarks={benches}"])
    chain = MicroChain(micro_inputs.root, exp)
    out = tmp_path / "predictions"
    outcome = chain.run("evaluate", {"base_model": "base_model", "dataset": "dataset"},
                        {"predictions": str(out)})
    m = outcome.metrics
    for name, n in (("mathvista", 2.0), ("math500", 1.0)):
        rows = read_predictions(out / name / "base.predictions.jsonl")
        assert m[f"bench/{name}/n/base"] == n
        assert m[f"bench/{name}/accuracy/base"] == pytest.approx(
            sum(r["correct"] for r in rows) / len(rows))  # the metric is the file's mean
        assert all("response" in r and "extracted" in r for r in rows)
    assert len(read_predictions(out / "math500" / "base.predictions.jsonl")) == 2
    assert "bench/math500/pass@2/base" in m and "bench/math500/math_verify/base" in m
    assert json.loads((out / "benchmarks.json").read_text()) == ["mathvista", "math500"]
    summary = json.loads((out / "mathvista" / "base.json").read_text())
    assert summary["breakdowns"]["task"]["visual question answering"]["n"] == 1
    report = outcome.report
    assert "| mathvista | testmini | 2 | 1 |" in report and "| 67.5 | 74.0 |" in report
    assert "| math500 | test | 1 | 2 |" in report and "| 94.0 | - |" in report
    assert "| bench |" not in report  # bench metrics stay out of the data-set table
    task = {r["id"]: r["correct"]
            for r in read_predictions(out / "mathvista" / "base.predictions.jsonl")}
    assert (f"- mathvista by task (base): figure question answering {100 * task['1']:.1f} (n=1), "
            f"visual question answering {100 * task['2']:.1f} (n=1)") in report
    assert "- math500 by level (base): 1 " in report


@pytest.mark.parametrize(("bench", "message"), [
    ("{name: mmmu, path: x, samples: 3}", "needs temperature > 0"),
    ("{name: mmmu, path: x, judge_base_url: 'https://h/v1', judge_model: m}", "mathvista only"),
    ("{name: mathvista, path: x, judge_base_url: 'https://u:secret@h/v1', judge_model: m}",
     "must not contain credentials"),
    ("{name: gsm8k, path: x}", "mmmu"),
])
def test_benchmark_config_errors_say_what_to_do(bench, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(PRESETS / "smoke.yaml", [f"evaluate.benchmarks=[{bench}]"])


def test_each_benchmark_at_most_once():
    with pytest.raises(ConfigError, match="names each benchmark once"):
        load_experiment(PRESETS / "smoke.yaml",
                        ["evaluate.benchmarks=[{name: mmmu, path: a}, {name: mmmu, path: b}]"])
