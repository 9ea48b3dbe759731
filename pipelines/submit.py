"""Submit an experiment to a KFP server: compile, upload a pipeline version, start a run.

    plan = plan_submission(exp, host="http://localhost:8080", token_env="KFP_TOKEN")
    print(plan.describe())          # what --dry-run prints: no network, no token
    result = submit_plan(plan)      # SubmitError with one clear line on any failure
    print(result.run_url)

Names: pipeline `r1vflow-<name>`; version `r1vflow-<name>-<fingerprint[:8]>-<IR sha256[:8]>`, so
resubmitting the same experiment with the same code reuses its version and any change makes a new
one; the experiment's JSON travels as the compiled default of the `experiment_json` parameter,
and `--set` values that a run can take (all but resources, cluster, name, schedule and switching
a stage on or off, which are compiled in) go in the run's `overrides` parameter, so one pipeline
version serves every such variant and each task's cache key is its own config slice. The
MLflow parent run is found or created by the first task of the run (r1vflow.runtime.cluster).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from r1vflow.config import ConfigError, Experiment
from r1vflow.config.redaction import credential_in, redact
from r1vflow.config.slicing import apply_overrides
from r1vflow.pipelines.compile import ir_text, version_name
from r1vflow.pipelines.dag import pipeline_name

CONNECT_TIMEOUT_S = 10.0


class SubmitError(RuntimeError):
    """Submission failed; the message is one line meant for the user (never the token)."""


@dataclass(frozen=True)
class SubmitPlan:
    """Everything a submission sends, computed without network."""

    host: str
    namespace: str | None
    experiment: str
    pipeline_name: str
    version_name: str
    run_name: str
    description: str
    service_account: str | None
    token_env: str | None
    ir: str = field(repr=False)
    overrides: tuple[str, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What --dry-run prints: names, target, and the experiment summarized (no token)."""
        return {
            "host": self.host,
            "namespace": self.namespace,
            "pipeline": self.pipeline_name,
            "pipeline_version": self.version_name,
            "experiment": self.experiment,
            "run_name": self.run_name,
            "service_account": self.service_account,
            "auth": (f"bearer token from ${self.token_env}" if self.token_env else "none"),
            "pipeline_package": {"format": "KFP IR YAML", "bytes": len(self.ir.encode()),
                                 "sha256": _sha(self.ir)},
            "parameters": {"experiment_json": self.summary, "overrides": list(self.overrides)},
        }


@dataclass(frozen=True)
class SubmitResult:
    pipeline_id: str
    pipeline_version_id: str
    experiment_id: str
    run_id: str
    run_url: str
    pipeline_version_url: str


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def experiment_summary(exp: Experiment) -> dict[str, Any]:
    """The experiment JSON as the run sees it, summarized (compiled in as the default)."""
    blob = exp.model_dump_json()
    return {"source": "compiled default (the run passes only `overrides`)",
            "name": exp.name, "fingerprint": exp.fingerprint(), "stages": exp.stages(),
            "model": exp.model.kind, "bytes": len(blob.encode()), "sha256": _sha(blob),
            "resources": {s: f"{r.nodes} node(s) x {r.procs_per_node} proc(s)"
                          + (f", {r.accelerator_count} x {r.accelerator_type}"
                             if r.accelerator_type else "")
                          for s, r in exp.resources.items()}}


def check_host(host: str) -> str:
    """`host` without a trailing slash; SubmitError unless it is an http(s) URL without
    credentials (a user:password@ or ?token= would be printed and logged: use --token-env)."""
    try:
        parsed = urlparse(host)
        ok = parsed.scheme in ("http", "https") and bool(parsed.hostname)
    except ValueError:  # e.g. an unclosed [IPv6 address
        ok = False
    if not ok:
        raise SubmitError(f"--host {redact(host)!r} must be an http:// or https:// URL of the "
                          "KFP API, e.g. http://localhost:8080")
    if parsed.username is not None or credential_in(host):
        raise SubmitError(f"--host {redact(host)!r} must not contain credentials: give the "
                          "bearer token in an environment variable named by --token-env")
    return host.rstrip("/")


def read_token(token_env: str | None) -> str | None:
    """The bearer token from the env var named `token_env` (None without one)."""
    if not token_env:
        return None
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise SubmitError(f"--token-env {token_env}: that environment variable is not set or "
                          "empty (export the KFP token in it; the token is never a flag)")
    return token


