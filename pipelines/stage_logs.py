"""What the local driver shows of each task, and where each task's log goes.

`StageLogs` routes kfp.local's output per task into `<output-dir>/logs/<stage>.log` and gives
the console one line as each stage starts and ends (on a terminal: a spinner that shows the
stage's latest progress line: step/total, loss, tokens/s, ETA). Besides that:

- Each task that ran keeps its log beside its outputs (`<task dir>/task.log` in the pipeline
  root). A task served from KFP's cache runs nothing, so its `logs/<stage>.log` is that kept
  log of the run that produced the cached output, under one header line, and the console line
  says so and names it.
- Warnings that tell the user nothing (kfp.local's notes on the image and display names,
  DeepSpeed's "Setting accelerator to CPU", transformers' deprecation notes and weight-loading
  bars, vLLM's CPU-build notes repeated at every generation call) go to
  `logs/debug.log` instead of the stage logs and the console.
- Retries are the driver's (the task's KFP retry policy, applied here instead of by kfp.local):
  each is announced with the failure and the delay, and a failure that a retry cannot mend (a
  config or input error, a missing file or revision: `permanent_failure`) is not retried.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import IO, Any

from r1vflow.reports import headline_metric
from r1vflow.train.progress import PROGRESS_MARK

KEPT_LOG = "task.log"  # a task's log beside its outputs, in its pipeline-root directory
DEBUG_LOG = "debug.log"

# Lines that carry no information for the user (each may be followed by the source line that
# Python's warnings module prints under it, which goes with it).
NOISE = re.compile("|".join((
    r"RuntimeWarning: You may be attemping to run a task that uses custom or non-Python base image",
    r"UserWarning: Task '[^']*': settings \[.*\] have no effect in the current local runner",
    r"Setting (ds_)?accelerator to (CPU|cpu)",
    r"\[real_accelerator\.py:\d+:get_accelerator\]",
    r"(FutureWarning|DeprecationWarning): .*(transformers|torch_dtype|deprecated)",
    r"^\s*(Loading weights|Writing model shards):\s+\d+%",  # transformers' per-load bars
    # vLLM's CPU build: once per generation call, and notes on this machine's setup
    r"\[cpu_worker\.py:\d+\] CPU backend doesn't allow to use `torch\.set_num_threads`",
    r"\[cpu_worker\.py:\d+\] lib\w+ is not found in LD_PRELOAD",
    r"\[cpu\.py:\d+\] Triton is not installed",
    r"Model Runner V2 requires Triton",
    r"\[block_pool\.py:\d+\] Successfully reset prefix cache",
)))
NOISE_SOURCE = re.compile(r"^\s+(warnings\.warn\(|_warn_local_only_noops\(|warn\()")

# Exception types a retry cannot mend: the same config, inputs and code fail the same way.
PERMANENT_ERRORS = frozenset((
    "ValueError", "TypeError", "KeyError", "AttributeError", "AssertionError",
    "NotImplementedError", "ImportError", "ModuleNotFoundError", "FileNotFoundError",
    "NotADirectoryError", "IsADirectoryError", "ConfigError", "ValidationError",
    "StoreConfigError", "FloatingPointError", "RepositoryNotFoundError",
    "RevisionNotFoundError", "GatedRepoError", "EntryNotFoundError", "SystemExit",
))


def permanent_failure(error: str | None) -> bool:
    """Whether a stage's error (`Type: message`, as its StageResult names it) would come back
    on a retry. An unknown failure (no error recorded: the process died) may be transient."""
    if not error:
        return False
    kind = error.split(":", 1)[0].strip().rsplit(".", 1)[-1]
    return kind in PERMANENT_ERRORS


def headline(metrics: dict[str, Any]) -> str:
    """The one metric a stage's end line shows (r1vflow.reports.headline_metric)."""
    found = headline_metric(metrics)
    return f"{found[0]}={found[1]:.3g}" if found else ""


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (shorter lines)."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


class _Tee:
    """A text stream writing to several (the log file, and the console when verbose)."""

    def __init__(self, *streams: IO[str]):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


class LineRouter:
    """A text stream that sorts whole lines: noise to the debug log, the rest to `out`;
    progress lines (train.progress) also go to `on_progress`."""

    def __init__(self, out: IO[str], debug: IO[str], label: str, on_progress=None):
        self.out, self.debug, self.label, self.on_progress = out, debug, label, on_progress
        self._partial = ""
        self._after_noise = False

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._route(line)
        return len(text)

    def _route(self, line: str) -> None:
        if NOISE.search(line) or (self._after_noise and NOISE_SOURCE.match(line)):
            self._after_noise = bool(NOISE.search(line))
            self.debug.write(f"{self.label}: {line}\n")
            return
        self._after_noise = False
        self.out.write(line + "\n")
        if self.on_progress is not None and PROGRESS_MARK in line:
            self.on_progress(line.split(PROGRESS_MARK, 1)[1].strip())

    def flush(self) -> None:
        if self._partial:
            self._route(self._partial)
            self._partial = ""
        self.out.flush()
        self.debug.flush()

    def isatty(self) -> bool:
        return False


