"""Shared fixtures: a micro experiment (smaller than the smoke preset) for component tests."""

import gc
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see r1vflow.cli

import pytest

from r1vflow.config import load_experiment
from r1vflow.pipelines.warm_tasks import SERVER_ENV, shared_server

# Resumable checkpoints are found by content (stage, config, input digests): tests that train
# the same stage on the same inputs must not resume from each other's, so each test (and the
# session's shared fixtures) gets its own checkpoint dir.
os.environ["R1VFLOW_CHECKPOINT_DIR"] = tempfile.mkdtemp(prefix="r1vflow-test-checkpoints-")


@pytest.fixture(autouse=True)
def _own_checkpoint_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("R1VFLOW_CHECKPOINT_DIR", str(tmp_path / "resumable-checkpoints"))

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "pipelines" / "configs"

# Overrides that shrink the smoke preset further for in-process component tests.
MICRO = [
    "name=micro",
    "bootstrap.vision_steps=5", "bootstrap.vision_examples=64", "bootstrap.llm_steps=5",
    "bootstrap.llm_texts=64", "synthesize_data.num_train=48", "synthesize_data.num_val=16",
    "synthesize_data.num_test=16", "evaluate.max_new_tokens=16", "sft.batch_size=16",
    "align_projector.val_limit=8", "sft.iterative.error_scan_limit=8",
]


def clean_env() -> dict[str, str]:
    """The environment for a CLI subprocess, without the tracking/run settings in-process tests
    may have left behind (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI)."""
    return {k: v for k, v in os.environ.items()
            if k != "MLFLOW_TRACKING_URI" and (not k.startswith("R1VFLOW_") or k == SERVER_ENV)}


@pytest.fixture(scope="session", autouse=True)
def _warm_task_server():
    """One warm task server per test process, shared by the pipeline runs its tests start, in
    process or through the CLI (clean_env passes it on): r1vflow.pipelines.warm_tasks. Each run
    would otherwise import the stages' modules into a server of its own. It imports vLLM too:
    most runs' grpo and evaluate tasks generate on it."""
    with shared_server(vllm=True):
        yield


@pytest.fixture(scope="session")
def micro_experiment():
    return load_experiment(PRESETS / "smoke.yaml", MICRO)


class MicroChain:
    """Stage functions run in-process on one directory, with MLflow in a temporary SQLite store
    (so registration and lineage run too). Inputs and outputs are names of subdirectories."""

    def __init__(self, root: Path, exp) -> None:
        self.root, self.exp = root, exp
        self.uri = f"sqlite:///{root / 'mlflow.db'}"

    def run(self, stage: str, inputs: dict[str, str], outputs: dict[str, str]):
        from r1vflow.stages import StageContext, stage_function
        from r1vflow.tracking.runs import stage_run

        with stage_run(self.uri, "r1vflow-micro", stage, self.exp.name) as tracker:
            ctx = StageContext(exp=self.exp, stage=stage,
                               inputs={k: self.root / v for k, v in inputs.items()},
                               outputs={k: self.root / v for k, v in outputs.items()},
                               tracker=tracker)
            for path in ctx.outputs.values():
                path.mkdir(parents=True, exist_ok=True)
            return stage_function(stage)(ctx)


@pytest.fixture(scope="session")
def micro_inputs(tmp_path_factory, micro_experiment):
    """bootstrap (base VLM + substitute LLM) and synthesize_data of the micro experiment, once."""
    chain = MicroChain(tmp_path_factory.mktemp("micro-inputs"), micro_experiment)
    chain.run("bootstrap", {}, {"base_model": "base_model", "substitute_llm": "substitute_llm"})
    chain.run("synthesize_data", {}, {"dataset": "dataset"})
    return chain


