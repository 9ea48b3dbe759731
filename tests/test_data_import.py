"""The data stage on the user's own files: JSONL with relative image paths, Parquet in the
Hugging Face layout, a local `datasets` data set through the hub loader; bad rows, splits,
contamination and the stages' needs. Real small PNGs, real Parquet files."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from r1vflow.config import load_experiment
from r1vflow.data import dataset_digest, load_captions, load_preferences, load_split, read_info
from r1vflow.data.importer import ContaminationError
from r1vflow.data.needs import problems
from r1vflow.data.rows import pixel_hash
from r1vflow.stages import StageContext, stage_function
from r1vflow.tracking.runs import StageTracker

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "pipelines" / "configs" / "smoke.yaml"
# The smoke preset's RM and captions steps need pairs and captions; plain-file tests turn them off.
PLAIN = ["train_reward_model=null", "sft.iterative=null",
         "align_projector.substages=[{name: cot, data: cot, lr: 1.0e-3}]"]


def colour(i: int) -> tuple[int, int, int]:
    return (i * 37 % 256, i * 91 % 256, i * 53 % 256)


def png_bytes(i: int, size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour(i)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl_set(folder: Path, n: int, extra: list[dict] | None = None,
                    name: str = "train.jsonl", start: int = 0) -> Path:
    """Rows start..n-1 whose images are PNG files in folder/img/, plus `extra` raw rows."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, n):
        (folder / "img" / f"{i}.png").write_bytes(png_bytes(i))
        rows.append({"id": f"s{i}", "image": f"img/{i}.png", "question": f"How many dots {i}?",
                     "answer": str(i % 7), "solution": f"I count {i % 7}."})
    lines = [json.dumps(r) for r in rows + (extra or [])]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def experiment(*overrides: str):
    return load_experiment(SMOKE, ["name=imp", *PLAIN, *overrides])


def run_stage(exp, out: Path):
    ctx = StageContext(exp=exp, stage="synthesize_data", inputs={},
                       outputs={"dataset": out}, tracker=StageTracker(None, "t", register=False))
    out.mkdir(parents=True, exist_ok=True)
    return stage_function("synthesize_data")(ctx)


def files_source(path: Path, *more: str) -> list[str]:
    return ["data.source.kind=files", f"data.source.path={path}", *more]


# ----------------------------------------------------------------------------- JSONL
def test_jsonl_import_carves_disjoint_splits_and_writes_the_layout(tmp_path):
    src = write_jsonl_set(tmp_path / "src", 60)
    out = tmp_path / "ds"
    outcome = run_stage(experiment(*files_source(src, "data.source.val_fraction=0.2",
                                                 "data.source.test_fraction=0.2")), out)
    splits = {s: load_split(out, s) for s in ("train", "val", "test")}
    ids = [{x.id for x in rows} for rows in splits.values()]
    assert sum(map(len, ids)) == 60 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert all(len(rows) >= 3 for rows in splits.values())
    info = read_info(out)
    assert info.digest == dataset_digest(out)
    assert info.source == str(src.resolve())
    assert outcome.metrics["rows_read"] == 60 and outcome.metrics["rows_skipped"] == 0
    assert outcome.metrics["num_train"] == len(splits["train"])
    sample = splits["train"][0]
    i = int(sample.id[1:])
    assert (sample.answer, sample.reasoning, sample.family) == (str(i % 7), f"I count {i % 7}.",
                                                                "number")
    assert Image.open(out / sample.image).getpixel((0, 0)) == colour(i)
    assert sample.image.startswith("images/0000/")


def test_same_seed_same_split_and_digest(tmp_path):
    src = write_jsonl_set(tmp_path / "src", 30)
    for name, seed in (("a", 0), ("b", 0), ("c", 9)):
        run_stage(experiment(*files_source(src, f"data.source.seed={seed}")), tmp_path / name)
    val = {name: [s.id for s in load_split(tmp_path / name, "val")] for name in "abc"}
    assert val["a"] == val["b"] != val["c"]
    assert read_info(tmp_path / "a").digest == read_info(tmp_path / "b").digest
    assert read_info(tmp_path / "a").digest != read_info(tmp_path / "c").digest


BAD = [{"id": "bad1", "image": "img/0.png", "question": "q?"},  # no answer
       {"id": "bad2", "image": "img/missing.png", "question": "q?", "answer": "1"}]


