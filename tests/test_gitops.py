"""GitOps retraining: plan / apply / render on a temporary git repository, state in a temporary
SQLite MLflow store.

Real local runs (kfp.local, tiny experiments): the first apply (two experiments), and one of two
applies started at once after a change: three in all. Claim races, failures, stale claims and
schedules use a runner injected in-process (or in racing subprocesses) against the real store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import mlflow
import pytest
import yaml

from r1vflow.config import apply_override
from r1vflow.gitops.apply import ApplyContext, Outcome, apply_plan, local_refusal
from r1vflow.gitops.plan import build_plan, decide, discover
from r1vflow.gitops.state import (
    ClaimStore,
    MlflowState,
    Observed,
    check_store,
    new_claim,
    now_utc,
)

from conftest import PRESETS, ROOT

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "r1vflow.cli", "gitops"]
# The smoke preset shrunk further: a local run of this takes well under a minute.
TINY = [
    "bootstrap.vision_steps=2", "bootstrap.vision_examples=32", "bootstrap.llm_steps=2",
    "bootstrap.llm_texts=32", "bootstrap.batch_size=16", "synthesize_data.num_train=32",
    "synthesize_data.num_val=8", "synthesize_data.num_test=8", "sft.batch_size=16",
    "evaluate.max_new_tokens=8", "evaluate.batch_size=8",
]
CORE_SECTIONS = ("model", "data", "bootstrap", "synthesize_data", "sft", "evaluate")
BROKEN = "name: broken\nsft:\n  lrr: 0.001   # typo: not a field\n"


def experiment_yaml(name: str, *overrides: str, comment: str = "") -> str:
    """The smoke preset's four core stages (bootstrap, data, SFT, evaluate), shrunk by TINY;
    optional stages the preset may gain (alignment, reward model, GRPO) stay off."""
    preset = yaml.safe_load((PRESETS / "smoke.yaml").read_text())
    data = {k: v for k, v in preset.items() if k in CORE_SECTIONS}
    data["sft"].pop("iterative", None)
    for assignment in [f"name={name}", *TINY, *overrides]:
        apply_override(data, assignment)
    head = f"# {comment}\n" if comment else ""
    return head + yaml.safe_dump(data, sort_keys=False)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(root: Path, files: dict[str, str]) -> Path:
    repo = root / "repo"
    (repo / "experiments").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    commit(repo, files, "experiments")
    return repo


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / "experiments" / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def fresh_store(path: Path) -> str:
    """A SQLite MLflow store with its tables created (racing processes must not migrate it)."""
    uri = f"sqlite:///{path}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    client.search_experiments()
    client.search_registered_models()
    return uri


def plan_of(repo: Path, uri: str, stale_after_s: float = 900.0) -> dict:
    plan = build_plan(discover(repo), MlflowState(uri).observe, now_utc(), stale_after_s)
    return {e.experiment: e for e in plan}


def parent_runs(uri: str, fingerprint: str) -> list:
    client = mlflow.MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.`r1vflow.config_fingerprint` = '{fingerprint}'")


@dataclass
class World:
    root: Path
    repo: Path
    uri: str

    def cli(self, *args: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items()
               if k not in ("R1VFLOW_GIT_COMMIT", "GITHUB_RUN_ID")}
        env["MLFLOW_TRACKING_URI"] = self.uri
        return subprocess.Popen([*CLI, *args, "--repo", str(self.repo)], env=env,
                                cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def run(self, *args: str, timeout: int = 900) -> tuple[int, str, str]:
        proc = self.cli(*args)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def apply(self, *args: str) -> tuple[int, dict, str]:
        rc, out, err = self.run("apply", "--local", "--json", "--output-root",
                                str(self.root / "runs"), *args)
        assert out.strip(), err[-4000:]
        return rc, {r["experiment"]: r for r in json.loads(out)}, err


# --------------------------------------------------------------------------- real local runs


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("gitops")
    repo = make_repo(root, {"a.yaml": experiment_yaml("exp-a", comment="first experiment"),
                            "b.yaml": experiment_yaml("exp-b", "data.seed=1"),
                            "broken.yaml": BROKEN})
    return World(root, repo, fresh_store(root / "mlflow.db"))


@pytest.fixture(scope="module")
def first_apply(world):
    started = time.time()
    rc, results, err = world.apply()
    return rc, results, err, time.time() - started


def test_first_apply_runs_every_experiment_and_reports_the_invalid_one(world, first_apply):
    rc, results, err, _ = first_apply
    assert rc == 1, "an invalid experiment file must fail the apply (after the others ran)"
    head = git(world.repo, "rev-parse", "HEAD")
    for path in ("experiments/a.yaml", "experiments/b.yaml"):
        result = results[path]
        assert result["outcome"] == "succeeded", (result, err[-3000:])
        runs = parent_runs(world.uri, result["fingerprint"])
        assert len(runs) == 1
        tags = runs[0].data.tags
        assert runs[0].info.status == "FINISHED"
        assert tags["r1vflow.git_commit"] == head
        assert tags["r1vflow.experiment_file"] == path
        assert tags["r1vflow.gitops_claim"] == result["claim"]
        summary = json.loads((Path(result["detail"]) / "summary.json").read_text())
        assert summary["config_fingerprint"] == result["fingerprint"]
        claim = ClaimStore(world.uri).latest(result["fingerprint"])
        assert (claim.state, claim.generation, claim.git_commit) == ("succeeded", 0, head)
        assert claim.mlflow_run_id == runs[0].info.run_id
    broken = results["experiments/broken.yaml"]
    assert broken["outcome"] == "invalid" and broken["fingerprint"] is None
    assert "experiments/broken.yaml" in broken["reason"]
    assert "sft.lrr: unknown key" in broken["reason"]


def test_second_apply_runs_none(world, first_apply):
    rc, results, err = world.apply()
    assert rc == 1  # the invalid file still fails it
    for path in ("experiments/a.yaml", "experiments/b.yaml"):
        assert results[path]["outcome"] == "skipped", results[path]
        run_id = parent_runs(world.uri, results[path]["fingerprint"])[0].info.run_id
        assert results[path]["reason"] == (
            f"already succeeded for this fingerprint: MLflow run {run_id}")
        assert len(parent_runs(world.uri, results[path]["fingerprint"])) == 1


@pytest.fixture(scope="module")
def changed(world, first_apply):
    """Commit: one parameter of a.yaml changes; b.yaml is rewritten with keys reordered and
    comments edited (same config)."""
    before = plan_of(world.repo, world.uri)
    b = yaml.safe_load((world.repo / "experiments" / "b.yaml").read_text())
    reordered = dict(reversed(list(b.items())))
    reordered["sft"] = dict(reversed(list(b["sft"].items())))
    b_text = "# rewritten: keys reordered\n" + yaml.safe_dump(reordered, sort_keys=False) \
        .replace("sft:\n", "sft:   # a comment on the section\n")
    commit(world.repo, {"a.yaml": experiment_yaml("exp-a", "sft.lr=0.002",
                                                  comment="lr changed"),
                        "b.yaml": b_text}, "change a, reformat b")
    return before


def test_plan_lists_exactly_the_changed_experiment(world, changed):
    before = changed
    after = plan_of(world.repo, world.uri)
    assert after["experiments/a.yaml"].action == "run"
    assert after["experiments/a.yaml"].reason == "not run yet for this fingerprint"
    assert after["experiments/a.yaml"].fingerprint != before["experiments/a.yaml"].fingerprint
    assert after["experiments/b.yaml"].action == "skip"
    assert after["experiments/b.yaml"].fingerprint == before["experiments/b.yaml"].fingerprint
    assert after["experiments/broken.yaml"].action == "invalid"
    rc, out, err = world.run("plan", "--json")  # the same through the CLI
    assert rc == 0, err[-2000:]
    rows = json.loads(out)
    assert all(set(r) == {"experiment", "fingerprint", "action", "reason"} for r in rows)
    assert [(r["experiment"], r["action"]) for r in rows] == [
        ("experiments/a.yaml", "run"), ("experiments/b.yaml", "skip"),
        ("experiments/broken.yaml", "invalid")]


def test_two_applies_started_at_once_run_the_change_once(world, changed):
    fp = plan_of(world.repo, world.uri)["experiments/a.yaml"].fingerprint
    common = ("apply", "--local", "--json", "--output-root", str(world.root / "runs"))
    procs = [world.cli(*common, "--owner", f"racer-{i}") for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    results = [{r["experiment"]: r for r in json.loads(out)} for out, _ in outputs]
    outcomes = sorted(r["experiments/a.yaml"]["outcome"] for r in results)
    assert outcomes == ["skipped", "succeeded"], [err[-2000:] for _, err in outputs]
    loser = next(r["experiments/a.yaml"] for r in results
                 if r["experiments/a.yaml"]["outcome"] == "skipped")
    assert loser["reason"].startswith(("in flight: claimed by racer-", "claimed meanwhile by "))
    assert len(parent_runs(world.uri, fp)) == 1
    assert [c.generation for c in ClaimStore(world.uri).history(fp)] == [0]
    assert all(r["experiments/b.yaml"]["outcome"] == "skipped" for r in results)


# --------------------------------------------------------------------------- claim logic


RACE = textwrap.dedent("""
    import json, os, random, sys, time
    from pathlib import Path
    from r1vflow.gitops.plan import build_plan, discover
    from r1vflow.gitops.apply import ApplyContext, Outcome, apply_plan
    from r1vflow.gitops.state import MlflowState, now_utc

    repo, uri, log, go = sys.argv[1:5]
    state = MlflowState(uri)

    def runner(req):
        with open(log, "a") as fh:
            fh.write(f"{req.fingerprint} {os.getpid()}\\n")
        time.sleep(0.3)
        return Outcome("succeeded", detail="fake work")

    Path(f"{log}.ready-{os.getpid()}").touch()
    while not Path(go).exists():
        time.sleep(0.005)
    plan = build_plan(discover(Path(repo)), state.observe, now_utc(), 900)
    random.shuffle(plan)
    ctx = ApplyContext(state, runner, f"racer-{os.getpid()}", "c0ffee", heartbeat_s=0.1)
    print(json.dumps([r.to_json() for r in apply_plan(plan, ctx)]))
