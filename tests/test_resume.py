"""Resume inside training stages: a stage killed with SIGKILL after a checkpoint and run again
ends with exactly the weights of an uninterrupted run (tests/resume_worker.py runs it).

Why exactly: on CPU every op here is deterministic, the checkpoint holds the model, AdamW's
moments, the schedule's position, the shuffling generator and the RNG states bit for bit, so
the resumed steps compute the same numbers as the uninterrupted ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("resume_worker.py")
SFT = ["sft.iterative=null", "sft.epochs=2", "sft.checkpoint_every=2"]
ITERATIVE = ["sft.iterative.iterations=2", "sft.iterative.tau=[0.0,0.0]",
             "sft.iterative.lr=[1.0e-3,1.0e-3]", "sft.iterative.error_scan_limit=2",
             "sft.checkpoint_every=2"]
GRPO = ["grpo.steps=6", "grpo.checkpoint_every=2"]
MPO = ["mpo.trainable=[projector,llm]", "mpo.lr=1.0e-3", "mpo.batch_size=2", "mpo.epochs=2",
       "mpo.max_length=96", "mpo.val_limit=2", "mpo.val_max_new_tokens=4",
       "mpo.val_batch_size=2", "mpo.pairs.prompts=6", "mpo.pairs.samples_per_prompt=2",
       "mpo.pairs.max_new_tokens=8", "mpo.checkpoint_every=2", "mpo.checkpoint_minutes=null"]


def _env(checkpoints: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "MLFLOW_TRACKING_URI" and not k.startswith("R1VFLOW_")}
    return {**env, "R1VFLOW_CHECKPOINT_DIR": str(checkpoints), "OMP_NUM_THREADS": "1"}


def _command(root: Path, stage: str, out: Path, args: list[str]) -> list[str]:
    return [sys.executable, str(WORKER), "run", str(root), stage, str(out), *args]


def run_stage(root: Path, stage: str, out: Path, checkpoints: Path, args: list[str]) -> dict:
    proc = subprocess.run(_command(root, stage, out, args), env=_env(checkpoints),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]) | {"stdout": proc.stdout}


def kill_after_checkpoint(root: Path, stage: str, out: Path, checkpoints: Path,
                          args: list[str], after_step: int) -> list[str]:
    """Start the stage slowed down; SIGKILL it once it printed `checkpoint: <stage> step N`
    with N > after_step. Returns the checkpoint lines seen."""
    proc = subprocess.Popen(_command(root, stage, out, ["--slow", "0.5", *args]),
                            env=_env(checkpoints), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    seen = []
    try:
        for line in proc.stdout:
            if line.startswith(f"checkpoint: {stage} step "):
                seen.append(line.strip())
                if int(line.split()[-1]) > after_step:
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the stage ended before the kill: {seen}"
    return seen


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(directory.glob("*.safetensors"))))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume-inputs")
    subprocess.run([sys.executable, str(WORKER), "prepare", str(root)], check=True,
                   env=_env(root / "unused"), capture_output=True, timeout=600)
    return root


@pytest.mark.slow
def test_sft_killed_then_rerun_ends_with_the_uninterrupted_weights(inputs, tmp_path):
    reference = run_stage(inputs, "sft", tmp_path / "ref", tmp_path / "ck-ref", SFT)
    assert reference["metrics"]["resumed_from_step"] == 0
    seen = kill_after_checkpoint(inputs, "sft", tmp_path / "a", tmp_path / "ck", SFT, 0)
    assert seen == ["checkpoint: sft step 2"]
    resumed = run_stage(inputs, "sft", tmp_path / "b", tmp_path / "ck", SFT)
    assert resumed["metrics"]["resumed_from_step"] == 2
    assert "checkpoint: sft step 2\n" not in resumed["stdout"]  # steps 1-2 were not redone
    assert "checkpoint: sft step 8" in resumed["stdout"]
    assert_same_weights(tmp_path / "ref" / "model", tmp_path / "b" / "model")
    assert resumed["metrics"]["train_loss/iter_0"] == reference["metrics"]["train_loss/iter_0"]


@pytest.mark.slow
def test_grpo_killed_then_rerun_ends_with_the_uninterrupted_weights(inputs, tmp_path):
    reference = run_stage(inputs, "grpo", tmp_path / "ref", tmp_path / "ck-ref", GRPO)
    seen = kill_after_checkpoint(inputs, "grpo", tmp_path / "a", tmp_path / "ck", GRPO, 2)
    assert seen == ["checkpoint: grpo step 2", "checkpoint: grpo step 4"]
    resumed = run_stage(inputs, "grpo", tmp_path / "b", tmp_path / "ck", GRPO)
    assert resumed["metrics"]["resumed_from_step"] == 4
    assert_same_weights(tmp_path / "ref" / "model", tmp_path / "b" / "model")
    # SSB contents, sampler and monitor came back too: the whole history matches.
    for key in ("reward_mean_mean", "loss_mean", "replay_fraction_mean", "steps"):
        assert resumed["metrics"][key] == reference["metrics"][key], key


@pytest.mark.slow
def test_mpo_killed_then_rerun_ends_with_the_uninterrupted_weights(inputs, tmp_path):
    reference = run_stage(inputs, "mpo", tmp_path / "ref", tmp_path / "ck-ref", MPO)
    assert reference["metrics"]["resumed_from_step"] == 0
    steps = int(reference["metrics"]["steps"])
    assert steps >= 4  # 2 epochs of >= 2 batches: the kill lands mid-training
    seen = kill_after_checkpoint(inputs, "mpo", tmp_path / "a", tmp_path / "ck", MPO, 0)
    assert seen == ["checkpoint: mpo step 2"]
    resumed = run_stage(inputs, "mpo", tmp_path / "b", tmp_path / "ck", MPO)
    assert resumed["metrics"]["resumed_from_step"] == 2
    assert "checkpoint: mpo step 2\n" not in resumed["stdout"]  # steps 1-2 were not redone
    assert f"checkpoint: mpo step {steps}" in resumed["stdout"]
    assert_same_weights(tmp_path / "ref" / "model", tmp_path / "b" / "model")
    # the whole step history (BCO delta, data order) came back: every summary matches
    same = {k: v for k, v in reference["metrics"].items()
            if k not in ("resumed_from_step", "seconds")}
    assert {k: resumed["metrics"][k] for k in same} == same
    pairs = (tmp_path / "ref" / "pairs" / "pairs.jsonl").read_text()
    assert (tmp_path / "b" / "pairs" / "pairs.jsonl").read_text() == pairs
    index = json.loads((tmp_path / "b" / "checkpoints" / "index.json").read_text())
    assert index["checkpoints"][-1] == f"step-{steps:06d}"
    assert index["resumed_from_step"] == 2


@pytest.mark.slow
def test_mpo_resume_reuses_the_pairs_and_reference_logprobs(inputs, tmp_path, monkeypatch):
    """The pairs (sampled) and reference log-probs (a forward over every pair) travel in the
    checkpoint's context: a resumed mpo neither samples nor runs the reference pass again."""
    import r1vflow.stages.mpo as mpo_stage

    monkeypatch.setenv("R1VFLOW_CHECKPOINT_DIR", str(tmp_path / "ref-ck"))
    reference = _mpo(inputs, tmp_path / "ref")
    monkeypatch.setenv("R1VFLOW_CHECKPOINT_DIR", str(tmp_path / "ck"))
    with pytest.raises(Crash):
        _mpo(inputs, tmp_path / "a", crash_at=3)

    def redone(*args, **kwargs):
        raise AssertionError("redone on resume")

    monkeypatch.setattr(mpo_stage, "build_pairs", redone)
    monkeypatch.setattr(mpo_stage, "reference_logprobs", redone)
    outcome = _mpo(inputs, tmp_path / "b")
    assert outcome.metrics["resumed_from_step"] == 2
    assert_same_weights(tmp_path / "ref" / "model", tmp_path / "b" / "model")
    for key in ("pairs/total", "dropped/total", "train_pairs", "loss", "steps"):
        assert outcome.metrics[key] == reference.metrics[key], key