def test_bad_row_fails_the_import_naming_file_and_row(tmp_path):
    src = write_jsonl_set(tmp_path / "src", 10, extra=BAD)
    out = tmp_path / "ds"
    with pytest.raises(ValueError) as err:
        run_stage(experiment(*files_source(src)), out)
    assert str(err.value).startswith(f"{src}:11: missing answer (column 'answer')")
    assert not (out / "dataset.json").exists() and not (out / "train.jsonl").exists()


def test_skipped_rows_are_counted_and_listed(tmp_path):
    src = write_jsonl_set(tmp_path / "src", 20, extra=[*BAD, {"id": "s3", "image": "img/4.png",
                                                              "question": "q", "answer": "2"}])
    (src.parent / "train.jsonl").write_text(src.read_text() + "{not json\n")
    out = tmp_path / "ds"
    outcome = run_stage(experiment(*files_source(src, "data.source.val_fraction=0.3",
                                               "data.source.test_fraction=0.3"),
                                   "data.on_bad_row=skip"), out)
    assert outcome.metrics["rows_skipped"] == 4 and outcome.metrics["rows_read"] == 24
    report = json.loads((out / "import.json").read_text())
    assert report["bad_rows"][0] == f"{src}:21: missing answer (column 'answer')"
    assert report["bad_rows"][1].startswith(f"{src}:22: image {src.parent}/img/missing.png")
    assert report["bad_rows"][2] == f"{src}:23: id 's3' already used by {src}:4"
    assert report["bad_rows"][3].startswith(f"{src}:24: not valid JSON")
    assert f"- `{src}:21: missing answer (column 'answer')`" in outcome.report
    assert sum(len(load_split(out, s)) for s in ("train", "val", "test")) == 20


def test_rows_sharing_an_image_stay_in_one_split(tmp_path):
    extra = [{"id": f"dup{i}", "image": "img/3.png", "question": f"Other question {i}?",
              "answer": "1"} for i in range(12)]
    src = write_jsonl_set(tmp_path / "src", 30, extra=extra)
    out = tmp_path / "ds"
    run_stage(experiment(*files_source(src, "data.source.val_fraction=0.3",
                                       "data.source.test_fraction=0.3")), out)
    where = {s: {x.id for x in load_split(out, s)} for s in ("train", "val", "test")}
    holders = [s for s, ids in where.items() if {"s3", *(f"dup{i}" for i in range(12))} & ids]
    assert len(holders) == 1