def edited_checkpoint(source: Path, target: Path, edit) -> Path:
    """A copy of the checkpoint directory `source` at `target` whose model.safetensors went
    through `edit(tensors)` (drop, add or reshape a tensor): the broken checkpoints that import
    must refuse, naming what is wrong."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(str(target / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    return target


def random_image(height: int, width: int, seed: int = 0):
    """A PIL RGB image of uniform random pixels, the same for the same arguments."""
    import torch
    from PIL import Image

    rng = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=rng, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), mode="RGB")


def assert_sft_lowers_the_loss(model, tokenizer, pixels) -> None:
    """Six epochs of SFT on four fixed (question, chain, image) items, `pixels[i]` the image of
    item i, lower the model's loss on them by more than 0.5 nats."""
    from r1vflow.train.sft import SFTSettings, eval_loss, train_sft

    items = [(f"How many circles? ({i})", f"<think>I count {i}.</think><answer>{i}</answer>",
              pixels[i]) for i in range(4)]
    before = eval_loss(model, tokenizer, items, batch_size=4, max_length=256)
    train_sft(model, tokenizer, items, SFTSettings(epochs=6, batch_size=4, lr=3e-3,
                                                   max_length=256, seed=0, progress=False))
    after = eval_loss(model, tokenizer, items, batch_size=4, max_length=256)
    assert after < before - 0.5, (before, after)


# --------------------------------------------------------------------------- the smoke DAG


class SmokeDag:
    """The smoke preset's DAG as a user runs it, once per pytest session: `r1vflow run
    pipelines/configs/smoke.yaml --output-dir OUT` through the real CLI, its output not a
    terminal. `first` is a copy of OUT as that run left it (summary.json, logs/, reports/,
    stages/, the KFP cache and the MLflow store; the task outputs stay in OUT's pipeline_root):
    test_pipeline_local reruns into OUT, every other reader reads `first`."""

    def __init__(self, out: Path, first: Path, stdout: str, stderr: str) -> None:
        self.out, self.first, self.stdout, self.stderr = out, first, stdout, stderr
        self.summary = json.loads((first / "summary.json").read_text())

    def cache_into(self, target: Path) -> Path:
        """A new output dir holding this run's KFP cache and MLflow store, nothing else: a run
        into it serves each stage whose config slice and inputs are unchanged from the cache
        (for tests whose subject is not the cache)."""
        target.mkdir(parents=True)
        shutil.copytree(self.first / "kfp_cache", target / "kfp_cache")
        shutil.copy2(self.first / "mlflow.db", target / "mlflow.db")  # artifacts: in OUT
        return target


def smoke_command(out: Path, *args: str) -> list[str]:
    """`r1vflow run pipelines/configs/smoke.yaml --output-dir OUT ARGS...`, as a user types it."""
    return [sys.executable, "-m", "r1vflow.cli", "run", str(PRESETS / "smoke.yaml"),
            "--output-dir", str(out), *args]


@pytest.fixture(scope="session")
def smoke_dag(tmp_path_factory) -> SmokeDag:
    root = tmp_path_factory.mktemp("smoke-dag")
    out = root / "out"
    result = subprocess.run(smoke_command(out), capture_output=True, text=True, timeout=900,
                            env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first = root / "first"
    shutil.copytree(out, first, ignore=shutil.ignore_patterns("pipeline_root", "checkpoints"))
    return SmokeDag(out, first, result.stdout, result.stderr)


def run_in_pty(args: list[str], timeout: float = 900) -> tuple[bytes, float | None, int]:
    """Run `args` on a pseudo-terminal: (everything it wrote there, seconds to its first byte,
    exit code)."""
    leader, follower = pty.openpty()
    env = {**clean_env(), "COLUMNS": "200", "TERM": "xterm"}
    started = time.monotonic()
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env,
                            close_fds=True)
    os.close(follower)
    out, first = bytearray(), None
    while time.monotonic() - started < timeout:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            if first is None:
                first = time.monotonic() - started
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    return bytes(out), first, proc.wait(timeout=60)


