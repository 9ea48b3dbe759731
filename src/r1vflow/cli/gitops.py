"""GitOps commands: retrain exactly the experiments whose config changed (docs/gitops.md).

    r1vflow gitops plan --json                           # per experiments/*.yaml: run, skip or invalid
    r1vflow gitops apply --local --output-root runs/gitops
    KFP_TOKEN=... r1vflow gitops apply --host https://kfp.example --token-env KFP_TOKEN
    r1vflow gitops render --out manifests/gitops/rendered [--check]
    r1vflow gitops release 3f2a9c1d            # give up a claim by hand (a lost cluster run)

State lives in MLflow: --tracking-uri, else $MLFLOW_TRACKING_URI (plan also: --stack DIR, else
a running runs/stack, else it plans as if nothing has run and says so).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from r1vflow.cli.common import echo_json

RepoOpt = Annotated[Path, typer.Option("--repo", help="The git checkout holding the experiments.")]
DirOpt = Annotated[str, typer.Option("--experiments-dir",
                                     help="Experiments folder, relative to --repo.")]
UriOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking URI holding the state (default $MLFLOW_TRACKING_URI).")]
StaleOpt = Annotated[float, typer.Option(
    "--stale-after", help="Seconds without heartbeat after which a running claim is stale.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
OnlyOpt = Annotated[list[str] | None, typer.Option(
    "--only", help="Only experiment files matching this glob, e.g. 'experiments/smoke-*' "
                   "(repeatable).")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    from r1vflow.cli.common import fail

    return fail(message, code)


def _tracking_uri(option: str | None) -> str:
    from r1vflow.cli.common import checked_tracking_uri
    from r1vflow.gitops.state import check_store
    from r1vflow.storage.settings import tracking_uri_from_env
    from r1vflow.storage.store import StoreConfigError

    try:
        uri = option or tracking_uri_from_env()
    except StoreConfigError as err:
        raise _fail(str(err)) from None
    if not uri:
        raise _fail("gitops keeps its state in MLflow: give --tracking-uri or set "
                    "MLFLOW_TRACKING_URI (the same store for every machine that applies)")
    try:
        return checked_tracking_uri(check_store(uri))
    except ValueError as err:
        raise _fail(str(err)) from None


def _files(repo: Path, experiments_dir: str, only: list[str] | None):
    from fnmatch import fnmatch

    from r1vflow.config import ConfigError
    from r1vflow.gitops.plan import discover

    try:
        files = discover(repo, experiments_dir)
    except ConfigError as err:
        raise _fail(str(err)) from None
    return [f for f in files if not only or any(fnmatch(f.path, pat) for pat in only)]


def _plan(repo: Path, experiments_dir: str, only: list[str] | None, state, stale_after: float):
    from mlflow.exceptions import MlflowException

    from r1vflow.gitops.plan import build_plan
    from r1vflow.gitops.state import now_utc

    files = _files(repo, experiments_dir, only)
    try:
        return build_plan(files, state.observe, now_utc(), stale_after)
    except (MlflowException, OSError) as err:  # the store went away, or answers nonsense
        raise _fail(f"cannot read the gitops state from MLflow: {err}") from None


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (fd 1, subprocesses included) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _table(rows: list[dict], title: str, columns: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(c) or "")[:16] if c == "fingerprint" else str(row.get(c) or "")
                        for c in columns))
    Console(width=160, markup=False).print(table)  # user text in cells is shown as typed


gitops = typer.Typer(no_args_is_help=True, help="Retrain changed experiments from git, once.")


def register(app: typer.Typer) -> None:
    app.add_typer(gitops, name="gitops")


class _NothingRan:
    """The planner's state when no store is given or found: no claim, no run."""

    def observe(self, fingerprint: str):
        from r1vflow.gitops.state import Observed

        return Observed()