# ----------------------------------------------------------------------------- Parquet
def hf_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("images", pa.list_(image)),
                        ("question", pa.string()), ("options", pa.string()),
                        ("gold", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def mc_row(i: int, images: int = 1) -> dict:
    return {"id": f"p{i}", "images": [{"bytes": png_bytes(100 * i + k), "path": f"{i}-{k}.png"}
                                      for k in range(images)],
            "question": f"Which shape {i}?", "options": "['circle', 'square', 'triangle']",
            "gold": ["circle", "B", "triangle"][i % 3]}


def test_parquet_hugging_face_layout_with_published_test_split(tmp_path):
    root = tmp_path / "hf"
    hf_parquet(root / "data" / "train-00000-of-00001.parquet",
               [mc_row(i, images=1 + i % 2) for i in range(40)])
    hf_parquet(root / "data" / "test-00000-of-00001.parquet", [mc_row(i) for i in range(40, 50)])
    out = tmp_path / "ds"
    exp = experiment(*files_source(root, "data.source.columns.answer=gold",
                                   "data.source.columns.choices=options",
                                   "data.source.answer_only_sft=true"))
    outcome = run_stage(exp, out)
    test = load_split(out, "test")
    assert sorted(s.id for s in test) == [f"p{i}" for i in range(40, 50)]
    assert outcome.metrics["num_val"] + outcome.metrics["num_train"] == 40
    train = {s.id: s for s in load_split(out, "train") + load_split(out, "val")}
    two = train["p1"]  # two images: originals kept, the model sees their montage
    assert two.answer == "B" and two.family == "choice" and two.reasoning == ""
    assert two.question == "Which shape 1?\nOptions:\nA. circle\nB. square\nC. triangle"
    assert len(two.images) == 2
    first = Image.open(out / two.images[0])
    assert pixel_hash(first) == pixel_hash(Image.open(io.BytesIO(png_bytes(100))))
    assert Image.open(out / two.image).size == (16, 6)
    assert train["p0"].answer == "A" and train["p0"].images == []


def test_published_test_row_sharing_a_train_image_is_a_bad_row(tmp_path):
    root = tmp_path / "hf"
    hf_parquet(root / "train.parquet", [mc_row(i) for i in range(20)])
    leak = {**mc_row(5), "id": "leak"}
    hf_parquet(root / "test.parquet", [mc_row(i) for i in range(20, 25)] + [leak])
    exp = experiment(*files_source(root, "data.source.columns.answer=gold",
                                   "data.source.columns.choices=options",
                                   "data.source.answer_only_sft=true"))
    with pytest.raises(ValueError, match=rf"{root / 'test.parquet'}:6: its image is already in "
                                         rf"(train|val) \({root / 'train.parquet'}:6\)"):
        run_stage(exp, tmp_path / "ds")


# ----------------------------------------------------------------------------- stage needs
def test_validation_names_what_the_stages_lack():
    exp = load_experiment(SMOKE, ["data.source.kind=files", "data.source.path=x.jsonl"])
    found = problems(exp, {"image", "question", "answer"})
    assert any("no solution column 'solution': sft trains on reasoning chains; or set "
               "data.source.answer_only_sft=true" in p for p in found)
    assert any("no chosen column 'chosen': train_reward_model trains on preference pairs; or "
               "set data.source.derive_pairs=true" in p for p in found)
    assert any("no caption column 'caption': an align_projector step has data: captions" in p
               for p in found)
    assert problems(exp, {"image", "question", "answer", "solution", "chosen", "rejected",
                          "caption"}) == []
    derived = load_experiment(SMOKE, ["data.source.kind=files", "data.source.path=x.jsonl",
                                      "data.source.derive_pairs=true"])
    assert not any("chosen" in p for p in problems(derived, {"image", "question", "answer"}))
    lax = load_experiment(SMOKE, [*PLAIN, "data.source.kind=files", "data.source.path=x.jsonl",
                                  "data.source.answer_only_sft=true"])
    assert problems(lax, {"images", "question", "answer"}) == []
    assert problems(lax, {"img", "question", "answer"}) == [
        "data.source: no image column 'image' or 'images' (map one with --set "
        "data.source.columns.image=NAME)"]


def test_stage_refuses_missing_solutions_before_reading_images(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"image": "nope.png", "question": "q", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match="no solution column 'solution'"):
        run_stage(experiment(*files_source(src)), tmp_path / "ds")


def test_pairs_and_captions_feed_the_reward_model_and_alignment(tmp_path):
    src = write_jsonl_set(tmp_path / "src", 40)
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    for r in rows:
        r |= {"caption": f"a square of colour {r['id']}",
              "chosen": f"<think>{r['solution']}</think><answer>{r['answer']}</answer>",
              "rejected": f"<think>{r['solution']}</think><answer>99</answer>"}
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ds"
    run_stage(load_experiment(SMOKE, ["name=imp", *files_source(src)]), out)
    pairs, captions = load_preferences(out), load_captions(out)
    assert len(pairs) == len(captions) == 40
    assert {p.kind for p in pairs} == {"imported"} and {p.split for p in pairs} >= {"train", "val"}
    assert pairs[0].rejected.endswith("<answer>99</answer>")


def test_empty_val_split_is_an_error_saying_what_to_do(tmp_path):
    src = write_jsonl_set(tmp_path / "src", 5)
    with pytest.raises(ValueError, match="the val split\\(s\\) hold no samples"):
        run_stage(experiment(*files_source(src, "data.source.val_fraction=0",
                                           "data.source.test_fraction=0.5")), tmp_path / "ds")


# ----------------------------------------------------------------------------- contamination
def contaminated_setup(tmp_path: Path) -> tuple[Path, Path]:
    """Published train (s0..s19), val (s20..s24), test (s25..s29); a benchmark folder with one
    item whose image no sample has."""
    src = tmp_path / "src"
    for name, (start, stop) in {"train.jsonl": (0, 20), "val.jsonl": (20, 25),
                                "test.jsonl": (25, 30)}.items():
        write_jsonl_set(src, stop, name=name, start=start)
    bench = tmp_path / "bench"
    (bench / "img").mkdir(parents=True)
    (bench / "img" / "0.png").write_bytes(png_bytes(1000))
    item = {"pid": "b0", "image": "img/0.png", "query": "A benchmark question of its own"}
    (bench / "test.jsonl").write_text(json.dumps(item) + "\n")
    return src, bench


def reference(bench: Path, action: str) -> list[str]:
    ref = {"name": "mybench", "path": str(bench), "columns": {"id": "pid", "question": "query"}}
    return [f"data.contamination.references=[{json.dumps(ref)}]",
            f"data.contamination.action={action}"]


def test_contamination_fails_or_drops_by_config(tmp_path):
    src, bench = contaminated_setup(tmp_path)
    clean = run_stage(experiment(*files_source(src), *reference(bench, "fail")), tmp_path / "a")
    assert clean.metrics["contaminated_dropped/mybench"] == 0.0
    assert "| mybench | 1 | 0 |" in clean.report
    (bench / "img" / "0.png").write_bytes(png_bytes(7))  # now the image of train sample s7
    with pytest.raises(ContaminationError, match=r"training sample 's7' shares the image of "
                                                  r"mybench item b0; set "
                                                  r"data.contamination.action=drop"):
        run_stage(experiment(*files_source(src), *reference(bench, "fail")), tmp_path / "b")
    dropped = run_stage(experiment(*files_source(src), *reference(bench, "drop")), tmp_path / "c")
    assert dropped.metrics["contaminated_dropped/mybench"] == 1.0
    kept = {s.id for s in load_split(tmp_path / "c", "train")}
    assert kept == {f"s{i}" for i in range(20)} - {"s7"}
    assert "| mybench | 1 | 1 |" in dropped.report


def test_question_match_drops_only_long_enough_questions(tmp_path):
    src, bench = contaminated_setup(tmp_path)
    item = {"pid": "q1", "image": "img/0.png", "query": "  HOW many dots, 12?? "}
    (bench / "test.jsonl").write_text(json.dumps(item) + "\n")
    strict = run_stage(experiment(*files_source(src), *reference(bench, "drop"),
                                  "data.contamination.min_question_chars=5"), tmp_path / "a")
    assert strict.metrics["contaminated_dropped"] == 1.0
    assert "s12" not in {s.id for s in load_split(tmp_path / "a", "train")}
    lax = run_stage(experiment(*files_source(src), *reference(bench, "drop")), tmp_path / "b")
    assert lax.metrics["contaminated_dropped"] == 0.0  # "how many dots 12" is under 20 chars


# ----------------------------------------------------------------------------- hub
def test_hub_loader_on_a_local_folder_in_the_hub_layout(tmp_path, monkeypatch):
    """kind hub runs datasets.load_dataset(id, revision=..., streaming=True); a local folder in
    the hub layout stands in for the hub (the download itself cannot be tested here)."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "question": datasets.Value("string"),
                                  "answer": datasets.Value("int64"),
                                  "solution": datasets.Value("string")})
    repo = tmp_path / "repo"
    for split, ids in (("train", range(30)), ("validation", range(30, 36)),
                       ("test", range(36, 40))):
        table = {"id": [f"h{i}" for i in ids],
                 "image": [{"bytes": png_bytes(i), "path": None} for i in ids],
                 "question": [f"Question {i}?" for i in ids], "answer": [i for i in ids],
                 "solution": [f"It is {i}." for i in ids]}
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(repo / "data" / f"{split}-00000-of-00001.parquet"))
    exp = experiment("data.source.kind=hub", f"data.source.hub.id={repo}",
                     f"data.source.hub.revision={'a' * 40}")
    out = tmp_path / "ds"
    outcome = run_stage(exp, out)
    assert [s.id for s in load_split(out, "val")] == [f"h{i}" for i in range(30, 36)]
    assert [s.id for s in load_split(out, "test")] == [f"h{i}" for i in range(36, 40)]
    train = load_split(out, "train")
    assert len(train) == 30 and train[4].answer == "4" and train[4].reasoning == "It is 4."
    assert Image.open(out / train[4].image).getpixel((0, 0)) == colour(4)
    assert read_info(out).source == f"hub:{repo}@{'a' * 40}"
    assert outcome.metrics["rows_read"] == 40


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(("overrides", "message"), [
    (["data.source.kind=files"], "data.source.kind 'files' needs data.source.path"),
    (["data.source.kind=hub"], "data.source.kind 'hub' needs data.source.hub.id and .revision"),
    (["data.source.path=x.jsonl"], "data.source.path is only read by kind 'files'"),
    (["data.source.kind=hub", "data.source.hub={id: a/b, revision: main}"],
     "data.source.hub.revision must be a commit sha (40 hex digits)"),
    (["data.source.kind=files", "data.source.path=x", "data.source.val_fraction=0.6",
      "data.source.test_fraction=0.4"], "val_fraction + test_fraction must leave some train"),
    (["data.on_bad_row=ignore"], "data.on_bad_row"),
    (["data.source.kind=files", "data.source.path=x",
      "data.contamination.references=[{name: a, path: x}, {name: a, path: y}]"],
     "names must be unique"),
    (["data.contamination.references=[{name: a, path: x}]"],
     "data.contamination checks imported data (data.source.kind files or hub)"),
])
def test_source_config_errors_say_what_to_do(overrides, message):
    from r1vflow.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(SMOKE, overrides)


def test_synthetic_rows_and_info_carry_no_import_fields(tmp_path):
    out = tmp_path / "ds"
    run_stage(load_experiment(SMOKE, ["synthesize_data.num_train=12", "synthesize_data.num_val=4",
                                      "synthesize_data.num_test=4"]), out)
    assert '"images"' not in (out / "train.jsonl").read_text()
    assert "source" not in json.loads((out / "dataset.json").read_text())


def test_max_rows_reads_only_the_first_rows_of_each_file(tmp_path):
    src = write_jsonl_set(tmp_path / "src", 50, extra=BAD)  # the bad rows lie past the limit
    outcome = run_stage(experiment(*files_source(src, "data.source.max_rows=30",
                                                 "data.source.val_fraction=0.3",
                                                 "data.source.test_fraction=0.3")),
                        tmp_path / "ds")
    assert outcome.metrics["rows_read"] == 30 and outcome.metrics["rows_skipped"] == 0
    ids = {s.id for split in ("train", "val", "test") for s in load_split(tmp_path / "ds", split)}
    assert ids == {f"s{i}" for i in range(30)}


# ----------------------------------------------------------------------------- discovery
def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")


def test_published_splits_come_from_file_and_folder_names(tmp_path):
    from r1vflow.data.readers import discover

    touch(tmp_path, "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
          "data/validation-00000-of-00001.parquet", "test/part-0.jsonl", "data/README.md",
          ".cache/train.jsonl")
    groups = discover(tmp_path, {})
    assert {k: [p.relative_to(tmp_path).as_posix() for p in v] for k, v in groups.items()} == {
        "train": ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"],
        "val": ["data/validation-00000-of-00001.parquet"], "test": ["test/part-0.jsonl"]}
    touch(tmp_path / "b", "train.jsonl", "minival.jsonl")
    with pytest.raises(ValueError, match="some files name a split \\(train\\) and some do not "
                                         "\\(minival.jsonl\\)"):
        discover(tmp_path / "b", {})
    assert set(discover(tmp_path / "b", {"val": "minival"})) == {"train", "val"}
    touch(tmp_path / "c", "part-a.jsonl", "part-b.jsonl")
    touch(tmp_path, "README.md")
    assert list(discover(tmp_path / "c", {})) == [None]
    with pytest.raises(ValueError, match="not a data file"):
        discover(tmp_path / "README.md", {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(tmp_path / "nope", {})


@pytest.mark.slow
def test_bench_data_import_reads_every_row_at_both_sizes(tmp_path):
    from r1vflow.bench.data_import import run_bench

    summary = run_bench(tmp_path / "bench.json", rows=12, side=16)
    assert {k: v["rows_read"] for k, v in summary["results"].items()} == {
        "parquet/12": 12, "parquet/24": 24, "jsonl/12": 12, "jsonl/24": 24}
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == [12, 24]
    assert summary["images_mib_added_by_doubling"] == round(12 * 3 * 16 * 16 / 2**20, 1)


def test_files_signature_changes_with_a_data_file(tmp_path):
    from r1vflow.data.needs import files_signature

    src = write_jsonl_set(tmp_path / "src", 3)
    exp = experiment(*files_source(src.parent))
    first = files_signature(exp)
    assert files_signature(exp) == first
    src.write_text(src.read_text() + "\n")  # one byte more
    assert files_signature(exp) != first


def test_derived_pairs_let_the_reward_model_train_on_plain_question_answer_data(tmp_path):
    src = write_jsonl_set(tmp_path / "src", 40)
    exp = load_experiment(SMOKE, ["name=imp", "align_projector=null",
                                  *files_source(src, "data.source.derive_pairs=true",
                                                "data.source.val_fraction=0.25")])
    run_stage(exp, tmp_path / "ds")
    pairs = {p.id: p for p in load_preferences(tmp_path / "ds")}
    samples = {s.id: s for split in ("train", "val", "test")
               for s in load_split(tmp_path / "ds", split)}
    assert set(pairs) == {f"pair-{i}" for i in samples}
    assert {p.kind for p in pairs.values()} == {"wrong_answer", "broken_format"}
    for pair in pairs.values():
        sample = samples[pair.id.removeprefix("pair-")]
        assert pair.chosen == sample.response()
        if pair.kind == "wrong_answer":
            assert pair.rejected == sample.response().replace(
                f"<answer>{sample.answer}</answer>", f"<answer>{int(sample.answer) + 1}</answer>")
        else:
            assert pair.rejected == f"{sample.reasoning} {sample.answer}"


def test_import_is_an_mlflow_dataset_input_with_its_digest(tmp_path):
    import mlflow

    from r1vflow.tracking.runs import stage_run

    src = write_jsonl_set(tmp_path / "src", 30)
    exp = experiment(*files_source(src, "data.source.val_fraction=0.2",
                                   "data.source.test_fraction=0.2"))
    out = tmp_path / "ds"
    out.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with stage_run(uri, "r1vflow-test", "synthesize_data", exp.name) as tracker:
        stage_function("synthesize_data")(StageContext(
            exp=exp, stage="synthesize_data", inputs={}, outputs={"dataset": out},
            tracker=tracker))
        run_id = tracker.run_id
    inputs = mlflow.MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [
        ("imp-files", read_info(out).digest[:36])]
    assert json.loads(inputs[0].dataset.source)["uri"] == str(out)


def test_parquet_reference_in_hugging_face_layout(tmp_path):
    src, _ = contaminated_setup(tmp_path)
    bench = tmp_path / "pq-bench"
    rows = [{"id": "m1", "images": [{"bytes": png_bytes(900), "path": "a.png"},
                                    {"bytes": png_bytes(3), "path": "b.png"}],  # s3's image
             "question": "Unrelated question text here", "options": None, "gold": "A"}]
    hf_parquet(bench / "data" / "validation-00000-of-00001.parquet", rows)
    ref = {"name": "mmmu-like", "path": str(bench), "split": "validation"}
    outcome = run_stage(experiment(*files_source(src),
                                   f"data.contamination.references=[{json.dumps(ref)}]",
                                   "data.contamination.action=drop"), tmp_path / "ds")
    assert outcome.metrics["contaminated_dropped/mmmu-like"] == 1.0
    assert "s3" not in {s.id for s in load_split(tmp_path / "ds", "train")}


def test_bootstrap_cache_key_ignores_the_data_source():
    from r1vflow.config.slicing import slice_for

    synthetic = load_experiment(SMOKE)
    files = load_experiment(SMOKE, ["data.source.kind=files", "data.source.path=/d/x.jsonl"])
    assert slice_for(files, "bootstrap") == slice_for(synthetic, "bootstrap")
    assert slice_for(files, "bootstrap")["data"] == {"image_size": 32, "seed": 0}
    assert slice_for(files, "synthesize_data") != slice_for(synthetic, "synthesize_data")


def test_benchmark_reference_reads_the_published_layout(tmp_path):
    """A `benchmark` reference goes through the benchmark loaders (r1vflow.eval.benchmarks): a
    training image equal to a MathVista item's decoded_image is caught, by pixels."""
    from bench_data import png, write_mathvista

    src, _ = contaminated_setup(tmp_path)
    rows = [{"pid": "mv1", "question": "What is the length of the red bar in the picture?",
             "answer": "3", "question_type": "free_form", "answer_type": "integer",
             "task": "figure question answering", "skills": ["arithmetic reasoning"],
             "color": (12, 200, 40)}]
    write_mathvista(tmp_path / "mv", rows)
    ref = {"name": "mathvista", "kind": "benchmark", "path": str(tmp_path / "mv")}
    args = [*files_source(src), f"data.contamination.references=[{json.dumps(ref)}]",
            "data.contamination.action=drop"]
    clean = run_stage(experiment(*args), tmp_path / "a")
    assert clean.metrics["contaminated_dropped/mathvista"] == 0.0
    (src / "img" / "3.png").write_bytes(png((12, 200, 40)))  # train sample s3 now has its image
    dropped = run_stage(experiment(*args), tmp_path / "b")
    assert dropped.metrics["contaminated_dropped/mathvista"] == 1.0
    assert "s3" not in {s.id for s in load_split(tmp_path / "b", "train")}


# ----------------------------------------------------------------------------- hostile input
def test_hostile_data_set_is_bad_rows_in_bounded_time_and_memory():
    """Issue 23 #6: /dev/zero, a FIFO, a 12000x12000 PNG (alone, 8 times), 2 x 5000x5000 in a
    row, ../ paths, symlinks out (also in a Parquet struct), text as struct bytes, a lone
    surrogate and a 100,000-deep line are each one bad row with file:line, in a fresh process
    (r1vflow.bench.data_import.run_hostile), in seconds and tens of MiB."""
    from r1vflow.bench.data_import import run_hostile

    results = run_hostile()
    out = "outside the data folder TMP/data; set data.source.allow_absolute_paths: true to read " \
          "files anywhere"
    vague = "not readable as an image (outside the data folder a missing, unreadable, " \
            "oversized or undecodable file gets this one message)"
    huge = "image TMP/data/img/huge.png: 12000x12000, the row's images reach 144,000,000 " \
           "pixels, over the budget of 40,000,000 (data.source.max_pixels_per_row)"
    common = {
        32: "image TMP/data/img/fifo.png: not a regular file", 33: huge, 34: huge,
        35: "image TMP/data/img/big.png: 5000x5000, the row's images reach 50,000,000 pixels, "
            "over the budget of 40,000,000 (data.source.max_pixels_per_row)",
        40: "image (column 'image'): the struct's 'bytes' is str, expected binary data",
        41: "a lone surrogate escape (\\ud800-\\udfff alone is not a character)",
        42: "JSON nested deeper than the parser allows"}
    names = {31: "/dev/zero", 36: "TMP/data/../outside.png", 37: "TMP/data/../missing.png",
             38: "TMP/data/../notimage.txt", 39: "TMP/data/img/link.png"}
    confined = [f"TMP/data/train-structs.parquet:1: image TMP/data/img/link.png: {out}"]
    confined += [f"TMP/data/train.jsonl:{line}: " + (common.get(line)
                                                      or f"image {names[line]}: {out}")
                 for line in range(31, 43)]
    assert results["confined"]["bad_rows"] == confined
    allowed = [f"TMP/data/train.jsonl:{line}: " + (common.get(line)
                                                    or f"image {names[line]}: {vague}")
               for line in (31, 32, 33, 34, 35, 37, 38, 40, 41, 42)]
    assert results["allow_absolute_paths"]["bad_rows"] == allowed
    for measured in results.values():
        assert measured["rows_read"] == 43  # 30 good + 12 JSONL lines + 1 Parquet row
        assert measured["seconds"] < 30 and measured["peak_over_start_mib"] < 300


def test_hostile_row_fails_the_import_in_one_line_with_on_bad_row_fail(tmp_path):
    from r1vflow.bench.data_import import make_hostile

    folder = make_hostile(tmp_path)
    with pytest.raises(ValueError) as err:
        run_stage(experiment(*files_source(folder)), tmp_path / "ds")
    assert str(err.value) == (
        f"{folder}/train-structs.parquet:1: image {folder}/img/link.png: outside the data "
        f"folder {folder.resolve()}; set data.source.allow_absolute_paths: true to read files "
        "anywhere (data.on_bad_row=skip leaves such rows out)")


def test_a_data_file_symlinked_out_of_the_folder_is_refused(tmp_path):
    src = write_jsonl_set(tmp_path / "elsewhere", 4)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").symlink_to(src)
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path}/data/train.jsonl: a data file that leads out of the folder "
            f"{tmp_path}/data (symlink); set data.source.allow_absolute_paths: true")):
        run_stage(experiment(*files_source(tmp_path / "data")), tmp_path / "ds")
