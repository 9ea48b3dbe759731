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
