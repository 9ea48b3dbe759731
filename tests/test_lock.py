"""The environment the tests run in is exactly the one requirements.lock pins (make install)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_lock_pins_every_direct_dependency():
    pins = locked()
    # The packages the code imports directly, as pyproject.toml names them.
    for name in ("torch", "transformers", "deepspeed", "kfp", "kfp-kubernetes", "mlflow",
                 "minio", "pydantic", "kubernetes", "math-verify", "trl", "pytest"):
        assert canonicalize_name(name) in pins, f"{name} is not pinned in requirements.lock"


def test_installed_versions_equal_the_lock():
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in locked().items()
             if name != "setuptools" and (name not in installed
                                          or Version(installed[name]) != Version(version))}
    assert not wrong, f"installed != requirements.lock (run `make install`): {wrong}"