def _plan_state(tracking_uri: str | None, stack: Path | None):
    """The state `plan` reads: the store given (--tracking-uri, $MLFLOW_TRACKING_URI, --stack)
    or the running local stack, said on stderr; without any, an empty state, said so."""
    from r1vflow.gitops.state import MlflowState
    from r1vflow.tracking.locate import NoTrackingStore, locate

    if tracking_uri is None and stack is None:
        try:
            found = locate(None)
        except NoTrackingStore as err:
            if os.environ.get("MLFLOW_TRACKING_URI"):
                raise _fail(str(err)) from None
            found = None
        if found is None or found.how.startswith("the only run directory"):
            typer.echo("gitops state: no MLflow store given (--tracking-uri, "
                       "$MLFLOW_TRACKING_URI, --stack DIR) and no running runs/stack: planned "
                       "as if nothing has run", err=True)
            return _NothingRan()
        tracking_uri = found.uri
    elif tracking_uri is None:
        try:
            tracking_uri = locate(None, stack).uri
        except NoTrackingStore as err:
            raise _fail(str(err)) from None
    uri = _tracking_uri(tracking_uri)
    typer.echo(f"gitops state: {uri}", err=True)
    return MlflowState(uri)


@gitops.command()
def plan(repo: RepoOpt = Path("."), experiments_dir: DirOpt = "experiments",
         tracking_uri: UriOpt = None, stale_after: StaleOpt = 900.0,
         only: OnlyOpt = None, json_: JsonOpt = False,
         stack: Annotated[Path | None, typer.Option(
             "--stack", help="Read the state from the MLflow of `r1vflow stack up --dir DIR`.")
         ] = None) -> None:
    """Per experiment file: its fingerprint and run, skip or invalid, with the reason."""
    entries = _plan(repo, experiments_dir, only, _plan_state(tracking_uri, stack), stale_after)
    rows = [e.to_json() for e in entries]
    if json_:
        echo_json(rows)
    else:
        _table(rows, "gitops plan", ("experiment", "fingerprint", "action", "reason"))

@gitops.command()
def apply(
    repo: RepoOpt = Path("."), experiments_dir: DirOpt = "experiments",
    local: Annotated[bool, typer.Option("--local", help="Run on this machine (kfp.local).")]
    = False,
    host: Annotated[str | None, typer.Option(help="KFP API endpoint: submit there.")] = None,
    output_root: Annotated[Path | None, typer.Option(
        help="--local: runs go to <output-root>/<name>-<fp[:12]> (default <repo>/runs/gitops).")
    ] = None,
    token_env: Annotated[str | None, typer.Option(
        help="--host: env var holding the KFP bearer token.")] = None,
    namespace: Annotated[str | None, typer.Option(help="--host: KFP namespace.")] = None,
    kfp_experiment: Annotated[str | None, typer.Option(
        help="--host: KFP experiment (default r1vflow-<name>).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print what would run or be submitted; claim nothing.")] = False,
    tracking_uri: UriOpt = None, stale_after: StaleOpt = 900.0,
    heartbeat: Annotated[float, typer.Option(help="Seconds between claim heartbeats.")] = 60.0,
    owner: Annotated[str | None, typer.Option(
        help="Who claims (default: the CI job, else user@host:pid).")] = None,
    only: OnlyOpt = None, json_: JsonOpt = False,
) -> None:
    """Run (--local) or submit (--host) what the plan says to run, each fingerprint once.

    Racing applies are safe: each fingerprint is claimed atomically in MLflow first.
    Exits 1 when a run failed or an experiment file is invalid (after doing the rest)."""
    from r1vflow.gitops.apply import ApplyContext, apply_plan, local_refusal, local_runner
    from r1vflow.gitops.cluster import ClusterRunner
    from r1vflow.gitops.state import MlflowState, default_owner
    from r1vflow.pipelines.submit import SubmitError, check_host
    from r1vflow.tracking.runs import git_commit

    if local == (host is not None):
        raise _fail("give exactly one of --local or --host URL")
    uri = _tracking_uri(tracking_uri)
    cluster = None
    if host is not None:
        try:
            cluster = ClusterRunner(check_host(host), uri, namespace, kfp_experiment,
                                    token_env)
        except SubmitError as err:
            raise _fail(str(err)) from None
    state = MlflowState(uri, kfp_state=cluster.kfp_state if cluster else None)
    entries = _plan(repo, experiments_dir, only, state, stale_after)
    out_root = (output_root or repo / "runs" / "gitops").resolve()
    if dry_run:
        _print_dry_run(entries, cluster, out_root)
        return
    runner = cluster or local_runner(out_root, uri)
    ctx = ApplyContext(state, runner, owner or default_owner(),
                       git_commit(repo.resolve()) or "", stale_after, heartbeat,
                       unschedule=cluster.unschedule if cluster else None,
                       refuses=(lambda exp: None) if cluster else local_refusal)
    from r1vflow.pipelines.warm_tasks import shared_server

    # runs print logs (stdout is for the results); local runs share one warm task server,
    # which imports vLLM too when a run to start generates on it
    vllm = any(e.exp is not None and e.action == "run" and e.exp.may_generate_on_vllm()
               for e in entries)
    with _stdout_to_stderr(), (contextlib.nullcontext() if cluster else shared_server(vllm)):
        results = [r.to_json() for r in apply_plan(entries, ctx)]
    if json_:
        echo_json(results)
    else:
        _table(results, "gitops apply", ("experiment", "fingerprint", "outcome", "reason",
                                         "detail"))
    if any(r["outcome"] in ("failed", "invalid") for r in results):
        raise typer.Exit(1)

