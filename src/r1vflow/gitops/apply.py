"""GitOps apply: claim each planned fingerprint atomically, run or submit it, record the outcome.

For every plan entry whose action is `run`, apply looks again (the plan may be minutes old),
creates the next claim generation for the fingerprint (an atomic create: of racing appliers exactly
one proceeds, docs/gitops.md), heartbeats the claim while the runner works, and then records the
outcome on the claim: succeeded, submitted (a KFP run trains it), scheduled (a KFP recurring run),
or released (it failed: the next apply retries). An exception or Ctrl-C releases the claim too; a
crashed applier's claim goes stale when its heartbeat is older than `stale_after_s`.

    ctx = ApplyContext(MlflowState(uri), local_runner(Path("runs/gitops"), uri), owner, commit)
    results = apply_plan(build_plan(files, ctx.state.observe, now_utc(), 900), ctx)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from r1vflow.config import Experiment
from r1vflow.gitops.plan import PlanEntry, decide, trained
from r1vflow.gitops.state import TAG, Claim, ClaimStore, MlflowState, new_claim, now_utc, stamp

log = logging.getLogger(__name__)
OutcomeStatus = Literal["succeeded", "failed", "submitted", "scheduled"]
_CLAIM_STATE = {"succeeded": "succeeded", "failed": "released", "submitted": "submitted",
                "scheduled": "scheduled"}


@dataclass(frozen=True)
class RunRequest:
    """What a runner gets: the experiment, where it came from, and the claim it works under."""

    exp: Experiment
    experiment_file: str
    fingerprint: str
    claim: Claim
    git_commit: str


@dataclass(frozen=True)
class Outcome:
    status: OutcomeStatus
    mlflow_run_id: str = ""
    kfp_run_id: str = ""
    recurring_run_id: str = ""
    detail: str = ""  # output dir or run URL; the error when it failed


Runner = Callable[[RunRequest], Outcome]


@dataclass(frozen=True)
class ApplyResult:
    experiment: str
    fingerprint: str | None
    action: str  # the plan's action
    reason: str
    outcome: str  # succeeded, failed, submitted, scheduled, skipped, invalid
    claim: str = ""
    mlflow_run_id: str = ""
    kfp_run_id: str = ""
    recurring_run_id: str = ""
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ApplyContext:
    state: MlflowState
    runner: Runner
    owner: str
    git_commit: str
    stale_after_s: float = 900.0
    heartbeat_s: float = 60.0
    unschedule: Callable[[str], None] | None = None  # disables a KFP recurring run (--host)
    refuses: Callable[[Experiment], str | None] = lambda exp: None  # why the runner cannot
    clock: Callable[[], datetime] = now_utc


class Heartbeat:
    """Refresh the claim's heartbeat tag every `interval_s` while the block runs."""

    def __init__(self, store: ClaimStore, claim: Claim, interval_s: float,
                 clock: Callable[[], datetime] = now_utc):
        self.store, self.claim, self.interval_s, self.clock = store, claim, interval_s, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"heartbeat-{claim.name}")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.client.set_registered_model_tag(
                    self.claim.name, TAG + "heartbeat", stamp(self.clock()))
            except Exception as err:  # noqa: BLE001 (one missed beat is harmless; logged)
                log.warning("heartbeat of %s failed: %s", self.claim.name, err)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _skipped(entry: PlanEntry, reason: str, outcome: str = "skipped") -> ApplyResult:
    return ApplyResult(entry.experiment, entry.fingerprint, entry.action, reason, outcome)


def apply_plan(plan: list[PlanEntry], ctx: ApplyContext) -> list[ApplyResult]:
    """Apply every entry in order; one failing never stops the others."""
    return [apply_entry(entry, ctx) for entry in plan]


def apply_entry(entry: PlanEntry, ctx: ApplyContext) -> ApplyResult:
    """Decide again on fresh state, claim the fingerprint, and run it under the claim."""
    if entry.action != "run" or entry.exp is None or entry.fingerprint is None:
        return _skipped(entry, entry.reason,
                        "invalid" if entry.action == "invalid" else "skipped")
    refusal = ctx.refuses(entry.exp)
    if refusal:
        return _skipped(entry, f"{entry.reason}, but {refusal}")
    fp = entry.fingerprint
    obs = ctx.state.observe(fp)
    action, reason = decide(obs, entry.exp.schedule, ctx.clock(), ctx.stale_after_s)
    if action == "skip":
        return _skipped(entry, reason)
    previous = obs.claim if obs.claim and obs.claim.state == "scheduled" else None
    if ctx.unschedule is None and (previous or (entry.exp.schedule and trained(obs))):
        return _skipped(entry, f"{reason}; KFP recurring runs change only with "
                               "`r1vflow gitops apply --host`")
    claim = new_claim(fp, obs.claim.generation + 1 if obs.claim else 0, ctx.owner, ctx.clock(),
                      experiment_file=entry.experiment, git_commit=ctx.git_commit,
                      cron=entry.exp.schedule or "")
    if not ctx.state.claims.acquire(claim):
        other = ctx.state.claims.latest(fp)
        who = f"{other.owner} (claim {other.name})" if other else "another applier"
        return _skipped(entry, f"claimed meanwhile by {who}")
    return _run_claimed(entry, claim, previous, reason, ctx)