def keep_log(log: Path, result: dict[str, Any]) -> None:
    """Copy a task's log beside its outputs (the task directory its StageResult names)."""
    task_dir = result.get("task_dir")
    if task_dir and Path(task_dir).is_dir():
        with contextlib.suppress(OSError):
            shutil.copyfile(log, Path(task_dir) / KEPT_LOG)


def cached_log(log: Path, stage: str, result: dict[str, Any]) -> bool:
    """Make `log` the kept log of the run that produced a cached task's output, under a header;
    False (and a header saying why) when that run kept none (it predates kept logs)."""
    kept = Path(result["task_dir"]) / KEPT_LOG if result.get("task_dir") else None
    if kept is None or not kept.is_file():
        with log.open("a") as out:
            out.write(f"{stage}: served from the KFP cache (no task ran); the run that produced "
                      "its output kept no log\n")
        return False
    header = (f"{stage}: served from the KFP cache (no task ran). Below: the log of the run "
              f"that produced its output ({result.get('seconds', 0):.1f} s), kept at {kept}\n\n")
    log.write_text(header + kept.read_text(errors="replace"))
    return True


def stage_result(outputs: dict, mirrored: Path, before: float | None) -> dict[str, Any]:
    """The stage's StageResult: its output (cached tasks too), else a fresh mirror."""
    raw = (outputs or {}).get("Output")
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            result = json.loads(raw)
            if isinstance(result, dict):
                return result
    if mirrored.exists() and mirrored.stat().st_mtime != before:
        with contextlib.suppress(ValueError, OSError):
            return json.loads(mirrored.read_text())
    return {}


def retry_policy(task_spec: Any) -> tuple[int, float, float, float]:
    """(retries, first delay s, factor, longest delay s) of a task, as kfp.local reads them."""
    policy = getattr(task_spec, "retry_policy", None)
    if policy is None or policy.max_retry_count <= 0:
        return 0, 0.0, 2.0, 3600.0
    first = policy.backoff_duration.seconds if policy.HasField("backoff_duration") else 0
    longest = (policy.backoff_max_duration.seconds if policy.HasField("backoff_max_duration")
               else 3600)
    return policy.max_retry_count, float(first), policy.backoff_factor or 2.0, float(longest)


def without_retries(task_spec: Any) -> Any:
    """A copy of the task spec that kfp.local runs once (the driver does the retrying)."""
    if task_spec is None or not task_spec.HasField("retry_policy"):
        return task_spec
    copy = type(task_spec)()
    copy.CopyFrom(task_spec)
    copy.ClearField("retry_policy")
    return copy