@pytest.mark.slow
def test_iterative_sft_resumes_at_its_iteration_without_duplicate_versions(inputs, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ref_uri = f"sqlite:///{tmp_path / 'ref.db'}"
    reference = run_stage(inputs, "sft", tmp_path / "ref", tmp_path / "ck-ref",
                          ["--mlflow", ref_uri, *ITERATIVE])
    iter0_steps = 6  # 8 gold + 4 noisy items in D, batch 2
    kill_after_checkpoint(inputs, "sft", tmp_path / "a", tmp_path / "ck",
                          ["--mlflow", uri, *ITERATIVE], iter0_steps)
    resumed = run_stage(inputs, "sft", tmp_path / "b", tmp_path / "ck",
                        ["--mlflow", uri, *ITERATIVE])
    assert resumed["metrics"]["resumed_from_step"] > iter0_steps
    assert "checkpoint: sft step 2\n" not in resumed["stdout"]  # iteration 0 was not redone
    assert_same_weights(tmp_path / "ref" / "model", tmp_path / "b" / "model")
    assert_same_weights(tmp_path / "ref" / "iterations" / "iter_0",
                        tmp_path / "b" / "iterations" / "iter_0")
    versions = mlflow.MlflowClient(uri).search_model_versions("name='smoke-sft'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]  # iter_0, iter_1, final
    chain = {str(v.version): v.tags["r1vflow.parent"] for v in versions}
    assert chain["2"] == "smoke-sft/1" and chain["3"] == "smoke-sft/2"
    assert reference["metrics"]["val_loss"] == resumed["metrics"]["val_loss"]


# --------------------------------------------------------------------------- in process


class Crash(Exception):
    pass


def _tiny(tokenizer):
    from r1vflow.models.vlm import assemble_vlm, build_tiny_llm, build_tiny_vision, set_trainable

    torch.manual_seed(0)
    model = assemble_vlm(build_tiny_vision(16, 8, 32, 1, 2),
                         build_tiny_llm(len(tokenizer), 32, 2, 2, 64, 128), tokenizer)
    set_trainable(model, {"projector", "llm"})
    return model


def _items(n: int = 8):
    return [("How many?", f"<think>{i % 2}.</think><answer>{i % 2}</answer>",
             torch.full((3, 16, 16), 0.8 if i % 2 else -0.8)) for i in range(n)]


def _sft(tokenizer, checkpoint=None, crash_at=None, backend="torch", zero_stage=0):
    from r1vflow.train.sft import SFTSettings, train_sft

    def on_step(step, _metrics):
        if step == crash_at:
            raise Crash(step)

    model = _tiny(tokenizer)
    stats = train_sft(model, tokenizer, _items(), SFTSettings(
        epochs=3, batch_size=3, lr=3e-3, weight_decay=0.01, warmup_ratio=0.1, max_length=64,
        seed=0, progress=False, backend=backend, zero_stage=zero_stage),
        on_step=on_step, checkpoint=checkpoint).summary
    return model, stats


@pytest.fixture(scope="module")
def tokenizer():
    from r1vflow.models.tokenizer import train_tokenizer

    return train_tokenizer([
        "How many red circles are there? <think>2 red circles.</think><answer>2</answer>",
        "What is the sum? <think>3 + 4 = 7.</think><answer>7</answer>"] * 20, vocab_size=300)


def _resume_matches(tokenizer, tmp_path, backend: str, zero_stage: int) -> None:
    from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy

    reference, ref_stats = _sft(tokenizer, backend=backend, zero_stage=zero_stage)
    policy = CheckpointPolicy(every=2, keep=2)
    first = Checkpointer("sft", tmp_path / "ck", policy)
    assert first.resumed is None
    with pytest.raises(Crash):  # epoch 1 of 3 batches: the crash is inside the second epoch
        _sft(tokenizer, first.phase("p"), crash_at=5, backend=backend, zero_stage=zero_stage)
    again = Checkpointer("sft", tmp_path / "ck", policy)
    assert again.resumed_from_step == 4
    model, stats = _sft(tokenizer, again.phase("p"), backend=backend, zero_stage=zero_stage)
    assert stats["steps"] == ref_stats["steps"] == 9
    assert stats["first_loss"] == ref_stats["first_loss"]
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in (tmp_path / "ck").glob("step-*")) == ["step-000008",
                                                                        "step-000009"]


def test_train_sft_resumes_mid_epoch_to_the_same_weights(tokenizer, tmp_path):
    _resume_matches(tokenizer, tmp_path, "torch", 0)


@pytest.mark.slow
def test_deepspeed_zero2_resumes_through_its_checkpoint_api(tokenizer, tmp_path):
    pytest.importorskip("deepspeed")
    _resume_matches(tokenizer, tmp_path, "deepspeed", 2)
    assert list((tmp_path / "ck" / "step-000009" / "deepspeed" / "state").glob("*optim*"))



class _Payload:
    """Pickles to a call of open(marker, "w"): loading it with weights_only=False creates it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _ds_engine():
    from r1vflow.train.engine import TrainEngine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    return TrainEngine(model, 1e-2, 0.01, 0.0, 4, backend="deepspeed", zero_stage=2)


def _ds_steps(engine, phase, batches, first: int) -> None:
    for i, x in enumerate(batches, start=first):
        engine.step(engine.model(x).pow(2).sum())
        phase.step(i, engine, lambda i=i: {"at": i}, last=i == 2)


def test_deepspeed_resume_loads_weights_only_and_refuses_a_pickled_payload(tmp_path,
                                                                          monkeypatch):
    """A 2-step ZeRO-2 save resumes to the uninterrupted weights; the same checkpoint with a
    pickled callable planted in a DeepSpeed file is refused, naming it, and nothing runs, also
    when the up-front file check is skipped (DeepSpeed's own loads are weights-only)."""
    pytest.importorskip("deepspeed")
    import r1vflow.train.engine as engine_module
    from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy
    from r1vflow.train.safe_load import UnsafeCheckpoint

    batches = [torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    policy = CheckpointPolicy(every=2)
    reference = _ds_engine()
    _ds_steps(reference, Checkpointer("sft", tmp_path / "ck", policy).phase("p"), batches[:2], 1)
    resumed = _ds_engine()
    phase = Checkpointer("sft", tmp_path / "ck", policy).phase("p")
    assert phase.restore(resumed) == {"at": 2} and resumed.steps_done == 2
    for x in batches[2:]:
        reference.step(reference.model(x).pow(2).sum())
        resumed.step(resumed.model(x).pow(2).sum())
    for a, b in zip(reference.module.parameters(), resumed.module.parameters(), strict=True):
        assert torch.equal(a, b)
    states = tmp_path / "ck/step-000002/deepspeed/state/mp_rank_00_model_states.pt"
    planted = torch.load(states, weights_only=True)
    planted["client"] = _Payload(tmp_path / "marker")
    torch.save(planted, states)
    for skip_check in (False, True):
        if skip_check:
            monkeypatch.setattr(engine_module, "check_files", lambda directory: None)
        with pytest.raises(UnsafeCheckpoint, match=f"refusing checkpoint file {states}"):
            Checkpointer("sft", tmp_path / "ck", policy).phase("p").restore(_ds_engine())
        assert not (tmp_path / "marker").exists()


def test_checkpointer_rules(tmp_path):
    """Only renamed step dirs count; the newest `keep` stay; steps and minutes decide."""
    from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy

    ck = Checkpointer("grpo", tmp_path, CheckpointPolicy(every=3, minutes=None, keep=2))
    assert [ck.due(s) for s in range(1, 7)] == [False, False, True, False, False, True]
    for step in (3, 6, 9):
        ck.save(step, "train", step, {"n": step},
                lambda d, s=step: (d / "engine.pt").write_text(str(s)))
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000006", "step-000009"]
    (tmp_path / ".r1vflow-tmp-step-000012").mkdir()  # a save killed half-way
    (tmp_path / "step-000015").mkdir()                # no manifest: not complete
    found = Checkpointer("grpo", tmp_path, CheckpointPolicy(every=3))
    assert (found.resumed.step, found.resumed.context) == (9, {"n": 9})
    timed = Checkpointer("grpo", tmp_path / "t", CheckpointPolicy(every=None, minutes=0.5))
    assert not timed.due(1)
    timed._last_save -= 31
    assert timed.due(2)


def test_checkpoints_travel_through_the_object_store(tmp_path):
    """With a store, a machine without the local copy (a new pod) fetches the newest one."""
    from r1vflow.storage import MANIFEST_NAME, FileStore
    from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy

    store = FileStore(tmp_path / "bucket", show_progress=False)
    ck = Checkpointer("sft", tmp_path / "pod-a", CheckpointPolicy(every=1, keep=2), store=store,
                      prefix="artifacts/x/checkpoints/sft/k")
    for step in (1, 2, 3):
        ck.save(step, "iter_0", step, {"step": step},
                lambda d, s=step: (d / "engine.pt").write_text(str(s)))
    root = tmp_path / "bucket/artifacts/x/checkpoints/sft/k"
    complete = sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file())
    assert complete == ["index", "step-000002", "step-000003"]  # step 1 deleted, newest 2 kept
    fresh = Checkpointer("sft", tmp_path / "pod-b", CheckpointPolicy(every=1), store=store,
                         prefix="artifacts/x/checkpoints/sft/k")
    assert fresh.resumed.step == 3
    assert (fresh.resumed.directory / "engine.pt").read_text() == "3"


# --------------------------------------------------------------------------- other stages


class _CrashAt:
    """A tracker raising Crash at training step `at` of the metric whose name has `tag`."""

    def __init__(self, at: int | None, tag: str = "") -> None:
        from r1vflow.tracking.runs import StageTracker

        self._tracker, self._at, self._tag = StageTracker(None, "t", register=False), at, tag

    def __getattr__(self, name):
        return getattr(self._tracker, name)

    def log_metrics(self, metrics, step=None):
        if step == self._at and any(self._tag in k for k in metrics):
            raise Crash(step)


def _stage(inputs: Path, out: Path, stage: str, crash_at=None, tag: str = ""):
    import resume_worker

    from r1vflow.config import load_experiment
    from r1vflow.stages import StageContext, stage_function

    exp = load_experiment(resume_worker.ROOT / "pipelines/configs/smoke.yaml", [
        *resume_worker.BASE, "align_projector.checkpoint_every=1",
        "train_reward_model.checkpoint_every=1", "train_reward_model.epochs=2"])
    given = {"align_projector": ("base_model", "substitute_llm", "dataset"),
             "train_reward_model": ("base_model", "dataset")}[stage]
    (out / "model").mkdir(parents=True)
    ctx = StageContext(exp=exp, stage=stage, inputs={k: inputs / k for k in given},
                       outputs={"model": out / "model"}, tracker=_CrashAt(crash_at, tag))
    return stage_function(stage)(ctx)


def _mpo(inputs: Path, out: Path, crash_at: int | None = None):
    import resume_worker

    from r1vflow.config import load_experiment
    from r1vflow.stages import StageContext, stage_function

    exp = load_experiment(resume_worker.ROOT / "pipelines/configs/smoke.yaml",
                          [*resume_worker.BASE, *MPO])
    outputs = {name: out / name for name in ("model", "checkpoints", "pairs")}
    for path in outputs.values():
        path.mkdir(parents=True)
    ctx = StageContext(exp=exp, stage="mpo",
                       inputs={k: inputs / k for k in ("base_model", "dataset")},
                       outputs=outputs, tracker=_CrashAt(crash_at))
    return stage_function("mpo")(ctx)


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "crash_at", "tag", "resumed"), [
    ("align_projector", 1, "substitute/cot", None),  # in the 2nd sub-stage, after the 1st
    ("align_projector", 2, "train/align/", None),     # after the transfer, inside align
    ("train_reward_model", 3, "", 2),                  # mid-training
])
def test_other_stages_resume_to_the_same_weights(inputs, tmp_path, monkeypatch, stage,
                                                 crash_at, tag, resumed):
    monkeypatch.setenv("R1VFLOW_CHECKPOINT_DIR", str(tmp_path / "ref-ck"))
    reference = _stage(inputs, tmp_path / "ref", stage)
    monkeypatch.setenv("R1VFLOW_CHECKPOINT_DIR", str(tmp_path / "ck"))
    with pytest.raises(Crash):
        _stage(inputs, tmp_path / "a", stage, crash_at, tag)
    outcome = _stage(inputs, tmp_path / "b", stage)
    assert outcome.metrics["resumed_from_step"] > 0
    if resumed is not None:
        assert outcome.metrics["resumed_from_step"] == resumed
    assert_same_weights(tmp_path / "ref" / "model", tmp_path / "b" / "model")
    same = {k: v for k, v in reference.metrics.items() if k != "resumed_from_step"}
    assert {k: outcome.metrics[k] for k in same} == same


