"""Issue 23, part A: hostile and careless input to the config and the CLI (docs/reliability.md,
"Hostile input"). One test (or one parametrised test) per finding; each failed on the code
before the fix:

1. `gitops plan` followed a symlink in experiments/ out of the repository and printed the
   target's secret; one bad file (a bomb) aborted the whole plan.
2. the judge's key variable and endpoint were anything (AWS_SECRET_ACCESS_KEY over plain http).
4. passwords printed (root error of a config without `name`, `submit --host`, `--tracking-uri`),
   `--tracking-uri` on a dead server hung ~250 s, credentials in URI fields passed validation.
5. YAML that crashed `validate` with a traceback or exhausted memory (billion laughs: > 3 GB).
7. markup in user text crashed the CLI, inf/nan/huge ints validated, bare NaN in JSON,
   tracebacks from `stack up` ports, `artifacts verify` and `eval score`.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from r1vflow.cli import app
from r1vflow.config import ConfigError, Strict, experiment_from_dict, load_experiment

from conftest import PRESETS

CLI = [sys.executable, "-m", "r1vflow.cli"]
SECRET = "hunter2pw"
MEMORY_LIMIT = 1 << 30  # bytes of address space a CLI process may use in these tests
BILLION_LAUGHS = "".join(  # 342 bytes; 9**9 strings once expanded
    ["a: &a [" + ",".join(['"lol"'] * 9) + "]\n"]
    + [f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)])


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI in a subprocess with MEMORY_LIMIT of address space."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, preexec_fn=_limited)


def one_error(text: str) -> str:
    """The single `error:` line of `text` (asserting there is one and no traceback)."""
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def smoke(**changes) -> dict:
    data = yaml.safe_load((PRESETS / "smoke.yaml").read_text())
    data.update(changes)
    return data


# --------------------------------------------------------------------------- 1. gitops symlinks


def make_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A repository whose experiments/ holds a good file, a link to an outside credentials
    file, a link to an outside valid experiment, a bomb, a date, a non-UTF-8 file and a
    markup key; and the outside folder."""
    outside = tmp_path / "stack"
    outside.mkdir()
    (outside / "credentials.json").write_text(json.dumps(
        {"access_key": "AKIAOUTSIDE", "secret_key": SECRET}))
    (outside / "other.yaml").write_text(yaml.safe_dump(smoke(name="outside")))
    exps = tmp_path / "repo" / "experiments"
    exps.mkdir(parents=True)
    (exps / "good.yaml").write_text(yaml.safe_dump(smoke(name="good")))
    (exps / "creds.yaml").symlink_to(outside / "credentials.json")
    (exps / "other.yaml").symlink_to(outside / "other.yaml")
    (exps / "bomb.yaml").write_text(BILLION_LAUGHS)
    (exps / "date.yaml").write_text("name: dated\ndescription: 2024-01-01\n")
    (exps / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (exps / "markup.yaml").write_text("name: marked\n'[/x]': 1\n")
    return tmp_path / "repo", outside


def test_gitops_plan_refuses_links_out_of_the_repo_and_bad_files_and_plans_the_others(
        tmp_path, monkeypatch):
    from r1vflow.cli.common import MLFLOW_CLI_HTTP

    for name, value in MLFLOW_CLI_HTTP.items():  # the in-process plan sets them: restored after
        monkeypatch.setenv(name, value)
    repo, _ = make_repo(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = cli("gitops", "plan", "--json", "--repo", str(repo), "--tracking-uri", store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr
    assert "AKIAOUTSIDE" not in result.stdout + result.stderr
    plan = {e["experiment"]: e for e in json.loads(result.stdout)}
    assert plan["experiments/good.yaml"]["action"] == "run"
    for name in ("creds", "other"):
        entry = plan[f"experiments/{name}.yaml"]
        assert entry["action"] == "invalid" and "outside the repository" in entry["reason"]
    reasons = {name: plan[f"experiments/{name}.yaml"]["reason"]
               for name in ("bomb", "date", "latin1", "markup")}
    assert all(plan[f"experiments/{n}.yaml"]["action"] == "invalid" for n in reasons)
    assert "aliases are expanded" in reasons["bomb"]
    assert "'timestamp'" in reasons["date"]
    assert "not UTF-8" in reasons["latin1"]
    assert "[/x]: unknown key" in reasons["markup"]
    table = CliRunner().invoke(app, ["gitops", "plan", "--repo", str(repo), "--tracking-uri",
                                     store])
    assert table.exit_code == 0 and "[/x]: unknown key" in table.output, table.output


def test_outside_error_tells_dangling_loops_and_links_out_from_links_inside(tmp_path):
    from r1vflow.gitops.plan import outside_error

    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    (repo / "kept.yaml").write_text("name: x\n")
    (outside / "far.yaml").write_text("name: y\n")
    links = {"inside": repo / "kept.yaml", "out": outside / "far.yaml",
             "dangling": repo / "gone.yaml", "loop": repo / "loop.yaml"}
    for name, target in links.items():
        (repo / f"{name}.yaml").symlink_to(target)
    said = {name: outside_error(repo / f"{name}.yaml", repo) for name in links}
    assert said == {"inside": None,
                    "out": "a symlink to a file outside the repository: refused, not read",
                    "dangling": "a symlink that leads nowhere: refused",
                    "loop": "a symlink that leads nowhere: refused"}
    assert outside_error(repo / "kept.yaml", repo) is None


# --------------------------------------------------------------------------- 2. the judge


def judged(url: str, key_env: str = "OPENAI_API_KEY") -> dict:
    bench = {"name": "mathvista", "path": "x", "judge_base_url": url, "judge_model": "m",
             "judge_key_env": key_env}
    return smoke(evaluate={"benchmarks": [bench]})


@pytest.mark.parametrize("key_env", ["AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD",
                                     "R1VFLOW_S3_SECRET_KEY", "HOME", "openai_api_key"])
def test_judge_key_variable_outside_the_allow_list_is_refused(key_env):
    with pytest.raises(ConfigError, match=r"evaluate\.benchmarks\.0\.judge_key_env: "
                                          f"{key_env} is not a judge key variable"):
        experiment_from_dict(judged("https://judge.example.com/v1", key_env))


@pytest.mark.parametrize("url", ["http://judge.example.com/v1", "http://10.0.0.5:8000/v1",
                                 "ftp://judge.example.com", "judge.example.com/v1"])
def test_judge_endpoint_must_be_https_unless_loopback(url):
    with pytest.raises(ConfigError, match=r"evaluate\.benchmarks\.0\.judge_base_url: must be"):
        experiment_from_dict(judged(url))


@pytest.mark.parametrize("url,key_env", [("https://judge.example.com/v1", "OPENAI_API_KEY"),
                                         ("http://127.0.0.1:8000/v1", "R1VFLOW_JUDGE_API_KEY"),
                                         ("http://localhost:8000/v1", "R1VFLOW_JUDGE_API_KEY"),
                                         ("http://[::1]:8000/v1", "OPENAI_API_KEY")])
def test_allowed_judges_validate(url, key_env):
    bench = experiment_from_dict(judged(url, key_env)).evaluate.benchmarks[0]
    assert (bench.judge_base_url, bench.judge_key_env) == (url, key_env)


def test_judge_refusal_prints_no_password(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(judged(f"http://user:{SECRET}@judge.example.com/v1")))
    result = cli("validate", str(path))
    assert result.returncode == 2 and SECRET not in result.stdout + result.stderr
    assert "judge_base_url: must not contain credentials" in result.stderr


def test_the_judge_client_refuses_what_the_config_refuses():
    from r1vflow.eval.benchmarks.judge import JudgeConfig

    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY is not allowed"):
        JudgeConfig("https://judge.example.com/v1", "m", "AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ValueError, match="must be https"):
        JudgeConfig("http://judge.example.com/v1", "m")


# --------------------------------------------------------------------------- 4. redaction


def test_redact_masks_userinfo_and_credential_query_values():
    from r1vflow.config.redaction import credential_in, redact

    assert redact("see http://u:pw@h:5000/x?access_token=abc&a=1 now") == \
        "see http://***@h:5000/x?access_token=***&a=1 now"
    assert redact("minio:s3cr3t@s3.local:9000 and s3://b/k?X-Amz-Signature=ff#f") == \
        "***@s3.local:9000 and s3://b/k?X-Amz-Signature=***#f"
    assert redact("sqlite:////a@b/m.db, a@b.c, x=1?password") == \
        "sqlite:////a@b/m.db, a@b.c, x=1?password"
    assert redact("htt p://u:pw@h //v@h") == "htt p://***@h //***@h"
    assert credential_in("https://h/x?api_key=1") == "query parameter 'api_key'"
    assert credential_in("hf://user@h/x") == "user:password@ in a URI"
    assert credential_in("sqlite:////a@b/m.db") is None


def test_root_error_of_a_config_without_name_quotes_no_password(tmp_path):
    data = smoke(tracking={"experiment_name": f"mlflow https://bob:{SECRET}@m.example"})
    del data["name"]
    path = tmp_path / "noname.yaml"
    path.write_text(yaml.safe_dump(data))
    result = cli("validate", str(path))
    assert result.returncode == 2, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "name: Field required" in result.stderr


URI_FIELDS = {  # field: the override that puts V there
    "model.pretrained.source": "model.pretrained.source=V",
    "model.pretrained.base_model_uri": "model.pretrained.base_model_uri=V",
    "model.pretrained.vision_model": "model.pretrained.vision_model=V",
    "data.source.hub.id": f"data.source.hub={{id: V, revision: {'0' * 40}}}",
    "data.source.path": "data.source.path=V",
    "evaluate.benchmarks.0.path": "evaluate.benchmarks=[{name: mmmu, path: V}]",
    "cluster.images.base": "cluster.images={base: V}",
}


@pytest.mark.parametrize("field", URI_FIELDS)
@pytest.mark.parametrize("value", [f"https://hub.example/m?access_token={SECRET}",
                                   f"s3://bucket/m?x=1&password={SECRET}",
                                   f"https://alice:{SECRET}@hub.example/m"])
def test_credentials_in_uri_fields_are_refused_at_validation(field, value):
    override = URI_FIELDS[field].replace("V", json.dumps(value))
    with pytest.raises(ConfigError) as err:
        experiment_from_dict(smoke(), [override])
    named = field.removesuffix(".base")  # images is one mapping field
    assert f"{named}: must not contain credentials" in str(err.value)
    assert SECRET not in str(err.value)


def test_submit_host_with_credentials_is_refused_unprinted():
    for host in (f"http://bob:{SECRET}@kfp.example:8080", f"https://kfp.example/?token={SECRET}"):
        result = CliRunner().invoke(app, ["submit", str(PRESETS / "smoke.yaml"), "--host", host,
                                          "--dry-run"])
        assert result.exit_code == 2 and SECRET not in result.output, result.output
        assert "must not contain credentials" in one_error(result.output)


@pytest.mark.parametrize("command", [["lineage", "m", "1"], ["gitops", "plan"]])
def test_tracking_uri_with_credentials_or_dead_server_fails_fast_unprinted(command, tmp_path):
    (tmp_path / "experiments").mkdir()
    for uri, says in ((f"http://bob:{SECRET}@127.0.0.1:9", "must not contain credentials"),
                      ("http://127.0.0.1:9", "unreachable")):
        started = time.monotonic()
        result = cli(*command, "--tracking-uri", uri, cwd=tmp_path, timeout=60)
        assert time.monotonic() - started < 30  # was ~250 s of MLflow retries
        assert result.returncode == 2 and SECRET not in result.stdout + result.stderr
        assert says in one_error(result.stderr)


@pytest.mark.parametrize("command", [["lineage", "m", "1"], ["gitops", "plan"]])
def test_odd_tracking_uris_are_one_line(command, tmp_path, monkeypatch):
    from r1vflow.cli.common import MLFLOW_CLI_HTTP

    for name, value in MLFLOW_CLI_HTTP.items():  # restored after the test
        monkeypatch.setenv(name, value)
    (tmp_path / "experiments").mkdir()
    monkeypatch.chdir(tmp_path)
    for uri, says in ((f"https://127.0.0.1:9/?password={SECRET}", "must not contain credentials"),
                      ("http://a b", "is not a URI"), ("htp:/x", "htp:/x")):
        result = CliRunner().invoke(app, [*command, "--tracking-uri", uri])
        assert result.exit_code == 2 and SECRET not in result.output, result.output
        assert says in one_error(result.output)


def test_messages_written_by_any_command_are_redacted():
    result = CliRunner().invoke(app, ["artifacts", "verify", f"foo://bob:{SECRET}@x/y"])
    assert result.exit_code == 2 and SECRET not in result.output
    assert "foo://***@x/y" in one_error(result.output)


# --------------------------------------------------------------------------- 5. the YAML loader


def _fifo(path: Path) -> None:
    os.mkfifo(path)


# In-process cases; the billion laughs runs in a memory-limited subprocess (below): on the old
# loader it takes all the memory there is.
YAML_CASES = {  # name: (how to make the file, what its error says)
    "date": (lambda p: p.write_text("name: x\ndescription: 2024-01-01\n"), "'timestamp'"),
    "set": (lambda p: p.write_text("name: x\ndescription: !!set {a: null}\n"), "'set'"),
    "binary": (lambda p: p.write_text("name: x\ndescription: !!binary aGk=\n"), "'binary'"),
    "python tag": (lambda p: p.write_text("name: !!python/name:os.system x\n"),
                   "'python/name:os.system'"),
    "recursive anchor": (lambda p: p.write_text("name: x\na: &a [*a]\n"), "recursive anchor"),
    "deep nesting": (lambda p: p.write_text("name: x\nd: " + "[" * 5000 + "]" * 5000 + "\n"),
                     "nested more than 40 levels"),
    "deep block nesting": (lambda p: p.write_text(
        "".join(" " * i + f"k{i}:\n" for i in range(200))), "nested more than 40 levels"),
    "too many aliases": (lambda p: p.write_text(
        "a: &a 1\nb: [" + ",".join(["*a"] * 40) + "]\n"), "more than 32 aliases"),
    "duplicate key": (lambda p: p.write_text("name: x\nname: y\n"), "key 'name' appears twice"),
    "not UTF-8": (lambda p: p.write_bytes(b"name: \xff\xfe\n"), "not UTF-8 text (byte 0xff"),
    "directory": (lambda p: p.mkdir(), "is a directory"),
    "fifo": (_fifo, "not a regular file"),
    "huge file": (lambda p: p.write_text("#" * 2_000_000), "at most 1000000"),
    "invalid YAML": (lambda p: p.write_text("name: [unclosed\n"), "is not valid YAML: line 2"),
}


@pytest.mark.parametrize("case", YAML_CASES)
def test_hostile_yaml_is_one_error_line_exit_2(case, tmp_path):
    make, says = YAML_CASES[case]
    path = tmp_path / "exp.yaml"
    make(path)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert time.monotonic() - started < 10
    assert result.exit_code == 2, result.output
    line = one_error(result.output)
    assert line.startswith(f"error: {path}") and says in line, line


def test_invalid_fields_are_one_error_line(tmp_path):
    """Every bad field of a file in the one `error:` line: no second line per field."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(smoke(sft={"lrr": 1e-3, "lr": -1})))
    result = cli("validate", str(path))
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {path}: invalid experiment: ")
    assert "sft.lrr: unknown key" in result.stderr
    assert "sft.lr: Input should be greater than 0 (got -1)" in result.stderr


def test_billion_laughs_fails_fast_in_bounded_memory(tmp_path):
    path = tmp_path / "lol.yaml"
    path.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) == 342
    started = time.monotonic()
    result = cli("validate", str(path))  # under MEMORY_LIMIT: the old loader hit MemoryError
    assert time.monotonic() - started < 20
    assert result.returncode == 2 and "aliases are expanded" in one_error(result.stderr)


def test_anchors_within_budget_still_load(tmp_path):
    path = tmp_path / "anchored.yaml"  # the qwen2.5-vl-7b preset's way of sharing resources
    path.write_text("name: anchored\nresources:\n  sft: &node {cpu: '8', memory: 64Gi}\n"
                    "  evaluate: *node\n  bootstrap: {<<: *node, cpu: '2'}\n")
    exp = load_experiment(path)
    assert exp.resources["evaluate"] == exp.resources["sft"]
    assert (exp.resources["bootstrap"].cpu, exp.resources["bootstrap"].memory) == ("2", "64Gi")


# --------------------------------------------------------------------------- 7. config and CLI


def test_markup_in_user_text_is_shown_as_typed(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(smoke(name="[/x] [bold]y[/bold]")))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "(got '[/x] [bold]y[/bold]')" in result.output
    data = tmp_path / "[/d]" / "rows.jsonl"
    result = CliRunner().invoke(app, ["validate", str(PRESETS / "smoke.yaml"), "--set",
                                      "data.source.kind=files", "--set",
                                      f"data.source.path={data}"])
    assert result.exit_code == 2 and "[/d]" in one_error(result.output), result.output


def _takes_float(annotation) -> bool:
    """float, float | None, list[float] (not Literal['float16'])."""
    args = typing.get_args(annotation)
    return annotation is float or (typing.get_origin(annotation) is not typing.Literal
                                   and any(_takes_float(a) for a in args))


def _float_fields() -> list[tuple[type, str]]:
    seen, out, todo = set(), [], list(Strict.__subclasses__())
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        todo += model.__subclasses__()
        out += [(model, name) for name, f in model.model_fields.items()
                if _takes_float(f.annotation)]
    return sorted(out, key=lambda mf: (mf[0].__name__, mf[1]))


FLOAT_FIELDS = _float_fields()


def test_every_float_field_refuses_inf_and_nan():
    assert len(FLOAT_FIELDS) >= 27  # the issue counted 27 that took inf
    for model, name in FLOAT_FIELDS:
        for value in (math.inf, -math.inf, math.nan):
            errors = []
            given = [value] if "list" in str(model.model_fields[name].annotation) else value
            try:
                model.model_validate({name: given})
            except Exception as err:  # noqa: BLE001 (a pydantic ValidationError)
                errors = err.errors()
            assert any(e["loc"][:1] == (name,) and e["type"] == "finite_number"
                       for e in errors), (model.__name__, name, value)


@pytest.mark.parametrize("assignment,says", [
    ("data.seed=-1", "data.seed: Input should be greater than or equal to 0"),
    ("sft.seed=18446744073709551616", "sft.seed: Input should be less than or equal to "
                                      "4294967295"),
    ("data.source.seed=4294967296", "data.source.seed: Input should be less than or equal"),
    ("sft.lr=inf", "sft.lr: Input should be a finite number"),
    ("grpo={steps: 1606938044258990275541962092341162602522202993782792835301376}",
     "grpo.steps: integers here are at most 2147483647"),
    ("sft.batch_size=2147483648", "sft.batch_size: integers here are at most 2147483647"),
])
def test_out_of_range_numbers_are_refused(assignment, says):
    with pytest.raises(ConfigError, match=re_escape(says)):
        load_experiment(PRESETS / "smoke.yaml", [assignment])


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_largest_allowed_numbers_validate():
    exp = load_experiment(PRESETS / "smoke.yaml", ["data.seed=4294967295",
                                                   "sft.batch_size=2147483647"])
    assert (exp.data.seed, exp.sft.batch_size) == (2**32 - 1, 2**31 - 1)


def test_json_output_has_no_bare_nan():
    from r1vflow.cli.common import dumps_json

    text = dumps_json({"a": math.nan, "b": [np.float32("inf"), np.int64(3), 0.5],
                       "c": f"http://u:{SECRET}@h"}, indent=None)
    assert text == '{"a": null, "b": [null, 3, 0.5], "c": "http://***@h"}'
    assert json.loads(text)["a"] is None


def test_no_cli_module_writes_json_by_itself():
    cli_dir = Path(__file__).resolve().parents[1] / "src" / "r1vflow" / "cli"
    writers = [p.name for p in cli_dir.glob("*.py")
               if p.name != "common.py" and "json.dumps(" in p.read_text()]
    assert writers == []  # all --json output goes through common.dumps_json


@pytest.mark.parametrize("args,says", [
    (["stack", "up", "--s3-port", "70000"], "--s3-port 70000: a TCP port is 1..65535"),
    (["stack", "up", "--mlflow-port", "-1"], "--mlflow-port -1: a TCP port is 1..65535"),
    (["artifacts", "verify", "/not/a/uri"], "unsupported artifact URI"),
    (["artifacts", "verify", "s3://b/x", "--stack", "/nonexistent"], "holds no stack.json"),
])
def test_cli_failures_are_one_line_exit_2(args, says, tmp_path):
    if args[:2] == ["stack", "up"]:
        args = [*args, "--dir", str(tmp_path / "stack")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert says in one_error(result.output)
    assert not (tmp_path / "stack").exists()  # refused before anything started


def test_eval_score_report_that_cannot_be_written_is_one_line(tmp_path):
    from bench_data import write_math500

    write_math500(tmp_path / "m", [{"problem": "1+1?", "answer": "2", "subject": "Algebra",
                                    "level": 1, "unique_id": "u1"}])
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": "u1", "response": "2"}\n')
    result = CliRunner().invoke(app, ["eval", "score", "-b", "math500", "--data",
                                      str(tmp_path / "m"), "--predictions", str(pred),
                                      "--json", str(tmp_path)])
    assert result.exit_code == 2
    assert "cannot write the report (Is a directory)" in one_error(result.output)
    pred.write_text('{"id": "[/x]", "response": "2"}\n')
    result = CliRunner().invoke(app, ["eval", "score", "-b", "math500", "--data",
                                      str(tmp_path / "m"), "--predictions", str(pred),
                                      "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "id '[/x]'" in one_error(result.output)


def test_a_manifest_key_with_markup_is_shown_as_typed(tmp_path):
    from r1vflow.storage import FileStore

    src = tmp_path / "src"
    (src / "d[").mkdir(parents=True)
    (src / "d[" / "b].txt").write_text("good")  # manifest key 'd[/b].txt': a closing tag
    uri = FileStore(tmp_path / "store", show_progress=False).upload_dir(src, "runs/a").pointer.uri
    (Path(uri.removeprefix("file://")) / "d[" / "b].txt").write_text("evil")  # tampered
    result = CliRunner().invoke(app, ["artifacts", "verify", uri])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    bad = [line for line in result.output.splitlines() if line.startswith("bad:")]
    assert len(bad) == 1 and "d[/b].txt" in bad[0], result.output
