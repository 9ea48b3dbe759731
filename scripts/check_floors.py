"""Install the dependency floors that pyproject.toml declares and run the tests that use them.

    python3 scripts/check_floors.py                # every checked floor at once (`make floors`)
    python3 scripts/check_floors.py --alone        # each floor on its own, the rest at the lock
    python3 scripts/check_floors.py numpy==1.26.0  # another version (exploring a floor)

It works in its own venv (.venv-floor, never .venv): built like `make install` (torch, then the
project with its dev, bench and judge extras at requirements.lock's versions), reset to the lock
before each check, then given the floors with pip's resolver over every requirement of
pyproject.toml (binary wheels only: a floor that needs a source build is no floor). Whatever else
pip has to move for a floor (an older pandas for an older numpy) is printed; all the rest stays at
the lock. Then the tests that call each package's API run in that venv (not the slow ones).
docs/environment.md ("Dependency floors") records what it found. Not part of `make test` or CI.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("dev", "bench", "judge")

# The direct dependencies whose floors this script checks, and the tests that call their API.
CHECKED: dict[str, list[str]] = {
    "numpy": ["tests/test_ssb.py", "tests/test_data.py", "tests/test_rl_core.py",
              "tests/test_grpo.py", "tests/test_resume.py"],  # Generator, RNG state in checkpoints
    "pillow": ["tests/test_data.py", "tests/test_data_rows.py", "tests/test_data_import.py",
               "tests/test_benchmarks.py", "tests/test_reports.py"],  # reports: matplotlib's PNGs
    "pyyaml": ["tests/test_config.py"],
    "scikit-learn": ["tests/test_data.py"],  # load_digits: the digit-arithmetic families
    "pyarrow": ["tests/test_data_import.py", "tests/test_benchmarks.py"],
    "typer": ["tests/test_eval_cli.py"],
    "pydantic": ["tests/test_config.py", "tests/test_data_rows.py",  # Field(exclude_if=): 2.12
                 "tests/test_data_import.py"],
    "rich": ["tests/test_progress.py", "tests/test_eval_cli.py"],
    "math-verify": ["tests/test_grading.py", "tests/test_benchmarks.py"],
    "pytest": ["tests/test_config.py", "tests/test_grading.py"],
    "urllib3": ["tests/test_storage.py"],  # PoolManager/Timeout/Retry against a real S3 server
}


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, text=True, **kw)


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"],
             *(d for extra in EXTRAS for d in project["optional-dependencies"][extra])]
    return [Requirement(line) for line in lines]


def declared_floors() -> dict[str, str]:
    floors = {}
    for req in requirements():
        name = canonicalize_name(req.name)
        if name in CHECKED:
            lows = [s.version for s in req.specifier if s.operator in (">=", "==")]
            if not lows:
                sys.exit(f"pyproject.toml gives {req.name} no floor (>=)")
            floors[name] = lows[0]
    missing = set(CHECKED) - set(floors)
    if missing:
        sys.exit(f"not in pyproject.toml's dependencies or {EXTRAS} extras: {sorted(missing)}")
    return floors


def build(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        run([sys.executable, "-m", "venv", str(venv)], check=True)
        run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        run([str(py), "-m", "pip", "install", "-q", "-c", "requirements.lock", "torch"], check=True)
        run([str(py), "-m", "pip", "install", "-q", "-c", "requirements.lock",
             f"-e.[{','.join(EXTRAS)}]"], check=True)
    return py


def installed(py: Path, names: list[str]) -> dict[str, str]:
    code = ("import json, sys; from importlib import metadata as m; "
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = run([str(py), "-c", code, *names], check=True, capture_output=True).stdout
    return json.loads(out)


def check(py: Path, pins: dict[str, str], pytest_args: list[str]) -> bool:
    """Reset to the lock, install `pins` (the rest as the resolver needs), run their tests."""
    print(f"\n=== {' '.join(f'{n}=={v}' for n, v in pins.items())}", flush=True)
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-r", "requirements.lock"], check=True)
    # r1vflow's own metadata from this pyproject.toml (pip check compares against it)
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", "."], check=True,
        capture_output=True)
    wanted = [f"{n}=={v}" for n, v in pins.items()]
    wanted += [str(r) for r in requirements() if canonicalize_name(r.name) not in pins]
    reqfile = Path(py).parent.parent / "floor-requirements.txt"
    reqfile.write_text("\n".join(wanted) + "\n")
    res = run([str(py), "-m", "pip", "install", "--only-binary=:all:", "-r", str(reqfile)],
              capture_output=True)
    moved = re.findall(r"^Successfully installed (.*)$", res.stdout, re.M)
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:], sep="\n")
        print(f"RESULT: cannot install {wanted[:len(pins)]}", flush=True)
        return False
    print("installed:", moved[0] if moved else "(nothing new)")
    # pip check names what r1vflow's own (editable, older) metadata or another package disagrees
    # with; reported, not fatal: the run below is the test.
    print(run([str(py), "-m", "pip", "check"], capture_output=True).stdout.strip())
    have = installed(py, list(pins))
    wrong = {n: (v, have[n]) for n, v in pins.items() if Version(have[n]) != Version(v)}
    if wrong:
        print(f"RESULT: not installed at the floor (wanted, got): {wrong}", flush=True)
        return False
    tests = sorted({t for name in pins for t in CHECKED.get(name, [])})
    res = run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
               *pytest_args, *tests], capture_output=True)
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-2000:]
    if res.returncode != 0:
        print(res.stdout[-6000:], res.stderr[-2000:], sep="\n")
    print(f"RESULT: {'PASS' if res.returncode == 0 else 'FAIL'} {pins}: {tail}", flush=True)
    return res.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("pins", nargs="*", help="NAME==VERSION to try instead of pyproject's floor")
    ap.add_argument("--alone", action="store_true", help="each floor on its own, one after another")
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-floor")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments (e.g. '-x')")
    args = ap.parse_args()
    pins: dict[str, str] = {}
    for pin in args.pins:
        name, _, version = pin.partition("==")
        if not version:
            sys.exit(f"{pin!r}: give NAME==VERSION")
        if canonicalize_name(name) not in CHECKED:
            sys.exit(f"{name}: not one of the checked packages {sorted(CHECKED)}")
        pins[canonicalize_name(name)] = version
    floors = pins if pins else declared_floors()
    py = build(args.venv)
    extra = args.pytest_args.split()
    if args.alone:
        results = {name: check(py, {name: v}, extra) for name, v in floors.items()}
    else:
        results = {"together": check(py, floors, extra)}
    print("\n" + "\n".join(f"{'ok  ' if ok else 'FAIL'} {name}" for name, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
