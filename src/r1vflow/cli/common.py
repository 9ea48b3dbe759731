"""What every command module shares: the console, the `--set` and config arguments, and the
CLI's one way of writing (docs/reliability.md, "Hostile input: the config and the CLI"):

- `fail(message)` / `error(message)`: the one error printer. `error: <message>` on stderr, the
  message's credentials redacted and its `[...]` shown as typed (Rich markup escaped), not
  wrapped; `fail` returns the typer.Exit to raise (2 for an expected failure: bad input, a
  refused setting, an unreachable server).
- `dumps_json(obj)`: JSON for stdout and --json files: NaN and infinities become null (bare NaN
  is not JSON), credentials redacted.
- `install_redaction()`: every text written to sys.stdout / sys.stderr (messages, tables, logs,
  tracebacks) passes `r1vflow.config.redaction.redact`; the app's callback installs it.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from r1vflow.config import ConfigError, Experiment, load_experiment
from r1vflow.config.redaction import redact

console = Console(stderr=True, soft_wrap=True)

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a field: --set sft.lr=1e-4 (repeatable; value parsed as YAML).")]
ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file.")]


def error(message: str, label: str = "error") -> None:
    """Print `<label>: message` on stderr: redacted, markup shown as text, not wrapped."""
    console.print(f"[red]{label}:[/red] {escape(redact(str(message)))}", markup=True,
                  highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """`error(message)`, and the Exit to raise: `raise fail("...") from None`."""
    error(message)
    return typer.Exit(code)


def _plain(obj: Any) -> Any:
    """`obj` with number-like scalars (numpy, torch) as int/float and non-finite floats as None."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real) or hasattr(obj, "__float__"):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def dumps_json(obj: Any, indent: int | None = 2, **kwargs: Any) -> str:
    """JSON text with NaN/inf as null and credentials redacted (what `--json` prints)."""
    return redact(json.dumps(_plain(obj), indent=indent, allow_nan=False, **kwargs))


def echo_json(obj: Any) -> None:
    typer.echo(dumps_json(obj))


class RedactingStream:
    """A text stream that writes `redact(text)` to the stream it wraps (all else delegated)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def install_redaction() -> None:
    """Wrap sys.stdout and sys.stderr in RedactingStream (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))


# MLflow's HTTP client retries 7 times with a doubling backoff (about 250 s on an unreachable
# server); a command that only reads MLflow fails within seconds instead (set them to override).
MLFLOW_CLI_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def checked_tracking_uri(uri: str | None, option: str = "--tracking-uri") -> str | None:
    """`uri` for a command that reads MLflow: refused (exit 2) with credentials or whitespace in
    it, or when its server does not answer /health within 5 s; MLflow's HTTP retries bounded."""
    import http.client
    import os

    from r1vflow.config.platform import MLFLOW_CREDENTIALS_HINT, uri_userinfo
    from r1vflow.config.redaction import credential_in
    from r1vflow.tracking.runs import unreachable

    for name, value in MLFLOW_CLI_HTTP.items():
        os.environ.setdefault(name, value)
    if not uri:
        return uri
    if uri_userinfo(uri) or credential_in(uri):
        raise fail(f"{option} {uri} must not contain credentials: {MLFLOW_CREDENTIALS_HINT}")
    if any(c.isspace() or not c.isprintable() for c in uri):
        raise fail(f"{option} {uri!r} is not a URI (it holds whitespace or control characters)")
    try:
        why = unreachable(uri)
    except (OSError, ValueError, http.client.HTTPException) as err:
        why = f"MLflow at {uri} cannot be reached ({type(err).__name__}: {err})"
    if why:
        raise fail(why)
    return uri


def load_or_exit(config: Path, overrides: list[str] | None) -> Experiment:
    """The validated experiment, or one error naming the bad field paths and exit 2."""
    try:
        return load_experiment(config, overrides)
    except ConfigError as err:
        raise fail(str(err)) from None


def check_data_or_exit(exp: Experiment, sign: bool = False) -> Experiment:
    """For a `files` data source: make its path absolute (tasks may run elsewhere), fit the
    stages to the columns the files have (r1vflow.data.needs.adapt: one `note:` line per
    change), check that they have the columns the enabled stages need (every problem in one error
    line, exit 2), and with `sign` record the files' signature (a changed file is then a new cache
    key)."""
    source = exp.data.source
    if source.kind != "files":
        return exp
    from r1vflow.data.needs import adapt, check, files_signature, source_columns

    source.path = str(Path(source.path).resolve())
    try:
        for line in adapt(exp, source_columns(exp) or set()):  # an ordinary Q/A file runs
            typer.echo(f"note: {line}", err=True)
        found = check(exp)
        if sign and not found:
            source.files_signature = files_signature(exp)
    except (OSError, ValueError) as err:
        found = [str(err)]
    if found:  # every problem in the one error line
        raise fail("; ".join(found))
    return exp
