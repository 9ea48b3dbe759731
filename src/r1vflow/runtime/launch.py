"""Run one stage on several processes: torchrun on this machine, or a Kubeflow Trainer TrainJob.

`r1vflow.runtime.execute` calls `run_stage`, which picks by `resources.<stage>`:

    nodes x procs_per_node == 1     the stage function, in the component's process
    nodes == 1, or not on a cluster torchrun --nproc_per_node=nodes*procs_per_node here (CPU: gloo;
                                    in a GPU task pod: one rank per GPU, NCCL)
    nodes > 1 on a cluster          a TrainJob (r1vflow.runtime.trainjob) whose nodes run the same worker
                                    under torchrun; inputs and outputs travel through the object
                                    store (S3/MinIO) under a staging prefix

Every rank runs `python -m r1vflow.runtime.launch worker --spec SPEC`: the SAME registered stage function
on the same inputs. Rank 0 alone gets the real output directories and the stage's MLflow run;
the other ranks write to throwaway directories with tracking off, so exactly one model is saved
and registered. Rank 0 writes a `WorkerResult` (metrics, report, where the model is) that the
component turns back into the stage's outcome. Data parallelism itself is the training engine's
business (DeepSpeed ZeRO over torch.distributed, set up from torchrun's environment).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from r1vflow.config import ResourceSpec
from r1vflow.config.slicing import experiment_from_slice
from r1vflow.models.distributed import rank_world
from r1vflow.runtime.worker import RESULT_FILE, WorkerResult, WorkerSpec
from r1vflow.stages import StageContext, StageOutcome, stage_function
from r1vflow.stages.common import locate_output
from r1vflow.storage.scratch import on_cluster, scratch_root
from r1vflow.tracking.runs import StageTracker

LaunchMode = Literal["inline", "torchrun", "trainjob"]


def launch_mode(nodes: int, procs_per_node: int, in_cluster: bool) -> LaunchMode:
    """How a stage with `nodes` x `procs_per_node` processes runs (see the module doc)."""
    if nodes * procs_per_node == 1:
        return "inline"
    if nodes > 1 and in_cluster:
        return "trainjob"
    return "torchrun"


def torchrun_command(nproc: int, spec_file: Path, python: str = sys.executable) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`) of `nproc` local workers on this node."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc_per_node={nproc}", "-m", "r1vflow.runtime.launch", "worker", "--spec",
            f"@{spec_file}"]


# --------------------------------------------------------------------------- component side


def run_stage(ctx: StageContext, resources: ResourceSpec | None,
              tracking_uri: str | None) -> StageOutcome:
    """Run the stage of `ctx` as its resources say: inline, under torchrun, or as a TrainJob."""
    spec = resources or ResourceSpec()
    mode = launch_mode(spec.nodes, spec.procs_per_node, on_cluster())
    if mode == "inline":
        return stage_function(ctx.stage)(ctx)
    worker = WorkerSpec(
        stage=ctx.stage, experiment_json=ctx.exp.model_dump_json(),
        inputs={k: str(v) for k, v in ctx.inputs.items()},
        outputs={k: str(v) for k, v in ctx.outputs.items()},
        mlflow_run_id=ctx.tracker.run_id, tracking_uri=tracking_uri, extra_tags=ctx.extra_tags)
    if mode == "torchrun":
        result = launch_local(worker, spec.nodes * spec.procs_per_node)
    else:
        from r1vflow.runtime.trainjob import launch_trainjob

        result = launch_trainjob(worker, ctx.exp, spec, ctx.inputs, ctx.outputs)
    return outcome_from_result(result, ctx.outputs)


def launch_local(worker: WorkerSpec, nproc: int, env: Mapping[str, str] | None = None,
                 workdir: Path | None = None) -> WorkerResult:
    """Run `worker` on `nproc` torchrun processes here; return rank 0's result.

    Raises RuntimeError naming the stage and torchrun's exit code when any rank fails (each
    rank's traceback is on stderr above)."""
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="r1vflow-launch-")) if own_dir else workdir
    try:
        result_file = workdir / RESULT_FILE
        spec_file = workdir / "worker.json"
        worker = worker.model_copy(update={"result": str(result_file), "staging": None})
        spec_file.write_text(worker.model_dump_json())
        cmd = torchrun_command(nproc, spec_file)
        proc = subprocess.run(cmd, env=dict(os.environ if env is None else env), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"stage {worker.stage}: torchrun with {nproc} processes failed "
                               f"(exit code {proc.returncode}); the failing rank's traceback "
                               "is above")
        if not result_file.exists():
            raise RuntimeError(f"stage {worker.stage}: torchrun succeeded but rank 0 wrote no "
                               f"result at {result_file}")
        return WorkerResult.model_validate_json(result_file.read_text())
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def outcome_from_result(result: WorkerResult, outputs: Mapping[str, Path]) -> StageOutcome:
    """The StageOutcome rank 0 produced, with its model dir mapped into this task's outputs."""
    model_dir = None
    if result.model_output is not None:
        if result.model_output not in outputs:
            raise RuntimeError(f"stage {result.stage}: rank 0 saved its model under output "
                               f"{result.model_output!r}, which this task does not have")
        model_dir = Path(outputs[result.model_output]) / (result.model_relpath or "")
    return StageOutcome(metrics=dict(result.metrics), model_dir=model_dir,
                        model_version=result.model_version, report=result.report,
                        history=dict(result.history), report_data=dict(result.report_data))