def plan_submission(exp: Experiment, host: str, namespace: str | None = None,
                    experiment: str | None = None, token_env: str | None = None,
                    run_name: str | None = None, now: datetime | None = None,
                    overrides: list[str] | None = None) -> SubmitPlan:
    """Compile `exp` and decide every name; checks the host and token variable, no network.

    `overrides` become the run's `overrides` parameter (applied by its configure task); they
    are validated here first, so a bad one fails before anything is sent."""
    host = check_host(host)
    read_token(token_env)
    try:
        apply_overrides(exp, list(overrides or []))
    except ConfigError as err:
        raise SubmitError(" ".join(str(err).split())) from None
    ir = ir_text(exp)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return SubmitPlan(
        host=host, namespace=namespace, experiment=experiment or f"r1vflow-{exp.name}",
        pipeline_name=pipeline_name(exp), version_name=version_name(exp, ir),
        run_name=run_name or f"{exp.name}-{exp.fingerprint()[:8]}-{stamp}",
        description=exp.description or f"r1vflow {exp.name}",
        service_account=exp.cluster.service_account, token_env=token_env, ir=ir,
        summary=experiment_summary(exp), overrides=tuple(overrides or ()))


def check_reachable(host: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """SubmitError unless a TCP connection to the host's port opens within `timeout_s`."""
    parsed = urlparse(host)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise SubmitError(f"cannot reach the KFP API at {host}: {reason} (is the server up, "
                          "or `kubectl port-forward` running?)") from None


def submit_plan(plan: SubmitPlan) -> SubmitResult:
    """Upload the pipeline version (reused if it exists) and create the run."""
    token = read_token(plan.token_env)
    check_reachable(plan.host)
    try:
        # kfp.Client prints links itself and warns about KFP < 2.0 servers: keep output ours.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return _submit(plan, token)
    except SubmitError:
        raise
    except Exception as err:
        raise SubmitError(_one_line(err, plan.host, token)) from None


def _submit(plan: SubmitPlan, token: str | None) -> SubmitResult:
    import kfp
    import kfp_server_api

    client = kfp.Client(host=plan.host, namespace=plan.namespace or "kubeflow",
                        existing_token=token)
    pipeline_id = client.get_pipeline_id(plan.pipeline_name)
    if pipeline_id is None:
        created = client.pipelines.pipeline_service_create_pipeline(
            pipeline=kfp_server_api.V2beta1Pipeline(
                display_name=plan.pipeline_name, description=plan.description,
                namespace=plan.namespace))
        pipeline_id = created.pipeline_id
    name_filter = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                              "stringValue": plan.version_name}]})
    found = client.list_pipeline_versions(pipeline_id, filter=name_filter).pipeline_versions
    if found:
        version_id = found[0].pipeline_version_id
    else:
        with tempfile.TemporaryDirectory() as tmp:
            package = Path(tmp) / f"{plan.version_name}.yaml"
            package.write_text(plan.ir)
            version_id = client.upload_pipeline_version(
                str(package), plan.version_name, pipeline_id=pipeline_id,
                description=plan.description).pipeline_version_id
    experiment = client.create_experiment(plan.experiment, namespace=plan.namespace)
    run = client.run_pipeline(experiment.experiment_id, plan.run_name, pipeline_id=pipeline_id,
                              version_id=version_id, service_account=plan.service_account,
                              params={"overrides": list(plan.overrides)} if plan.overrides else None)
    return SubmitResult(
        pipeline_id=pipeline_id, pipeline_version_id=version_id,
        experiment_id=experiment.experiment_id, run_id=run.run_id,
        run_url=f"{plan.host}/#/runs/details/{run.run_id}",
        pipeline_version_url=f"{plan.host}/#/pipelines/details/{pipeline_id}/version/"
                             f"{version_id}")


def _one_line(err: Exception, host: str, token: str | None) -> str:
    """A one-line description of a KFP client failure, with the token masked."""
    status = getattr(err, "status", None)
    if status:
        body = getattr(err, "body", "") or ""
        try:
            body = json.loads(body).get("message", body) if body else ""
        except (ValueError, AttributeError):
            pass
        text = f"the KFP API at {host} answered {status} {getattr(err, 'reason', '')}: {body}"
    else:
        text = f"talking to the KFP API at {host} failed: {type(err).__name__}: {err}"
    text = " ".join(str(text).split())[:400]
    return text.replace(token, "***") if token else text
