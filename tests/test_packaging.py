"""The distribution installs `r1vflow` only, with every subpackage (components/ and pipelines/
included, as r1vflow.components and r1vflow.pipelines)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {"r1vflow." + ".".join(p.parent.relative_to(ROOT / "src" / "r1vflow").parts)
             for p in (ROOT / "src" / "r1vflow").rglob("__init__.py")}
    found = {f.rstrip(".") for f in found} | {"r1vflow.components", "r1vflow.pipelines"}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def _installed_name(directory: Path) -> str:
    for root, name in ((ROOT / "src" / "r1vflow", "r1vflow"),
                       (ROOT / "components", "r1vflow.components"),
                       (ROOT / "pipelines", "r1vflow.pipelines")):
        if directory.is_relative_to(root):
            return ".".join((name, *directory.relative_to(root).parts))
    raise AssertionError(directory)


def test_every_directory_of_package_data_is_listed_with_its_files():
    """setuptools prints a "Package would be ignored" banner at install time for a directory of
    package data that is not in `packages`; list it, and give its files in package-data."""
    import fnmatch
    import subprocess

    tool = _pyproject()["tool"]["setuptools"]
    tracked = subprocess.run(["git", "ls-files", "src/r1vflow", "components", "pipelines"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    data = [ROOT / f for f in tracked if not f.endswith(".py")]
    assert data, "no package data found: the test looks in the wrong place"
    for file in data:
        package = _installed_name(file.parent)
        assert package in tool["packages"], f"add {package} to [tool.setuptools] packages"
        patterns = tool["package-data"].get(package, [])
        assert any(fnmatch.fnmatch(file.name, p) for p in patterns), (
            f"{file.relative_to(ROOT)}: no [tool.setuptools.package-data] pattern of {package}")


def test_only_r1vflow_is_a_top_level_name():
    packages = _pyproject()["tool"]["setuptools"]["packages"]
    assert {p.split(".")[0] for p in packages} == {"r1vflow"}


def test_console_script_and_python_floor():
    project = _pyproject()["project"]
    assert project["scripts"]["r1vflow"] == "r1vflow.cli:app"
    assert project["requires-python"] == ">=3.11"
    for required in ("kfp", "torch", "transformers", "deepspeed", "mlflow", "minio", "pydantic",
                     "kubernetes"):
        assert any(dep.split("=")[0].split(">")[0].strip() == required
                   for dep in project["dependencies"]), required
    assert any(dep.startswith("vllm") for dep in project["optional-dependencies"]["gpu"])


def test_library_imports_without_kfp():
    import subprocess
    import sys

    code = ("import sys; sys.modules['kfp'] = None\n"
            "import r1vflow.config, r1vflow.stages.sft, r1vflow.stages.evaluate, r1vflow.tracking.runs")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_local_runs_driver_does_not_import_torch():
    """`r1vflow run` drives the DAG; its tasks train. torch's import (1.3-1.5 s of CPU) stays
    in the tasks, where the warm task server has it already."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import r1vflow.cli.experiment, r1vflow.pipelines.local_run\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[]"]
