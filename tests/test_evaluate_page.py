"""reports/evaluate.html leads with the published benchmarks: models x benchmarks beside the
reports' numbers for R1V / R1V2 and a chart, the flat metric list below; the pipeline's MLflow
parent run gets the same table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench_data import write_mathvista

from r1vflow.config import load_experiment
from r1vflow.config.benchmarks import BenchmarkConfig
from r1vflow.eval.benchmarks import Item, get_benchmark
from r1vflow.eval.benchmarks.suite import LoadedBenchmark, benchmark_rows, table_columns
from r1vflow.reports import ReportData, stage_page

from conftest import MICRO, PRESETS, MicroChain

R1V, R1V2 = "R1V-38B (report)", "R1V2-38B (report)"


def _loaded(name: str, n: int) -> LoadedBenchmark:
    items = [Item(id=str(i), question="q", prompt="q", images=[], answer="1") for i in range(n)]
    return LoadedBenchmark(BenchmarkConfig(name=name, path="x"), get_benchmark(name), items)


def _rows() -> list[dict]:
    metrics = {"bench/mmmu/accuracy/base": 0.5, "bench/mmmu/accuracy/grpo": 0.75,
               "bench/olympiadbench/accuracy/grpo": 0.125}
    return benchmark_rows([_loaded("mmmu", 4), _loaded("olympiadbench", 8)], metrics,
                          ["base", "sft", "grpo"])


def test_rows_and_mlflow_columns_by_hand():
    rows = _rows()
    assert rows[0] == {"benchmark": "mmmu", "split": "validation", "n": 4, "samples": 1,
                       "scores": {"base": 50.0, "sft": None, "grpo": 75.0},
                       "published": {R1V: 69.0, R1V2: 73.6}}
    assert rows[1]["published"] == {R1V: None, R1V2: 62.6}  # the R1V report gives none
    assert table_columns(rows) == {
        "benchmark": ["mmmu", "olympiadbench"], "split": ["validation", "train"], "n": [4, 8],
        "samples": [1, 1], "base": [50.0, None], "sft": [None, None], "grpo": [75.0, 12.5],
        R1V: [69.0, None], R1V2: [73.6, 62.6]}


def _page() -> str:
    metrics = {"accuracy/base": 0.25, "format_rate/base": 1.0, "bench/mmmu/accuracy/base": 0.5,
               "bench/mmmu/accuracy/grpo": 0.75, "bench/olympiadbench/accuracy/grpo": 0.125}
    data = ReportData("evaluate", "micro", metrics, extra={"benchmarks": _rows()})
    return stage_page(data, "# evaluate\n\n| a | b |").html


def test_the_page_leads_with_the_benchmark_table_and_its_chart():
    html = _page()
    first_table = re.search(r"<table[^>]*>", html).group(0)
    assert first_table == '<table id="benchmarks">'
    order = [html.index(s) for s in ('id="benchmarks"', 'alt="benchmarks"', "<h2>Figures</h2>",
                                     "<h2>Metrics</h2>", "<h2>Report (plain text)</h2>")]
    assert order == sorted(order)
    head = re.search(r'<table id="benchmarks"><tr>(.*?)</tr>', html).group(1)
    assert re.findall(r"<th>(.*?)</th>", head) == [
        "benchmark", "split", "n", "samples", "base", "sft", "grpo", R1V, R1V2]
    assert '<td class="value" data-bench="mmmu/grpo">75.0</td>' in html
    assert '<td class="value" data-bench="mmmu/sft">-</td>' in html
    assert '<td class="value">62.6</td>' in html  # R1V2's OlympiadBench, a reference cell


def test_other_stages_and_runs_without_benchmarks_have_no_lead():
    plain = stage_page(ReportData("evaluate", "micro", {"accuracy/base": 0.5})).html
    assert 'id="benchmarks"' not in plain
    sft = stage_page(ReportData("sft", "micro", {"accuracy/sft": 0.5},
                                extra={"benchmarks": _rows()})).html
    assert 'id="benchmarks"' not in sft


def test_the_browser_sees_the_benchmark_table_first(tmp_path):
    from browser import browser, images_loaded

    page = tmp_path / "evaluate.html"
    page.write_text(_page())
    with browser() as driver:
        driver.get(page.as_uri())
        first = driver.execute_script(
            "const t = document.querySelector('table'); const h = document.querySelector('h2');"
            "return [t.id, h.textContent, t.getBoundingClientRect().top];")
        assert first[:2] == ["benchmarks", "Published benchmarks"]
        assert first[2] < 400  # on the first screen
        cells = driver.execute_script(
            "const o = {}; document.querySelectorAll('[data-bench]').forEach("
            "e => { o[e.dataset.bench] = e.textContent; }); return o;")
        assert cells == {"mmmu/base": "50.0", "mmmu/sft": "-", "mmmu/grpo": "75.0",
                         "olympiadbench/base": "-", "olympiadbench/sft": "-",
                         "olympiadbench/grpo": "12.5"}
        chart = [i for i in images_loaded(driver) if i["alt"] == "benchmarks"]
        assert chart and chart[0]["complete"] and chart[0]["width"] > 0


def test_the_evaluate_stage_logs_the_table_on_the_parent_run(tmp_path, micro_inputs,
                                                             monkeypatch):
    import mlflow

    from r1vflow.tracking.runs import PARENT_ENV, start_parent_run

    write_mathvista(tmp_path / "MathVista", [
        {"pid": "1", "question": "How many?", "answer": "1", "question_type": "free_form",
         "answer_type": "integer", "task": "figure question answering", "skills": ["counting"]}])
    exp = load_experiment(PRESETS / "smoke.yaml", [*MICRO, "evaluate.benchmarks=[{name: "
                                                   f"mathvista, path: {tmp_path / 'MathVista'}, "
                                                   "max_new_tokens: 4}]"])
    chain = MicroChain(tmp_path, exp)
    for name in ("base_model", "dataset"):
        (tmp_path / name).symlink_to(Path(micro_inputs.root) / name)
    parent = start_parent_run(chain.uri, "r1vflow-micro", "pipeline", {})
    monkeypatch.setenv(PARENT_ENV, parent)
    outcome = chain.run("evaluate", {"base_model": "base_model", "dataset": "dataset"},
                        {"predictions": "predictions"})
    rows = outcome.report_data["benchmarks"]
    expected = 100 * outcome.metrics["bench/mathvista/accuracy/base"]
    assert [(r["benchmark"], r["scores"]) for r in rows] == [("mathvista", {"base": expected})]
    table = mlflow.load_table("benchmarks.json", run_ids=[parent])
    assert list(table.columns) == ["benchmark", "split", "n", "samples", "base", R1V, R1V2]
    assert table.iloc[0].tolist() == ["mathvista", "testmini", 1, 1, expected, 67.5, 74.0]


@pytest.mark.parametrize("preset", ["r1v2-38b"])
def test_preset_reports_would_show_every_benchmark(preset):
    exp = load_experiment(PRESETS / f"{preset}.yaml")
    rows = benchmark_rows([_loaded(b.name, 1) for b in exp.evaluate.benchmarks], {}, ["base"])
    assert [r["published"][R1V2] for r in rows] == [73.6, 74.0, None, 78.9, 62.6, None]
