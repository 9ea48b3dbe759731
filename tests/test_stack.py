"""`stack up/status/down` with real SeaweedFS and MLflow servers (no mocks)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from r1vflow.storage import load_credentials, store_from_env
from r1vflow.storage.stack import (
    describe,
    read_stack,
    stack_down,
    stack_env,
    stack_status,
    stack_up,
)

from servers import read_tree, requires_weed, write_tree


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow  # two starts of SeaweedFS + MLflow: ~35 s on 2 cores
@requires_weed
def test_stack_up_status_down_up_keeps_objects_and_runs(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    d = tmp_path / "stack"
    try:
        info = stack_up(d)
        creds_file = Path(info.credentials_file)
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        _, secret = load_credentials(creds_file)
        assert secret not in describe(info) and secret not in (d / "stack.json").read_text()
        on_disk = json.loads((d / "stack.json").read_text())
        assert {"s3_endpoint", "mlflow_uri", "bucket", "credentials_file", "pids"} <= set(on_disk)
        assert stack_status(d).up
        assert stack_up(d).pids == info.pids  # idempotent: reports the running stack

        store = store_from_env(stack_env(d), show_progress=False)
        src = write_tree(tmp_path / "model", {"config.json": b"{}", "w/shard.bin": b"w" * 1000})
        pointer = store.upload_dir(src, "runs/r1/sft").pointer
        client = MlflowClient(tracking_uri=info.mlflow_uri)
        exp_id = client.create_experiment("stack-test")
        run_id = client.create_run(exp_id).info.run_id
        client.log_param(run_id, "model_uri", pointer.uri)
        client.log_text(run_id, "lineage notes", "notes/lineage.txt")
        client.set_terminated(run_id)
        mlflow_objects = store.client.list_objects(info.bucket, prefix="mlflow/", recursive=True)
        assert any(o.object_name.endswith("notes/lineage.txt") for o in mlflow_objects)

        ours = list(info.pids.values())
        ours += [c.pid for pid in info.pids.values() for c in psutil.Process(pid).children(True)]
        assert len(ours) > 2  # the MLflow server runs its web server as a child process
        stopped = stack_down(d)
        assert len(stopped) == 2
        assert all(_gone(pid) for pid in ours)
        status = stack_status(d)
        assert not status.up and not any(s.running for s in status.services)

        again = stack_up(d)
        assert again.credentials_file == info.credentials_file
        assert again.s3_endpoint == info.s3_endpoint  # ports reused when free
        store = store_from_env(stack_env(d), show_progress=False)
        assert read_tree(store.download_dir(pointer.uri, tmp_path / "out")) == read_tree(src)
        client = MlflowClient(tracking_uri=again.mlflow_uri)
        assert client.get_run(run_id).data.params["model_uri"] == pointer.uri
        local = client.download_artifacts(run_id, "notes/lineage.txt", str(tmp_path))
        assert Path(local).read_text() == "lineage notes"
    finally:
        stack_down(d)
    assert read_stack(d).pids == {}


def test_down_never_signals_a_process_that_is_not_ours(tmp_path: Path) -> None:
    d = tmp_path / "stack"
    (d / "run").mkdir(parents=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (d / "run" / "s3.pid").write_text(f"{stranger.pid}\n")
        (d / "run" / "mlflow.pid").write_text(f"{os.getpid()}\n")
        assert stack_down(d) == []
        assert stranger.poll() is None
        assert not (d / "run" / "s3.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_status_of_an_empty_directory(tmp_path: Path) -> None:
    status = stack_status(tmp_path)
    assert status.info is None and status.services == [] and not status.up
    with pytest.raises(RuntimeError, match="run `r1vflow stack up"):
        stack_env(tmp_path)


@requires_weed
def test_failed_start_shows_the_log_and_leaves_nothing_running(tmp_path: Path) -> None:
    d = tmp_path / "stack"
    d.mkdir()
    (d / "mlflow.db").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(RuntimeError, match="MLflow server did not become ready") as err:
        stack_up(d, timeout_s=60)
    assert "mlflow.log" in str(err.value) and "database" in str(err.value).lower()
    status = stack_status(d)
    assert status.info is None  # nothing was recorded as up
    s3_pid = d / "run" / "s3.pid"
    assert not s3_pid.exists()
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if str(d) in " ".join(p.info["cmdline"] or [])
    ]


def _fake_server(*args: str) -> subprocess.Popen:
    """A sleeping process whose command line carries `args` (what identifies a stack's
    server), started in its own session like the real ones."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args],
                            start_new_session=True)


def test_down_stops_servers_hidden_behind_rewritten_pid_files(tmp_path: Path) -> None:
    """Issue 23 #7: pid files rewritten to a stranger's pid used to be deleted while the
    servers kept running; the servers are found by their command line and stopped, the
    stranger is left alone."""
    d = tmp_path / "stack"
    (d / "run").mkdir(parents=True)
    s3 = _fake_server(f"-dir={d / 's3data'}")
    mlflow = _fake_server("mlflow", f"sqlite:///{d / 'mlflow.db'}")
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in ("s3", "mlflow"):
            (d / "run" / f"{name}.pid").write_text(f"{stranger.pid}\n")
        deadline = time.monotonic() + 10  # until both have exec'd python with their argv
        while time.monotonic() < deadline and not all(
                str(d) in " ".join(psutil.Process(p.pid).cmdline()) for p in (s3, mlflow)):
            time.sleep(0.05)
        assert stack_down(d) == [f"mlflow (pid {mlflow.pid})", f"s3 (pid {s3.pid})"]
        assert s3.wait(timeout=10) is not None and mlflow.wait(timeout=10) is not None
        assert stranger.poll() is None
        assert not (d / "run" / "s3.pid").exists() and not (d / "run" / "mlflow.pid").exists()
    finally:
        for proc in (s3, mlflow, stranger):
            proc.kill()
            proc.wait()


def test_stack_up_and_down_take_the_stack_lock(tmp_path: Path) -> None:
    """Issue 23 #7: two `stack up` of one directory ran at once; now up and down hold
    run/stack.lock: a second one waits for the first (down here) or gives up naming it."""
    import threading

    from r1vflow.storage.procs import StackError, dir_lock

    d = tmp_path / "stack"
    lock = d / "run" / "stack.lock"
    with dir_lock(lock, "test", timeout_s=1), pytest.raises(StackError, match=(
            f"the stack in {d.resolve()} is busy \\(pid {os.getpid()} holds {lock}")):
        stack_up(d, timeout_s=0.5)
    held = threading.Event()

    def hold() -> None:
        with dir_lock(lock, "test", timeout_s=1):
            held.set()
            time.sleep(0.6)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    start = time.monotonic()
    assert stack_down(d) == []
    assert time.monotonic() - start >= 0.4  # waited for the holder
    holder.join()
