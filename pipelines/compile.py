"""Compile an experiment to KFP IR YAML (what the KFP UI and API take), or to KFP's
Kubernetes-native Pipeline + PipelineVersion resources (pipelines.kubeflow.org/v2beta1).

The IR of every preset is committed under pipelines/compiled/; `make compiled` (this module's
`--presets`) regenerates them and tests/test_compile.py fails when one drifts from the code.

    compile_experiment(exp, Path("r1v2-38b.yaml"))
    compile_experiment(exp, Path("r1v2-38b-k8s.yaml"), k8s_manifests=True, namespace="kubeflow")
    python -m r1vflow.pipelines.compile --presets      # pipelines/compiled/<preset>.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

from kfp import compiler

from r1vflow.config import Experiment, load_experiment
from r1vflow.pipelines.dag import build_pipeline, pipeline_name

PIPELINES_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = PIPELINES_DIR / "configs"
COMPILED_DIR = PIPELINES_DIR / "compiled"


def compile_ir(exp: Experiment, out: Path) -> Path:
    """Write the pipeline IR YAML of `exp` (its JSON as the parameter's default) to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build_pipeline(exp), package_path=str(out),
        pipeline_parameters={"experiment_json": exp.model_dump_json()},
    )
    return out


def ir_text(exp: Experiment) -> str:
    """The IR YAML of `exp` as text (deterministic: no timestamps or paths are compiled in)."""
    with tempfile.TemporaryDirectory() as tmp:
        return compile_ir(exp, Path(tmp) / "pipeline.yaml").read_text()


def version_name(exp: Experiment, ir: str) -> str:
    """Pipeline version name: pipeline name, config fingerprint and IR digest (8 hex each), so
    an unchanged experiment and code map to the same version and any change to a new one."""
    digest = hashlib.sha256(ir.encode()).hexdigest()
    return f"{pipeline_name(exp)}-{exp.fingerprint()[:8]}-{digest[:8]}"


def compile_experiment(exp: Experiment, out: Path, k8s_manifests: bool = False,
                       namespace: str | None = None) -> Path:
    """IR YAML at `out`; with `k8s_manifests`, instead the Pipeline and PipelineVersion
    resources for a KFP API server that stores pipelines as Kubernetes objects."""
    if not k8s_manifests:
        return compile_ir(exp, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = compiler.KubernetesManifestOptions(
        pipeline_name=pipeline_name(exp), pipeline_display_name=pipeline_name(exp),
        pipeline_version_name=version_name(exp, ir_text(exp)), namespace=namespace,
        include_pipeline_manifest=True,
    )
    compiler.Compiler().compile(
        build_pipeline(exp), package_path=str(out),
        pipeline_parameters={"experiment_json": exp.model_dump_json()},
        kubernetes_manifest_options=options, kubernetes_manifest_format=True,
    )
    return out


def preset_configs(configs_dir: Path = CONFIGS_DIR) -> dict[str, Path]:
    """preset name -> its experiment file, for every pipelines/configs/*.yaml."""
    return {p.stem: p for p in sorted(configs_dir.glob("*.yaml"))}


def compile_presets(configs_dir: Path = CONFIGS_DIR, out_dir: Path = COMPILED_DIR) -> list[Path]:
    """(Re)write out_dir/<preset>.yaml for every preset; delete compiled files of gone presets."""
    out_dir.mkdir(parents=True, exist_ok=True)
    presets = preset_configs(configs_dir)
    for stale in out_dir.glob("*.yaml"):
        if stale.stem not in presets:
            stale.unlink()
    written = []
    for name, path in presets.items():
        target = out_dir / f"{name}.yaml"
        text = ir_text(load_experiment(path))
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", action="store_true", required=True,
                        help="compile every pipelines/configs/*.yaml into pipelines/compiled/")
    parser.parse_args(argv)
    for path in compile_presets():
        print(f"compiled {path.relative_to(PIPELINES_DIR.parent)}")


if __name__ == "__main__":
    main()
