"""What every command module shares: the console, the `--set` and config arguments, and loading
an experiment with one clear error line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from r1vflow.config import ConfigError, Experiment, load_experiment

console = Console(stderr=True)

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a field: --set sft.lr=1e-4 (repeatable; value parsed as YAML).")]
ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file.")]


def load_or_exit(config: Path, overrides: list[str] | None) -> Experiment:
    """The validated experiment, or one error line naming the bad field paths and exit 2."""
    try:
        return load_experiment(config, overrides)
    except ConfigError as err:
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def check_data_or_exit(exp: Experiment, sign: bool = False) -> Experiment:
    """For a `files` data source: make its path absolute (tasks may run elsewhere), check that
    the files have the columns the enabled stages need (one error line each, exit 2), and with
    `sign` record the files' signature (a changed file is then a new cache key)."""
    source = exp.data.source
    if source.kind != "files":
        return exp
    from r1vflow.data.needs import check, files_signature

    source.path = str(Path(source.path).resolve())
    try:
        found = check(exp)
        if sign and not found:
            source.files_signature = files_signature(exp)
    except (OSError, ValueError) as err:
        found = [str(err)]
    for line in found:
        console.print(f"[red]error:[/red] {line}", markup=True, highlight=False, soft_wrap=True)
    if found:
        raise typer.Exit(2)
    return exp
