"""Benchmarks from the hub at a pinned revision: refused without one at validation, downloaded
once with the HF_TOKEN of the Secret (only the configured split's files), cached on the machine
and in the object store, and the cluster presets' benchmark sources."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_data import write_mathvista

from r1vflow.config import ConfigError, load_experiment
from r1vflow.eval.benchmarks import BenchmarkDataError, iter_items
from r1vflow.eval.benchmarks.hub import PLACEHOLDER_REVISION, fetch_benchmark
from r1vflow.eval.benchmarks.suite import missing_paths
from r1vflow.storage import FileStore

from conftest import PRESETS

COMMIT = "98e6ac0cb9b7b2cd2c991b85a50762edc4aedc68"
ROWS = [{"pid": "1", "question": "How many?", "answer": "1", "question_type": "free_form",
         "answer_type": "integer", "task": "figure question answering", "skills": ["counting"]}]


@pytest.mark.parametrize(("bench", "message"), [
    ('{name: mmmu, path: "hub:MMMU/MMMU"}',
     r"evaluate.benchmarks.0: benchmark mmmu: hub:MMMU/MMMU needs revision"),
    ('{name: mmmu, path: "hub:MMMU/MMMU", revision: main}', "no commit"),
    ("{name: mmmu, path: /data/MMMU, revision: " + COMMIT + "}", "drop revision"),
    ('{name: mmmu, path: "hub:MMMU", revision: ' + COMMIT + "}", "no hub:<owner>/<name> path"),
])
def test_hub_source_needs_a_commit(bench, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(PRESETS / "smoke.yaml", [f"evaluate.benchmarks=[{bench}]"])


@pytest.fixture
def hub(monkeypatch):
    """A fake `snapshot_download` that writes a MathVista layout and records its calls."""
    import huggingface_hub

    calls = []

    def download(**kwargs):
        calls.append(kwargs)
        write_mathvista(Path(kwargs["local_dir"]), ROWS)
        return str(kwargs["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return calls


def test_a_hub_benchmark_downloads_its_split_once(hub, tmp_path):
    args = ("mathvista", "hub:AI4Math/MathVista", COMMIT, "testmini", tmp_path / "cache")
    first = fetch_benchmark(*args)
    assert hub == [{"repo_id": "AI4Math/MathVista", "repo_type": "dataset", "revision": COMMIT,
                    "allow_patterns": ["data/testmini-*.parquet"], "local_dir": first,
                    "token": "hf_test_token"}]
    assert [i.id for i in iter_items("mathvista", first)] == ["1"]
    assert fetch_benchmark(*args) == first and len(hub) == 1  # the second run: no request


def test_the_object_store_serves_another_machine(hub, tmp_path):
    store = FileStore(tmp_path / "store", show_progress=False)
    args = ("mathvista", "hub:AI4Math/MathVista", COMMIT, "testmini")
    fetch_benchmark(*args, tmp_path / "machine-a", store, "artifacts")
    other = fetch_benchmark(*args, tmp_path / "machine-b", store, "artifacts")
    assert len(hub) == 1  # machine b read the stored copy, not the hub
    assert [i.answer for i in iter_items("mathvista", other)] == ["1"]


@pytest.mark.parametrize("revision", [None, PLACEHOLDER_REVISION])
def test_fetch_refuses_a_missing_or_placeholder_revision(hub, tmp_path, revision):
    with pytest.raises(BenchmarkDataError, match="needs revision"):
        fetch_benchmark("mmmu", "hub:MMMU/MMMU", revision, "validation", tmp_path)
    assert hub == []


@pytest.mark.parametrize("preset", ["r1v-38b", "r1v2-38b", "qwen2.5-vl-7b"])
def test_cluster_presets_score_the_six_benchmarks_from_the_hub(preset):
    exp = load_experiment(PRESETS / f"{preset}.yaml")
    benches = {b.name: b for b in exp.evaluate.benchmarks}
    assert sorted(benches) == sorted(["mmmu", "mathvista", "math500", "aime2024",
                                      "olympiadbench", "mathvision"])
    assert benches["mmmu"].split == "validation" and benches["mathvista"].split == "testmini"
    assert all(b.path.startswith("hub:") and b.revision and b.samples == 5
               and b.temperature > 0 for b in benches.values())
    # the placeholder is named before a run (no commit of MathVision could be looked up)
    assert [m.split()[0] for m in missing_paths(exp.evaluate.benchmarks)] == [
        "hub:MathLLMs/MathVision"]
    assert benches["mathvista"].revision == "2b6ad69445fbb5695c9b165475e8decdbeb97747"
    assert benches["olympiadbench"].revision == "91184b52131e7fc9455fef848035173aea8cc01a"


def test_the_hub_token_reaches_import_and_a_hub_evaluate_only():
    import yaml

    from r1vflow.pipelines.compile import ir_text

    exp = load_experiment(PRESETS / "r1v2-38b.yaml", ["cluster.hf_secret=hf-login"])
    executors = list(yaml.safe_load_all(ir_text(exp)))[1]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    with_token = sorted(name for name, k8s in executors.items()
                        for s in k8s.get("secretAsEnv", []) if s["secretName"] == "hf-login")
    assert with_token == ["exec-evaluate", "exec-import-model"]


def test_the_evaluate_stage_reads_a_hub_benchmark_from_the_machines_cache(hub, tmp_path,
                                                                          monkeypatch):
    from r1vflow.stages.evaluate import benchmark_locator

    monkeypatch.setenv("R1VFLOW_ARTIFACT_CACHE", str(tmp_path / "cache"))
    exp = load_experiment(PRESETS / "smoke.yaml", [
        f'evaluate.benchmarks=[{{name: mathvista, path: "hub:AI4Math/MathVista", '
        f"revision: {COMMIT}}}]"])
    locate = benchmark_locator(exp)
    found = locate(exp.evaluate.benchmarks[0])  # split: the benchmark's default, testmini
    assert found == tmp_path / "cache" / "benchmarks" / "AI4Math--MathVista" / COMMIT / "testmini"
    assert locate(exp.evaluate.benchmarks[0]) == found and len(hub) == 1
