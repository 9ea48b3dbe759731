"""Property tests (hypothesis): every input gives a result or one clear error naming the file,
never a traceback from deep inside and never a partial file.

Inputs fuzzed: experiment files (raw text and mutations of a valid preset), data rows
(train.jsonl lines, bytes included), stored manifests (bytes, then keys through a real
download) and model answers. This branch has no predictions-file reader in `r1vflow.eval`, so
for prediction files the grader that reads every answer (`extract_answer`, `is_correct`,
`score_responses`) is fuzzed instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hardening import BILLION_LAUGHS, SECRET

from conftest import PRESETS

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
SMOKE = yaml.safe_load((PRESETS / "smoke.yaml").read_text())

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)


def _fields(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        out.append(prefix + key)
        if isinstance(value, dict):
            out += _fields(value, f"{prefix}{key}.")
    return out


FIELDS = _fields(SMOKE)


# --------------------------------------------------------------------------- experiments


@FUZZ
@given(text=st.text(max_size=300))
def test_any_experiment_text_loads_or_raises_one_config_error(text, tmp_path_factory):
    from r1vflow.config import ConfigError, Experiment, load_experiment

    path = tmp_path_factory.mktemp("exp") / "exp.yaml"
    path.write_text(text)
    try:
        assert isinstance(load_experiment(path), Experiment)
    except ConfigError as err:
        assert str(path) in str(err) and "\n" not in str(err).strip().splitlines()[0]


@FUZZ
@given(field=st.sampled_from(FIELDS), value=values)
def test_a_preset_with_any_field_changed_loads_or_names_the_field(field, value,
                                                                   tmp_path_factory):
    from r1vflow.config import ConfigError, Experiment, load_experiment

    data = json.loads(json.dumps(SMOKE))
    node, *path = data, *field.split(".")
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    file = tmp_path_factory.mktemp("exp") / "exp.yaml"
    file.write_text(yaml.safe_dump(data))
    try:
        assert isinstance(load_experiment(file), Experiment)
    except ConfigError as err:
        assert str(file) in str(err)


# --------------------------------------------------------------------------- data rows


@FUZZ
@given(lines=st.lists(st.one_of(st.binary(max_size=60),
                                values.map(lambda v: json.dumps(v).encode())), max_size=4))
def test_any_data_rows_load_or_name_the_file_and_line(lines, tmp_path_factory):
    from r1vflow.data.io import load_split

    root = tmp_path_factory.mktemp("data")
    (root / "train.jsonl").write_bytes(b"\n".join(lines))
    try:
        samples = load_split(root, "train")
    except ValueError as err:
        assert str(root / "train.jsonl") in str(err), err
    else:
        assert all(s.split == "train" for s in samples)


# --------------------------------------------------------------------------- manifests


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), values.map(lambda v: json.dumps(v).encode())))
def test_any_manifest_bytes_parse_or_name_their_source(data):
    from r1vflow.storage.manifest import Manifest, parse_manifest

    try:
        assert isinstance(parse_manifest(data, "s3://b/x/_r1vflow_manifest.json"), Manifest)
    except ValueError as err:
        assert "s3://b/x/_r1vflow_manifest.json" in str(err)


keys = st.lists(st.text(alphabet="ab./\\:\x00 ", min_size=0, max_size=8), min_size=1,
                max_size=3, unique=True)


@FUZZ
@given(names=keys)
def test_a_download_with_any_manifest_keys_writes_all_or_nothing(names, tmp_path_factory):
    """Whatever the keys, a download refuses before writing or writes every file inside."""
    from r1vflow.storage import FileStore
    from r1vflow.storage.manifest import FileEntry, Manifest, manifest_bytes
    from r1vflow.storage.store import StoreError

    root = tmp_path_factory.mktemp("store")
    artifact = root / "bucket" / "model"
    artifact.mkdir(parents=True)
    entry = FileEntry(sha256="0" * 64, size=0)
    try:
        manifest = Manifest.model_construct(files=dict.fromkeys(names, entry), total_size=0,
                                            created_at="x")
        (artifact / "_r1vflow_manifest.json").write_bytes(manifest_bytes(manifest))
    except (ValueError, OSError):
        return  # not even writable as a manifest
    target = root / "out" / "target"
    before = {p for p in root.rglob("*")}
    try:
        FileStore(root / "bucket", show_progress=False).download_dir(artifact.as_uri(), target)
    except (ValueError, StoreError):
        written = {p for p in root.rglob("*") if p.is_file()} - before
        assert not written, f"a refused download wrote {sorted(written)}"
    else:
        for path in target.rglob("*"):
            assert path.resolve().is_relative_to(target.resolve())


# --------------------------------------------------------------------------- answers


@FUZZ
@given(text=st.text(max_size=200), gold=st.text(min_size=1, max_size=10))
def test_any_answer_text_is_graded_without_raising(text, gold):
    from r1vflow.eval.grading import extract_answer, format_ok, is_correct, score_responses

    assert isinstance(is_correct(extract_answer(text), gold), bool)
    assert isinstance(format_ok(text), bool)
    scored = score_responses([gold], [text])
    assert 0.0 <= scored["accuracy"] <= 1.0


def test_the_fuzzed_preset_is_valid():
    """The mutations start from a valid experiment (else every example is an error)."""
    from r1vflow.config import load_experiment

    assert load_experiment(Path(PRESETS / "smoke.yaml")).name == "smoke"


# ----------------------------------------------------------------------------- prediction files
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["id", "response", "sample", "x"]), inner,
                                       max_size=3), max_leaves=6)


@FUZZ
@given(lines=st.lists(_JSON.map(json.dumps) | st.text(max_size=30) | st.sampled_from(
    ['{"id": "u1", "response": "\\\\boxed{2}"}', '{"id": 1, "response": "3"}']), max_size=6),
       raw=st.binary(max_size=40))
def test_any_predictions_file_scores_or_raises_one_benchmark_error(tmp_path_factory, lines, raw):
    """`r1vflow eval score`'s reading and grading of a predictions file: a report or one
    BenchmarkDataError naming the problem, for any lines (and any bytes), never a traceback."""
    from bench_data import write_math500

    from r1vflow.eval.benchmarks import BenchmarkDataError, get_benchmark, iter_items
    from r1vflow.eval.benchmarks.run import read_predictions
    from r1vflow.eval.benchmarks.score import score_predictions

    root = tmp_path_factory.mktemp("pred")
    write_math500(root / "m", [{"problem": "1+1?", "answer": "2", "subject": "Algebra",
                                "level": 1, "unique_id": "u1"}])
    items = {item.id: item for item in iter_items("math500", root / "m")}
    for content in ("\n".join(lines).encode(), raw):
        path = root / "pred.jsonl"
        path.write_bytes(content)
        try:
            report = score_predictions("math500", get_benchmark("math500"), items,
                                       read_predictions(path))
        except BenchmarkDataError as err:
            assert str(err) and "\n" not in str(err)
        else:
            assert report["n"] == 1 and 0.0 <= report["accuracy"] <= 1.0


# --------------------------------------------------------------------------- the CLI, end to end

HOSTILE = [  # YAML values a careless user or an attacker writes (issue 23)
    "2024-01-01", "!!set {a: null}", "!!binary aGk=", "!!python/name:os.system x",
    "&loop [*loop]", "*undefined", ".inf", "-.inf", ".nan", "18446744073709551616", "-1",
    "'[/x]'", "'[bold]b[/bold] [link=file:///etc/passwd]x[/link]'",
    f"'http://user:{SECRET}@h.example/x'", f"'https://h.example/x?access_token={SECRET}'",
    "[" * 60 + "]" * 60, "{a: 1, a: 2}", "&b [1, 2]", "[*b, *b, *b]", "'\\u0000'",
]
CLI_FUZZ = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_gib() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@CLI_FUZZ
@given(field=st.sampled_from(FIELDS), hostile=st.sampled_from(HOSTILE),
       prefix=st.sampled_from(["", BILLION_LAUGHS, "b: &b [1]\n"]), noise=st.binary(max_size=4),
       at=st.integers(0, 400))
def test_validate_any_hostile_config_is_ok_or_one_error_line(field, hostile, prefix, noise, at,
                                                             tmp_path_factory):
    """`r1vflow validate` in a subprocess limited to 1 GiB of address space, on the smoke preset
    with one field's value replaced by hostile YAML (after an alias bomb or an anchor, with a
    few random bytes spliced in): exit 0 and `ok:`, or exit 2 and exactly one `error:` line,
    never a traceback or a printed secret."""
    import subprocess
    import sys

    data = json.loads(json.dumps(SMOKE))
    node, *path = data, *field.split(".")
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "__HOSTILE__"
    text = (prefix + yaml.safe_dump(data)).encode().replace(b"'__HOSTILE__'", b"__HOSTILE__")
    text = text.replace(b"__HOSTILE__", hostile.encode())
    text = text[:at] + noise + text[at:] if noise else text
    file = tmp_path_factory.mktemp("cli") / "exp.yaml"
    file.write_bytes(text)
    proc = subprocess.run([sys.executable, "-m", "r1vflow.cli", "validate", str(file)],
                          capture_output=True, text=True, timeout=60, preexec_fn=_one_gib)
    assert proc.returncode in (0, 2), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and SECRET not in proc.stdout + proc.stderr
    if proc.returncode == 0:
        assert proc.stdout.startswith("ok: ")
    else:
        assert proc.stderr.startswith("error:"), proc.stderr[-3000:]
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