# --------------------------------------------------------------------------- worker side


def _entry(worker: WorkerSpec) -> Callable[[StageContext], StageOutcome]:
    if not worker.entry:
        return stage_function(worker.stage)
    module, _, name = worker.entry.partition(":")
    if not name:
        raise ValueError(f"entry {worker.entry!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def _locate(model_dir: Path | None, outputs: Mapping[str, Path]) -> tuple[str | None, str | None]:
    """(output name, relative path) of `model_dir` inside one of `outputs` (locate_output);
    (None, None) without a model; a model saved outside the outputs is an error here."""
    if model_dir is None:
        return None, None
    found = locate_output(model_dir, outputs)
    if found is not None:
        return found
    raise RuntimeError(f"the stage saved its model at {model_dir}, outside its outputs "
                       f"({', '.join(map(str, outputs.values()))})")


def run_worker(worker: WorkerSpec, environ: Mapping[str, str] | None = None) -> WorkerResult | None:
    """One rank: run the stage, and on rank 0 write (or upload) the result. Returns rank 0's."""
    env = os.environ if environ is None else environ
    rank, world = rank_world(env)
    exp = experiment_from_slice(worker.experiment_json)
    store = None
    if worker.staging:
        from r1vflow.storage import store_from_env

        store = store_from_env(env, show_progress=rank == 0)
        if store is None:
            raise RuntimeError("a staged worker needs the object store: set R1VFLOW_S3_ENDPOINT")
    base = scratch_root(env) / "r1vflow-worker"
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / ".fetch.lock"):  # one download per machine; later ranks hit the cache
        inputs = {k: (store.fetch(v, base / "inputs") if store else Path(v))
                  for k, v in worker.inputs.items()}
    throwaway = None
    if rank == 0:
        outputs = ({k: base / "outputs" / k for k in worker.outputs} if store
                   else {k: Path(v) for k, v in worker.outputs.items()})
    else:
        throwaway = Path(tempfile.mkdtemp(prefix=f"rank{rank}-", dir=base))
        outputs = {k: throwaway / k for k in worker.outputs}
    for path in outputs.values():
        path.mkdir(parents=True, exist_ok=True)
    tracked = rank == 0 and bool(worker.tracking_uri and worker.mlflow_run_id)
    tracker = StageTracker(worker.mlflow_run_id if tracked else None, exp.name,
                           register=tracked and exp.tracking.register_models)
    ctx = StageContext(exp=exp, stage=worker.stage, inputs=inputs, outputs=outputs,
                       tracker=tracker, extra_tags=dict(worker.extra_tags))
    with _resumed_run(worker.tracking_uri if tracked else None, worker.mlflow_run_id):
        outcome = _entry(worker)(ctx)
    _finish_distributed()
    if throwaway is not None:
        shutil.rmtree(throwaway, ignore_errors=True)
        return None
    name, rel = _locate(outcome.model_dir, outputs)
    result = WorkerResult(stage=worker.stage, world_size=world, metrics=outcome.metrics,
                          report=outcome.report, model_output=name, model_relpath=rel,
                          model_version=outcome.model_version,
                          history={**tracker.history, **outcome.history},
                          report_data=outcome.report_data)
    if store is not None:
        for key, path in outputs.items():
            store.upload_dir(path, f"{worker.staging}/outputs/{key}")
        result_dir = base / "result"
        result_dir.mkdir(parents=True, exist_ok=True)
        (result_dir / RESULT_FILE).write_text(result.model_dump_json())
        store.upload_dir(result_dir, f"{worker.staging}/result")
    else:
        Path(worker.result).write_text(result.model_dump_json())
    return result


@contextmanager
def _resumed_run(tracking_uri: str | None, run_id: str | None) -> Iterator[None]:
    """Make the stage's MLflow run (opened by the component) this process's active run, as it
    is in-process: some tracker calls (log_input) log to the active run. Ending it here marks it
    finished; the component's own context sets the final status afterwards."""
    if not (tracking_uri and run_id):
        yield
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        yield


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` among the processes of this machine."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _finish_distributed() -> None:
    """Wait for every rank, then tear down the process group the engine may have opened."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _read_spec(value: str) -> WorkerSpec:
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    return WorkerSpec.model_validate_json(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m r1vflow.runtime.launch",
                                     description="Worker of a multi-process stage (one rank).")
    sub = parser.add_subparsers(dest="command", required=True)
    work = sub.add_parser("worker", help="run one rank of a stage")
    work.add_argument("--spec", required=True, help="WorkerSpec JSON, or @FILE holding it")
    args = parser.parse_args(argv)
    run_worker(_read_spec(args.spec))


if __name__ == "__main__":
    main()
