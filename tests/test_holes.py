"""Closed holes (issue 13): each input below once gave a silent wrong result; now each is
refused with one clear error, before anything is written.

- manifest keys that escape the target directory (path traversal in download_dir);
- credentials inside the MLflow / S3 URIs (config and environment);
- `storage.secure` / `R1VFLOW_S3_SECURE` read nowhere (TLS silently off);
- experiment names that are not DNS-1123 labels, or too long for the names derived from them;
- experiment file names that inject documents into `gitops render` output;
- a promotion gate that opened on registry errors or on a champion without a score.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import mlflow
import pytest
import yaml

from r1vflow.config import ConfigError, experiment_from_dict
from r1vflow.storage import FileStore, S3Store, StoreConfigError, store_from_env
from r1vflow.storage.manifest import MANIFEST_NAME, FileEntry, Manifest, parse_manifest

from conftest import ROOT

CREDS = {"R1VFLOW_S3_ACCESS_KEY": "AKIAEXAMPLE", "R1VFLOW_S3_SECRET_KEY": "s3cr3t-value"}


# --------------------------------------------------------------------------- 1. path traversal

UNSAFE_KEYS = ["../../evil.txt", "/tmp/evil.txt", "a/../../evil.txt", "a\\..\\evil.txt",
               "C:/evil.txt", "a//b.txt", "./a.txt", "", "a/\x00b"]


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_manifest_with_an_unsafe_key_is_refused_at_parse(key):
    entry = {"sha256": hashlib.sha256(b"x").hexdigest(), "size": 1}
    data = json.dumps({"files": {key: entry}, "created_at": "", "total_size": 1}).encode()
    with pytest.raises(ValueError, match="unsafe manifest path"):
        parse_manifest(data, "test")
    with pytest.raises(ValueError, match="unsafe manifest path"):
        Manifest.from_files({key: FileEntry(**entry)})


def test_safe_keys_still_parse():
    entry = FileEntry(sha256=hashlib.sha256(b"x").hexdigest(), size=1)
    m = Manifest.from_files({"a.txt": entry, "w/shard-1.bin": entry, "..hidden/x": entry,
                             "dir/.dotfile": entry})
    assert parse_manifest(m.model_dump_json().encode(), "t").files == m.files


def _snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.mark.parametrize("key", ["../../evil.txt", "ABSOLUTE"])
def test_download_dir_refuses_a_traversing_manifest_before_any_write(tmp_path, key):
    store = FileStore(tmp_path / "store", show_progress=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_bytes(b"ok")
    uri = store.upload_dir(src, "runs/a").pointer.uri
    artifact = Path(uri[len("file://"):])
    if key == "ABSOLUTE":
        key = str(tmp_path / "victim.txt")
    # the object the key names exists, so that the old code found it and copied it out
    source = (artifact / key).resolve()
    payload = b"escaped"
    source.write_bytes(payload)
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    manifest["files"][key] = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    manifest["total_size"] += len(payload)
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))
    before = _snapshot(tmp_path)

    target = tmp_path / "out" / "deep" / "model"
    with pytest.raises(ValueError, match="unsafe manifest path"):
        store.download_dir(uri, target)
    assert _snapshot(tmp_path) == before  # nothing created, nothing replaced
    with pytest.raises(ValueError, match="unsafe manifest path"):
        store.verify(uri)


# --------------------------------------------------------------------------- 2. credentials


@pytest.mark.parametrize("field,value,names", [
    ("tracking.tracking_uri", "https://alice:hunter2pw@mlflow.example.com",
     ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "cluster.mlflow_secret"]),
    ("tracking.tracking_uri", "http://alice@mlflow.example.com:5000",
     ["MLFLOW_TRACKING_USERNAME", "cluster.mlflow_secret"]),
    ("storage.endpoint", "https://minio:hunter2pw@s3.example.com",
     ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "cluster.s3_secret"]),
    ("storage.endpoint", "minio:hunter2pw@s3.example.com:9000",
     ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "cluster.s3_secret"]),
])
def test_credentials_in_uris_are_refused_without_showing_them(field, value, names):
    with pytest.raises(ConfigError) as err:
        experiment_from_dict({"name": "x"}, [f"{field}={value}"])
    text = str(err.value)
    assert field in text and "credentials" in text
    for name in names:
        assert name in text
    assert "hunter2pw" not in text


def test_uris_without_userinfo_still_validate():
    exp = experiment_from_dict({"name": "x"}, [
        "tracking.tracking_uri=http://mlflow.r1vflow.svc:5000",
        "storage.endpoint=minio-service.kubeflow.svc.cluster.local:9000",
    ])
    assert exp.storage.endpoint == "minio-service.kubeflow.svc.cluster.local:9000"
    experiment_from_dict({"name": "x"}, ["tracking.tracking_uri=sqlite:////tmp/a@b/m.db"])


def test_credentials_in_env_uris_are_refused_without_showing_them():
    from r1vflow.storage.settings import tracking_uri_from_env

    env = {"R1VFLOW_S3_ENDPOINT": "http://minio:hunter2pw@s3.local:9000", **CREDS}
    with pytest.raises(StoreConfigError) as err:
        store_from_env(env)
    assert "R1VFLOW_S3_ENDPOINT" in str(err.value) and "AWS_SECRET_ACCESS_KEY" in str(err.value)
    assert "hunter2pw" not in str(err.value)
    with pytest.raises(StoreConfigError) as err:
        tracking_uri_from_env({"MLFLOW_TRACKING_URI": "https://bob:hunter2pw@mlflow.local"})
    assert "MLFLOW_TRACKING_URI" in str(err.value)
    assert "MLFLOW_TRACKING_PASSWORD" in str(err.value) and "hunter2pw" not in str(err.value)
    assert tracking_uri_from_env({"MLFLOW_TRACKING_URI": "http://m:5000"}) == "http://m:5000"
    assert tracking_uri_from_env({}) is None


# --------------------------------------------------------------------------- 3. TLS


def _is_https(store: S3Store) -> bool:
    return store.client._base_url.is_https  # the built minio client, no network


@pytest.mark.parametrize("value,expected", [("true", True), ("1", True), ("false", False),
                                            ("", False)])
def test_r1vflow_s3_secure_reaches_the_minio_client(value, expected):
    store = store_from_env({"R1VFLOW_S3_ENDPOINT": "s3.local:9000",
                            "R1VFLOW_S3_SECURE": value, **CREDS})
    assert isinstance(store, S3Store)
    assert store.secure is expected and _is_https(store) is expected


def test_r1vflow_s3_secure_typo_is_refused():
    with pytest.raises(StoreConfigError, match="R1VFLOW_S3_SECURE"):
        store_from_env({"R1VFLOW_S3_ENDPOINT": "s3.local:9000", "R1VFLOW_S3_SECURE": "ture",
                        **CREDS})


def test_storage_secure_takes_effect_and_env_overrides_it(monkeypatch):
    from r1vflow.storage.pointers import experiment_store

    for var in ("R1VFLOW_S3_ENDPOINT", "R1VFLOW_S3_SECURE", "R1VFLOW_S3_CREDENTIALS_FILE",
                "R1VFLOW_S3_BUCKET", "R1VFLOW_S3_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    exp = experiment_from_dict({"name": "x"}, ["storage.backend=s3",
                                               "storage.endpoint=s3.local:9000",
                                               "storage.secure=true"])
    store = experiment_store(exp)
    assert store.secure and _is_https(store)
    monkeypatch.setenv("R1VFLOW_S3_SECURE", "false")
    store = experiment_store(exp)
    assert not store.secure and not _is_https(store)


# --------------------------------------------------------------------------- 4. names

LIMIT = 37


@pytest.mark.parametrize("name", ["exp-", "-exp", "Exp", "exp_1", "exp.1", "a" * (LIMIT + 1),
                                  ""])
def test_invalid_kubernetes_names_are_refused(name):
    with pytest.raises(ConfigError, match="name"):
        experiment_from_dict({"name": name})


@pytest.mark.parametrize("name", ["a", "r1v2-38b", "1x", "a--b", "a" * LIMIT])
def test_dns_labels_within_the_limit_validate(name):
    exp = experiment_from_dict({"name": name})
    from r1vflow.pipelines.compile import version_name
    from r1vflow.runtime.trainjob import trainjob_name

    # the longest names r1vflow derives stay DNS-1123 labels (<= 63)
    assert len(version_name(exp, "ir")) <= 63
    assert len(f"{name}-{exp.fingerprint()[:8]}-20260101-000000") <= 63
    assert len(trainjob_name(name, "train_reward_model", "f" * 32)) <= 40


# --------------------------------------------------------------------------- 5. gitops render

EVIL = "x\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: injected\n#.yaml"


def _repo(tmp_path: Path, names: dict[str, str]) -> Path:
    """A git repo whose experiments/ holds smoke-a.yaml under each file name, renamed."""
    from test_gitops import make_repo

    text = (ROOT / "experiments" / "smoke-a.yaml").read_text()
    return make_repo(tmp_path, {name: text.replace("name: smoke-a", f"name: {exp_name}")
                                for name, exp_name in names.items()})


def test_an_experiment_file_name_with_a_newline_is_refused(tmp_path):
    from r1vflow.gitops.cluster import render_manifests
    from r1vflow.gitops.plan import ExperimentFile, discover

    repo = _repo(tmp_path, {EVIL: "evil", "ok.yaml": "good"})
    files = {f.exp.name if f.exp else "refused": f for f in discover(repo)}
    assert set(files) == {"refused", "good"}
    refused = files["refused"]
    assert "\n" not in refused.path and "[A-Za-z0-9._/-]" in refused.error
    # a caller that builds the list itself is refused too, before anything is compiled
    exp = files["good"].exp
    with pytest.raises(ConfigError, match=r"\[A-Za-z0-9\._/-\]"):
        render_manifests([ExperimentFile(f"experiments/{EVIL}", exp=exp)], "kubeflow")
    texts = render_manifests(list(files.values()), "kubeflow")
    assert list(texts) == ["r1vflow-good.yaml"]
    docs = [d for d in yaml.safe_load_all(texts["r1vflow-good.yaml"]) if d is not None]
    assert [d["kind"] for d in docs] == ["Pipeline", "PipelineVersion"]
    assert "ConfigMap" not in texts["r1vflow-good.yaml"]


# --------------------------------------------------------------------------- 6. promotion


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A migrated SQLite MLflow store, made once (migrations take seconds) and copied per test."""
    db = tmp_path_factory.mktemp("mlflow") / "template.db"
    mlflow.MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}").search_registered_models()
    return db