class TerminalRun:
    """A run of `r1vflow run` on a terminal: its output dir, summary, what the terminal showed
    (escape sequences removed), seconds to the first byte, exit code."""

    def __init__(self, out: Path, raw: bytes, first: float | None, code: int) -> None:
        self.out, self.first, self.code = out, first, code
        self.text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode(errors="replace"))
        summary = out / "summary.json"
        self.summary = json.loads(summary.read_text()) if summary.exists() else {}


@pytest.fixture(scope="session")
def lora_terminal_run(smoke_dag, tmp_path_factory) -> TerminalRun:
    """The smoke DAG with LoRA on sft and grpo (`--set sft.lora.rank=8 --set
    grpo.lora.rank=8`), on a terminal, into a dir holding the session smoke run's KFP cache:
    the stages before sft are served from it; sft, grpo and evaluate run. Read by
    test_lora_pipeline.py (the adapters, MLflow) and test_run_terminal.py (what the terminal
    showed): one run for both."""
    out = smoke_dag.cache_into(tmp_path_factory.mktemp("smoke-lora") / "run")
    raw, first, code = run_in_pty(smoke_command(out, "--set", "sft.lora.rank=8", "--set",
                                                "grpo.lora.rank=8"))
    return TerminalRun(out, raw, first, code)


# `make test` runs the suite on pytest-xdist workers (Makefile: TEST_WORKERS). A worker is a
# process of its own, so a session or module fixture runs once in every worker that needs it.
# Work is therefore handed out in groups: each test file is one group (its module fixtures run
# once), and the files that read the one smoke DAG run are one group together (it runs once per
# session, as on one worker). xdist's own `xdist_group` marker cannot do this under pytest 9.2
# (xdist 3.8 renames the test's nodeid, which pytest 9.2 no longer lets it), so the groups are
# named by file here, and the collection hook below checks that every reader of `smoke_dag` is
# in SMOKE_DAG_FILES.
SMOKE_DAG_FILES = frozenset({
    "tests/test_lora_pipeline.py", "tests/test_pipeline_data.py", "tests/test_pipeline_local.py",
    "tests/test_pipeline_mpo.py", "tests/test_quiet_run.py", "tests/test_run_terminal.py"})


def schedule_group(nodeid: str) -> str:
    """The group a test is scheduled in: its file, or "smoke_dag" for the smoke DAG's readers."""
    file = nodeid.split("::")[0]
    return "smoke_dag" if file in SMOKE_DAG_FILES else file


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        """xdist's scope scheduling with `schedule_group` as the scope; groups go out in the
        collection's order (`--no-loadscope-reorder`), which puts the long ones first."""

        def _split_scope(self, nodeid: str) -> str:
            return schedule_group(nodeid)

    return ByGroup(config, log)


def pytest_collection_finish(session):
    """The modules collection imported (about 800,000 objects: torch, transformers, vLLM,
    ...) go to gc's permanent generation: every later collection in this process skips them.
    vLLM calls gc.collect() 7 times building and closing one engine, 0.4-0.5 s each here with
    them (test_vllm.py: 72 s alone before, 62 s after); the suite builds dozens of engines in
    its own processes. The tasks of the pipelines the tests start are forked from a server
    that does the same (warm_tasks)."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    """Every smoke_dag reader is in SMOKE_DAG_FILES; then the groups that run pipelines go
    first (the smoke DAG's, then the files with a test marked slow), so that no long group
    starts last."""
    strays = sorted({i.nodeid.split("::")[0] for i in items if "smoke_dag" in i.fixturenames}
                    - SMOKE_DAG_FILES)
    if strays:
        raise pytest.UsageError(f"{', '.join(strays)} read(s) smoke_dag: add it to "
                                "tests/conftest.py's SMOKE_DAG_FILES (one group per session)")
    weight = {}
    for item in items:
        group = schedule_group(item.nodeid)
        mine = 0 if group == "smoke_dag" else 1 if item.get_closest_marker("slow") else 2
        weight[group] = min(mine, weight.get(group, 2))
    items.sort(key=lambda item: weight[schedule_group(item.nodeid)])  # stable: files keep order
