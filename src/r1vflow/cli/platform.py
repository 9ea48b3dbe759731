"""`r1vflow stack|artifacts|bench|lineage|compare`: the local servers, stored artifacts, MLflow
lineage and benchmarks.

    r1vflow stack up --dir runs/stack          # S3 (SeaweedFS) + MLflow on 127.0.0.1
    r1vflow run pipelines/configs/smoke.yaml --stack runs/stack
    r1vflow lineage smoke-sft 1                # walk r1vflow.parent back to the bases
    r1vflow compare RUN_A RUN_B                # pipeline runs' metrics side by side
    r1vflow artifacts verify s3://r1vflow/artifacts/...
    r1vflow bench artifacts --json bench.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from r1vflow.cli.common import checked_tracking_uri, dumps_json, error, fail

DirOpt = Annotated[Path, typer.Option("--dir", help="Stack directory (data, logs, stack.json).")]
DEFAULT_STACK = Path("runs/stack")


def _fail(message: str) -> None:
    raise fail(message)


def _mlflow_fail(err: Exception) -> None:
    """One line for an error MLflow raised (its messages run over several lines)."""
    _fail(" ".join(str(getattr(err, "message", None) or err).split()))


def _report(result: dict) -> None:
    """Print a benchmark's JSON; exit 1 when it misses a target it states (`targets_met`)."""
    typer.echo(dumps_json(result))
    missed = [name for name, met in result.get("targets_met", {}).items() if not met]
    if missed:
        error(f"missed target(s): {', '.join(missed)}")
        raise typer.Exit(1)


def _port(option: str, port: int | None) -> int | None:
    if port is not None and not 1 <= port <= 65535:
        _fail(f"{option} {port}: a TCP port is 1..65535")
    return port


stack = typer.Typer(no_args_is_help=True, help="Local S3 + MLflow servers on 127.0.0.1.")
artifacts = typer.Typer(no_args_is_help=True, help="Stored artifacts.")
bench = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures as JSON.")


def register(app: typer.Typer) -> None:
    app.add_typer(stack, name="stack")
    app.add_typer(artifacts, name="artifacts")
    app.add_typer(bench, name="bench")
    app.command()(lineage)
    app.command()(compare)


@stack.command("up")
def stack_up(directory: DirOpt = DEFAULT_STACK,
             s3_port: Annotated[int | None, typer.Option("--s3-port")] = None,
             mlflow_port: Annotated[int | None, typer.Option("--mlflow-port")] = None) -> None:
    """Start (or find running) the S3 and MLflow servers; idempotent."""
    from r1vflow.storage.procs import StackError
    from r1vflow.storage.stack import describe
    from r1vflow.storage.stack import stack_up as up

    try:
        info = up(directory, s3_port=_port("--s3-port", s3_port),
                  mlflow_port=_port("--mlflow-port", mlflow_port))
    except StackError as err:
        _fail(str(err))
    typer.echo(describe(info))
    typer.echo(f"use it:   r1vflow run CONFIG --stack {directory}")

@stack.command("status")
def stack_status(directory: DirOpt = DEFAULT_STACK) -> None:
    """Show whether the stack's servers are running."""
    from r1vflow.storage.stack import stack_status as status

    result = status(directory)
    typer.echo(result.model_dump_json(indent=2))
    if not result.up:
        raise typer.Exit(1)

@stack.command("down")
def stack_down(directory: DirOpt = DEFAULT_STACK) -> None:
    """Stop the servers this stack started (data stays)."""
    from r1vflow.storage.stack import stack_down as down

    stopped = down(directory)
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))