@pytest.mark.slow
def test_a_kill_between_registering_an_iteration_and_its_checkpoint_registers_no_duplicate(
        inputs, tmp_path, monkeypatch):
    """The one window the checkpoints cannot close: the iteration's version is registered and
    stored, the process dies before the boundary checkpoint records it. The rerun finds the
    version by its training lineage in the registry, verifies its files and reuses it."""
    import mlflow
    import resume_worker

    from r1vflow.config import load_experiment
    from r1vflow.stages import StageContext, stage_function
    from r1vflow.storage import FileStore
    from r1vflow.tracking.runs import stage_run
    from r1vflow.train.checkpoint import Checkpointer

    exp = load_experiment(resume_worker.ROOT / "pipelines/configs/smoke.yaml",
                          [*resume_worker.BASE, *ITERATIVE, "storage.backend=s3"])
    store = FileStore(tmp_path / "bucket", show_progress=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("R1VFLOW_ARTIFACT_CACHE", str(tmp_path / "cache"))
    real = Checkpointer.save_boundary

    def dies_once(self, *args, **kwargs):
        monkeypatch.setattr(Checkpointer, "save_boundary", real)
        raise Crash("killed right after registering iter_0")

    def attempt(out: Path):
        with stage_run(uri, "resume", "sft", exp.name) as tracker:
            outputs = {"model": out / "model", "iterations": out / "iterations"}
            for path in outputs.values():
                path.mkdir(parents=True)
            ctx = StageContext(exp=exp, stage="sft", tracker=tracker, store=store,
                               outputs=outputs, inputs={k: inputs / k for k in (
                                   "base_model", "dataset", "reward_model")})
            return stage_function("sft")(ctx)

    monkeypatch.setattr(Checkpointer, "save_boundary", dies_once)
    with pytest.raises(Crash):
        attempt(tmp_path / "a")
    client = mlflow.MlflowClient(uri)
    assert [str(v.version) for v in client.search_model_versions("name='smoke-sft'")] == ["1"]
    outcome = attempt(tmp_path / "b")
    versions = client.search_model_versions("name='smoke-sft'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]  # iter_0 reused, not doubled
    assert outcome.model_version == "smoke-sft/3"
    assert {str(v.version): v.tags["r1vflow.parent"] for v in versions}["2"] == "smoke-sft/1"


def test_a_newer_checkpoint_in_the_store_wins_over_an_older_local_one(tmp_path):
    """Pod A stopped at step 1; pod B went on to step 2 and uploaded it: A's machine resumes
    from 2."""
    from r1vflow.storage import FileStore
    from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy

    store = FileStore(tmp_path / "bucket", show_progress=False)
    prefix, policy = "artifacts/x/checkpoints/sft/k", CheckpointPolicy(every=1, keep=2)
    a = Checkpointer("sft", tmp_path / "pod-a", policy, store=store, prefix=prefix)
    a.save(1, "p", 1, {}, lambda d: (d / "engine.pt").write_text("1"))
    b = Checkpointer("sft", tmp_path / "pod-b", policy, store=store, prefix=prefix)
    b.save(2, "p", 2, {}, lambda d: (d / "engine.pt").write_text("2"))
    again = Checkpointer("sft", tmp_path / "pod-a", policy, store=store, prefix=prefix)
    assert again.resumed.step == 2 and again.resumed.directory.parent == tmp_path / "pod-a"
