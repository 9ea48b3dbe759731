"""GitOps state in MLflow: claims (who trains a fingerprint) and the runs a fingerprint produced.

A claim is an MLflow *registered model* named `r1vflow-claim-<fingerprint>-<generation>`. The
registry's name is unique in the store (the primary key of `registered_models` in the SQLAlchemy
store, on SQLite, PostgreSQL and MySQL alike, and behind an MLflow server), so creating that model
is an atomic compare-and-set: of two appliers that try the same name, exactly one gets it, the other
gets RESOURCE_ALREADY_EXISTS. A claim is never deleted: a later attempt creates the next generation,
so no name is ever reused and a slow applier with an old view can never win a name twice. The
claim's tags (`r1vflow.gitops.*`) carry its state, owner, heartbeat and what it started.

    store = ClaimStore(tracking_uri)
    claim = new_claim(fp, generation=0, owner="ci#42", now=now_utc(), experiment_file="experiments/a.yaml")
    if store.acquire(claim): ...
    MlflowState(tracking_uri).observe(fp)   # latest claim + finished/failed runs, for the planner
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from r1vflow.tracking.client import mlflow_client

CLAIM_PREFIX = "r1vflow-claim-"
TAG = "r1vflow.gitops."
FINGERPRINT_TAG = "r1vflow.config_fingerprint"
KFP_RUN_TAG = "r1vflow.kfp_run_id"
# running: an applier works on it and heartbeats; submitted: a KFP run trains it; scheduled: a KFP
# recurring run trains it; succeeded; released: failed or given up, a later apply retries;
# unscheduled: its recurring run was disabled (replaced by a newer config or schedule).
STATES = ("running", "submitted", "scheduled", "succeeded", "released", "unscheduled")
_MAX_TAG = 4000


def now_utc() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def default_owner(environ: Mapping[str, str] | None = None) -> str:
    """Who claims: the CI job when there is one (GitHub Actions), else user@host:pid."""
    env = os.environ if environ is None else environ
    if env.get("GITHUB_RUN_ID"):
        return (f"github:{env.get('GITHUB_REPOSITORY', '?')}/actions/runs/{env['GITHUB_RUN_ID']}"
                f"/attempts/{env.get('GITHUB_RUN_ATTEMPT', '1')}")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def claim_name(fingerprint: str, generation: int) -> str:
    return f"{CLAIM_PREFIX}{fingerprint}-{generation}"


@dataclass(frozen=True)
class Claim:
    """One attempt at a fingerprint; `name` is its unique registered-model name."""

    fingerprint: str
    generation: int
    state: str
    owner: str
    claimed_at: datetime
    heartbeat: datetime
    experiment_file: str = ""
    git_commit: str = ""
    mlflow_run_id: str = ""
    kfp_run_id: str = ""
    recurring_run_id: str = ""
    cron: str = ""
    detail: str = ""

    @property
    def name(self) -> str:
        return claim_name(self.fingerprint, self.generation)

    def tags(self) -> dict[str, str]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "generation":
                continue
            out[TAG + f.name] = stamp(value) if isinstance(value, datetime) else str(value)
        out[TAG + "detail"] = out[TAG + "detail"][:_MAX_TAG]
        return out

    @classmethod
    def from_tags(cls, name: str, tags: Mapping[str, str]) -> Claim:
        """Parse a claim back from its registered-model name and tags."""
        fingerprint, _, generation = name.removeprefix(CLAIM_PREFIX).rpartition("-")
        values: dict[str, Any] = {"fingerprint": fingerprint, "generation": int(generation)}
        for f in dataclasses.fields(cls):
            raw = tags.get(TAG + f.name)
            if f.name in values or raw is None:
                continue
            values[f.name] = datetime.fromisoformat(raw) if f.name in (
                "claimed_at", "heartbeat") else raw
        epoch = datetime.fromtimestamp(0, UTC)
        values.setdefault("state", "running")
        values.setdefault("owner", "?")
        values.setdefault("claimed_at", epoch)
        values.setdefault("heartbeat", values["claimed_at"])
        return cls(**values)


def new_claim(fingerprint: str, generation: int, owner: str, now: datetime,
              **fields: str) -> Claim:
    return Claim(fingerprint=fingerprint, generation=generation, state="running", owner=owner,
                 claimed_at=now, heartbeat=now, **fields)


# Stores whose registered-model names are unique under concurrency: a database with a primary
# key (SQLAlchemy store), or an MLflow server in front of one. Not the file store (./mlruns):
# it checks for the model's folder and then creates it, which two processes can both pass.
ATOMIC_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def check_store(tracking_uri: str) -> str:
    """`tracking_uri` if claims on it are atomic, else ValueError saying what to use."""
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0] if ":" in tracking_uri else ""
    if scheme not in ATOMIC_SCHEMES:
        raise ValueError(f"MLflow store {tracking_uri!r} cannot hold gitops claims: use a "
                         "database (sqlite:///path.db, postgresql://...) or an MLflow server "
                         "(http[s]://...); the file store has no atomic create")
    return tracking_uri


class ClaimStore:
    """Claims as registered models in the MLflow registry at `tracking_uri`."""

    def __init__(self, tracking_uri: str):
        self.client = mlflow_client(check_store(tracking_uri))

    def _search(self, filter_string: str) -> list[Claim]:
        claims, token = [], None
        while True:
            page = self.client.search_registered_models(
                filter_string=filter_string, max_results=100, page_token=token)
            claims += [Claim.from_tags(m.name, m.tags) for m in page
                       if m.name.startswith(CLAIM_PREFIX)]
            token = page.token
            if not token:
                return claims

    def history(self, fingerprint: str) -> list[Claim]:
        """Every claim of `fingerprint`, oldest generation first."""
        found = self._search(f"name LIKE '{CLAIM_PREFIX}{fingerprint}-%'")
        return sorted((c for c in found if c.fingerprint == fingerprint),
                      key=lambda c: c.generation)

    def latest(self, fingerprint: str) -> Claim | None:
        history = self.history(fingerprint)
        return history[-1] if history else None

    def scheduled_for_file(self, experiment_file: str) -> list[Claim]:
        """Claims whose KFP recurring run is live, for one experiment file."""
        found = self._search(f"tags.`{TAG}state` = 'scheduled'")
        return [c for c in found if c.experiment_file == experiment_file]

    def acquire(self, claim: Claim) -> bool:
        """Create the claim; False when that name exists (someone else has this generation)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                claim.name, tags=claim.tags(),
                description=f"r1vflow gitops claim: config fingerprint {claim.fingerprint} "
                            f"(attempt {claim.generation}); see docs/gitops.md")
        except MlflowException as err:
            if err.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise
        return True

    def update(self, claim: Claim, **changes: Any) -> Claim:
        """Write the changed fields of `claim` as tags and return the new claim."""
        new = dataclasses.replace(claim, **changes)
        old_tags, new_tags = claim.tags(), new.tags()
        for key, value in new_tags.items():
            if old_tags.get(key) != value:
                self.client.set_registered_model_tag(claim.name, key, value)
        return new


