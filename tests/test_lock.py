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
                 "minio", "pydantic", "kubernetes", "math-verify", "trl", "pytest", "matplotlib",
                 "selenium", "openai"):
        assert canonicalize_name(name) in pins, f"{name} is not pinned in requirements.lock"


def test_installed_versions_equal_the_lock():
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in locked().items()
             if name != "setuptools" and (name not in installed
                                          or Version(installed[name]) != Version(version))}
    assert not wrong, f"installed != requirements.lock (run `make install`): {wrong}"


def test_every_locked_direct_dependency_is_inside_its_pyproject_range():
    """pyproject.toml's ranges (what `pip install r1vflow` accepts) admit what CI tests."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((LOCK.parent / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for extra in ("dev", "bench", "judge")
                                          for d in project["optional-dependencies"][extra])]
    pins = locked()
    outside = {}
    for line in wanted:
        req = Requirement(line)
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None or not req.specifier.contains(Version(pinned), prereleases=True):
            outside[req.name] = (str(req.specifier), pinned)
    assert not outside, f"requirements.lock pins outside pyproject.toml's ranges: {outside}"