def _verify_directory(path: Path, tracking_uri: str | None, stack_dir: Path | None
                      ) -> list[str]:
    """A local model directory (the model_uri of a run with storage.backend file) against the
    manifest digest its registered version carries (r1vflow.tracking.verify_local)."""
    from r1vflow.tracking.verify_local import run_dir_of, verify_model_dir

    if not (path / "r1vflow_model.json").is_file():
        raise fail(f"{path}: no _r1vflow_manifest.json and no r1vflow_model.json: neither a "
                   "stored artifact nor an r1vflow model directory")
    store = located_store(tracking_uri, stack_dir,
                          None if tracking_uri or stack_dir else run_dir_of(path))
    try:
        problems, checked = verify_model_dir(path, store)
    except ValueError as err:
        raise fail(str(err)) from None
    typer.echo(f"checked: {checked}", err=True)
    return problems


@artifacts.command("verify")
def verify(uri: Annotated[str, typer.Argument(
               help="s3://... or file://... of a stored artifact, or a model directory (the "
                    "model_uri summary.json reports)")],
           stack_dir: Annotated[Path | None, typer.Option(
               "--stack", help="Read S3 settings (and MLflow) from this stack.")] = None,
           tracking_uri: Annotated[str | None, typer.Option(
               "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
               help="A model directory: the MLflow store of its version (else the run dir "
                    "it lies in).")] = None) -> None:
    """Check a stored artifact against its manifest; non-zero exit names each bad file."""
    import os

    from r1vflow.storage import StoreError, verify_uri
    from r1vflow.storage.procs import StackError
    from r1vflow.storage.stack import stack_env

    try:
        if stack_dir is not None:
            os.environ.update(stack_env(stack_dir))
        if "://" not in uri and Path(uri).is_dir() and not (
                Path(uri) / "_r1vflow_manifest.json").is_file():
            problems = _verify_directory(Path(uri), tracking_uri, stack_dir)
        else:
            if "://" not in uri and Path(uri).is_dir():  # a directory with its manifest
                uri = Path(uri).resolve().as_uri()
            problems = verify_uri(uri)
    except (StoreError, StackError, ValueError, OSError) as err:  # bad URI, no manifest, ...
        _fail(str(err))
    if problems:
        for problem in problems:
            error(problem, label="bad")
        raise typer.Exit(1)
    typer.echo(f"ok: {uri}")

@bench.command("artifacts")
def bench_artifacts(json_out: Annotated[Path, typer.Option("--json")],
                    size_mb: Annotated[int, typer.Option(help="Checkpoint size.")] = 1024) -> None:
    """Our store vs the minio client's single put/get of one tar, on a local S3 server."""
    from r1vflow.bench.artifacts import run_bench

    _report(run_bench(json_out, size_mb=size_mb))

@bench.command("mpo")
def bench_mpo(json_out: Annotated[Path, typer.Option("--json")],
              quick: Annotated[bool, typer.Option(help="Small sizes (tests).")] = False) -> None:
    """Our MPO (DPO + BCO + NLL) vs TRL's DPOTrainer with the same loss types and work."""
    from r1vflow.bench.mpo import run_bench

    _report(run_bench(json_out, quick=quick))

@bench.command("grpo")
def bench_grpo(json_out: Annotated[Path, typer.Option("--json")],
               quick: Annotated[bool, typer.Option(help="Small sizes (tests).")] = False) -> None:
    """Our GRPO vs TRL's GRPOTrainer on the same work, and SSB on vs off."""
    from r1vflow.bench.grpo import run_bench

    _report(run_bench(json_out, quick=quick))

@bench.command("data-import")
def bench_data_import(json_out: Annotated[Path, typer.Option("--json")],
                      rows: Annotated[int, typer.Option(help="N: measured at N and 2N.")] = 2000,
                      side: Annotated[int, typer.Option(help="Image side, px.")] = 128) -> None:
    """Peak RSS of importing a Parquet and a JSONL data set at N and 2N rows."""
    from r1vflow.bench.data_import import run_bench

    typer.echo(dumps_json(run_bench(json_out, rows=rows, side=side)))

TrackingOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
    help="The MLflow store (else --stack, --run-dir, a running runs/stack, or the one run "
         "directory under runs/).")]
