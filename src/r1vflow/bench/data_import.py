"""`r1vflow bench data-import`: peak memory of importing a data set at N and 2N rows.

Builds data sets of random-noise PNG images (noise does not compress, so each image is about
3 x side^2 bytes encoded and decoded) in the Hugging Face Parquet layout and as JSONL with image
files, imports each in a fresh process (r1vflow.data.importer, the data stage's code) and reads
that process's resident set size before the import and its peak during it (Linux: the peak,
VmHWM, is reset through /proc/self/clear_refs after the modules are imported, so the figure is
the import's own, not torch's import). If the import
held rows or images, the 2N figure would exceed the N one by about N images' bytes; streaming
keeps the two close.

    r1vflow bench data-import --rows 2000 --json data-import.json
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from r1vflow.config.data_source import ContaminationConfig, DataSourceConfig
from r1vflow.data.importer import import_dataset

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

modules = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
start = time.perf_counter()
options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
on_bad_row = options.pop("on_bad_row", "fail")
result = import_dataset(sys.argv[2], DataSourceConfig(kind="files", path=sys.argv[1], **options),
                        on_bad_row=on_bad_row, contamination=ContaminationConfig(), image_size=32)
print(json.dumps({"seconds": time.perf_counter() - start, "rows_read": result.rows_read,
                  "peak_after_module_imports_mib": modules, "rss_before_mib": base,
                  "peak_rss_mib": status("VmHWM"), "rss_after_mib": status("VmRSS"),
                  "bad_rows": result.bad_rows}))
"""