@dataclass(frozen=True)
class Observed:
    """What MLflow (and, for `apply --host`, KFP) says about one fingerprint."""

    claim: Claim | None = None
    finished_run: str | None = None  # a top-level run with this fingerprint that FINISHED
    failed_run: str | None = None  # the newest one that FAILED or was KILLED
    kfp_parent_status: str | None = None  # MLflow status of the claim's KFP run's parent run
    kfp_state: str | None = None  # KFP's own state of the claim's run (apply --host only)


class MlflowState:
    """Reads the state the planner needs: latest claim and the runs tagged with a fingerprint.

    `kfp_state(run_id)` (given by `apply --host`) asks KFP about a submitted run whose MLflow
    parent run does not say it ended, e.g. a run that failed before its first task."""

    def __init__(self, tracking_uri: str, kfp_state: Callable[[str], str | None] | None = None):
        self.tracking_uri = tracking_uri
        self.claims = ClaimStore(tracking_uri)
        self.client = self.claims.client
        self.kfp_state = kfp_state

    def _experiment_ids(self) -> list[str]:
        from mlflow.entities import ViewType

        ids, token = [], None
        while True:
            page = self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY,
                                                  max_results=1000, page_token=token)
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                return ids

    def newest_runs(self, filter_string: str, limit: int = 1,
                    experiment_ids: list[str] | None = None) -> list[Any]:
        """Runs of every active experiment matching `filter_string`, newest first."""
        ids = self._experiment_ids() if experiment_ids is None else experiment_ids
        if not ids:
            return []
        return list(self.client.search_runs(ids, filter_string=filter_string, max_results=limit,
                                            order_by=["attributes.start_time DESC"]))

    def finished_run(self, fingerprint: str, experiment_ids: list[str] | None = None) -> str | None:
        runs = self.newest_runs(f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}' "
                                "AND attributes.status = 'FINISHED'", 1, experiment_ids)
        return runs[0].info.run_id if runs else None

    def observe(self, fingerprint: str) -> Observed:
        ids = self._experiment_ids()
        claim = self.claims.latest(fingerprint)
        unfinished = self.newest_runs(f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}' "
                                      "AND attributes.status != 'FINISHED'", 20, ids)
        failed = next((r.info.run_id for r in unfinished
                       if r.info.status in ("FAILED", "KILLED")), None)
        parent_status = kfp_state = None
        if claim and claim.state == "submitted" and claim.kfp_run_id:
            parents = self.newest_runs(f"tags.`{KFP_RUN_TAG}` = '{claim.kfp_run_id}'", 1, ids)
            parent_status = parents[0].info.status if parents else None
            if self.kfp_state and parent_status not in ("FINISHED", "FAILED", "KILLED"):
                kfp_state = self.kfp_state(claim.kfp_run_id)
        return Observed(claim=claim, finished_run=self.finished_run(fingerprint, ids),
                        failed_run=failed, kfp_parent_status=parent_status, kfp_state=kfp_state)