class StageLogs:
    """Route kfp.local's output per task into `<log_dir>/<stage>.log` and report each stage.

    kfp.local runs a task in `task_executor.execute_single_task` (cache lookup included); its
    dispatcher streams the task subprocess's stdout+stderr through `print` and logs through a
    handler on `sys.stdout` made per task, so swapping `sys.stdout`/`sys.stderr` around that call
    captures all of a task. The pipeline's own lines (start, end, failure stack) go to
    `pipeline.log`. `install` patches both entry points until `uninstall`."""

    def __init__(self, log_dir: Path, run_dir: Path, verbose: bool = False,
                 console: IO[str] | None = None, images: dict[str, str] | None = None,
                 sleep=time.sleep):
        self.log_dir, self.run_dir, self.verbose = log_dir, run_dir, verbose
        self.images = images or {}  # stage -> the image it runs in (container runs only)
        self.failed: set[str] = set()
        self.ran: set[str] = set()  # tasks that ran (not served from the cache) and succeeded
        self.console = console or sys.stdout
        self.live = not verbose and self.console.isatty()
        self.sleep = sleep
        self._status = None  # the spinner while a stage runs (a terminal only)
        self._saved: list[tuple[Any, str, Any]] = []

    def install(self) -> StageLogs:
        from kfp.local import pipeline_orchestrator
        from kfp.local.orchestrator import task_executor

        self.log_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.log_dir.glob("*.log"):
            stale.unlink()
        self.uninstall()
        for module, name, wrap in ((task_executor, "execute_single_task", self._task),
                                   (pipeline_orchestrator, "_run_local_pipeline_implementation",
                                    self._pipeline)):
            original = getattr(module, name)
            original = getattr(original, "_r1vflow_original", original)  # a leftover patch
            wrapped = wrap(original)
            wrapped._r1vflow_original = original
            self._saved.append((module, name, original))
            setattr(module, name, wrapped)
        return self

    def uninstall(self) -> None:
        while self._saved:
            module, name, original = self._saved.pop()
            setattr(module, name, original)

    @contextlib.contextmanager
    def _into(self, path: Path, mode: str = "w", label: str = "pipeline"):
        with path.open(mode, buffering=1) as log, \
                (self.log_dir / DEBUG_LOG).open("a", buffering=1) as debug:
            stream = _Tee(log, self.console) if self.verbose else log
            router = LineRouter(stream, debug, label, self._progress)
            with contextlib.redirect_stdout(router), contextlib.redirect_stderr(router):
                try:
                    yield log
                finally:
                    router.flush()

    def _pipeline(self, original):
        def run(*args, **kwargs):
            with self._into(self.log_dir / "pipeline.log", "a"):
                return original(*args, **kwargs)
        return run

    def _task(self, original):
        def run(*args, **kwargs):
            task_name = kwargs.get("task_name", args[0] if args else "task")
            task_spec = kwargs.get("task_spec", args[1] if len(args) > 1 else None)
            stage = (task_spec.task_info.name if task_spec is not None else "") or task_name
            retries, delay, factor, longest = retry_policy(task_spec)
            if "task_spec" in kwargs:
                kwargs = {**kwargs, "task_spec": without_retries(task_spec)}
            else:
                retries = 0  # called positionally: kfp.local applies the policy itself
            started = time.time()
            for attempt in range(retries + 1):
                outputs, task_status, error = self._attempt(original, stage, args, kwargs,
                                                            mode="w" if attempt == 0 else "a")
                if error is None or attempt == retries or permanent_failure(error):
                    break
                wait = min(delay * factor ** attempt, longest)
                self._say(f"{stage:<20} failed (attempt {attempt + 1} of {retries + 1}): "
                          f"{error.splitlines()[0][:100]}; retrying in {wait:.0f} s")
                self.sleep(wait)
            if error is not None:
                self._say(self._failure_line(stage, error, retries, time.time() - started))
            return outputs, task_status
        return run

    def _attempt(self, original, stage: str, args, kwargs, mode: str):
        """Run the task once; (outputs, status, error or None) and its console line."""
        path = self.log_dir / f"{stage}.log"
        mirrored = self.run_dir / "stages" / f"{stage}.json"
        before = mirrored.stat().st_mtime if mirrored.exists() else None
        started = time.time()
        quiet = stage == "configure"  # not a stage: shown only when it refuses the overrides
        if not quiet and mode == "w":
            self._say(f"{stage:<20} started")
        spinner = self._spinner(stage) if self.live else contextlib.nullcontext()
        try:
            with spinner, self._into(path, mode, stage) as log:
                outputs, task_status = original(*args, **kwargs)
                log.flush()
                ran = "Executing task" in path.read_text(errors="replace")  # the dispatcher's
        finally:
            self._status = None
        seconds = time.time() - started
        result = stage_result(outputs, mirrored, before)
        if getattr(task_status, "name", str(task_status)) != "SUCCESS":
            self.failed.add(stage)
            return outputs, task_status, str(result.get("error") or "the task failed")
        self.failed.discard(stage)
        if ran:
            self.ran.add(stage)
            keep_log(path, result)
        if not quiet:
            self._say(self._success_line(stage, ran, seconds, result, path))
        return outputs, task_status, None

    def _success_line(self, stage: str, ran: bool, seconds: float, result: dict[str, Any],
                      path: Path) -> str:
        metric = headline(result.get("metrics") or {})
        if ran:
            return f"{stage:<20} succeeded {result.get('seconds', seconds):7.1f} s  {metric}"
        kept = cached_log(path, stage, result)
        where = (f"its log: {shown_path(path)}" if kept else "no log kept")
        return (f"{stage:<20} succeeded (cached) {seconds:5.1f} s  {metric}  (ran "
                f"{result.get('seconds', 0):.1f} s in an earlier run; {where})")

    def _failure_line(self, stage: str, error: str, retries: int, seconds: float) -> str:
        first = error.splitlines()[0][:100]
        where = f"image: {self.images[stage]}, " if stage in self.images else ""
        note = ("  (not retried: it would fail the same way)" if retries and
                permanent_failure(error) else "")
        return (f"{stage:<20} FAILED {seconds:7.1f} s  {first}{note}  "
                f"({where}log: {shown_path(self.log_dir / f'{stage}.log')})")

    def _spinner(self, stage: str):
        from rich.console import Console

        status = Console(file=self.console).status(f"{stage} running ...")
        self._status = status
        return status

    def _progress(self, text: str) -> None:
        """A task's progress line: the spinner shows it (a terminal only)."""
        if self._status is not None and self.live:
            self._status.update(text)

    def _say(self, line: str) -> None:
        if self.live and line.endswith("started"):
            return  # the spinner shows it
        stamp = time.strftime("%H:%M:%S")
        self.console.write(f"[{stamp}] {line.rstrip()}\n")
        self.console.flush()
