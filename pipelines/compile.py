"""Compile an experiment to KFP IR YAML (what the KFP UI and API take)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from r1vflow.config import Experiment
from r1vflow.pipelines.dag import build_pipeline


def compile_experiment(exp: Experiment, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build_pipeline(exp), package_path=str(out),
        pipeline_parameters={"experiment_json": exp.model_dump_json()},
    )
    return out