""")


def test_racing_processes_claim_each_fingerprint_once(tmp_path):
    """Three processes plan and claim four fingerprints at the same instant, each in its own
    random order, against one real MLflow store: every fingerprint runs exactly once."""
    repo = make_repo(tmp_path, {f"e{i}.yaml": experiment_yaml(f"e{i}", f"data.seed={i}")
                                for i in range(4)})
    uri = fresh_store(tmp_path / "mlflow.db")
    script, log, go = tmp_path / "race.py", tmp_path / "work.log", tmp_path / "go"
    script.write_text(RACE)
    procs = [subprocess.Popen([sys.executable, str(script), str(repo), uri, str(log), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("work.log.ready-*"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    worked = [line.split()[0] for line in log.read_text().splitlines()]
    fingerprints = {e.exp.fingerprint() for e in discover(repo)}
    assert sorted(worked) == sorted(fingerprints), "each fingerprint must run exactly once"
    results = [r for out, _ in outputs for r in json.loads(out)]
    assert sorted(r["outcome"] for r in results) == ["skipped"] * 8 + ["succeeded"] * 4
    store = ClaimStore(uri)
    for fp in fingerprints:
        (claim,) = store.history(fp)
        assert claim.state == "succeeded" and claim.owner.startswith("racer-")


@pytest.fixture
def lab(tmp_path):
    """A repo with one experiment and an empty store, for in-process applies."""
    repo = make_repo(tmp_path, {"x.yaml": experiment_yaml("exp-x", "data.seed=7")})
    uri = fresh_store(tmp_path / "mlflow.db")
    return repo, uri, MlflowState(uri)


def ctx_for(state, runner, **kw) -> ApplyContext:
    return ApplyContext(state, runner, kw.pop("owner", "tester"), "c0ffee", heartbeat_s=0.1, **kw)


def test_failed_run_releases_the_claim_and_a_later_apply_retries(lab):
    repo, uri, state = lab

    def crash(req):
        raise RuntimeError("out of memory in sft")

    (result,) = apply_plan(build_plan(discover(repo), state.observe, now_utc(), 900),
                           ctx_for(state, crash))
    assert result.outcome == "failed" and "RuntimeError: out of memory in sft" in result.detail
    (claim,) = ClaimStore(uri).history(result.fingerprint)
    assert claim.state == "released"
    entry = plan_of(repo, uri)["experiments/x.yaml"]
    assert (entry.action, entry.reason) == (
        "run", "last attempt failed (RuntimeError: out of memory in sft): retried")

    calls = []
    (again,) = apply_plan(build_plan(discover(repo), state.observe, now_utc(), 900),
                          ctx_for(state, lambda req: calls.append(req) or Outcome("succeeded")))
    assert again.outcome == "succeeded" and len(calls) == 1
    assert calls[0].claim.generation == 1 and calls[0].experiment_file == "experiments/x.yaml"
    assert [c.state for c in ClaimStore(uri).history(result.fingerprint)] == [
        "released", "succeeded"]
    assert plan_of(repo, uri)["experiments/x.yaml"].action == "skip"


def test_live_claims_block_and_stale_claims_are_taken_over(lab):
    repo, uri, state = lab
    fp = discover(repo)[0].exp.fingerprint()
    store = ClaimStore(uri)
    long_ago = now_utc() - timedelta(hours=1)
    assert store.acquire(new_claim(fp, 0, "crashed-ci", long_ago))
    assert not store.acquire(new_claim(fp, 0, "someone-else", now_utc()))  # the name is taken
    fresh = plan_of(repo, uri, stale_after_s=7200)["experiments/x.yaml"]
    assert fresh.action == "skip" and fresh.reason.startswith("in flight: claimed by crashed-ci")
    stale = plan_of(repo, uri, stale_after_s=600)["experiments/x.yaml"]
    assert stale.action == "run" and stale.reason.startswith("stale claim by crashed-ci")
    beats = []

    def slow(req):  # long enough for heartbeats (every 0.1 s) to pass a whole second
        time.sleep(1.2)
        beats.append(ClaimStore(uri).latest(fp).heartbeat)
        return Outcome("succeeded")

    (result,) = apply_plan(build_plan(discover(repo), state.observe, now_utc(), 600),
                           ctx_for(state, slow))
    assert result.outcome == "succeeded" and result.claim.endswith(f"{fp}-1")
    assert beats[0] > ClaimStore(uri).history(fp)[1].claimed_at  # the heartbeat ran


def test_local_apply_refuses_pretrained_models_without_claiming(lab):
    repo, uri, state = lab
    commit(repo, {"big.yaml": (ROOT / "experiments" / "r1v2-38b.yaml").read_text()}, "big")
    plan = build_plan(discover(repo), state.observe, now_utc(), 900)
    ran = []
    results = {r.experiment: r for r in apply_plan(plan, ctx_for(
        state, lambda req: ran.append(req.experiment_file) or Outcome("succeeded"),
        refuses=local_refusal))}
    assert ran == ["experiments/x.yaml"]
    big = results["experiments/big.yaml"]
    assert big.outcome == "skipped" and "needs a cluster" in big.reason
    assert ClaimStore(uri).latest(big.fingerprint) is None


def test_duplicate_fingerprints_run_once_under_the_first_file(lab):
    repo, uri, _ = lab
    text = (repo / "experiments" / "x.yaml").read_text()
    commit(repo, {"y.yaml": text.replace("name: exp-x", "name: exp-y")}, "copy")
    plan = plan_of(repo, uri)
    assert plan["experiments/x.yaml"].action == "run"
    assert plan["experiments/y.yaml"].action == "skip"
    assert plan["experiments/y.yaml"].reason.startswith("same fingerprint as experiments/x.yaml")


# --------------------------------------------------------------------------- schedules


def test_schedule_makes_a_recurring_run_and_a_schedule_change_retrains_nothing(lab):
    repo, uri, state = lab
    text = (repo / "experiments" / "x.yaml").read_text()
    commit(repo, {"x.yaml": text + 'schedule: "0 3 * * *"\n'}, "nightly")
    made, disabled, trained = [], [], []

    def cluster(req):  # what ClusterRunner does, minus KFP: a recurring run per schedule
        made.append(req.exp.schedule)
        return Outcome("scheduled", recurring_run_id=f"rr-{len(made)}")

    def apply(runner=cluster, unschedule=disabled.append):
        plan = build_plan(discover(repo), state.observe, now_utc(), 900)
        return apply_plan(plan, ctx_for(state, runner, unschedule=unschedule))

    fp = apply()[0].fingerprint
    entry = plan_of(repo, uri)["experiments/x.yaml"]
    assert (entry.action, entry.reason.split(" ('")[0]) == (
        "skip", "scheduled: KFP recurring run rr-1")

    commit(repo, {"x.yaml": text + 'schedule: "0 4 * * *"\n'}, "later")
    entry = plan_of(repo, uri)["experiments/x.yaml"]
    assert entry.fingerprint == fp  # the schedule is not fingerprinted
    assert entry.reason == ("schedule changed from '0 3 * * *' to '0 4 * * *': "
                            "replaces KFP recurring run rr-1")
    local = apply(runner=lambda req: trained.append(req) or Outcome("succeeded"),
                  unschedule=None)
    assert local[0].outcome == "skipped" and "only with `r1vflow gitops apply --host`" in \
        local[0].reason and not trained
    assert apply()[0].recurring_run_id == "rr-2" and disabled == ["rr-1"]
    assert [c.state for c in ClaimStore(uri).history(fp)] == ["unscheduled", "scheduled"]

    commit(repo, {"x.yaml": text.replace("seed: 7", "seed: 8") + 'schedule: "0 4 * * *"\n'},
           "new config")
    new = apply()[0]
    assert new.fingerprint != fp and new.recurring_run_id == "rr-3"
    assert disabled == ["rr-1", "rr-2"]  # the file's old config no longer recurs
    assert ClaimStore(uri).latest(fp).state == "unscheduled"


def test_a_schedule_added_after_training_only_creates_the_recurring_run(lab):
    repo, uri, state = lab
    calls = []

    def runner(req):
        calls.append(req.exp.schedule)
        return Outcome("scheduled", recurring_run_id="rr-9") if req.exp.schedule else \
            Outcome("succeeded")

    def apply(unschedule):
        plan = build_plan(discover(repo), state.observe, now_utc(), 900)
        return apply_plan(plan, ctx_for(state, runner, unschedule=unschedule))[0]

    fp = apply(unschedule=None).fingerprint
    text = (repo / "experiments" / "x.yaml").read_text()
    commit(repo, {"x.yaml": text + "schedule: '@weekly'\n"}, "weekly")
    entry = plan_of(repo, uri)["experiments/x.yaml"]
    assert (entry.fingerprint, entry.action) == (fp, "run")
    assert entry.reason.startswith("trained already, but schedule '@weekly' has no KFP recurring")
    assert apply(unschedule=None).outcome == "skipped" and calls == [None]  # local: cannot
    assert apply(unschedule=lambda rid: None).outcome == "scheduled" and calls == [None, "@weekly"]
    assert [c.state for c in ClaimStore(uri).history(fp)] == ["succeeded", "scheduled"]
    assert plan_of(repo, uri)["experiments/x.yaml"].action == "skip"


def test_apply_dry_run_on_a_host_shows_the_recurring_run(tmp_path):
    repo = make_repo(tmp_path, {"n.yaml": experiment_yaml("nightly") + 'schedule: "30 2 * * 1-5"\n',
                                "o.yaml": experiment_yaml("once", "data.seed=3")})
    env = {**os.environ, "MLFLOW_TRACKING_URI": fresh_store(tmp_path / "mlflow.db")}
    proc = subprocess.run([*CLI, "apply", "--repo", str(repo), "--host", "http://kfp.invalid:8080",
                           "--dry-run"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["experiment"]: r for r in json.loads(proc.stdout)}
    nightly, once = rows["experiments/n.yaml"], rows["experiments/o.yaml"]
    assert nightly["recurring_run"] == {"schedule": "30 2 * * 1-5",
                                        "cron_expression": "0 30 2 * * 1-5",
                                        "max_concurrency": 1, "no_catchup": True}
    assert nightly["submission"]["run_name"] == f"nightly-{nightly['fingerprint'][:8]}-scheduled"
    assert "recurring_run" not in once and once["submission"]["pipeline"] == "r1vflow-once"
    assert ClaimStore(env["MLFLOW_TRACKING_URI"]).latest(once["fingerprint"]) is None


# --------------------------------------------------------------------------- pure decisions


def test_decide_on_submitted_cluster_runs():
    now = now_utc()
    claim = replace(new_claim("f" * 64, 0, "ci", now - timedelta(days=2)), state="submitted",
                    kfp_run_id="k-1")
    submitted = Observed(claim=claim)
    assert decide(submitted, None, now, 900)[0] == "skip"  # days old, but KFP says nothing
    failed = Observed(claim=submitted.claim, kfp_parent_status="FAILED")
    assert decide(failed, None, now, 900) == ("run", "KFP run k-1 ended FAILED: retried")
    canceled = Observed(claim=submitted.claim, kfp_state="CANCELED")
    assert decide(canceled, None, now, 900) == ("run", "KFP run k-1 ended KFP state CANCELED: "
                                                       "retried")
    done = Observed(claim=submitted.claim, finished_run="r-9")
    assert decide(done, None, now, 900) == (
        "skip", "already succeeded for this fingerprint: MLflow run r-9")


def test_only_stores_with_an_atomic_create_hold_claims():
    for uri in ("sqlite:////tmp/x.db", "postgresql+psycopg2://u@db/mlflow", "https://mlflow.x"):
        assert check_store(uri) == uri
    for uri in ("./mlruns", "file:///tmp/mlruns", "/abs/mlruns"):
        with pytest.raises(ValueError, match="no atomic create"):
            check_store(uri)


# --------------------------------------------------------------------------- render, Argo CD


def test_render_writes_pipeline_versions_and_check_detects_drift(tmp_path):
    from r1vflow.gitops.cluster import render_manifests, rendered_drift, write_rendered

    files = discover(ROOT)
    texts = render_manifests(files, "kubeflow")
    assert sorted(texts) == sorted(f"r1vflow-{f.exp.name}.yaml" for f in files)
    for f in files:
        docs = list(yaml.safe_load_all(texts[f"r1vflow-{f.exp.name}.yaml"]))
        assert [d["kind"] for d in docs] == ["Pipeline", "PipelineVersion"]
        version = docs[1]
        assert version["apiVersion"] == "pipelines.kubeflow.org/v2beta1"
        assert version["metadata"]["namespace"] == "kubeflow"
        assert version["metadata"]["name"].startswith(
            f"r1vflow-{f.exp.name}-{f.exp.fingerprint()[:8]}-")
        assert version["spec"]["pipelineName"] == docs[0]["metadata"]["name"]
    out = tmp_path / "rendered"
    out.mkdir()
    (out / "r1vflow-gone.yaml").write_text("stale")
    assert sorted(write_rendered(texts, out)) == sorted([*texts, "r1vflow-gone.yaml"])
    assert rendered_drift(texts, out) == [] and not (out / "r1vflow-gone.yaml").exists()
    first = sorted(texts)[0]
    (out / first).write_text(texts[first] + "# edited\n")
    assert rendered_drift(texts, out) == [first]
    committed = ROOT / "manifests" / "gitops" / "rendered"
    assert rendered_drift(texts, committed) == [], (
        "manifests/gitops/rendered/ is stale: run `r1vflow gitops render` and commit it")


def test_argo_cd_application_validates_and_points_at_the_rendered_folder():
    import copy
    import importlib.resources
    import shutil

    import jsonschema
    from kubernetes_validate.utils import latest_version
    from referencing import Registry, Resource

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed, so manifests/gitops cannot be rendered")
    rendered = subprocess.run([kubectl, "kustomize", str(ROOT / "manifests" / "gitops")],
                              capture_output=True, text=True, check=True).stdout
    (app,) = [d for d in yaml.safe_load_all(rendered) if d]
    defs = json.loads((importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
                       / f"v{latest_version()}-local-strict" / "_definitions.json").read_text())
    schema = json.loads((ROOT / "manifests" / "schemas" /
                         "application-argoproj.io-v1alpha1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    registry = Registry().with_resources([(defs["$id"], Resource.from_contents(defs)),
                                          (schema["$id"], Resource.from_contents(schema))])
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    assert [e.message for e in validator.iter_errors(app)] == []
    source = app["spec"]["source"]
    assert (ROOT / source["path"]).is_dir() and source["path"] == "manifests/gitops/rendered"
    assert app["spec"]["syncPolicy"]["automated"]["prune"] is False

    def broken(edit) -> list[str]:
        doc = copy.deepcopy(app)
        edit(doc)
        return list(validator.iter_errors(doc))

    assert broken(lambda d: d["spec"]["destination"].update(name="in-cluster"))  # both
    assert broken(lambda d: d["spec"]["source"].update(pathh="x"))
    assert broken(lambda d: d["spec"]["source"].update(path="../outside"))
    assert broken(lambda d: d["spec"]["source"].update(helm={}))  # two tools
    assert broken(lambda d: d["spec"].update(sources=[d["spec"]["source"]]))  # both forms
    assert broken(lambda d: d["spec"].pop("project"))
    assert broken(lambda d: d["spec"]["syncPolicy"]["retry"]["backoff"].update(duration="30 sec"))
    assert broken(lambda d: d.update(status={}))
