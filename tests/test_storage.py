"""Manifests (pure), FileStore, and S3Store against a real SeaweedFS server (no mocks)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import traceback
from pathlib import Path

import pytest

from r1vflow.bench.artifacts import run_bench
from r1vflow.storage import (
    MANIFEST_NAME,
    ArtifactCorrupted,
    ArtifactIncomplete,
    FileStore,
    S3Store,
    StoreAuthError,
    StoreConfigError,
    StoreUnavailable,
    build_manifest,
    fetch,
    load_credentials,
    manifest_digest,
    store_for_uri,
    store_from_env,
    store_from_settings,
    verify_dir,
    verify_uri,
)
from r1vflow.storage.manifest import FileEntry, Manifest

from servers import WEED, S3Server, read_tree, requires_weed, write_tree

HELLO_SHA = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256(b"hello")
EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256(b"")
TREE = {
    "config.json": b'{"hidden": 8}',
    "weights/shard-1.bin": bytes(range(256)) * 4096,  # 1 MiB
    "weights/shard-2.bin": b"\x07" * (3 * 1024 * 1024 + 5),  # > 3 chunks
    "tokenizer/deep/vocab.txt": b"hello",
    "empty.txt": b"",
}


# -- manifest (pure) ------------------------------------------------------------------------
def test_build_manifest_hashes_nested_files_and_skips_itself(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a/b/c.txt": b"hello", "e.txt": b"", MANIFEST_NAME: b"{}"})
    m = build_manifest(tmp_path)
    assert list(m.files) == ["a/b/c.txt", "e.txt"]
    assert m.files["a/b/c.txt"] == FileEntry(sha256=HELLO_SHA, size=5)
    assert m.files["e.txt"] == FileEntry(sha256=EMPTY_SHA, size=0)
    assert m.total_size == 5


def test_manifest_digest_is_canonical_json_of_the_file_table() -> None:
    files = {"x": FileEntry(sha256=HELLO_SHA, size=5)}
    canonical = '{"x":{"sha256":"' + HELLO_SHA + '","size":5}}'
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    a = Manifest(files=files, created_at="2020-01-01T00:00:00+00:00", total_size=5)
    b = Manifest(files=files, created_at="2030-01-01T00:00:00+00:00", total_size=5)
    assert manifest_digest(a) == manifest_digest(b) == expected
    c = Manifest(files={"x": FileEntry(sha256=EMPTY_SHA, size=5)}, created_at="", total_size=5)
    assert manifest_digest(c) != expected


def test_verify_dir_names_missing_resized_and_altered_files(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.txt": b"hello", "b.txt": b"world", "c.txt": b"12345"})
    m = build_manifest(tmp_path)
    assert verify_dir(tmp_path, m) == []
    (tmp_path / "a.txt").unlink()
    (tmp_path / "b.txt").write_bytes(b"worl")
    (tmp_path / "c.txt").write_bytes(b"54321")
    problems = verify_dir(tmp_path, m)
    assert problems[0] == "a.txt: missing"
    assert problems[1] == "b.txt: size mismatch (expected 5 bytes, found 4)"
    assert problems[2].startswith("c.txt: sha256 mismatch")
    assert len(problems) == 3


def test_symlinks_are_refused(tmp_path: Path) -> None:
    write_tree(tmp_path, {"real.txt": b"x"})
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    with pytest.raises(ValueError, match="link.txt is a symlink"):
        build_manifest(tmp_path)


# -- settings ---------------------------------------------------------------------------------
def test_credentials_from_file_then_r1vflow_env_then_aws_env(tmp_path: Path) -> None:
    creds = tmp_path / "c.json"
    creds.write_text(json.dumps({"access_key": "AK", "secret_key": "SK"}))
    assert load_credentials(creds, {}) == ("AK", "SK")
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    assert load_credentials(None, env) == ("a", "b")
    env |= {"R1VFLOW_S3_ACCESS_KEY": "r", "R1VFLOW_S3_SECRET_KEY": "s"}
    assert load_credentials(None, env) == ("r", "s")
    with pytest.raises(StoreConfigError, match="R1VFLOW_S3_ACCESS_KEY"):
        load_credentials(None, {})
    creds.write_text('{"access_key": "AK"}')
    with pytest.raises(StoreConfigError, match="c.json must be JSON with"):
        load_credentials(creds, {})


def test_store_from_env_picks_the_backend(tmp_path: Path) -> None:
    assert store_from_env({}) is None
    fs = store_from_env({"R1VFLOW_STORE_DIR": str(tmp_path)})
    assert isinstance(fs, FileStore) and fs.root == tmp_path.resolve()
    env = {
        "R1VFLOW_S3_ENDPOINT": "http://127.0.0.1:9",
        "R1VFLOW_S3_BUCKET": "bkt",
        "R1VFLOW_S3_PREFIX": "team/a",
        "R1VFLOW_S3_ACCESS_KEY": "AK",
        "R1VFLOW_S3_SECRET_KEY": "SK",
    }
    s3 = store_from_env(env)
    assert isinstance(s3, S3Store)
    assert s3.uri_for("run1/sft") == "s3://bkt/team/a/run1/sft"
    assert "SK" not in repr(s3)
    fs2 = store_from_settings(f"file://{tmp_path}", prefix="p")
    assert fs2.uri_for("m") == (tmp_path / "p" / "m").resolve().as_uri()


# -- FileStore --------------------------------------------------------------------------------
def test_filestore_round_trip_dedup_and_change(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", TREE)
    store = FileStore(tmp_path / "store", show_progress=False)
    first = store.upload_dir(src, "run/sft")
    assert first.pointer.uri == (tmp_path / "store/run/sft").resolve().as_uri()
    assert first.pointer.manifest_sha256 == manifest_digest(build_manifest(src))
    assert first.pointer.file_count == len(TREE)
    assert first.stats.bytes_sent == sum(len(v) for v in TREE.values())
    out = store.download_dir(first.pointer.uri, tmp_path / "out")
    assert read_tree(out) == TREE
    assert verify_dir(out, build_manifest(src)) == []

    again = store.upload_dir(src, "run/sft")
    assert (again.stats.bytes_sent, again.stats.files_skipped) == (0, len(TREE))
    assert again.pointer == first.pointer

    (src / "config.json").write_bytes(b'{"hidden": 16}')
    (src / "empty.txt").unlink()
    changed = store.upload_dir(src, "run/sft")
    assert (changed.stats.files_sent, changed.stats.bytes_sent) == (1, 14)
    assert changed.pointer.manifest_sha256 != first.pointer.manifest_sha256
    assert not (tmp_path / "store/run/sft/empty.txt").exists()  # stale file removed


def test_filestore_detects_corruption_and_incomplete_artifacts(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", TREE)
    store = FileStore(tmp_path / "store", show_progress=False)
    uri = store.upload_dir(src, "m").pointer.uri
    stored = tmp_path / "store/m/weights/shard-1.bin"
    stored.write_bytes(b"\x00" * stored.stat().st_size)
    with pytest.raises(ArtifactCorrupted, match="weights/shard-1.bin: sha256 mismatch") as err:
        store.download_dir(uri, tmp_path / "out")
    assert err.value.problems == store.verify(uri)
    assert not (tmp_path / "out/weights/shard-1.bin").exists()

    (tmp_path / "store/m" / MANIFEST_NAME).unlink()
    assert not store.exists(uri)
    with pytest.raises(ArtifactIncomplete, match=MANIFEST_NAME):
        store.verify(uri)
    with pytest.raises(ArtifactIncomplete):
        store.download_dir(uri, tmp_path / "out2")


def test_filestore_fetch_is_cached_by_manifest_digest(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", TREE)
    store = FileStore(tmp_path / "store", show_progress=False)
    pointer = store.upload_dir(src, "m").pointer
    cache = tmp_path / "cache"
    first = store.fetch(pointer, cache)
    assert first == cache / pointer.manifest_sha256
    assert read_tree(first, skip=(MANIFEST_NAME, ".r1vflow_fetched")) == TREE
    store.delete(pointer.uri)  # the store no longer has it: a hit must not touch the store
    assert store.fetch(pointer, cache) == first
    with pytest.raises(ArtifactIncomplete):
        store.fetch(pointer.uri, cache)  # a bare URI needs the manifest


def test_module_level_fetch_and_verify_pick_the_store_from_the_uri(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store", show_progress=False)
    pointer = store.upload_dir(write_tree(tmp_path / "src", TREE), "m").pointer
    assert verify_uri(pointer.uri) == []
    assert (
        read_tree(fetch(pointer, tmp_path / "cache"), skip=(MANIFEST_NAME, ".r1vflow_fetched"))
        == TREE
    )
    with pytest.raises(StoreConfigError, match="no S3 store is configured"):
        store_for_uri("s3://bucket/m", {})


# -- S3Store against a real server -------------------------------------------------------------
@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    if WEED is None:
        pytest.skip(requires_weed.kwargs["reason"])
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@requires_weed
def test_s3_round_trip_with_nested_files(s3: S3Server, tmp_path: Path) -> None:
    store = s3.store()
    src = write_tree(tmp_path / "src", TREE)
    result = store.upload_dir(src, "exp/round-trip")
    pointer = result.pointer
    assert pointer.uri == "s3://r1vflow-test/exp/round-trip"
    assert pointer.manifest_sha256 == manifest_digest(build_manifest(src))
    assert (pointer.file_count, pointer.total_size) == (len(TREE), sum(map(len, TREE.values())))
    assert store.exists(pointer.uri) and store.verify(pointer.uri) == []
    stat = s3.client().stat_object("r1vflow-test", "exp/round-trip/tokenizer/deep/vocab.txt")
    assert stat.metadata["x-amz-meta-sha256"] == HELLO_SHA
    out = store.download_dir(pointer.uri, tmp_path / "out", expected_sha256=pointer.manifest_sha256)
    assert read_tree(out) == TREE


@requires_weed
def test_s3_second_upload_sends_nothing(s3: S3Server, tmp_path: Path) -> None:
    store = s3.store()
    src = write_tree(tmp_path / "src", TREE)
    first = store.upload_dir(src, "exp/dedup")
    assert first.stats.files_sent == len(TREE)
    again = store.upload_dir(src, "exp/dedup")
    assert again.stats.bytes_sent == 0 and again.stats.files_skipped == len(TREE)
    assert again.pointer == first.pointer
    (src / "weights/shard-2.bin").write_bytes(b"\x08" * 10)
    changed = store.upload_dir(src, "exp/dedup")
    assert (changed.stats.files_sent, changed.stats.bytes_sent) == (1, 10)
    assert (
        read_tree(store.download_dir(changed.pointer.uri, tmp_path / "out"))["weights/shard-2.bin"]
        == b"\x08" * 10
    )


@requires_weed
def test_s3_corrupted_object_is_named(s3: S3Server, tmp_path: Path) -> None:
    store = s3.store()
    uri = store.upload_dir(write_tree(tmp_path / "src", TREE), "exp/corrupt").pointer.uri
    size = len(TREE["weights/shard-1.bin"])
    s3.client().put_object(
        "r1vflow-test", "exp/corrupt/weights/shard-1.bin", io.BytesIO(b"\x01" * size), size
    )
    with pytest.raises(ArtifactCorrupted, match="weights/shard-1.bin: sha256 mismatch") as err:
        store.download_dir(uri, tmp_path / "out")
    assert len(err.value.problems) == 1
    assert store.verify(uri) == err.value.problems
    assert store.verify(uri, deep=False)[0].startswith("weights/shard-1.bin: sha256 mismatch")


@requires_weed
def test_s3_wrong_credentials_fail_fast_without_the_secret(s3: S3Server, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    bad_secret = "not-the-secret-" + "x" * 20
    for access_key, code in ((s3.access_key, "SignatureDoesNotMatch"), ("nobody", "InvalidAccess")):
        store = S3Store(s3.endpoint, "r1vflow-test", access_key, bad_secret, show_progress=False)
        start = time.monotonic()
        with pytest.raises(StoreAuthError) as err:
            store.upload_dir(src, "exp/auth")
        assert time.monotonic() - start < 5, "auth errors must not be retried"
        message = str(err.value)
        assert code in message and "rejected the credentials" in message
        shown = "".join(traceback.format_exception(err.value))
        assert bad_secret not in shown and bad_secret[:8] not in message


@requires_weed
def test_s3_fetch_hits_the_cache_without_network(s3: S3Server, tmp_path: Path) -> None:
    store = s3.store()
    pointer = store.upload_dir(write_tree(tmp_path / "src", TREE), "exp/fetch").pointer
    cache = tmp_path / "cache"
    local = store.fetch(pointer, cache)
    assert read_tree(local, skip=(MANIFEST_NAME, ".r1vflow_fetched")) == TREE
    offline = S3Store("127.0.0.1:9", "r1vflow-test", "k", "s", max_attempts=1, show_progress=False)
    assert offline.fetch(pointer, cache) == local  # port 9 (discard) would refuse any request
    with pytest.raises(StoreUnavailable):
        offline.fetch(pointer.uri, cache)
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"access_key": s3.access_key, "secret_key": s3.secret_key}))
    env = {"R1VFLOW_S3_ENDPOINT": s3.endpoint, "R1VFLOW_S3_CREDENTIALS_FILE": str(creds)}
    assert store_for_uri(pointer.uri, env).verify(pointer.uri) == []


# -- crash in the middle of an upload ------------------------------------------------------------
@pytest.fixture(scope="module")
def killable(tmp_path_factory: pytest.TempPathFactory):
    if WEED is None:
        pytest.skip(requires_weed.kwargs["reason"])
    server = S3Server(tmp_path_factory.mktemp("s3-killable")).start()
    yield server
    server.stop()


def _versions(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    v2 = {f"shard-{i}.bin": bytes([i + 100]) * (512 * 1024) for i in range(4)}
    v2["config.json"] = b'{"v": 2}'
    return tmp_path / "v2", v2


@requires_weed
def test_s3_server_killed_mid_upload_then_retry_completes(
    killable: S3Server, tmp_path: Path
) -> None:
    store = killable.store(workers=1, max_attempts=2, backoff_s=0.05)
    v1 = write_tree(tmp_path / "v1", {f"shard-{i}.bin": bytes([i]) * 1000 for i in range(4)})
    uri = store.upload_dir(v1, "exp/crash").pointer.uri  # a complete older version
    v2_dir, v2 = _versions(tmp_path)
    write_tree(v2_dir, v2)
    done: list[str] = []

    def crash_after_first(rel: str, sent: int) -> None:
        done.append(rel)
        if len(done) == 1:
            killable.kill()

    with pytest.raises(StoreUnavailable, match="still failing after 2 attempts"):
        store.upload_dir(v2_dir, "exp/crash", on_file=crash_after_first)
    assert len(done) == 1
    killable.start()
    # The old manifest was withdrawn before the first new file landed: nothing looks complete.
    assert not store.exists(uri)
    with pytest.raises(ArtifactIncomplete):
        store.verify(uri)
    with pytest.raises(ArtifactIncomplete):
        store.download_dir(uri, tmp_path / "partial")
    retry = store.upload_dir(v2_dir, "exp/crash")
    assert retry.stats.files_sent + retry.stats.files_skipped == len(v2)
    assert store.verify(uri) == []
    assert read_tree(store.download_dir(uri, tmp_path / "out")) == v2


@requires_weed
def test_s3_upload_rides_out_a_server_restart(killable: S3Server, tmp_path: Path) -> None:
    store = killable.store(workers=1, max_attempts=10, backoff_s=0.25)
    src = write_tree(tmp_path / "src", {f"f{i}.bin": bytes([i]) * 200_000 for i in range(3)})
    restarter: list[threading.Thread] = []

    def crash_and_restart(rel: str, sent: int) -> None:
        if not restarter:
            killable.kill()
            restarter.append(threading.Thread(target=killable.start))
            restarter[0].start()

    result = store.upload_dir(src, "exp/restart", on_file=crash_and_restart)
    restarter[0].join()
    assert result.stats.files_sent == 3
    assert store.verify(result.pointer.uri) == []


@requires_weed
def test_bench_artifacts_small_run_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_bench(out, size_mb=4, workdir=tmp_path, repeats=1)
    assert json.loads(out.read_text()) == result
    assert result["reupload_bytes"] == 0 and result["reupload_files_skipped"] == 7
    for key in ("upload_mb_s", "download_mb_s", "reference_upload_mb_s", "reference_download_mb_s"):
        assert result[key] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # work directory removed
    assert result["targets_met"] == {
        "upload_ge_0.8x_reference": result["upload_vs_reference"] >= 0.8,
        "download_ge_0.8x_reference": result["download_vs_reference"] >= 0.8,
        "reupload_sends_nothing": True}


def test_bench_commands_exit_1_when_they_miss_a_target(tmp_path: Path, monkeypatch) -> None:
    """Issue 23: a bench that prints a missed target must not exit 0."""
    from typer.testing import CliRunner

    import r1vflow.bench.artifacts as artifacts
    from r1vflow.cli import app

    for met in (True, False):
        monkeypatch.setattr(artifacts, "run_bench", lambda out, size_mb, met=met: {
            "download_vs_reference": 0.68, "targets_met": {"upload_ge_0.8x_reference": True,
                                                           "download_ge_0.8x_reference": met}})
        done = CliRunner().invoke(app, ["bench", "artifacts", "--json", str(tmp_path / "b.json")])
        assert done.exit_code == (0 if met else 1), done.output
        assert ("missed target(s): download_ge_0.8x_reference" in done.output) is not met


# -- issue 23 #7: part files, fetch cache ---------------------------------------------------
def test_a_key_named_like_a_part_file_does_not_corrupt_its_neighbour(tmp_path: Path) -> None:
    """`x` and `x.r1vflow-part` in one manifest: the download of `x` must not share its
    temporary name with the other key (18 of 40 downloads corrupted `x` before)."""
    src = write_tree(tmp_path / "src", {"x": b"x" * 300_000, "x.r1vflow-part": b"p" * 300_000})
    store = FileStore(tmp_path / "store", workers=2, show_progress=False)
    uri = store.upload_dir(src, "m").pointer.uri
    for k in range(40):
        out = store.download_dir(uri, tmp_path / f"out{k}")
        assert read_tree(out) == {"x": b"x" * 300_000, "x.r1vflow-part": b"p" * 300_000}


def test_fetch_cache_rechecks_a_changed_file_and_cleans_a_killed_fetch(tmp_path: Path) -> None:
    """A cached file changed after download (size, mtime or bytes) is checked against the
    manifest again and the entry fetched anew; a `.tmp-*` left by a killed fetch (its pid
    gone) is removed by the next fetch, one of a live process is left alone."""
    import os
    import subprocess
    import sys

    src = write_tree(tmp_path / "src", TREE)
    store = FileStore(tmp_path / "store", show_progress=False)
    pointer = store.upload_dir(src, "m").pointer
    cache = tmp_path / "cache"
    entry = store.fetch(pointer, cache)
    (entry / "config.json").write_bytes(b'{"hidden": 9}')  # same size, new mtime and bytes
    assert store.fetch(pointer, cache) == entry
    assert (entry / "config.json").read_bytes() == TREE["config.json"]
    shard = entry / "weights/shard-2.bin"
    before = shard.stat()
    with open(shard, "r+b") as handle:  # one byte flipped, size and mtime put back
        handle.write(b"\x08")
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert store.fetch(pointer, cache) == entry  # size and mtime agree: not re-hashed
    assert shard.read_bytes()[:1] == b"\x08"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    killed = cache / f".tmp-{pointer.manifest_sha256[:16]}-{dead}-deadbeef"
    alive = cache / f".tmp-{pointer.manifest_sha256[:16]}-{os.getpid()}-cafecafe"
    for tmp in (killed, alive):
        (tmp / "weights").mkdir(parents=True)
    store.fetch(pointer, cache)
    assert not killed.exists() and alive.exists()


def test_download_hashes_and_writes_on_a_second_thread_and_stops_it_on_errors(
        tmp_path: Path) -> None:
    """The download's hash-and-write thread: the digest and file of every chunk put; a failure
    of the receiver (the with block) ends the thread and propagates."""
    from r1vflow.storage.store import _HashWriter

    chunks = [bytes([k]) * (1 << 20) for k in range(20)]  # more than the queue holds
    with _HashWriter(tmp_path / "f") as out:
        for chunk in chunks:
            out.put(chunk)
    assert out.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)
    with pytest.raises(ConnectionError), _HashWriter(tmp_path / "g") as out:
        out.put(chunks[0])
        raise ConnectionError("reset by peer")
    assert not out._thread.is_alive()
