"""Level 3: the whole smoke DAG through kfp.local on a user's JSONL data set, chosen with --set
on the real CLI; and the CLI's check of the data against the enabled stages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import PRESETS, clean_env

CLI = [sys.executable, "-m", "r1vflow.cli"]
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=1800,
                          env=clean_env())


def write_user_data(folder: Path, n: int) -> Path:
    """n rows of a counting task drawn here (32 px PNGs, 1-4 squares of one colour), with
    solutions, captions and preference pairs, plus one bad row (no answer) at the end."""
    (folder / "pics").mkdir(parents=True)
    lines = []
    for i in range(n):
        count, name = 1 + i % 4, list(COLOURS)[i // 4 % 3]
        image = Image.new("RGB", (32, 32), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        for k in range(count):
            x, y = 2 + 16 * (k % 2), 2 + 16 * (k // 2) + (i // 12) % 3
            draw.rectangle([x, y, x + 9, y + 9], fill=COLOURS[name])
        image.save(folder / "pics" / f"{i}.png")
        solution = f"{' '.join([name + ' square.'] * count)} {count} {name} objects."
        lines.append({"id": f"u{i}", "image": f"pics/{i}.png",
                      "question": f"How many {name} objects are there?", "answer": count,
                      "solution": solution, "caption": f"{count} {name} squares.",
                      "chosen": f"<think>{solution}</think><answer>{count}</answer>",
                      "rejected": f"<think>{solution}</think><answer>{count + 1}</answer>"})
    lines.append({"id": "broken", "image": "pics/0.png", "question": "How many?"})
    path = folder / "mydata.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_validate_fits_the_stages_to_a_file_without_solutions_or_captions(tmp_path):
    """An ordinary question/answer file (no solution, no caption column): validate switches sft
    to answer-only targets and the captions step to the chain-of-thought data, one note line
    each (issue 24; it was refused before), and names no chosen column (the reward model is
    off)."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"image": "a.png", "question": "q", "answer": 1}) + "\n")
    result = _run("validate", str(PRESETS / "smoke.yaml"), "--set", "data.source.kind=files",
                  "--set", f"data.source.path={data}", "--set", "train_reward_model=null",
                  "--set", "sft.iterative=null")
    assert result.returncode == 0, result.stderr
    assert "note: data.source: no solution column, so answer_only_sft=true" in result.stderr
    assert "note: align_projector: no caption column, so its captions step(s) (captions) " \
           "train on data: cot" in result.stderr
    assert "chosen" not in result.stderr


def test_run_with_a_missing_data_path_is_one_error_line_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    result = _run("run", str(PRESETS / "smoke.yaml"), "--output-dir", str(out), "--set",
                  "data.source.kind=files", "--set", f"data.source.path={tmp_path / 'nope'}")
    assert result.returncode == 2
    assert f"error: data.source.path {tmp_path / 'nope'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.slow
def test_whole_dag_runs_on_a_users_jsonl(tmp_path, smoke_dag):
    """Into a dir holding the session smoke run's KFP cache (conftest.smoke_dag): bootstrap,
    whose config slice the data source is no part of, is served from it; every stage from
    synthesize_data on runs on the user's rows."""
    data = write_user_data(tmp_path / "user", 160)
    out = smoke_dag.cache_into(tmp_path / "run")
    result = _run("run", str(PRESETS / "smoke.yaml"), "--output-dir", str(out),
                  "--set", "data.source.kind=files", "--set", f"data.source.path={data}",
                  "--set", "data.source.val_fraction=0.2", "--set",
                  "data.source.test_fraction=0.2", "--set", "data.on_bad_row=skip")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {s: e["status"] for s, e in summary["stages"].items()} == dict.fromkeys(
        ["bootstrap", "synthesize_data", "align_projector", "train_reward_model", "sft", "grpo",
         "evaluate"], "succeeded")
    assert [s for s, e in summary["stages"].items() if e["cached"]] == ["bootstrap"]
    data_metrics = summary["stages"]["synthesize_data"]["metrics"]
    assert data_metrics["rows_read"] == 161 and data_metrics["rows_skipped"] == 1
    splits = data_metrics["num_train"], data_metrics["num_val"], data_metrics["num_test"]
    assert sum(splits) == 160
    evaluate = summary["stages"]["evaluate"]["metrics"]
    assert evaluate["eval_size"] == data_metrics["num_test"]
    assert "accuracy_number/grpo" in evaluate  # the answer kind is the sample's family
