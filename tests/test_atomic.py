"""Atomic writes (storage/atomic.py) and what travels in a KFP artifact when S3 is set."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest


def test_a_failed_directory_write_leaves_the_old_directory(tmp_path):
    from r1vflow.storage.atomic import atomic_dir

    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dir left behind
    assert (target / "weights").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert [p.name for p in target.iterdir()] == ["weights"]
    assert (target / "weights").read_text() == "new"


def test_a_file_killed_mid_write_is_old_or_new_never_partial(tmp_path):
    """SIGKILL a process rewriting a 4 MiB file over and over: the file always parses."""
    target = tmp_path / "summary.json"
    target.write_text(json.dumps({"n": -1, "pad": "x" * 4_000_000}))
    writer = subprocess.Popen([sys.executable, "-c", (
        "import json, sys\nfrom r1vflow.storage.atomic import write_text\n"
        "for n in range(10**6):\n"
        "    write_text(sys.argv[1], json.dumps({'n': n, 'pad': 'x' * 4_000_000}))\n"
        "    print(n, flush=True)"), str(target)], stdout=subprocess.PIPE, text=True)
    for _ in range(3):
        writer.stdout.readline()
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert json.loads(target.read_text())["n"] >= 2


def test_published_sub_directories_travel_as_pointers(tmp_path):
    """sft iterations/ and grpo checkpoints/: a pointer for each published model, the other
    files as they are; no model bytes in the KFP artifact."""
    from r1vflow.runtime.execute import _copy_with_pointers
    from r1vflow.storage.pointers import POINTER_FILE

    work, real = tmp_path / "scratch", tmp_path / "artifact"
    for name in ("step-000001", "step-000002"):
        (work / name).mkdir(parents=True)
        (work / name / "model.safetensors").write_bytes(b"\0" * 1000)
    (work / "index.json").write_text('{"checkpoints": ["step-000001", "step-000002"]}')
    published = {(work / n).resolve(): {"uri": f"s3://b/{n}", "manifest_sha256": n}
                 for n in ("step-000001", "step-000002")}
    _copy_with_pointers(work, real, published)
    files = sorted(p.relative_to(real).as_posix() for p in real.rglob("*") if p.is_file())
    assert files == ["index.json", f"step-000001/{POINTER_FILE}",
                     f"step-000002/{POINTER_FILE}"]
    assert json.loads((real / "step-000002" / POINTER_FILE).read_text())["uri"] == \
        "s3://b/step-000002"