def _png(rng: np.random.Generator, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _row(i: int, image) -> dict:
    return {"id": f"r{i}", "image": image, "question": f"What is shown in picture {i}?",
            "answer": str(i % 10), "solution": f"The picture shows {i % 10}."}


def make_parquet(folder: Path, rows: int, side: int, seed: int = 0) -> Path:
    """A Hugging Face style Parquet file (image as {bytes, path}), written 256 rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    path = folder / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("id", pa.string()),
                        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("question", pa.string()), ("answer", pa.string()),
                        ("solution", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 256):
            batch = [_row(i, {"bytes": _png(rng, side), "path": f"{i}.png"})
                     for i in range(start, min(rows, start + 256))]
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return path


def make_jsonl(folder: Path, rows: int, side: int, seed: int = 0) -> Path:
    """A JSONL file with one PNG file per row under img/."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    with path.open("w") as handle:
        for i in range(rows):
            (folder / "img" / f"{i}.png").write_bytes(_png(rng, side))
            handle.write(json.dumps(_row(i, f"img/{i}.png")) + "\n")
    return path


def _measure(source: Path, out: Path, options: dict | None = None, timeout: float = 600) -> dict:
    """Import `source` in a fresh process (`options`: data.source fields and on_bad_row)."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(source), str(out),
                           json.dumps(options or {})],
                          capture_output=True, text=True, check=False, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"import of {source} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_bench(json_out: Path | None, rows: int = 2000, side: int = 128) -> dict:
    """Peak RSS of importing `rows` and 2 x `rows` rows, Parquet and JSONL."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="r1vflow-bench-data-") as tmp:
        for fmt, make in (("parquet", make_parquet), ("jsonl", make_jsonl)):
            for n in (rows, 2 * rows):
                work = Path(tmp) / f"{fmt}-{n}"
                source = make(work / "src", n, side)
                started = time.perf_counter()
                measured = _measure(source, work / "out")
                measured["rows_per_s"] = n / measured["seconds"]
                measured["wall_seconds"] = time.perf_counter() - started
                results[f"{fmt}/{n}"] = measured
                shutil.rmtree(work)
    image_mib = 3 * side * side / 2**20
    summary = {
        "rows": [rows, 2 * rows], "image_side": side,
        "image_mib_each": round(image_mib, 4),
        "images_mib_added_by_doubling": round(rows * image_mib, 1),
        "results": results,
        "peak_growth_mib": {fmt: round(results[f"{fmt}/{2 * rows}"]["peak_rss_mib"]
                                       - results[f"{fmt}/{rows}"]["peak_rss_mib"], 1)
                            for fmt in ("parquet", "jsonl")},
        "peak_over_start_mib": {k: round(v["peak_rss_mib"] - v["rss_before_mib"], 1)
                                for k, v in results.items()},
    }
    if json_out is not None:
        Path(json_out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------- hostile input
GOOD_ROWS = 30


def _hostile_rows() -> list[str]:
    """The JSONL lines after the good ones, in order (docs/reliability.md lists the outcomes)."""
    rows = [{"image": "/dev/zero"}, {"image": "img/fifo.png"}, {"image": "img/huge.png"},
            {"images": ["img/huge.png"] * 8}, {"images": ["img/big.png", "img/big.png"]},
            {"image": "../outside.png"}, {"image": "../missing.png"},
            {"image": "../notimage.txt"}, {"image": "img/link.png"},
            {"image": {"bytes": "not binary", "path": None}}]
    lines = [json.dumps({"id": f"h{k}", "question": "What is shown?", "answer": "1", **row})
             for k, row in enumerate(rows)]
    lines.append('{"id": "h10", "image": "img/0.png", "question": "\\ud800", "answer": "1"}')
    lines.append("[" * 100_000 + "]" * 100_000)
    return lines


def make_hostile(base: Path) -> Path:
    """A data folder `base/data` naming /dev/zero, a FIFO, a 12000x12000 PNG (17 KB; alone and
    8 times in a row), two 5000x5000 PNGs in one row, ../ paths (a PNG, a missing file, a text
    file), a symlink out of the folder (also as a Parquet image struct's path), a string as an
    image struct's bytes, a lone surrogate and a 100,000-deep JSON line, after `GOOD_ROWS`
    good rows."""
    folder = base / "data"
    make_jsonl(folder, GOOD_ROWS, 8)
    Image.new("1", (12000, 12000)).save(folder / "img" / "huge.png")
    Image.new("1", (5000, 5000)).save(folder / "img" / "big.png")
    os.mkfifo(folder / "img" / "fifo.png")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(base / "outside.png")
    (base / "notimage.txt").write_text("a secret that is not an image\n")
    (folder / "img" / "link.png").symlink_to(base / "outside.png")
    with (folder / "train.jsonl").open("a") as handle:
        handle.write("\n".join(_hostile_rows()) + "\n")
    _struct_parquet(folder / "train-structs.parquet")
    return folder


def _struct_parquet(path: Path) -> None:
    """One row whose image is a {bytes: null, path: img/link.png} struct (a symlink out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()),
                        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("question", pa.string()), ("answer", pa.string())])
    row = {"id": "p0", "image": {"bytes": None, "path": "img/link.png"},
           "question": "What is shown?", "answer": "1"}
    pq.write_table(pa.Table.from_pylist([row], schema=schema), path)


def run_hostile(json_out: Path | None = None) -> dict:
    """Import the hostile folder (skip, root-confined and with allow_absolute_paths) in fresh
    processes: seconds, peak RSS over the start, and every bad row's reason."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="r1vflow-bench-hostile-") as tmp:
        tmp = os.path.realpath(tmp)
        source = make_hostile(Path(tmp))
        for name, options in (("confined", {}), ("allow_absolute_paths",
                                                 {"allow_absolute_paths": True})):
            measured = _measure(source, Path(tmp) / f"out-{name}",
                                {"on_bad_row": "skip", "val_fraction": 0.2,
                                 "test_fraction": 0.2, **options}, timeout=300)
            measured["peak_over_start_mib"] = round(measured["peak_rss_mib"]
                                                    - measured["rss_before_mib"], 1)
            measured["bad_rows"] = [row.replace(tmp, "TMP") for row in measured["bad_rows"]]
            results[name] = measured
    if json_out is not None:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
    return results
