"""Benchmarks from the Hugging Face hub or GitHub at a pinned revision, cached between runs.

A benchmark path ``hub:<owner>/<name>`` with ``revision: <commit>`` (40 hex digits; the config
refuses a hub path without one) names a data set repository on the hub. Only the files of the
configured split in the benchmark's published layout are downloaded (`SPLIT_FILES`), with the
token of ``HF_TOKEN`` (on a cluster: the Secret `cluster.hf_secret`, as for models). A path
``github:<owner>/<name>`` names the benchmark authors' GitHub repository instead, for a
benchmark that publishes its data there (`GITHUB_SPLIT_FILES`: MathVision's MATH-V): the
archive of that commit is streamed from ``$R1VFLOW_GITHUB_ARCHIVE_URL`` (default
https://codeload.github.com) and only the split's files are kept. Either is downloaded into
``<cache>/benchmarks/<owner>--<name>/<revision>/<split>``; a later run on the same machine finds
the files there and makes no request. With an object store (``storage.backend: s3``) the
download is also stored at ``<storage.prefix>/benchmarks/<owner>--<name>/<revision>/<split>``
(checksummed manifest), and a run on any machine fetches it from there before it asks the hub.

    local = fetch_benchmark("mmmu", "hub:MMMU/MMMU", "98e6ac0c...", "validation", cache)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from r1vflow.eval.benchmarks.common import BenchmarkDataError

HUB_PREFIX = "hub:"
GITHUB_PREFIX = "github:"
GITHUB_ARCHIVE_ENV = "R1VFLOW_GITHUB_ARCHIVE_URL"
# An archive (compressed) and the files kept from it are bounded: no benchmark repository
# comes near (MATH-V at its pinned commit: 3,040 images and two JSON Lines files).
MAX_ARCHIVE_BYTES = 8 << 30
# Written in a preset where no commit of the repository could be looked up: never downloaded.
PLACEHOLDER_REVISION = "0" * 40
COMMIT = re.compile(r"^[0-9a-f]{40}$")
COMPLETE = ".r1vflow-complete.json"
# The files a split needs, in each benchmark's published layout ({split} is filled in).
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "mmmu": ("*/{split}-*.parquet",),
    "mathvista": ("data/{split}-*.parquet",),
    "math500": ("{split}.jsonl",),
    "mathvision": ("data/{split}-*.parquet",),
    "aime2024": ("data/{split}-*.parquet",),
    "olympiadbench": ("*OE_*.parquet",),  # every open-ended subset; the split is unused
}
# The same for benchmarks whose authors publish the data in a GitHub repository: MATH-V's
# data/{test,testmini}.jsonl, whose rows name their image under images/.
GITHUB_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "mathvision": ("data/{split}.jsonl", "images/*"),
}


def benchmark_cache() -> Path:
    """Where downloads are kept on this machine: ``$R1VFLOW_ARTIFACT_CACHE``, else
    ``~/.cache/r1vflow/artifacts`` (one cache for every run, unlike a run's own model cache)."""
    from r1vflow.storage.pointers import CACHE_ENV

    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "r1vflow" / "artifacts")


def hub_repo(path: str) -> str | None:
    """``owner/name`` of a ``hub:owner/name`` or ``github:owner/name`` path, else None."""
    for prefix in (HUB_PREFIX, GITHUB_PREFIX):
        if str(path).startswith(prefix):
            return str(path)[len(prefix):]
    return None


def split_patterns(name: str, split: str, github: bool = False) -> list[str]:
    """The files benchmark ``name`` reads for ``split`` (in its GitHub layout: ``github``)."""
    return [p.format(split=split) for p in (GITHUB_SPLIT_FILES if github else SPLIT_FILES)[name]]


def _key(repo: str, revision: str, split: str, github: bool) -> str:
    return f"benchmarks/{'github--' if github else ''}{repo.replace('/', '--')}/{revision}/{split}"


def _complete(directory: Path, patterns: list[str]) -> bool:
    marker = directory / COMPLETE
    try:
        return json.loads(marker.read_text())["patterns"] == patterns
    except (OSError, ValueError, KeyError):
        return False


