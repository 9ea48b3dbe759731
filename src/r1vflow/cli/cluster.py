"""Cluster commands: compile an experiment for KFP, submit it to a KFP server.

    r1vflow compile pipelines/configs/r1v2-38b.yaml -o r1v2-38b.yaml
    r1vflow compile pipelines/configs/r1v2-38b.yaml -o r1v2-38b-k8s.yaml --k8s-manifests
    r1vflow submit pipelines/configs/r1v2-38b.yaml --host http://localhost:8080 --dry-run
    KFP_TOKEN=... r1vflow submit pipelines/configs/r1v2-38b.yaml --host https://kfp.example \
        --token-env KFP_TOKEN --experiment r1v2
"""

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from r1vflow.cli.common import ConfigArg, SetOpt, echo_json, fail, load_or_exit

    @app.command(name="compile")
    def compile_(
        config: ConfigArg,
        output: Annotated[Path, typer.Option("-o", "--output", help="YAML file to write.")],
        set_: SetOpt = None,
        k8s_manifests: Annotated[bool, typer.Option(
            "--k8s-manifests",
            help="Write KFP's Kubernetes-native Pipeline + PipelineVersion resources "
                 "(pipelines.kubeflow.org/v2beta1) instead of the IR.")] = False,
        namespace: Annotated[str | None, typer.Option(
            help="metadata.namespace of the --k8s-manifests resources (KFP's namespace).")] = None,
    ) -> None:
        """Compile an experiment to KFP IR YAML (or Kubernetes manifests)."""
        from r1vflow.pipelines.compile import compile_experiment

        exp = load_or_exit(config, set_)
        compile_experiment(exp, output, k8s_manifests=k8s_manifests, namespace=namespace)
        kind = "Pipeline/PipelineVersion manifests" if k8s_manifests else "IR"
        typer.echo(f"compiled {exp.name} ({len(exp.stages())} stages, {kind}) -> {output}")

    @app.command()
    def submit(
        config: ConfigArg,
        host: Annotated[str, typer.Option(help="KFP API endpoint, e.g. http://localhost:8080.")],
        namespace: Annotated[str | None, typer.Option(
            help="KFP namespace (multi-user KFP: your profile namespace).")] = None,
        experiment: Annotated[str | None, typer.Option(
            help="KFP experiment to file the run under (default: r1vflow-<name>).")] = None,
        token_env: Annotated[str | None, typer.Option(
            help="Name of the env var holding a bearer token for the KFP API (the token itself "
                 "is never a flag and never printed).")] = None,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="Compile and print what would be sent; no network.")] = False,
        run_name: Annotated[str | None, typer.Option(
            help="Display name of the run (default: <name>-<fingerprint[:8]>-<UTC time>).")] = None,
        set_: SetOpt = None,
    ) -> None:
        """Compile, upload a pipeline version and start a run on a KFP server; print its URL."""
        from r1vflow.config.slicing import split_overrides
        from r1vflow.pipelines.submit import SubmitError, plan_submission, submit_plan

        compiled, runtime = split_overrides(set_ or [])
        exp = load_or_exit(config, compiled)
        try:
            plan = plan_submission(exp, host=host, namespace=namespace, experiment=experiment,
                                   token_env=token_env, run_name=run_name, overrides=runtime)
        except SubmitError as err:
            raise fail(str(err)) from None
        if dry_run:
            echo_json(plan.describe())
            return
        try:
            result = submit_plan(plan)
        except SubmitError as err:
            raise fail(str(err), code=1) from None
        typer.echo(f"pipeline version: {result.pipeline_version_url}")
        typer.echo(f"run: {result.run_url}")
