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