def _download(repo: str, revision: str, patterns: list[str], target: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id=repo, repo_type="dataset", revision=revision,
                          allow_patterns=patterns, local_dir=target,
                          token=os.environ.get("HF_TOKEN") or None)
    except Exception as err:  # network, auth, unknown repo or revision: one line
        raise BenchmarkDataError(f"hub:{repo}@{revision}: download failed "
                                 f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not any(f.is_file() for f in target.rglob("*") if not f.name.startswith(".")):
        raise BenchmarkDataError(f"hub:{repo}@{revision}: no file matches {patterns} (is this "
                                 "the benchmark's repository?)")
    (target / COMPLETE).write_text(json.dumps({"patterns": patterns}) + "\n")


def _archive_member(name: str, patterns: list[str]) -> str | None:
    """A member's path inside the repository (the archive's top folder dropped) when a pattern
    keeps it and it stays inside, else None."""
    from fnmatch import fnmatchcase
    from pathlib import PurePosixPath

    parts = PurePosixPath(name).parts[1:]
    if not parts or any(part in ("", ".", "..") for part in parts):
        return None
    relative = "/".join(parts)
    return relative if any(fnmatchcase(relative, p) for p in patterns) else None


def _download_github(repo: str, revision: str, patterns: list[str], target: Path) -> None:
    """The regular files of ``repo`` at ``revision`` that ``patterns`` keep, streamed from the
    commit's archive (links, devices and paths out of the folder are never written)."""
    import tarfile

    import urllib3

    base = os.environ.get(GITHUB_ARCHIVE_ENV, "https://codeload.github.com").rstrip("/")
    where = f"github:{repo}@{revision}"
    try:
        response = urllib3.PoolManager().request(
            "GET", f"{base}/{repo}/tar.gz/{revision}", preload_content=False,
            timeout=urllib3.Timeout(connect=30, read=300), retries=urllib3.Retry(3))
    except urllib3.exceptions.HTTPError as err:
        raise BenchmarkDataError(f"{where}: download failed ({type(err).__name__})") from None
    kept, written = 0, 0
    try:
        if response.status != 200:
            raise BenchmarkDataError(f"{where}: download failed (HTTP {response.status}; is "
                                     "the repository public and the commit in it?)")
        size = int(response.headers.get("Content-Length") or 0)
        if size > MAX_ARCHIVE_BYTES:
            raise BenchmarkDataError(f"{where}: archive of {size:,} bytes, over the bound of "
                                     f"{MAX_ARCHIVE_BYTES:,}")
        with tarfile.open(fileobj=response, mode="r|gz") as archive:
            for member in archive:
                relative = _archive_member(member.name, patterns)
                if relative is None or not member.isreg():
                    continue
                written += member.size
                if written > MAX_ARCHIVE_BYTES:
                    raise BenchmarkDataError(f"{where}: the split's files pass the bound of "
                                             f"{MAX_ARCHIVE_BYTES:,} bytes")
                out = target / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as source, open(out, "wb") as sink:
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
                kept += 1
    except (tarfile.TarError, EOFError, OSError, urllib3.exceptions.HTTPError) as err:
        raise BenchmarkDataError(f"{where}: not a readable archive "
                                 f"({type(err).__name__}: {str(err)[:200]})") from None
    finally:
        response.release_conn()
    if not kept:
        raise BenchmarkDataError(f"{where}: no file matches {patterns} (is this the "
                                 "benchmark's repository?)")
    (target / COMPLETE).write_text(json.dumps({"patterns": patterns}) + "\n")


def fetch_benchmark(name: str, path: str, revision: str | None, split: str, cache: Path,
                    store=None, store_prefix: str = "r1vflow") -> Path:
    """The local folder holding ``split`` of benchmark ``name`` from ``hub:owner/name`` or
    ``github:owner/name`` at ``revision``: the cache's copy, else the object store's, else a
    download (then kept in both)."""
    repo = hub_repo(path)
    if repo is None:
        raise ValueError(f"{path!r} is not a hub:<owner>/<name> or github:<owner>/<name> path")
    if revision is None or not COMMIT.match(revision) or revision == PLACEHOLDER_REVISION:
        raise BenchmarkDataError(f"benchmark {name}: {path} needs revision: the data set's "
                                 f"commit (40 hex digits), got {revision!r}")
    github = path.startswith(GITHUB_PREFIX)
    patterns, key = split_patterns(name, split, github), _key(repo, revision, split, github)
    target = cache / key
    if _complete(target, patterns):
        return target
    uri = store.uri_for(f"{store_prefix}/{key}") if store is not None else None
    if uri is not None and store.exists(uri):
        return store.fetch(uri, cache / "store")
    target.mkdir(parents=True, exist_ok=True)
    (_download_github if github else _download)(repo, revision, patterns, target)
    if store is not None:
        store.upload_dir(target, f"{store_prefix}/{key}")
    return target