StackOpt = Annotated[Path | None, typer.Option(
    "--stack", help="Use the MLflow server of `r1vflow stack up --dir DIR`.")]
RunDirOpt = Annotated[Path | None, typer.Option(
    "--run-dir", help="Use the MLflow store of this run's output dir (its summary.json).")]


def located_store(tracking_uri: str | None, stack: Path | None = None,
                  run_dir: Path | None = None) -> str:
    """The MLflow store a reading command uses (r1vflow.tracking.locate), said on stderr in
    one line; never one it would create. Exit 2 in one line when none is given or found."""
    from r1vflow.tracking.locate import NoTrackingStore, locate

    try:
        found = locate(tracking_uri, stack, run_dir)
    except NoTrackingStore as err:
        raise fail(str(err)) from None
    typer.echo(found.line(), err=True)
    return checked_tracking_uri(found.uri)


def lineage(name: str, version: str,
            as_json: Annotated[bool, typer.Option("--json")] = False,
            tracking_uri: TrackingOpt = None, stack_dir: StackOpt = None,
            run_dir: RunDirOpt = None) -> None:
    """Walk a model version's r1vflow.parent chain back to the base models and data sets."""
    from mlflow.exceptions import MlflowException

    from r1vflow.tracking.lineage import LineageError, walk_lineage

    try:
        chain = walk_lineage(name, version, located_store(tracking_uri, stack_dir, run_dir))
    except (LineageError, MlflowException) as err:  # e.g. a URI scheme MLflow does not know
        _mlflow_fail(err)
    if as_json:
        typer.echo(dumps_json(chain))
        return
    table = Table(title=f"lineage of {name}/{version}")
    for col in ("version", "stage", "storage", "manifest", "data sets", "fingerprint"):
        table.add_column(col, overflow="fold")
    for node in chain:
        datasets = ", ".join(f"{d['name']}@{d['digest'][:8]}" for d in node["datasets"])
        table.add_row(node["model_version"], node["stage"], node["storage_uri"],
                      (node["manifest_sha256"] or "")[:12], datasets,
                      (node["config_fingerprint"] or "")[:12])
    Console(markup=False).print(table)  # user text in cells is shown as typed

def compare(run_ids: list[str], tracking_uri: TrackingOpt = None, stack_dir: StackOpt = None,
            run_dir: RunDirOpt = None) -> None:
    """Pipeline (parent) runs side by side, as MLflow's run comparison shows them (runs,
    metrics), then the experiment configs' differences."""
    import time

    from mlflow.exceptions import MlflowException

    from r1vflow.tracking.lineage import LineageError, compare_runs, config_diff

    try:
        rows, runs = compare_runs(run_ids, located_store(tracking_uri, stack_dir, run_dir))
    except (LineageError, MlflowException) as err:
        _mlflow_fail(err)
    heads = [f"{run['name']} ({run['run_id'][:8]})" for run in runs]
    details = _table("runs", "", heads)
    details.add_row("status", *[run["status"] for run in runs])
    details.add_row("start", *[time.strftime("%Y-%m-%d %H:%M:%S",
                                             time.gmtime(run["start_time"] / 1000))
                               for run in runs])
    details.add_row("duration (s)", *["-" if run["duration_s"] is None
                                       else f"{run['duration_s']:.1f}" for run in runs])
    metrics = _table("metrics", "metric", heads)
    for metric, values in rows.items():
        metrics.add_row(metric, *["-" if v is None else f"{v:.4g}" for v in values])
    diff = config_diff([run["params"] for run in runs])
    config = _table("config diff" if diff else "config diff: the configs are identical",
                    "key", heads)
    for key, values in diff.items():
        config.add_row(key, *["-" if v is None else v for v in values])
    console_out = Console(markup=False)
    for table in (details, metrics, config):
        console_out.print(table)


def _table(title: str, first: str, heads: list[str]) -> Table:
    table = Table(title=title)
    table.add_column(first)
    for head in heads:
        table.add_column(head, overflow="fold")
    return table
