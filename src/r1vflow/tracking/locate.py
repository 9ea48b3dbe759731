"""Which MLflow store a command that reads one (lineage, compare, artifacts verify, gitops plan)
uses, found the way `r1vflow run` writes them, and said in one line.

In order: `--tracking-uri` (or `$MLFLOW_TRACKING_URI`); `--stack DIR` (the MLflow server of
`r1vflow stack up --dir DIR`); `--run-dir DIR` (the store a run's summary.json names: its own
`mlflow.db` unless it ran against a server); else the default stack `runs/stack` when its MLflow
answers; else the one run directory under `runs/` with a summary.json. None of these creates a
store: a SQLite URI whose file does not exist is refused (MLflow would create an empty one and
then answer "not found").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STACK = Path("runs/stack")
RUNS = Path("runs")
HOW_TO = ("give --tracking-uri URI (or set MLFLOW_TRACKING_URI), --stack DIR (a stack from "
          "`r1vflow stack up`) or --run-dir DIR (a run's output dir)")


class NoTrackingStore(ValueError):
    """No store was given or found, or the one given does not exist."""


@dataclass(frozen=True)
class Located:
    uri: str
    how: str  # what chose it, for the line the command prints

    def line(self) -> str:
        return f"MLflow: {self.uri} ({self.how})"


def _existing(uri: str, how: str) -> Located:
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise NoTrackingStore(f"{how}: {uri}: no such MLflow store (no file {path}); "
                                  f"{HOW_TO}")
    return Located(uri, how)


def run_dir_uri(run_dir: Path) -> str:
    """The store a run directory's summary.json names, else its own mlflow.db."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            uri = json.loads(summary.read_text()).get("mlflow", {}).get("tracking_uri")
        except (ValueError, AttributeError):
            uri = None
        if uri:
            return uri
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def _stack_uri(stack: Path) -> str | None:
    from r1vflow.storage.stack import read_stack

    info = read_stack(stack.resolve())
    return info.mlflow_uri if info is not None else None


def _default_stack() -> Located | None:
    from r1vflow.storage.stack import stack_status

    if not (DEFAULT_STACK / "stack.json").is_file():
        return None
    status = stack_status(DEFAULT_STACK)
    if status.info is None or not any(s.name == "mlflow" and s.healthy for s in status.services):
        return None
    return Located(status.info.mlflow_uri, f"the running stack {DEFAULT_STACK}")


def _only_run_dir() -> Located | None:
    found = sorted(p.parent for p in RUNS.glob("*/summary.json")) if RUNS.is_dir() else []
    if len(found) != 1:
        return None
    return _existing(run_dir_uri(found[0]), f"the only run directory, {found[0]}")


def locate(tracking_uri: str | None = None, stack: Path | None = None,
           run_dir: Path | None = None) -> Located:
    """The store to read, and what chose it; NoTrackingStore (one line) when none is found."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    explicit = tracking_uri or from_env
    if explicit:
        return _existing(explicit, "$MLFLOW_TRACKING_URI" if explicit == from_env
                         else "--tracking-uri")
    if stack is not None:
        uri = _stack_uri(stack)
        if uri is None:
            raise NoTrackingStore(f"--stack {stack}: no stack.json there; run `r1vflow stack up "
                                  f"--dir {stack}` first")
        return Located(uri, f"--stack {stack}")
    if run_dir is not None:
        return _existing(run_dir_uri(run_dir), f"the run dir {run_dir}")
    found = _default_stack() or _only_run_dir()
    if found is None:
        raise NoTrackingStore(f"no MLflow store given or found: {HOW_TO}")
    return found
