"""Loading: YAML files, `--set a.b=c` overrides, one error that names every bad field path, and
the flattening of a config into MLflow params."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from r1vflow.config.experiment import Experiment
from r1vflow.config.redaction import redact
from r1vflow.config.yaml_safe import YamlRefused, load_yaml_file, load_yaml_text

# --------------------------------------------------------------------------- loading


class ConfigError(ValueError):
    """An experiment file or override is invalid; the message (one line) names every bad field
    path."""


def _shown_input(value: Any) -> str:
    """How a refused input is quoted: scalars only (a mapping is the whole section, or the
    whole file), at most 80 characters, credentials redacted."""
    if isinstance(value, dict | list | tuple | set):
        return ""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f" (got {redact(text)})"


def format_validation_error(err: ValidationError) -> str:
    """One line: ``invalid experiment: <path>: <why>; <path>: <why>`` (every bad field, in
    pydantic's order; the CLI prints it as its one ``error:`` line)."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = redact(e["msg"].removeprefix("Value error, "))
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `r1vflow schema` lists every field)"
        elif e["type"] not in ("literal_error", "missing") and "input" in e:
            msg += _shown_input(e["input"])
        lines.append(f"{path}: {' '.join(msg.split())}")
    return "invalid experiment: " + "; ".join(lines)


_EXPONENT_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _parse_value(raw: str) -> Any:
    """YAML, plus what YAML 1.1 leaves as a string but a person means as a number ('2e-5')."""
    if not raw.strip():
        return ""
    try:
        value = load_yaml_text(raw)
    except YamlRefused:  # e.g. '@daily' ('@' is reserved in YAML), a date: the text is meant
        return raw.strip()
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value):
        return float(value)
    return value


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (numbers, lists...)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    path, raw = assignment.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {assignment!r} has an empty key path")
    value = _parse_value(raw)
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def experiment_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Experiment:
    data = json.loads(json.dumps(data))  # deep copy, plain types
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """The validated experiment of a YAML file (read by r1vflow.config.yaml_safe), or one
    ConfigError naming the file: missing, not a regular file, too large, not UTF-8, YAML it
    refuses (aliases over budget, dates, deep nesting, duplicate keys) or invalid fields."""
    path = Path(path)
    try:
        data = load_yaml_file(path)
    except YamlRefused as err:  # "<path> is not UTF-8 ...", "<path>: line 3: ..."
        sep = " " if str(err).startswith("is ") else ": "
        raise ConfigError(f"{path}{sep}{err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return experiment_from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON strings (MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, dict)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def json_schema() -> dict[str, Any]:
    return Experiment.model_json_schema()
