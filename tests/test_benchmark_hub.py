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
    assert all(b.revision and b.samples == 5 and b.temperature > 0 for b in benches.values())
    assert {n: b.path.split(":")[0] for n, b in benches.items()} == {
        "mmmu": "hub", "mathvista": "hub", "math500": "hub", "aime2024": "hub",
        "olympiadbench": "hub", "mathvision": "github"}
    assert missing_paths(exp.evaluate.benchmarks) == []  # every source pinned, no placeholder
    assert benches["mathvista"].revision == "2b6ad69445fbb5695c9b165475e8decdbeb97747"
    assert benches["olympiadbench"].revision == "91184b52131e7fc9455fef848035173aea8cc01a"
    assert (benches["mathvision"].path, benches["mathvision"].revision) == (
        "github:mathllm/MATH-V", "1d361180b02cbff417c77c02acf1b4cacf2d55ea")


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


# --- github:<owner>/<name>: the authors' repository at a commit (MathVision's MATH-V) ---------

MATHV_ROWS = [
    {"id": "4", "question": "How many digits?\n<image1>", "options": [], "answer": "6",
     "solution": None, "level": 1, "subject": "counting", "image": "images/4.jpg"},
    {"id": "6", "question": "Which kittens?\n<image1>", "options": ["A", "B", "C", "D", "E"],
     "answer": "D", "solution": None, "level": 3, "subject": "logic", "image": "images/6.jpg"},
]


def mathv_archive(rows: list[dict], extra: dict[str, bytes] | None = None,
                  links: dict[str, str] | None = None) -> bytes:
    """A gzip tar as GitHub serves a commit's archive: every file under MATH-V-<commit>/."""
    import io
    import json
    import tarfile

    from bench_data import png

    files = {"README.md": b"# MATH-V\n", "assets/logo.png": png((0, 0, 0)),
             "data/test.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode(),
             "data/testmini.jsonl": json.dumps(rows[0]).encode() + b"\n",
             **{r["image"]: png((40 * i, 90, 200), 12 + i) for i, r in enumerate(rows)},
             **(extra or {})}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"MATH-V-{COMMIT}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(f"MATH-V-{COMMIT}/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def codeload(monkeypatch):
    """A loopback HTTP server answering GET /<owner>/<name>/tar.gz/<commit> with `archive`
    (set by the test) as GitHub's codeload does; `requests` records the paths asked for."""
    import http.server
    import threading

    state = {"archive": mathv_archive(MATHV_ROWS), "requests": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["requests"].append(self.path)
            if self.path != f"/mathllm/MATH-V/tar.gz/{COMMIT}":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(state["archive"])))
            self.end_headers()
            self.wfile.write(state["archive"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("R1VFLOW_GITHUB_ARCHIVE_URL", f"http://127.0.0.1:{server.server_port}")
    yield state
    server.shutdown()


def test_github_benchmark_keeps_only_the_splits_files_and_downloads_once(codeload, tmp_path):
    import io

    from PIL import Image

    args = ("mathvision", "github:mathllm/MATH-V", COMMIT, "test", tmp_path / "cache")
    first = fetch_benchmark(*args)
    assert first == tmp_path / "cache" / "benchmarks" / "github--mathllm--MATH-V" / COMMIT / "test"
    kept = sorted(str(f.relative_to(first)) for f in first.rglob("*") if f.is_file()
                  and not f.name.startswith("."))
    assert kept == ["data/test.jsonl", "images/4.jpg", "images/6.jpg"]  # no README, assets
    items = list(iter_items("mathvision", first))
    assert [(i.id, i.answer) for i in items] == [("4", "6"), ("6", "D")]
    assert [Image.open(io.BytesIO(i.images[0])).size for i in items] == [
        (12, 12), (13, 13)]  # each row's own image file, in row order
    assert "(D) D" in items[1].prompt and items[1].categories["level"] == ["3"]
    assert fetch_benchmark(*args) == first and len(codeload["requests"]) == 1


def test_github_archive_links_and_escapes_are_never_written(codeload, tmp_path):
    codeload["archive"] = mathv_archive(MATHV_ROWS, extra={"images/../../evil.txt": b"x"},
                                        links={"images/link.jpg": "/etc/passwd"})
    folder = fetch_benchmark("mathvision", "github:mathllm/MATH-V", COMMIT, "test",
                             tmp_path / "cache")
    assert not (folder / "images" / "link.jpg").exists()
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))


def test_a_row_naming_an_image_outside_the_folder_is_refused(codeload, tmp_path):
    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    rows = [dict(MATHV_ROWS[0], image="../../../../../secret.jpg")]
    codeload["archive"] = mathv_archive(rows, extra={"images/4.jpg": b"x"})
    folder = fetch_benchmark("mathvision", "github:mathllm/MATH-V", COMMIT, "test",
                             tmp_path / "cache")
    with pytest.raises(BenchmarkDataError, match=r"test.jsonl:1: image .* lies outside"):
        list(iter_items("mathvision", folder))


def test_a_github_commit_the_server_does_not_have_is_one_error(codeload, tmp_path):
    other = "1" * 40
    with pytest.raises(BenchmarkDataError, match=rf"github:mathllm/MATH-V@{other}: download "
                                                 r"failed \(HTTP 404"):
        fetch_benchmark("mathvision", "github:mathllm/MATH-V", other, "test", tmp_path)


def test_github_paths_are_for_benchmarks_with_a_known_github_layout():
    from r1vflow.config.benchmarks import GITHUB_BENCHMARKS
    from r1vflow.eval.benchmarks.hub import GITHUB_SPLIT_FILES

    assert set(GITHUB_SPLIT_FILES) == GITHUB_BENCHMARKS
    with pytest.raises(ConfigError, match="benchmark mmmu: no GitHub layout is known"):
        load_experiment(PRESETS / "smoke.yaml", [
            f'evaluate.benchmarks=[{{name: mmmu, path: "github:MMMU/MMMU", revision: {COMMIT}}}]'])
    with pytest.raises(ConfigError, match="github:mathllm/MATH-V needs revision"):
        load_experiment(PRESETS / "smoke.yaml", [
            'evaluate.benchmarks=[{name: mathvision, path: "github:mathllm/MATH-V"}]'])


def test_a_row_naming_a_missing_image_is_one_error_with_its_line(codeload, tmp_path):
    folder = fetch_benchmark("mathvision", "github:mathllm/MATH-V", COMMIT, "test",
                             tmp_path / "cache")
    (folder / "images" / "6.jpg").unlink()  # the second row's image
    with pytest.raises(BenchmarkDataError, match=r"test.jsonl:2: image 'images/6.jpg': .*"
                                                 r"No such file"):
        list(iter_items("mathvision", folder))
