"""Experiment commands: validate, schema, run.

    r1vflow validate pipelines/configs/smoke.yaml --set sft.lr=1e-3
    r1vflow run pipelines/configs/tiny.yaml --output-dir runs/tiny
    r1vflow schema > experiment.schema.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from r1vflow.cli.common import (
    ConfigArg,
    SetOpt,
    check_data_or_exit,
    console,
    echo_json,
    fail,
    load_or_exit,
)
from r1vflow.config import json_schema


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(config: ConfigArg, set_: SetOpt = None) -> None:
        """Check an experiment file; print its stages and fingerprint."""
        exp = check_data_or_exit(load_or_exit(config, set_))
        _refuse_unpinned(exp)
        typer.echo(f"ok: {exp.name}  fingerprint {exp.fingerprint()[:16]}  "
                   f"stages: {' -> '.join(exp.stages())}")

    @app.command()
    def schema() -> None:
        """Print the experiment JSON schema."""
        echo_json(json_schema())

    @app.command()
    def run(config: ConfigArg,
            output_dir: Annotated[Path | None, typer.Option(
                "--output-dir", help="Where the run writes everything (default runs/<name>).")] = None,
            set_: SetOpt = None,
            stack: Annotated[Path | None, typer.Option(
                "--stack", help="Use the servers of `r1vflow stack up --dir DIR`: models go to its "
                                "S3 bucket, tracking to its MLflow.")] = None,
            verbose: Annotated[bool, typer.Option(
                "--verbose", "-v", help="Stream every task's full KFP log to the console too.")
            ] = False,
            runner: Annotated[str, typer.Option(
                "--runner", help="subprocess: tasks run in this Python; docker: each task in its "
                                 "component's image (`make images`) through podman or $DOCKER_HOST.")
            ] = "subprocess",
            quiet: Annotated[bool, typer.Option(
                "--quiet", hidden=True, help="No-op: the default is quiet now.")] = False) -> None:
        """Run the experiment's DAG locally through kfp.local (caching on).

        The console gets a line per stage and a summary; each task's whole log goes to
        <output-dir>/logs/<stage>.log (--verbose streams it here as well)."""
        import os

        from r1vflow.pipelines.local_run import run_local

        if stack is not None:
            from r1vflow.storage.procs import StackError
            from r1vflow.storage.stack import stack_env

            try:
                os.environ.update(stack_env(stack))
            except StackError as err:
                raise fail(str(err)) from None
            set_ = ["storage.backend=s3", *(set_ or [])]
        if runner not in ("subprocess", "docker"):
            raise fail(f"--runner {runner!r}: expected subprocess or docker")
        exp = check_data_or_exit(load_or_exit(config, set_), sign=True)
        _refuse_unpinned(exp)
        out = output_dir or Path("runs") / exp.name
        # at once: what follows (imports, the MLflow parent run, configure) takes seconds
        console.print(f"[bold]r1vflow[/bold] running {exp.name} "
                      f"({' -> '.join(exp.stages())}) into {escape(str(out))}", soft_wrap=True)
        from r1vflow.eval.benchmarks.suite import missing_paths

        missing = missing_paths(exp.evaluate.benchmarks)
        if missing:  # kfp.local tasks read them from this machine: fail before any training
            raise fail(f"evaluate.benchmarks: no such file or directory: "
                       f"{', '.join(missing)} (relative paths start at {Path.cwd()})")
        from r1vflow.pipelines.containers import ContainerError
        from r1vflow.pipelines.local_run import RunRefused
        from r1vflow.storage.store import StoreConfigError

        try:
            summary = run_local(exp, out, experiment_file=str(config), applied=set_,
                                verbose=verbose, runner=runner)
        except (StoreConfigError, ContainerError, RunRefused) as err:  # e.g. MLflow down
            raise fail(str(err)) from None
        _print_summary(summary)
        if summary["status"] != "succeeded":
            raise typer.Exit(1)


def _refuse_unpinned(exp) -> None:
    """A checkpoint import_model would refuse (a hub id without a pinned revision, a missing
    directory): one line naming the field, exit 2, before anything runs."""
    from r1vflow.config.pins import unpinned_checkpoints

    problem = unpinned_checkpoints(exp)
    if problem:
        raise fail(problem)


def _mlflow_command() -> str:
    """`mlflow` of this environment (a new shell has no venv active), as short as it goes."""
    import sys

    found = Path(sys.executable).parent / "mlflow"
    if not found.is_file():
        return "mlflow"
    try:
        return str(found.relative_to(Path.cwd()))
    except ValueError:
        return str(found)


def _print_summary(summary: dict) -> None:
    table = Table(title=f"{summary['experiment']}: {summary['status']} "
                        f"in {summary['seconds']:.1f} s")
    for col in ("stage", "status", "seconds", "key metrics"):
        table.add_column(col)
    for stage, entry in summary["stages"].items():
        metrics = entry.get("metrics", {})
        keys = [k for k in metrics if k.startswith(("accuracy/", "val_accuracy", "train_loss",
                                                    "num_", "format_rate/"))][:3]
        shown = ", ".join(f"{k}={metrics[k]:.3g}" for k in keys)
        status = entry["status"] + (" (cached)" if entry.get("cached") else "")
        if entry.get("error"):
            shown = entry["error"].splitlines()[0][:120]
        table.add_row(stage, status, f"{entry.get('seconds', 0):.1f}", shown)
    out_console = Console(markup=False)  # user text (errors, names) shown as typed
    if not out_console.is_terminal:  # a pipe or file: wide rows rather than wrapped ones
        out_console = Console(width=max(out_console.width, 160), markup=False)
    out_console.print(table)
    out = Path(summary["output_dir"])
    typer.echo(f"summary: {out / 'summary.json'}")
    if summary.get("report"):
        typer.echo(f"reports: {summary['report']} (one page per stage beside it)")
    uri = summary["mlflow"]["tracking_uri"]
    if uri.startswith(("http://", "https://")):  # a running server: its UI is at that address
        typer.echo(f"MLflow UI: {uri}")
    else:  # a store without a server: the command that opens a UI on it
        typer.echo(f"MLflow:  {uri} (open a UI: {_mlflow_command()} ui --backend-store-uri "
                   f"{uri})")
    parent = summary["mlflow"].get("parent_run_id")
    if parent:  # what `r1vflow compare` takes
        typer.echo(f"run id:  {parent} (r1vflow compare {parent} OTHER_RUN_ID --run-dir {out})")
