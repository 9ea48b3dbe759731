"""Build an object store from flat settings or from the environment.

Endpoint, bucket, prefix and credentials never come from a compiled pipeline: on a cluster they
are environment variables and a mounted Secret, locally the files `r1vflow stack up` writes.

Environment variables (all optional; `store_from_env` returns None when no store is configured):
  R1VFLOW_STORE_DIR            plain-file store root (used when no S3 endpoint is set)
  R1VFLOW_S3_ENDPOINT          http://host:port or https://host
  R1VFLOW_S3_BUCKET            bucket (default "r1vflow")
  R1VFLOW_S3_PREFIX            key prefix under the bucket for every artifact
  R1VFLOW_S3_CREDENTIALS_FILE  JSON {"access_key": ..., "secret_key": ...}
  R1VFLOW_S3_ACCESS_KEY / R1VFLOW_S3_SECRET_KEY, else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
  R1VFLOW_S3_REGION            region, when the server needs one
  R1VFLOW_S3_SECURE            true/false (1/0, yes/no, on/off): TLS to a host:port endpoint
                               (an https:// endpoint implies it); overrides `storage.secure`

Neither R1VFLOW_S3_ENDPOINT nor MLFLOW_TRACKING_URI may carry `user:password@`: credentials come
from the Secrets (or the variables) the refusal names, and the refusal never shows the password.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from r1vflow.config.platform import (
    MLFLOW_CREDENTIALS_HINT,
    S3_CREDENTIALS_HINT,
    redact_userinfo,
    uri_userinfo,
)
from r1vflow.storage.filestore import FileStore
from r1vflow.storage.s3 import DEFAULT_PART_SIZE, DEFAULT_WORKERS, S3Store
from r1vflow.storage.store import (
    ArtifactPointer,
    BaseStore,
    StoreConfigError,
    parse_uri,
)

DEFAULT_BUCKET = "r1vflow"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def refuse_env_userinfo(var: str, uri: str, hint: str) -> None:
    """StoreConfigError when the URI read from `var` carries credentials (password not shown)."""
    if uri_userinfo(uri):
        raise StoreConfigError(
            f"{var} must not contain credentials ({redact_userinfo(uri)}): they would be shown "
            f"in logs and on command lines; {hint}")


def env_flag(var: str, environ: Mapping[str, str] | None = None) -> bool | None:
    """A boolean environment variable; None when unset, StoreConfigError when unreadable."""
    env = os.environ if environ is None else environ
    if var not in env:
        return None
    value = env[var].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise StoreConfigError(f"{var}={env[var]!r} is not a boolean: use true or false")


def tracking_uri_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """$MLFLOW_TRACKING_URI (None when unset or empty), refused when it carries credentials."""
    env = os.environ if environ is None else environ
    uri = env.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return None
    refuse_env_userinfo("MLFLOW_TRACKING_URI", uri, MLFLOW_CREDENTIALS_HINT)
    return uri


def load_credentials(
    credentials_file: Path | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """(access_key, secret_key) from the JSON file, else R1VFLOW_S3_*, else AWS_* variables."""
    env = os.environ if environ is None else environ
    if credentials_file:
        path = Path(credentials_file)
        try:
            data = json.loads(path.read_text())
            return str(data["access_key"]), str(data["secret_key"])
        except FileNotFoundError as exc:
            raise StoreConfigError(f"credentials file {path} does not exist") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreConfigError(
                f"credentials file {path} must be JSON with 'access_key' and 'secret_key'"
            ) from exc
    for key_var, secret_var in (
        ("R1VFLOW_S3_ACCESS_KEY", "R1VFLOW_S3_SECRET_KEY"),
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    ):
        if env.get(key_var) and env.get(secret_var):
            return env[key_var], env[secret_var]
    raise StoreConfigError(
        "no S3 credentials: give a credentials file (R1VFLOW_S3_CREDENTIALS_FILE) or set "
        "R1VFLOW_S3_ACCESS_KEY and R1VFLOW_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY)"
    )


def store_from_settings(
    endpoint: str,
    bucket: str = DEFAULT_BUCKET,
    prefix: str = "",
    credentials_file: Path | None = None,
    *,
    region: str | None = None,
    secure: bool = False,
    workers: int = DEFAULT_WORKERS,
    part_size: int = DEFAULT_PART_SIZE,
    max_attempts: int = 5,
    retry_budget_s: float | None = None,
    show_progress: bool = True,
    environ: Mapping[str, str] | None = None,
) -> BaseStore:
    """An S3Store for an http(s) endpoint, or a FileStore for `file:///dir` (prefix appended).

    `secure` turns TLS on for a bare host:port endpoint (https:// implies it; http:// with
    `secure` is a contradiction and refused)."""
    if endpoint.startswith("file://"):
        root = Path(endpoint[len("file://") :])
        return FileStore(
            root / prefix if prefix else root, workers=workers, show_progress=show_progress
        )
    refuse_env_userinfo("the S3 endpoint", endpoint, S3_CREDENTIALS_HINT)
    if secure and endpoint.strip().startswith("http://"):
        raise StoreConfigError(
            f"S3 endpoint {endpoint} says http:// but TLS is on (storage.secure / "
            "R1VFLOW_S3_SECURE): use https://host or a bare host:port")
    access_key, secret_key = load_credentials(credentials_file, environ)
    return S3Store(
        endpoint,
        bucket,
        access_key,
        secret_key,
        secure=secure,
        region=region,
        base_prefix=prefix,
        workers=workers,
        part_size=part_size,
        max_attempts=max_attempts,
        retry_budget_s=retry_budget_s,
        show_progress=show_progress,
    )


def store_from_env(
    environ: Mapping[str, str] | None = None, show_progress: bool = True
) -> BaseStore | None:
    """The store the environment describes (see the module docstring), or None if none is."""
    env = os.environ if environ is None else environ
    endpoint = env.get("R1VFLOW_S3_ENDPOINT", "").strip()
    if endpoint:
        refuse_env_userinfo("R1VFLOW_S3_ENDPOINT", endpoint, S3_CREDENTIALS_HINT)
        creds = env.get("R1VFLOW_S3_CREDENTIALS_FILE") or None
        return store_from_settings(
            endpoint,
            bucket=env.get("R1VFLOW_S3_BUCKET") or DEFAULT_BUCKET,
            prefix=env.get("R1VFLOW_S3_PREFIX", ""),
            credentials_file=Path(creds) if creds else None,
            region=env.get("R1VFLOW_S3_REGION") or None,
            secure=bool(env_flag("R1VFLOW_S3_SECURE", env)),
            retry_budget_s=float(env["R1VFLOW_S3_RETRY_BUDGET_S"])
            if env.get("R1VFLOW_S3_RETRY_BUDGET_S") else None,
            show_progress=show_progress,
            environ=env,
        )
    store_dir = env.get("R1VFLOW_STORE_DIR", "").strip()
    if store_dir:
        return FileStore(Path(store_dir), show_progress=show_progress)
    return None


def store_for_uri(uri: str, environ: Mapping[str, str] | None = None) -> BaseStore:
    """A store able to read `uri`: a FileStore for file:// URIs, the environment's S3 store
    for s3:// URIs (StoreConfigError when the environment configures none)."""
    scheme, _, path = parse_uri(uri)
    if scheme == "file":
        return FileStore(Path(path).parent)
    store = store_from_env(environ)
    if not isinstance(store, S3Store):
        raise StoreConfigError(
            f"{uri} is in S3 but no S3 store is configured: set R1VFLOW_S3_ENDPOINT and "
            "credentials (or use `r1vflow stack up` and its environment)"
        )
    return store


def fetch(
    pointer_or_uri: ArtifactPointer | str, cache_dir: Path, store: BaseStore | None = None
) -> Path:
    """Verified local copy of an artifact, cached by manifest digest (see BaseStore.fetch)."""
    uri = pointer_or_uri.uri if isinstance(pointer_or_uri, ArtifactPointer) else pointer_or_uri
    return (store or store_for_uri(uri)).fetch(pointer_or_uri, cache_dir)


def verify_uri(uri: str, deep: bool = True, store: BaseStore | None = None) -> list[str]:
    """Problems of the stored artifact at `uri` ([] when sound); for `r1vflow artifacts verify`.

    Raises ArtifactIncomplete when the artifact has no manifest.
    """
    return (store or store_for_uri(uri)).verify(uri, deep=deep)
