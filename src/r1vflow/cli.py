"""The `r1vflow` command line: validate, compile and run experiments.

    r1vflow validate pipelines/configs/smoke.yaml --set sft.lr=1e-3
    r1vflow compile pipelines/configs/r1v2-38b.yaml -o r1v2.yaml
    r1vflow run pipelines/configs/tiny.yaml --output-dir runs/tiny
    r1vflow schema > experiment.schema.json
"""

from __future__ import annotations

import os

# PyTorch's OpenMP threads spin while they wait; when two processes share the cores (a KFP task
# and the driver, two torchrun ranks) a step became ~17x slower. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from r1vflow.config import ConfigError, Experiment, json_schema, load_experiment  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Declarative R1V/R1V2 training pipelines on Kubeflow Pipelines.")
console = Console(stderr=True)

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a field: --set sft.lr=1e-4 (repeatable; value parsed as YAML).")]
ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file.")]


def _load(config: Path, overrides: list[str] | None) -> Experiment:
    try:
        return load_experiment(config, overrides)
    except ConfigError as err:
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        raise typer.Exit(2) from None


@app.command()
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check an experiment file; print its stages and fingerprint."""
    exp = _load(config, set_)
    typer.echo(f"ok: {exp.name}  fingerprint {exp.fingerprint()[:16]}  "
               f"stages: {' -> '.join(exp.stages())}")


@app.command()
def schema() -> None:
    """Print the experiment JSON schema."""
    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def run(config: ConfigArg,
        output_dir: Annotated[Path | None, typer.Option(
            "--output-dir", help="Where the run writes everything (default runs/<name>).")] = None,
        set_: SetOpt = None,
        stack: Annotated[Path | None, typer.Option(
            "--stack", help="Use the servers of `r1vflow stack up --dir DIR`: models go to its "
                            "S3 bucket, tracking to its MLflow.")] = None,
        quiet: Annotated[bool, typer.Option(help="Less KFP logging.")] = False) -> None:
    """Run the experiment's DAG locally through kfp.local (caching on)."""
    import os

    from r1vflow.pipelines.local_run import run_local

    if stack is not None:
        from r1vflow.storage.procs import StackError
        from r1vflow.storage.stack import stack_env

        try:
            os.environ.update(stack_env(stack))
        except StackError as err:
            console.print(f"[red]error:[/red] {err}", highlight=False)
            raise typer.Exit(2) from None
        set_ = ["storage.backend=s3", *(set_ or [])]
    exp = _load(config, set_)
    out = output_dir or Path("runs") / exp.name
    console.print(f"[bold]r1vflow[/bold] running {exp.name} "
                  f"({' -> '.join(exp.stages())}) into {out}")
    summary = run_local(exp, out, experiment_file=str(config), quiet=quiet)
    _print_summary(summary)
    if summary["status"] != "succeeded":
        raise typer.Exit(1)


def _print_summary(summary: dict) -> None:
    table = Table(title=f"{summary['experiment']}: {summary['status']} "
                        f"in {summary['seconds']:.1f} s")
    for col in ("stage", "status", "seconds", "key metrics"):
        table.add_column(col)
    for stage, entry in summary["stages"].items():
        metrics = entry.get("metrics", {})
        keys = [k for k in metrics if k.startswith(("accuracy/", "val_accuracy", "train_loss",
                                                    "num_", "format_rate/"))][:6]
        shown = ", ".join(f"{k}={metrics[k]:.3g}" for k in keys)
        status = entry["status"] + (" (cached)" if entry.get("cached") else "")
        if entry.get("error"):
            shown = entry["error"][:120]
        table.add_row(stage, status, f"{entry.get('seconds', 0):.1f}", shown)
    Console().print(table)
    out = Path(summary["output_dir"])
    typer.echo(f"summary: {out / 'summary.json'}")
    typer.echo(f"MLflow:  {summary['mlflow']['tracking_uri']} "
               f"(mlflow ui --backend-store-uri {summary['mlflow']['tracking_uri']})")


def _register_command_groups() -> None:
    """Command groups live in their own modules (cli_*.py), each with `register(app)`."""
    import importlib

    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(app)


# Each module adds its commands to `app`; imports inside commands keep `r1vflow --help` fast.
_COMMAND_MODULES: list[str] = ["r1vflow.cli_platform", "r1vflow.cli_cluster", "r1vflow.cli_gitops"]
_register_command_groups()


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # python -m r1vflow.cli
    main()