@pytest.fixture
def registry(tmp_path, empty_store):
    db = tmp_path / "m.db"
    shutil.copyfile(empty_store, db)
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    client = mlflow.MlflowClient()
    client.create_registered_model("exp-sft")
    for _ in range(2):
        client.create_model_version("exp-sft", source=str(tmp_path))
    return client, db


def _evaluation(version: str, score: float) -> str:
    return json.dumps({"model_version": version, "metrics": {
        "promotion_score": score, "promotion_metric/accuracy": 1.0}})


def test_no_champion_only_when_the_registry_says_so(registry):
    from r1vflow.tracking.promotion import decide, gate

    assert decide(_evaluation("exp-sft/1", 0.4), 0.0)
    result = gate(_evaluation("other-model/1", 0.4), 0.0)  # no such registered model: no champion
    assert result.promote and "no champion" in result.reason


def test_a_champion_without_a_score_blocks_promotion(registry, capsys):
    from r1vflow.tracking.promotion import decide, gate

    client, _ = registry
    client.set_registered_model_alias("exp-sft", "champion", "1")  # never tagged with a score
    assert not decide(_evaluation("exp-sft/2", 0.9), 0.0)
    out = capsys.readouterr().out
    assert "promotion blocked" in out and "r1vflow.eval.accuracy" in out
    result = gate(_evaluation("exp-sft/2", 0.9), 0.0)
    assert not result.promote and "version 1" in result.reason
    tag = client.get_model_version("exp-sft", "2").tags["r1vflow.promotion.decision"]
    assert tag == result.reason


def test_a_registry_error_blocks_promotion(registry, capsys):
    from r1vflow.tracking.promotion import decide, gate

    _, db = registry
    with sqlite3.connect(db) as conn:  # a broken registry, not a missing alias
        conn.execute("DROP TABLE registered_model_aliases")
    assert not decide(_evaluation("exp-sft/2", 0.9), 0.0)
    assert "promotion blocked" in capsys.readouterr().out
    result = gate(_evaluation("exp-sft/2", 0.9), 0.0)
    assert not result.promote and "could not read the champion" in result.reason


def test_an_unreachable_registry_blocks_promotion(tmp_path, monkeypatch):
    from r1vflow.tracking.promotion import gate

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow.set_tracking_uri("http://127.0.0.1:9")  # discard port: nothing listens
    try:
        result = gate(_evaluation("exp-sft/2", 0.9), 0.0)
    finally:
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'after.db'}")
    assert not result.promote and "could not read the champion" in result.reason

