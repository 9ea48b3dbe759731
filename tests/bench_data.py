"""Small benchmark files in each benchmark's published layout, built from our own rows and real
(tiny) PNG images: parquet written with pyarrow, image columns as ``{bytes, path}`` structs as
Hugging Face publishes them. Used by tests/test_eval_cli.py and tests/test_evaluate_benchmarks.py;
`write_mathvista_tiny` also made the smoke preset's sample, shipped with the package as
``package:r1vflow.eval.benchmarks/samples/mathvista_tiny`` (``python tests/bench_data.py``)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(color: tuple[int, int, int], size: int = 12) -> bytes:
    """A real PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def image_cell(color: tuple[int, int, int] | None, name: str) -> dict | None:
    return None if color is None else {"bytes": png(color), "path": name}


def _write(path: Path, columns: dict[str, pa.Array]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def write_mmmu(root: Path, subject: str, rows: list[dict], split: str = "validation") -> Path:
    """``<root>/<subject>/<split>-00000-of-00001.parquet``; each row: id, question, options
    (a Python list, stored as its text), answer, question_type, images (colours)."""
    columns = {
        "id": pa.array([r["id"] for r in rows]),
        "question": pa.array([r["question"] for r in rows]),
        "options": pa.array([repr(r.get("options", [])) for r in rows]),
        "explanation": pa.array(["" for _ in rows]),
    }
    for n in range(1, 8):
        cells = [image_cell((r.get("images") or [None] * 7)[n - 1]
                            if n <= len(r.get("images") or []) else None,
                            f"{r['id']}_{n}.png") for r in rows]
        columns[f"image_{n}"] = pa.array(cells, type=IMAGE)
    columns |= {
        "img_type": pa.array([repr(["Diagrams"]) for _ in rows]),
        "answer": pa.array([r["answer"] for r in rows]),
        "topic_difficulty": pa.array(["Easy" for _ in rows]),
        "question_type": pa.array([r.get("question_type", "multiple-choice") for r in rows]),
        "subfield": pa.array(["Misc" for _ in rows]),
    }
    return _write(root / subject / f"{split}-00000-of-00001.parquet", columns)


METADATA = pa.struct([("category", pa.string()), ("context", pa.string()),
                      ("grade", pa.string()), ("img_height", pa.int64()),
                      ("img_width", pa.int64()), ("language", pa.string()),
                      ("skills", pa.list_(pa.string())), ("source", pa.string()),
                      ("split", pa.string()), ("task", pa.string())])


def write_mathvista(root: Path, rows: list[dict], split: str = "testmini") -> Path:
    """``<root>/data/<split>-00000-of-00001.parquet``; each row: pid, question, query, choices
    (or None), precision (or None), answer, question_type, answer_type, task, skills, colour."""
    meta = [{"category": "math-targeted-vqa", "context": "synthetic scene", "grade": "daily life",
             "img_height": 12, "img_width": 12, "language": "english", "skills": r["skills"],
             "source": "r1vflow-tests", "split": split, "task": r["task"]} for r in rows]
    return _write(root / "data" / f"{split}-00000-of-00001.parquet", {
        "pid": pa.array([r["pid"] for r in rows]),
        "question": pa.array([r["question"] for r in rows]),
        "image": pa.array([f"images/{r['pid']}.png" for r in rows]),
        "decoded_image": pa.array([image_cell(r.get("color", (200, 30, 30)), f"{r['pid']}.png")
                                   for r in rows], type=IMAGE),
        "choices": pa.array([r.get("choices") for r in rows], type=pa.list_(pa.string())),
        "unit": pa.array([r.get("unit") for r in rows], type=pa.string()),
        "precision": pa.array([r.get("precision") for r in rows], type=pa.float64()),
        "answer": pa.array([r["answer"] for r in rows]),
        "question_type": pa.array([r["question_type"] for r in rows]),
        "answer_type": pa.array([r["answer_type"] for r in rows]),
        "pid_dup": pa.array([r["pid"] for r in rows]),  # extra columns are ignored
        "metadata": pa.array(meta, type=METADATA),
        "query": pa.array([r.get("query", r["question"]) for r in rows]),
    })


def write_math500(root: Path, rows: list[dict]) -> Path:
    """``<root>/test.jsonl``: problem, solution, answer, subject, level, unique_id."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "test.jsonl"
    path.write_text("".join(json.dumps({"problem": r["problem"], "solution": "(omitted)",
                                        "answer": r["answer"], "subject": r["subject"],
                                        "level": r["level"], "unique_id": r["unique_id"]}) + "\n"
                            for r in rows))
    return path


def write_mathvision(root: Path, rows: list[dict], split: str = "test") -> Path:
    """``<root>/data/<split>-00000-of-00001.parquet``: id, question, options, image,
    decoded_image, answer, solution, level, subject."""
    return _write(root / "data" / f"{split}-00000-of-00001.parquet", {
        "id": pa.array([r["id"] for r in rows]),
        "question": pa.array([r["question"] for r in rows]),
        "options": pa.array([r.get("options", []) for r in rows], type=pa.list_(pa.string())),
        "image": pa.array([f"images/{r['id']}.jpg" for r in rows]),
        "decoded_image": pa.array([image_cell((20, 120, 20), f"{r['id']}.png") for r in rows],
                                  type=IMAGE),
        "answer": pa.array([r["answer"] for r in rows]),
        "solution": pa.array([None for _ in rows], type=pa.string()),
        "level": pa.array([r.get("level", 1) for r in rows], type=pa.int64()),
        "subject": pa.array([r.get("subject", "arithmetic") for r in rows]),
    })


def write_aime(root: Path, rows: list[dict]) -> Path:
    """``<root>/data/train-00000-of-00001.parquet``: id, problem, solution, answer, url, year."""
    return _write(root / "data" / "train-00000-of-00001.parquet", {
        "id": pa.array([r["id"] for r in rows], type=pa.int64()),
        "problem": pa.array([r["problem"] for r in rows]),
        "solution": pa.array(["(omitted)" for _ in rows]),
        "answer": pa.array([r["answer"] for r in rows]),
        "url": pa.array(["https://example.invalid" for _ in rows]),
        "year": pa.array(["2024" for _ in rows]),
    })


def write_olympiad(root: Path, subset: str, rows: list[dict]) -> Path:
    """``<root>/<subset>/train/0000.parquet``: id, question, final_answer (list), context,
    image_1..image_5, is_multiple_answer, unit, answer_type, error, subfield, ..."""
    columns = {
        "id": pa.array([r["id"] for r in rows], type=pa.int64()),
        "question": pa.array([r["question"] for r in rows]),
        "solution": pa.array([["(omitted)"] for _ in rows], type=pa.list_(pa.string())),
        "final_answer": pa.array([r["final_answer"] for r in rows], type=pa.list_(pa.string())),
        "context": pa.array([None for _ in rows], type=pa.string()),
    }
    for n in range(1, 6):
        columns[f"image_{n}"] = pa.array(
            [image_cell((0, 0, 200), f"{r['id']}.png") if n == 1 and "_MM_" in subset else None
             for r in rows], type=IMAGE)
    columns |= {
        "is_multiple_answer": pa.array([len(r["final_answer"]) > 1 for r in rows]),
        "unit": pa.array([r.get("unit") for r in rows], type=pa.string()),
        "answer_type": pa.array(["Numerical" for _ in rows]),
        "error": pa.array([r.get("error") for r in rows], type=pa.string()),
        "subfield": pa.array([r.get("subfield", "Algebra") for r in rows]),
        "language": pa.array(["English" for _ in rows]),
    }
    return _write(root / subset / "train" / "0000.parquet", columns)


# The smoke preset's benchmark: four MathVista-layout items of our own, short enough for the
# smoke model's 256-position context.
TINY_MATHVISTA = [
    {"pid": "1", "question": "How many red squares?", "answer": "1", "question_type": "free_form",
     "answer_type": "integer", "task": "figure question answering", "skills": ["arithmetic"],
     "color": (220, 20, 20)},
    {"pid": "2", "question": "Is the image blue?", "choices": ["yes", "no"], "answer": "no",
     "question_type": "multi_choice", "answer_type": "text", "task": "visual question answering",
     "skills": ["logical reasoning"], "color": (220, 20, 20)},
    {"pid": "3", "question": "Half of 3?", "answer": "1.5", "precision": 1.0,
     "question_type": "free_form", "answer_type": "float", "task": "math word problem",
     "skills": ["arithmetic", "algebraic reasoning"], "color": (20, 20, 220)},
    {"pid": "4", "question": "Which is larger, 2 or 7?", "choices": ["2", "7"], "answer": "7",
     "question_type": "multi_choice", "answer_type": "text", "task": "math word problem",
     "skills": ["arithmetic"], "color": (20, 220, 20)},
]
TINY_MATHVISTA_DIR = (Path(__file__).parents[1] / "src" / "r1vflow" / "eval" / "benchmarks"
                      / "samples" / "mathvista_tiny")


def write_mathvista_tiny(root: Path = TINY_MATHVISTA_DIR) -> Path:
    return write_mathvista(root, TINY_MATHVISTA)


if __name__ == "__main__":
    print(write_mathvista_tiny())
