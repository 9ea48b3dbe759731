"""The `r1vflow` command line. Each command group lives in its own module with `register(app)`:

    experiment  validate, schema, run
    platform    stack, artifacts, lineage, compare, bench
    cluster     compile, submit
    models      models import
    gitops      gitops plan / apply / render / release
    evaluation  eval score / run (published benchmarks)
    rollout     rollout check (vLLM against transformers on a saved model)
"""

from __future__ import annotations

import os

# PyTorch's OpenMP threads spin while they wait; when two processes share the cores (a KFP task
# and the driver, two torchrun ranks) a step became ~17x slower. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402

import typer  # noqa: E402

from r1vflow.cli import (  # noqa: E402
    cluster,
    evaluation,
    experiment,
    gitops,
    models,
    platform,
    rollout,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Declarative R1V/R1V2 training pipelines on Kubeflow Pipelines.")


@app.callback()
def _everything_written_is_redacted() -> None:
    from r1vflow.cli.common import install_redaction

    install_redaction()


# Imports inside the commands keep `r1vflow --help` fast.
for _group in (experiment, platform, cluster, gitops, models, evaluation, rollout):
    _group.register(app)


def main() -> None:  # pragma: no cover
    sys.exit(app())
