"""The data sets' path policy on the files a benchmark names (issue 23): a benchmark folder's
files must lie inside it once symlinks are followed and be regular files, lines and decoded
pixels are bounded, and each refusal is one BenchmarkDataError naming the file, never the
target of a link."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from r1vflow.eval.benchmarks import BenchmarkDataError, Item, common, iter_items
from r1vflow.eval.benchmarks.run import item_images

SAMPLE = Path(__file__).resolve().parents[1] / "src/r1vflow/eval/benchmarks/samples/mathvista_tiny"
PARQUET = "data/testmini-00000-of-00001.parquet"


def _items(path: Path, name: str = "mathvista", split: str | None = None) -> list[Item]:
    return list(iter_items(name, path, split=split))


def test_a_link_to_a_file_inside_the_folder_is_read(tmp_path):
    bench = tmp_path / "bench"
    (bench / "data").mkdir(parents=True)
    shutil.copy(SAMPLE / PARQUET, bench / "kept.parquet")
    (bench / PARQUET).symlink_to(bench / "kept.parquet")
    assert [i.id for i in _items(bench)] == [i.id for i in _items(SAMPLE)]


def test_a_link_out_of_the_folder_is_refused_without_naming_its_target(tmp_path):
    outside = tmp_path / "secret-place"
    outside.mkdir()
    shutil.copy(SAMPLE / PARQUET, outside / "x.parquet")
    bench = tmp_path / "bench"
    (bench / "data").mkdir(parents=True)
    (bench / PARQUET).symlink_to(outside / "x.parquet")
    with pytest.raises(BenchmarkDataError) as err:
        _items(bench)
    assert "a symlink out of the benchmark folder" in str(err.value)
    assert "secret-place" not in str(err.value)


def test_a_fifo_is_refused_at_once(tmp_path):
    bench = tmp_path / "math500"
    bench.mkdir()
    os.mkfifo(bench / "test.jsonl")  # nobody writes: reading it would block for ever
    started = time.monotonic()
    with pytest.raises(BenchmarkDataError, match="test.jsonl: not a regular file"):
        _items(bench, "math500", "test")
    assert time.monotonic() - started < 5


def test_a_folder_named_like_a_data_file_is_refused(tmp_path):
    bench = tmp_path / "bench"
    (bench / PARQUET).mkdir(parents=True)
    with pytest.raises(BenchmarkDataError, match="not a regular file"):
        _items(bench)


def test_a_jsonl_line_over_the_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "MAX_LINE_BYTES", 1000)
    bench = tmp_path / "math500"
    bench.mkdir()
    row = '{"problem": "1+1?", "answer": "2", "unique_id": "a", "subject": "x", "level": 1}'
    (bench / "test.jsonl").write_text(row + "\n" + '{"problem": "' + "9" * 5000 + '"}\n')
    with pytest.raises(BenchmarkDataError, match=r"test.jsonl:2: a line over 1,000 bytes"):
        _items(bench, "math500", "test")


def test_a_line_that_is_not_an_object_names_its_line(tmp_path):
    bench = tmp_path / "math500"
    bench.mkdir()
    (bench / "test.jsonl").write_bytes(b"[1, 2]\n")
    with pytest.raises(BenchmarkDataError, match=r"test.jsonl:1: not a JSON object"):
        _items(bench, "math500", "test")


def test_a_file_that_is_not_parquet_is_one_error(tmp_path):
    bench = tmp_path / "bench"
    (bench / "data").mkdir(parents=True)
    (bench / PARQUET).write_bytes(b"not parquet at all")
    with pytest.raises(BenchmarkDataError, match="not a readable parquet file"):
        _items(bench)


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding():
    """A 12000x12000 PNG of one colour is ~0.4 MB encoded and 432 MB decoded: the header is
    enough to refuse it."""
    buffer = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buffer, "PNG", optimize=True)
    big = buffer.getvalue()
    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, "PNG")
    item = Item("x1", "q", "q", [small.getvalue(), big], "a")
    started = time.monotonic()
    with pytest.raises(BenchmarkDataError,
                       match=r"item x1: image 2 is 12000x12000; the item's images reach "
                             r"144,000,064 pixels"):
        item_images(item)
    assert time.monotonic() - started < 5
    assert [im.size for im in item_images(Item("x2", "q", "q", [small.getvalue()] * 2, "a"))] \
        == [(8, 8), (8, 8)]