def _run_claimed(entry: PlanEntry, claim: Claim, previous: Claim | None, reason: str,
                 ctx: ApplyContext) -> ApplyResult:
    store, fp = ctx.state.claims, claim.fingerprint
    assert entry.exp is not None
    try:
        if previous is not None and ctx.unschedule is not None:
            ctx.unschedule(previous.recurring_run_id)
            store.update(previous, state="unscheduled", detail=f"replaced by {claim.name}")
        done = ctx.state.finished_run(fp)
        if done and not entry.exp.schedule:  # trained meanwhile, or only a schedule went away
            outcome = Outcome("succeeded", mlflow_run_id=done, detail="nothing to train: "
                              f"MLflow run {done} already succeeded for this fingerprint")
        else:
            with Heartbeat(store, claim, ctx.heartbeat_s, ctx.clock):
                outcome = ctx.runner(RunRequest(entry.exp, entry.experiment, fp, claim,
                                                ctx.git_commit))
    except Exception as err:  # noqa: BLE001 (recorded on the claim and reported)
        log.exception("applying %s failed", entry.experiment)
        outcome = Outcome("failed", detail=f"{type(err).__name__}: {err}")
    except BaseException:
        store.update(claim, state="released", heartbeat=ctx.clock(), detail="interrupted")
        raise
    try:
        store.update(claim, state=_CLAIM_STATE[outcome.status], heartbeat=ctx.clock(),
                     mlflow_run_id=outcome.mlflow_run_id, kfp_run_id=outcome.kfp_run_id,
                     recurring_run_id=outcome.recurring_run_id, detail=outcome.detail)
        if outcome.status in ("submitted", "scheduled") and ctx.unschedule is not None:
            _unschedule_replaced(entry.experiment, claim, store, ctx.unschedule)
    except Exception as err:  # noqa: BLE001 (the work happened; say the record did not)
        log.exception("recording the outcome on %s failed", claim.name)
        outcome = dataclasses.replace(outcome, detail=f"{outcome.detail}; recording it on claim "
                                      f"{claim.name} failed: {type(err).__name__}: {err}")
    return ApplyResult(entry.experiment, fp, entry.action, reason, outcome.status, claim.name,
                       outcome.mlflow_run_id, outcome.kfp_run_id, outcome.recurring_run_id,
                       outcome.detail)


def _unschedule_replaced(experiment_file: str, claim: Claim, store: ClaimStore,
                         unschedule: Callable[[str], None]) -> None:
    """The file now trains another fingerprint: disable the recurring runs of its old ones."""
    for old in store.scheduled_for_file(experiment_file):
        if old.fingerprint != claim.fingerprint:
            unschedule(old.recurring_run_id)
            store.update(old, state="unscheduled", detail=f"{experiment_file} now trains "
                                                          f"{claim.fingerprint[:12]}")


def local_refusal(exp: Experiment) -> str | None:
    """Why the local runner cannot run `exp` (released checkpoints need a cluster), or None."""
    if exp.model.kind != "tiny":
        return f"model.kind '{exp.model.kind}' needs a cluster: `r1vflow gitops apply --host`"
    return None


def local_runner(output_root: Path, tracking_uri: str, quiet: bool = True) -> Runner:
    """Run experiments on this machine (kfp.local) into `<output_root>/<name>-<fp[:12]>`,
    recording into the GitOps tracking URI whatever the experiment's tracking section says."""

    def run(req: RunRequest) -> Outcome:
        import mlflow

        from r1vflow.pipelines.local_run import run_local

        tracking = req.exp.tracking.model_copy(update={"tracking_uri": tracking_uri})
        exp = req.exp.model_copy(update={"tracking": tracking})
        out = output_root / f"{exp.name}-{req.fingerprint[:12]}"
        os.environ["R1VFLOW_GIT_COMMIT"] = req.git_commit  # run_local tags the parent with it
        summary = run_local(exp, out, experiment_file=req.experiment_file, quiet=quiet)
        run_id = summary["mlflow"]["parent_run_id"]
        mlflow.MlflowClient(tracking_uri).set_tag(run_id, "r1vflow.gitops_claim", req.claim.name)
        failed = [f"{stage}: {entry.get('error') or entry['status']}"
                  for stage, entry in summary["stages"].items() if entry["status"] != "succeeded"]
        detail = str(out.resolve()) if not failed else "; ".join(failed)[:1000]
        return Outcome(summary["status"], mlflow_run_id=run_id, detail=detail)

    return run