def _print_dry_run(entries, cluster, out_root: Path) -> None:
    from r1vflow.pipelines.submit import SubmitError

    rows = []
    for e in entries:
        if e.action != "run":
            rows.append(e.to_json())
        elif cluster is None:
            rows.append({**e.to_json(), "output_dir": str(
                out_root / f"{e.exp.name}-{e.fingerprint[:12]}")})
        else:
            try:
                rows.append(cluster.describe(e))
            except SubmitError as err:
                raise _fail(str(err)) from None
    echo_json(rows)

@gitops.command()
def render(
    repo: RepoOpt = Path("."), experiments_dir: DirOpt = "experiments",
    out: Annotated[Path | None, typer.Option(
        help="Folder Argo CD syncs (default <repo>/manifests/gitops/rendered).")] = None,
    namespace: Annotated[str, typer.Option(help="Namespace of the KFP resources.")]
    = "kubeflow",
    check: Annotated[bool, typer.Option(
        "--check", help="Write nothing; exit 1 if the folder is not up to date.")] = False,
) -> None:
    """Write the Pipeline/PipelineVersion manifests of every valid experiment."""
    from r1vflow.gitops.cluster import render_manifests, rendered_drift, write_rendered

    files = _files(repo, experiments_dir, None)
    for f in files:
        if f.exp is None:
            typer.echo(f"skipped invalid {f.path}: {f.error.splitlines()[0]}", err=True)
    target = out or repo / "manifests" / "gitops" / "rendered"
    texts = render_manifests(files, namespace)
    if check:
        drift = rendered_drift(texts, target)
        if drift:
            raise _fail(f"{target} is not up to date ({', '.join(drift)}): run "
                        "`r1vflow gitops render` and commit the result", code=1)
        typer.echo(f"{target}: up to date ({len(texts)} pipelines)")
        return
    changed = write_rendered(texts, target)
    typer.echo(f"rendered {len(texts)} pipelines into {target}; changed: "
               f"{', '.join(changed) or 'nothing'}")

@gitops.command()
def release(
    fingerprint: Annotated[str, typer.Argument(help="Fingerprint (or a unique prefix).")],
    repo: RepoOpt = Path("."), experiments_dir: DirOpt = "experiments",
    tracking_uri: UriOpt = None,
    reason: Annotated[str, typer.Option(help="Recorded on the claim.")] = "released by hand",
) -> None:
    """Release a fingerprint's latest claim, so that the next apply retries it.

    For a cluster run that died without telling MLflow. A prefix is looked up among the
    fingerprints of the experiment files."""
    from r1vflow.gitops.state import ClaimStore

    store = ClaimStore(_tracking_uri(tracking_uri))
    if len(fingerprint) < 64:
        known = {f.exp.fingerprint() for f in _files(repo, experiments_dir, None) if f.exp}
        matches = [fp for fp in known if fp.startswith(fingerprint)]
        if len(matches) != 1:
            raise _fail(f"{fingerprint!r} matches {len(matches)} experiment fingerprints "
                        "under the experiments folder: give more characters (or all 64)")
        fingerprint = matches[0]
    claim = store.latest(fingerprint)
    if claim is None:
        raise _fail(f"no claim for fingerprint {fingerprint}")
    store.update(claim, state="released", detail=reason)
    typer.echo(f"released {claim.name} (was {claim.state}, by {claim.owner})")
