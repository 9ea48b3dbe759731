"""GitOps planning: which experiment files in a repository need a training run.

Every YAML file under `<repo>/experiments/` is one experiment. Its identity is the fingerprint of
its resolved config (`Experiment.fingerprint`), so renaming it, reordering keys, editing comments
or changing only name/description/tracking/storage/cluster/schedule changes nothing, and any other
edit is a new fingerprint that trains once. What already happened lives in MLflow (docs/gitops.md):
runs tagged `r1vflow.config_fingerprint` and claims (r1vflow.gitops.state), so every machine with
the tracking URI computes the same plan.

    files = discover(Path("."), "experiments")
    plan = build_plan(files, MlflowState(uri).observe, now_utc(), stale_after_s=900)
    [entry.to_json() for entry in plan]     # what `r1vflow gitops plan --json` prints
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from r1vflow.config import ConfigError, Experiment, load_experiment
from r1vflow.config.paths import lies_inside
from r1vflow.gitops.state import Observed, stamp

Action = Literal["run", "skip", "invalid"]
# KFP v2 run states after which a submitted run will never report success.
KFP_DEAD_STATES = ("FAILED", "CANCELED", "CANCELING", "SKIPPED")
EXPERIMENT_SUFFIXES = (".yaml", ".yml")
# What an experiment file's path (relative to the repository) may contain. The path is written
# into rendered manifests, claims, tags and logs: a newline there injected a document into
# `gitops render` output, so anything else is refused.
SAFE_PATH_CHARS = "[A-Za-z0-9._/-]"
_SAFE_PATH = re.compile(rf"^{SAFE_PATH_CHARS}+$")


def unsafe_path_error(rel: str) -> str | None:
    """The refusal of an experiment file path with characters outside SAFE_PATH_CHARS, or None."""
    if _SAFE_PATH.match(rel):
        return None
    bad = sorted({c for c in rel if not re.match(SAFE_PATH_CHARS, c)})
    return (f"experiment file name {ascii(rel)} contains {', '.join(ascii(c) for c in bad)}: "
            f"only {SAFE_PATH_CHARS} is allowed (rename the file)")


@dataclass(frozen=True)
class ExperimentFile:
    """One experiment file: its path relative to the repository, and the loaded experiment or
    the error that stops it from loading."""

    path: str
    exp: Experiment | None = None
    error: str | None = None


@dataclass(frozen=True)
class PlanEntry:
    experiment: str
    fingerprint: str | None
    action: Action
    reason: str
    exp: Experiment | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "fingerprint": self.fingerprint,
                "action": self.action, "reason": self.reason}


def _candidates(root: Path) -> list[Path]:
    """Every *.yaml / *.yml below `root`, sorted; symlinked folders are not entered."""
    found = []
    for folder, _dirs, names in os.walk(root, followlinks=False):
        found += [Path(folder) / n for n in names if Path(n).suffix in EXPERIMENT_SUFFIXES]
    return sorted(found)


def outside_error(path: Path, repo: Path) -> str | None:
    """The refusal of a file that is a symlink leading out of `repo` (or to nothing), else None.
    Says nothing of the target: not its path, not a byte of it."""
    if not path.is_symlink():
        return None
    if not path.exists():  # dangling, or a loop
        return "a symlink that leads nowhere: refused"
    if not lies_inside(path, repo):
        return "a symlink to a file outside the repository: refused, not read"
    return None


def discover(repo: Path, experiments_dir: str = "experiments") -> list[ExperimentFile]:
    """Load every *.yaml / *.yml below `repo/experiments_dir`, sorted by path.

    A file that does not load becomes an entry with its ConfigError text (paths shown relative
    to the repository); it never stops the others. So do, refused without being read, a file
    whose path has characters outside SAFE_PATH_CHARS (`unsafe_path_error`) and a symlink that
    leads out of the repository (`outside_error`); symlinked folders are not entered."""
    repo = repo.resolve()
    root = repo / experiments_dir
    if not root.is_dir() or not root.resolve().is_relative_to(repo):
        raise ConfigError(f"no experiments folder inside the repository: {root} "
                          "(give --experiments-dir)")
    files = []
    for path in _candidates(root):
        rel = path.relative_to(repo).as_posix()
        refused = unsafe_path_error(rel) or outside_error(path, repo)
        if refused:  # never loaded; shown under an escaped name that holds no newline
            files.append(ExperimentFile(ascii(rel)[1:-1], error=refused))
            continue
        try:
            files.append(ExperimentFile(rel, exp=load_experiment(path)))
        except ConfigError as err:
            files.append(ExperimentFile(rel, error=str(err).replace(str(path), rel)))
    return files


def _ago(now: datetime, then: datetime) -> str:
    return f"{(now - then).total_seconds():.0f} s ago"


def trained(obs: Observed) -> bool:
    """A run of the fingerprint finished, or its claim says it succeeded."""
    return bool(obs.finished_run) or bool(obs.claim and obs.claim.state == "succeeded")


def decide(obs: Observed, cron: str | None, now: datetime,
           stale_after_s: float) -> tuple[Action, str]:
    """`run` or `skip` for one fingerprint, with the reason, from what MLflow/KFP say about it.

    Order: a live recurring run (its schedule may have changed); a finished run (but a schedule
    without a recurring run is still to do); a claim that is alive (heartbeat younger than
    `stale_after_s`, or a KFP run not known to have failed); else run, saying why (never run,
    last attempt failed, stale claim)."""
    c = obs.claim
    if c and c.state == "scheduled":
        if c.cron == (cron or ""):
            return "skip", (f"scheduled: KFP recurring run {c.recurring_run_id} ('{c.cron}'), "
                            f"by {c.owner} at {stamp(c.claimed_at)}")
        change = f"schedule changed from '{c.cron}' to '{cron}'" if cron else \
            f"schedule '{c.cron}' removed"
        return "run", f"{change}: replaces KFP recurring run {c.recurring_run_id}"
    if trained(obs) and cron:
        return "run", (f"trained already, but schedule '{cron}' has no KFP recurring run yet "
                       "(apply --host creates it)")
    if obs.finished_run:
        return "skip", f"already succeeded for this fingerprint: MLflow run {obs.finished_run}"
    if c and c.state == "succeeded":
        return "skip", (f"already succeeded for this fingerprint: claim {c.name}"
                        + (f", MLflow run {c.mlflow_run_id}" if c.mlflow_run_id else ""))
    if c and c.state == "running":
        if (now - c.heartbeat).total_seconds() <= stale_after_s:
            return "skip", (f"in flight: claimed by {c.owner} at {stamp(c.claimed_at)} "
                            f"(heartbeat {_ago(now, c.heartbeat)})")
        return "run", (f"stale claim by {c.owner} (last heartbeat {_ago(now, c.heartbeat)}, "
                       f"more than {stale_after_s:.0f} s): taken over")
    if c and c.state == "submitted":
        if obs.kfp_state == "SUCCEEDED":
            return "skip", f"already succeeded for this fingerprint: KFP run {c.kfp_run_id}"
        dead = obs.kfp_parent_status in ("FAILED", "KILLED") or obs.kfp_state in KFP_DEAD_STATES
        if not dead:
            return "skip", (f"in flight: KFP run {c.kfp_run_id} submitted by {c.owner} at "
                            f"{stamp(c.claimed_at)}")
        why = obs.kfp_parent_status if obs.kfp_parent_status in ("FAILED", "KILLED") \
            else f"KFP state {obs.kfp_state}"
        return "run", f"KFP run {c.kfp_run_id} ended {why}: retried"
    if c and c.state == "released":
        return "run", f"last attempt failed ({c.detail or 'no detail'}): retried"
    if c and c.state == "unscheduled":
        return "run", (f"its KFP recurring run {c.recurring_run_id} was disabled "
                       f"({c.detail or 'no detail'}) and no run finished")
    if obs.failed_run:
        return "run", f"last run failed (MLflow run {obs.failed_run}): retried"
    return "run", "not run yet for this fingerprint"


def build_plan(files: list[ExperimentFile], observe: Callable[[str], Observed], now: datetime,
               stale_after_s: float) -> list[PlanEntry]:
    """One PlanEntry per file. Files sharing a fingerprint train once, under the first file."""
    entries, first_file = [], {}
    for f in files:
        if f.exp is None:
            entries.append(PlanEntry(f.path, None, "invalid", f.error or "invalid"))
            continue
        fp = f.exp.fingerprint()
        if fp in first_file:
            entries.append(PlanEntry(f.path, fp, "skip", f"same fingerprint as "
                                     f"{first_file[fp]}, which stands for both", f.exp))
            continue
        first_file[fp] = f.path
        action, reason = decide(observe(fp), f.exp.schedule, now, stale_after_s)
        entries.append(PlanEntry(f.path, fp, action, reason, f.exp))
    return entries
