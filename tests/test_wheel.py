"""The built wheel works without the repository: build it from a copy of the working tree,
install it (no dependencies) into a fresh venv, and run `r1vflow --help`, `validate` and
`compile` from a directory outside the repository.

The fresh venv gets its dependencies from this venv's site-packages through a `.pth` line, which
adds that directory to sys.path without running its own `.pth` files, so the editable install of
the repository (an `__editable__` finder started by a `.pth`) stays off. That keeps the test
offline and fast while proving that r1vflow itself comes from the wheel."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, env=None, timeout=300):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=env)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _source_copy(dest: Path) -> Path:
    """The working tree's tracked and untracked-but-not-ignored files (what a checkout has)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", tmp / "dist", src], cwd=tmp)
    assert "would be ignored" not in built.stdout + built.stderr, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("r1vflow-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    site = Path(_run([venv / "bin" / "python", "-c", "import sysconfig; "
                      "print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    (site / "zz_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
          wheel], cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp), "PYTHONNOUSERSITE": "1"}
    return venv, work, env, wheel


def test_r1vflow_is_imported_from_the_wheel_not_the_repository(installed):
    venv, work, env, _ = installed
    where = _run([venv / "bin" / "python", "-c",
                  "import r1vflow, r1vflow.components, r1vflow.pipelines, r1vflow.reports; "
                  "print(r1vflow.__file__); print(r1vflow.components.__file__)"], work, env)
    for line in where.stdout.split():
        assert Path(line).is_relative_to(venv), line
        assert not Path(line).is_relative_to(ROOT), line


def test_help_validate_and_compile_run_from_the_wheel(installed):
    venv, work, env, _ = installed
    cli = venv / "bin" / "r1vflow"
    assert "validate" in _run([cli, "--help"], work, env).stdout
    shutil.copy(ROOT / "pipelines" / "configs" / "smoke.yaml", work / "smoke.yaml")
    assert "smoke" in _run([cli, "validate", "smoke.yaml"], work, env).stdout
    bad = subprocess.run([cli, "validate", "smoke.yaml", "--set", "sft.lr=-1"], cwd=work,
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "sft.lr" in bad.stdout + bad.stderr
    _run([cli, "compile", "smoke.yaml", "-o", "smoke-ir.yaml"], work, env)
    compiled = (work / "smoke-ir.yaml").read_text()
    # the wheel compiles exactly the pipeline the repository's committed IR holds
    assert compiled == (ROOT / "pipelines" / "compiled" / "smoke.yaml").read_text()
    spec = next(yaml.safe_load_all(compiled))
    assert spec["pipelineInfo"]["name"] == "r1vflow-smoke"


def test_the_wheel_ships_presets_compiled_ir_and_every_package(installed):
    import zipfile

    *_, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "r1vflow/pipelines/configs/tiny.yaml" in names
    assert "r1vflow/pipelines/compiled/tiny.yaml" in names
    for package in ("r1vflow/reports/page.py", "r1vflow/components/grpo.py",
                    "r1vflow/runtime/reporting.py"):
        assert package in names
    assert not [n for n in names if n.startswith(("tests/", "src/"))]
