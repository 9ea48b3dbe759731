"""`r1vflow submit`: the dry run (no network), one-line failures, and a full submission against an
in-process HTTP server speaking the KFP v2beta1 REST API (the calls kfp.Client makes)."""

import json
import os
import re
import socket
import threading
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from typer.testing import CliRunner

from r1vflow.cli import app
from r1vflow.config import load_experiment
from r1vflow.pipelines.compile import ir_text, version_name
from r1vflow.pipelines.submit import SubmitError, check_host, plan_submission, submit_plan

ROOT = Path(__file__).resolve().parents[1]
R1V2 = ROOT / "pipelines" / "configs" / "r1v2-38b.yaml"
TOKEN = "fake-kfp-token-do-not-print-0042"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- without network


def test_dry_run_prints_what_would_be_sent_without_network(monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    host = f"http://127.0.0.1:{closed_port()}"  # nothing listens: a network call would fail
    result = CliRunner().invoke(app, ["submit", str(R1V2), "--host", host, "--dry-run",
                                      "--token-env", "KFP_TOKEN", "--experiment", "r1v2",
                                      "--namespace", "team-a", "--set", "mpo.lr=2e-6"])
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    shown = json.loads(result.output)
    # mpo.lr is a run parameter (`overrides`), not compiled in: the version is the file's
    exp = load_experiment(R1V2)
    assert shown["parameters"]["overrides"] == ["mpo.lr=2e-6"]
    assert shown["pipeline"] == "r1vflow-r1v2-38b"
    assert shown["pipeline_version"] == version_name(exp, ir_text(exp))
    assert exp.fingerprint()[:8] in shown["pipeline_version"]
    assert (shown["experiment"], shown["namespace"], shown["host"]) == ("r1v2", "team-a", host)
    assert shown["auth"] == "bearer token from $KFP_TOKEN"
    summary = shown["parameters"]["experiment_json"]
    assert summary["fingerprint"] == exp.fingerprint()
    assert summary["stages"] == ["import_model", "synthesize_data", "train_reward_model", "mpo",
                                 "grpo", "evaluate"]
    assert summary["resources"]["mpo"] == "1 node(s) x 8 proc(s), 8 x nvidia.com/gpu"
    assert shown["run_name"].startswith(f"r1v2-38b-{exp.fingerprint()[:8]}-")


def test_submit_compiles_placement_overrides_and_refuses_bad_run_overrides(monkeypatch):
    host = f"http://127.0.0.1:{closed_port()}"
    placed = CliRunner().invoke(app, ["submit", str(R1V2), "--host", host, "--dry-run",
                                      "--set", "resources.mpo.retries=4"])
    assert placed.exit_code == 0, placed.output
    shown = json.loads(placed.output)
    exp = load_experiment(R1V2, ["resources.mpo.retries=4"])
    assert shown["pipeline_version"] == version_name(exp, ir_text(exp))
    assert shown["parameters"]["overrides"] == []
    bad = CliRunner().invoke(app, ["submit", str(R1V2), "--host", host, "--dry-run",
                                   "--set", "mpo.lr=-1"])
    assert bad.exit_code == 2
    assert "mpo.lr" in bad.output and "greater than 0" in bad.output


def test_plan_names_are_deterministic_per_experiment_and_code():
    exp = load_experiment(R1V2)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    plan = plan_submission(exp, "http://kfp.example:8080/", now=now)
    assert plan.host == "http://kfp.example:8080"
    assert plan.run_name == f"r1v2-38b-{exp.fingerprint()[:8]}-20260102-030405"
    assert plan.experiment == "r1vflow-r1v2-38b"
    assert plan_submission(exp, "http://x", now=now).version_name == plan.version_name


@pytest.mark.parametrize("host", ["localhost:8080", "ftp://kfp", "http://", "kfp.example"])
def test_bad_host_is_rejected(host):
    with pytest.raises(SubmitError, match="must be an http:// or https:// URL"):
        check_host(host)


def test_missing_token_variable_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    result = CliRunner().invoke(app, ["submit", str(R1V2), "--host", "http://127.0.0.1:1",
                                      "--token-env", "NO_SUCH_TOKEN_VAR", "--dry-run"])
    assert result.exit_code == 2
    assert "--token-env NO_SUCH_TOKEN_VAR: that environment variable is not set" in result.output
    assert "Traceback" not in result.output


def test_unreachable_host_fails_with_one_line_not_a_traceback(monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    host = f"http://127.0.0.1:{closed_port()}"
    result = CliRunner().invoke(app, ["submit", str(R1V2), "--host", host,
                                      "--token-env", "KFP_TOKEN"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot reach the KFP API at {host}")
    assert "Traceback" not in result.output and TOKEN not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                      SystemExit)


# --------------------------------------------------------------------------- against a fake KFP


class FakeKfp(BaseHTTPRequestHandler):
    """The v2beta1 endpoints kfp.Client uses, with in-memory state on the server object."""

    def log_message(self, *args):
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict, bytes]:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.calls.append((self.command, url.path, self.headers.get("Authorization")))
        return url.path, {k: v[0] for k, v in parse_qs(url.query).items()}, body

    def do_GET(self):  # noqa: N802
        path, query, _ = self._record()
        state = self.server.state
        if path == "/apis/v2beta1/healthz":
            return self._reply({"multi_user": False})
        if path == "/apis/v2beta1/pipelines":
            name = json.loads(query["filter"])["predicates"][0]["stringValue"]
            hits = [p for p in state["pipelines"] if p["display_name"] == name]
            return self._reply({"pipelines": hits, "total_size": len(hits)} if hits else {})
        if m := re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", path):
            name = json.loads(query["filter"])["predicates"][0]["stringValue"]
            hits = [v for v in state["versions"]
                    if v["pipeline_id"] == m.group(1) and v["display_name"] == name]
            return self._reply({"pipeline_versions": hits} if hits else {})
        if path == "/apis/v2beta1/experiments":
            return self._reply({})
        return self._reply({"message": f"no route {path}"}, 404)

    def do_POST(self):  # noqa: N802
        path, query, body = self._record()
        state = self.server.state
        if path == "/apis/v2beta1/pipelines":
            pipeline = {**json.loads(body), "pipeline_id": f"p{len(state['pipelines']) + 1}"}
            state["pipelines"].append(pipeline)
            return self._reply(pipeline)
        if path == "/apis/v2beta1/pipelines/upload_version":
            message = BytesParser(policy=email_policy).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            package = next(p.get_content() for p in message.iter_parts())
            version = {"pipeline_id": query["pipelineid"], "display_name": query["name"],
                       "pipeline_version_id": f"v{len(state['versions']) + 1}"}
            state["versions"].append(version)
            state["packages"].append(package if isinstance(package, bytes) else package.encode())
            return self._reply(version)
        if path == "/apis/v2beta1/experiments":
            return self._reply({**json.loads(body), "experiment_id": "e1"})
        if path == "/apis/v2beta1/runs":
            run = {**json.loads(body), "run_id": f"r{len(state['runs']) + 1}"}
            state["runs"].append(run)
            return self._reply(run)
        return self._reply({"message": f"no route {path}"}, 404)


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.calls = []
    server.state = {"pipelines": [], "versions": [], "packages": [], "runs": []}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def fake_kfp():
    server = serve(FakeKfp)
    yield server
    server.shutdown()
    server.server_close()


class RejectingKfp(FakeKfp):
    """Answers every POST with 403 and a message that quotes the token back."""

    def do_POST(self):  # noqa: N802
        self._record()
        self._reply({"message": f"denied for token {TOKEN}"}, 403)


def test_submit_uploads_a_version_and_starts_a_run(fake_kfp, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    host = f"http://127.0.0.1:{fake_kfp.server_address[1]}"
    result = CliRunner().invoke(app, ["submit", str(R1V2), "--host", host,
                                      "--token-env", "KFP_TOKEN", "--experiment", "r1v2"])
    assert result.exit_code == 0, result.output
    state = fake_kfp.state
    assert result.output.splitlines() == [
        f"pipeline version: {host}/#/pipelines/details/p1/version/v1",
        f"run: {host}/#/runs/details/r1"]
    assert TOKEN not in result.output
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in fake_kfp.calls)
    (pipeline,) = state["pipelines"]
    assert pipeline["display_name"] == "r1vflow-r1v2-38b"
    exp = load_experiment(R1V2)
    (version,) = state["versions"]
    assert version["display_name"] == version_name(exp, ir_text(exp))
    (package,) = state["packages"]
    assert package.decode() == ir_text(exp)
    assert yaml.safe_load_all(package.decode())
    (run,) = state["runs"]
    assert run["pipeline_version_reference"] == {"pipeline_id": "p1",
                                                 "pipeline_version_id": "v1"}
    assert run["experiment_id"] == "e1"
    assert run["display_name"].startswith(f"r1v2-38b-{exp.fingerprint()[:8]}-")
    assert "runtime_config" not in run or not run["runtime_config"].get("parameters")

    # the same experiment and code again: the version is reused, only a new run is created
    again = submit_plan(plan_submission(exp, host, experiment="r1v2", token_env="KFP_TOKEN"))
    assert (again.pipeline_id, again.pipeline_version_id, again.run_id) == ("p1", "v1", "r2")
    assert len(state["versions"]) == 1 and len(state["packages"]) == 1


def test_api_rejection_is_one_line_with_the_token_masked(monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    server = serve(RejectingKfp)
    host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(SubmitError) as err:
            submit_plan(plan_submission(load_experiment(R1V2), host, token_env="KFP_TOKEN"))
    finally:
        server.shutdown()
        server.server_close()
    message = str(err.value)
    assert "\n" not in message and TOKEN not in message
    assert message.startswith(f"the KFP API at {host} answered 403") and "***" in message
    assert "denied for token" in message


# --------------------------------------------------------------------------- the parent run


def test_cluster_tasks_share_one_parent_run_per_kfp_run(tmp_path):
    import mlflow

    from r1vflow.runtime.cluster import (
        KFP_RUN_TAG,
        attach_parent_run,
        find_or_create_parent_run,
        report_to_parent,
    )
    from r1vflow.tracking.runs import PARENT_ENV

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    assert attach_parent_run(uri, "r1vflow-x", "x", "f" * 64, environ={}) is None  # local
    pod = {"R1VFLOW_POD_NAMESPACE": "kubeflow", "R1VFLOW_KFP_RUN_ID": "run-1"}
    first = attach_parent_run(uri, "r1vflow-x", "x", "f" * 64, environ=pod)
    assert pod[PARENT_ENV] == first and pod["R1VFLOW_KFP_RUN"] == "kfp:run-1"
    other_task = {"R1VFLOW_POD_NAMESPACE": "kubeflow", "R1VFLOW_KFP_RUN_ID": "run-1"}
    assert attach_parent_run(uri, "r1vflow-x", "x", "f" * 64, environ=other_task) == first
    next_run = {"R1VFLOW_POD_NAMESPACE": "kubeflow", "R1VFLOW_KFP_RUN_ID": "run-2"}
    assert attach_parent_run(uri, "r1vflow-x", "x", "f" * 64, environ=next_run) != first
    parent = client.get_run(first)
    assert parent.data.tags[KFP_RUN_TAG] == "run-1"
    assert parent.data.tags["r1vflow.config_fingerprint"] == "f" * 64

    # two tasks that both created a parent settle on the older one; the newer is deleted
    exp_id = parent.info.experiment_id
    late = client.create_run(exp_id, tags={KFP_RUN_TAG: "run-1"}, start_time=
                             parent.info.start_time + 1000).info.run_id
    assert find_or_create_parent_run(uri, "r1vflow-x", "x", "run-1", {}) == first
    assert client.get_run(late).info.lifecycle_stage == "active"  # found, not created: kept

    report_to_parent(uri, "sft", "succeeded", {"accuracy/test": 0.5, "loss": 1.0},
                     last_stage=False, environ=pod)
    report_to_parent(uri, "evaluate", "succeeded", {"accuracy/test": 0.75}, last_stage=True,
                     environ=pod)
    parent = client.get_run(first)
    assert parent.data.tags["r1vflow.stage.sft"] == "succeeded"
    assert parent.data.metrics == {"accuracy/test": 0.75}
    assert parent.info.status == "FINISHED"
    report_to_parent(uri, "evaluate", "failed", {}, last_stage=False, environ=pod)
    assert client.get_run(first).info.status == "FAILED"


def test_configure_and_gate_make_and_finish_a_cluster_parent_run(tmp_path, monkeypatch):
    """The configure task of a cluster run gives the KFP run's parent run the whole config as
    params (what `r1vflow compare` diffs) and the overrides as a tag; a second configure of the
    same KFP run (a retry) writes nothing twice; the promotion gate finishes the run."""
    import mlflow

    from r1vflow.config import flatten
    from r1vflow.config.slicing import apply_overrides
    from r1vflow.runtime.configure import OVERRIDES_TAG, configure_slices
    from r1vflow.tracking.runs import PARENT_ENV

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("R1VFLOW_POD_NAMESPACE", "kubeflow")
    monkeypatch.setenv("R1VFLOW_KFP_RUN_ID", "run-7")
    monkeypatch.delenv(PARENT_ENV, raising=False)
    exp = load_experiment(R1V2)
    configure_slices(exp.model_dump_json(), ["grpo.lr=3e-6"])
    parent = mlflow.MlflowClient(uri).get_run(os.environ[PARENT_ENV])
    params = parent.data.params
    assert params["grpo.lr"] == "3e-06" and params["name"] == "r1v2-38b"
    expected = flatten(apply_overrides(exp, ["grpo.lr=3e-6"]).model_dump(mode="json"))
    assert set(params) == set(expected)
    assert parent.data.tags[OVERRIDES_TAG] == '["grpo.lr=3e-6"]'
    monkeypatch.delenv(PARENT_ENV)  # the retried task finds the same parent and changes nothing
    configure_slices(exp.model_dump_json(), ["grpo.lr=3e-6"])
    again = mlflow.MlflowClient(uri).get_run(os.environ[PARENT_ENV])
    assert again.info.run_id == parent.info.run_id and again.data.params == params

    # A fully cached KFP run executes no stage: the promotion gate, its last task, finishes the
    # parent run that configure made (else it would stay RUNNING).
    from r1vflow.runtime.cluster import finish_parent_run

    assert again.info.status == "RUNNING"
    finish_parent_run(uri, "r1vflow-r1v2-38b", "r1v2-38b", exp.fingerprint(), environ={})  # local
    assert mlflow.MlflowClient(uri).get_run(parent.info.run_id).info.status == "RUNNING"
    monkeypatch.delenv(PARENT_ENV)  # the gate's pod attaches by the KFP run id, as stages do
    finish_parent_run(uri, "r1vflow-r1v2-38b", "r1v2-38b", exp.fingerprint())
    done = mlflow.MlflowClient(uri).get_run(parent.info.run_id)
    assert done.info.status == "FINISHED"
    assert done.data.tags["r1vflow.stage.decide_promotion"] == "succeeded"
