"""Benchmarks from the Hugging Face hub at a pinned revision, cached between runs.

A benchmark path ``hub:<owner>/<name>`` with ``revision: <commit>`` (40 hex digits; the config
refuses a hub path without one) names a data set repository on the hub. Only the files of the
configured split in the benchmark's published layout are downloaded (`SPLIT_FILES`), with the
token of ``HF_TOKEN`` (on a cluster: the Secret `cluster.hf_secret`, as for models), into
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


def benchmark_cache() -> Path:
    """Where downloads are kept on this machine: ``$R1VFLOW_ARTIFACT_CACHE``, else
    ``~/.cache/r1vflow/artifacts`` (one cache for every run, unlike a run's own model cache)."""
    from r1vflow.storage.pointers import CACHE_ENV

    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "r1vflow" / "artifacts")


def hub_repo(path: str) -> str | None:
    """``owner/name`` of a ``hub:owner/name`` path, else None."""
    return path[len(HUB_PREFIX):] if str(path).startswith(HUB_PREFIX) else None


def split_patterns(name: str, split: str) -> list[str]:
    """The hub files benchmark ``name`` reads for ``split``."""
    return [pattern.format(split=split) for pattern in SPLIT_FILES[name]]


def _key(repo: str, revision: str, split: str) -> str:
    return f"benchmarks/{repo.replace('/', '--')}/{revision}/{split}"


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


def fetch_benchmark(name: str, path: str, revision: str | None, split: str, cache: Path,
                    store=None, store_prefix: str = "r1vflow") -> Path:
    """The local folder holding ``split`` of benchmark ``name`` from ``hub:owner/name`` at
    ``revision``: the cache's copy, else the object store's, else a hub download (then kept
    in both)."""
    repo = hub_repo(path)
    if repo is None:
        raise ValueError(f"{path!r} is not a hub:<owner>/<name> path")
    if revision is None or not COMMIT.match(revision) or revision == PLACEHOLDER_REVISION:
        raise BenchmarkDataError(f"benchmark {name}: {path} needs revision: the data set's "
                                 f"commit (40 hex digits), got {revision!r}")
    patterns, key = split_patterns(name, split), _key(repo, revision, split)
    target = cache / key
    if _complete(target, patterns):
        return target
    uri = store.uri_for(f"{store_prefix}/{key}") if store is not None else None
    if uri is not None and store.exists(uri):
        return store.fetch(uri, cache / "store")
    target.mkdir(parents=True, exist_ok=True)
    _download(repo, revision, patterns, target)
    if store is not None:
        store.upload_dir(target, f"{store_prefix}/{key}")
    return target
