"""Resumable training state: one small API every training stage calls.

A stage asks its context for a `Checkpointer` (`ctx.checkpointer()`), whose location is derived
from the stage name, the digests of its inputs and its config section (checkpoint settings
excluded), so a KFP retry, a restarted pod or the same command run again finds the same
checkpoints. The stage splits its work into named phases (an sft iteration, a projector
sub-stage) and hands each training loop a `PhaseCheckpoint`:

    ck = ctx.checkpointer()                      # ck.resumed: the newest complete checkpoint
    phase = ck.phase("iter_0", step_offset=0, context=state)
    train_sft(..., checkpoint=phase)             # restores, then saves every N steps/minutes

The loop calls `phase.restore(engine)` once (engine state, RNG states and its own loop state
come back when the newest checkpoint belongs to this phase) and `phase.step(...)` after every
optimizer step. Between phases the stage saves a `boundary` (the model only) with its own
JSON `context` (metrics so far, registered versions), and on a rerun skips the phases the
context says are done.

A checkpoint is a directory `step-NNNNNN` holding `engine.pt` (or DeepSpeed's files), one
`loop-rank<r>.pt` per rank, `checkpoint.json` and the manifest, filled under a temporary name
and renamed into place: a directory named `step-*` is complete. With an object store it is then
uploaded (manifest last) and an `index` artifact lists the stored ones; the newest `keep` are
kept. Each save prints `checkpoint: <stage> step <N>`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from r1vflow.models.distributed import rank_world
from r1vflow.storage.atomic import TMP_PREFIX, atomic_dir, write_text
from r1vflow.storage.manifest import MANIFEST_NAME, build_manifest, manifest_bytes, manifest_digest

log = logging.getLogger(__name__)

CHECKPOINT_ENV = "R1VFLOW_CHECKPOINT_DIR"
META_FILE = "checkpoint.json"
BOUNDARY_FILE = "model.pt"
# Fields of a stage section that decide when checkpoints are written, not what is trained.
CHECKPOINT_FIELDS = ("checkpoint_every", "checkpoint_minutes", "keep_checkpoints")


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to save: every `every` steps and/or every `minutes`; keep the newest `keep`."""

    every: int | None = None
    minutes: float | None = None
    keep: int = 2

    @classmethod
    def from_section(cls, section: Any) -> CheckpointPolicy:
        return cls(getattr(section, "checkpoint_every", None),
                   getattr(section, "checkpoint_minutes", None),
                   getattr(section, "keep_checkpoints", 2))


@dataclass
class Loaded:
    """A complete checkpoint found at start: its global step, phase, stage context, files."""

    step: int
    phase: str
    local_step: int
    context: dict[str, Any]
    directory: Path
    boundary: bool
    lineage: str = ""


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """torch (CPU, and CUDA when present), numpy's global and Python's RNG states, as plain
    tensors, lists and numbers (loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- location


def input_digest(path: Path) -> str:
    """Content identity of a stage input: its manifest digest (fetched or downloaded
    artifacts), a data set's recorded digest, else the digest of its files."""
    path = Path(path)
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        from r1vflow.storage.manifest import parse_manifest

        return manifest_digest(parse_manifest(manifest.read_bytes(), str(manifest)))
    info = path / "dataset.json"
    if info.is_file():
        return "dataset:" + json.loads(info.read_text())["digest"]
    if path.is_dir():
        return manifest_digest(build_manifest(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_key(stage: str, section: Mapping[str, Any], inputs: Mapping[str, Path],
                   shared: Mapping[str, Any] | None = None) -> str:
    """sha256 (24 hex) of the stage, its config section without the checkpoint settings,
    `shared` sections it reads (data, model) and its inputs' digests: the same stage run
    again on the same inputs gets the same key."""
    body = {k: v for k, v in section.items() if k not in CHECKPOINT_FIELDS}
    blob = json.dumps({"stage": stage, "section": body, "shared": dict(shared or {}),
                       "inputs": {k: input_digest(p) for k, p in sorted(inputs.items())}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def local_root(exp_name: str, stage: str, key: str) -> Path:
    """Where a stage's checkpoints live on this machine: $R1VFLOW_CHECKPOINT_DIR, else the
    run's output dir (`r1vflow run`), else the scratch root; then <experiment>/<stage>/<key>."""
    from r1vflow.storage.scratch import scratch_root

    base = os.environ.get(CHECKPOINT_ENV)
    if not base:
        run_dir = os.environ.get("R1VFLOW_RUN_DIR")
        base = str(Path(run_dir) / "checkpoints") if run_dir else str(
            scratch_root() / "r1vflow-checkpoints")
    return Path(base) / exp_name / stage / key


def _agree(flag: bool) -> bool:
    """True on every rank when it is true on any (time-based decisions differ per rank)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@dataclass
class Checkpointer:
    """One stage's checkpoints under `root` (and `store`/`prefix` when an object store is set)."""

    stage: str
    root: Path
    policy: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    store: Any = None
    prefix: str | None = None
    resumed: Loaded | None = None
    lineage: str = ""  # one id per training from scratch; a resume keeps it
    _last_save: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.policy.keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.policy.keep}")
        self.resumed = self.latest()
        self.lineage = (self.resumed.lineage if self.resumed and self.resumed.lineage
                        else uuid.uuid4().hex)
        if self.resumed is not None and rank_world()[0] == 0:
            print(f"checkpoint: {self.stage} resuming from step {self.resumed.step} "
                  f"({self.resumed.directory})", flush=True)

    @property
    def resumed_from_step(self) -> int:
        return self.resumed.step if self.resumed else 0

    def write_index(self, folder: Path) -> Path:
        """`folder`/index.json, a stage's `checkpoints` output: the complete checkpoints under
        `root` (step directories), that root, the object-store prefix they were uploaded to
        (None without a store) and the step this run resumed from (0: none)."""
        index = {"checkpoints": [p.name for p in self._complete()], "root": str(self.root),
                 "store_prefix": self.prefix if self.store is not None else None,
                 "resumed_from_step": self.resumed_from_step}
        folder.mkdir(parents=True, exist_ok=True)
        return write_text(folder / "index.json", json.dumps(index, indent=2) + "\n")

    # -- finding ---------------------------------------------------------------------------
    def _complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step-*")
                 if (p / META_FILE).is_file() and (p / MANIFEST_NAME).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def latest(self) -> Loaded | None:
        """The newest complete checkpoint: the local one, unless the object store holds a
        newer one (another machine went further), which is then fetched."""
        found = self._complete()
        if self.store is not None:
            local_step = int(found[-1].name.split("-")[1]) if found else -1
            found = self._from_store(newer_than=local_step) or found
        if not found:
            return None
        newest = found[-1]
        meta = json.loads((newest / META_FILE).read_text())
        return Loaded(int(meta["step"]), meta["phase"], int(meta["local_step"]),
                      meta.get("context", {}), newest, bool(meta.get("boundary")),
                      str(meta.get("lineage", "")))

    def _index(self) -> list[dict[str, Any]]:
        from r1vflow.storage.store import ArtifactIncomplete

        uri = self.store.uri_for(f"{self.prefix}/index")
        tmp = self.root.parent / f"{TMP_PREFIX}index.{uuid.uuid4().hex[:8]}"
        try:
            self.store.download_dir(uri, tmp)
            return json.loads((tmp / "index.json").read_text())["checkpoints"]
        except ArtifactIncomplete:
            return []
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _from_store(self, newer_than: int) -> list[Path]:
        index = self._index()
        if not index or int(index[-1]["step"]) <= newer_than:
            return []
        newest = index[-1]
        target = self.root / f"step-{int(newest['step']):06d}"
        tmp = self.root / f"{TMP_PREFIX}{target.name}.{uuid.uuid4().hex[:8]}"
        self.store.download_dir(newest["uri"], tmp, expected_sha256=newest["manifest_sha256"])
        try:
            os.rename(tmp, target)
        except OSError:  # another rank on this machine fetched it first
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / META_FILE).is_file():
                raise
        print(f"checkpoint: {self.stage} fetched step {newest['step']} from {newest['uri']}",
              flush=True)
        return [target]

    # -- saving ----------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        by_steps = bool(self.policy.every) and step % self.policy.every == 0
        by_time = (self.policy.minutes is not None
                   and time.monotonic() - self._last_save >= 60 * self.policy.minutes)
        return _agree(by_steps or by_time)

    def phase(self, name: str, step_offset: int = 0,
              context: dict[str, Any] | None = None) -> PhaseCheckpoint:
        """The checkpoint handle of one training loop; `context` (the stage's JSON state) is
        saved with every checkpoint as it is at that moment."""
        resume = self.resumed if (self.resumed and self.resumed.phase == name
                                  and not self.resumed.boundary) else None
        return PhaseCheckpoint(self, name, step_offset, context if context is not None else {},
                               resume)

    def save(self, step: int, phase: str, local_step: int, context: Mapping[str, Any],
             write: Callable[[Path], None], boundary: bool = False) -> Path:
        """Write a checkpoint: `write(dir)` fills it (on every rank), then rank 0 adds
        checkpoint.json and the manifest and renames it into place, uploads it, prunes."""
        rank, _ = rank_world()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}step-{step:06d}"  # the same on every rank
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        _barrier()
        tmp.mkdir(parents=True, exist_ok=True)
        write(tmp)
        _barrier()
        target = self.root / f"step-{step:06d}"
        if rank == 0:
            meta = {"stage": self.stage, "step": step, "phase": phase, "local_step": local_step,
                    "boundary": boundary, "context": dict(context), "created_at": time.time(),
                    "lineage": self.lineage}
            write_text(tmp / META_FILE, json.dumps(meta, indent=2, default=float))
            (tmp / MANIFEST_NAME).write_bytes(manifest_bytes(build_manifest(tmp)))
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
            self._publish(target, step)
            self._prune()
            print(f"checkpoint: {self.stage} step {step}", flush=True)
        _barrier()
        self._last_save = time.monotonic()
        return target

    def save_boundary(self, step: int, phase: str, model: torch.nn.Module,
                      context: Mapping[str, Any]) -> Path:
        """Between phases: the model's weights only, and the stage's context; `phase` names
        the phase that starts next."""
        def write(directory: Path) -> None:
            if rank_world()[0] == 0:
                torch.save(model.state_dict(), directory / BOUNDARY_FILE)

        return self.save(step, phase, 0, context, write, boundary=True)

    def load_model(self, model: torch.nn.Module) -> bool:
        """Load the resumed boundary's weights into `model`; False when there is none."""
        if self.resumed is None or not self.resumed.boundary:
            return False
        state = torch.load(self.resumed.directory / BOUNDARY_FILE, map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state)
        return True

    def keep_artifact(self, name: str, directory: Path) -> Path:
        """Keep a copy of a finished product (an sft iteration's model) beside the
        checkpoints, outside their rotation, for a rerun to hand on (`restore_artifact`)."""
        target = self.root / "artifacts" / name
        if rank_world()[0] == 0:
            with atomic_dir(target) as tmp:
                shutil.copytree(directory, tmp, dirs_exist_ok=True)
        return target

    def restore_artifact(self, name: str, directory: Path) -> Path:
        """Copy a kept artifact into `directory`; FileNotFoundError when it was not kept."""
        source = self.root / "artifacts" / name
        if not source.is_dir():
            raise FileNotFoundError(f"checkpoint of {self.stage} names {name} as done but "
                                    f"{source} is missing; remove {self.root} to start over")
        shutil.copytree(source, directory, dirs_exist_ok=True)
        return directory

    def _publish(self, target: Path, step: int) -> None:
        """Upload the checkpoint and list it in the store's index; a store outage costs a
        warning (the local copy stays; the next save tries again)."""
        if self.store is None:
            return
        from r1vflow.storage.store import StoreError

        try:
            pointer = self.store.upload_dir(target, f"{self.prefix}/{target.name}").pointer
            index = [e for e in self._index() if int(e["step"]) != step]
            index.append({"step": step, "uri": pointer.uri,
                          "manifest_sha256": pointer.manifest_sha256})
            index.sort(key=lambda e: int(e["step"]))
            keep, drop = index[-self.policy.keep:], index[:-self.policy.keep]
            tmp = self.root.parent / f"{TMP_PREFIX}index.{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                (tmp / "index.json").write_text(json.dumps({"checkpoints": keep}, indent=2))
                self.store.upload_dir(tmp, f"{self.prefix}/index")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            for entry in drop:
                self.store.delete(entry["uri"])
        except (StoreError, OSError) as err:
            log.warning("checkpoint %s step %d kept locally only: %s", self.stage, step, err)
            print(f"warning: checkpoint {self.stage} step {step} not uploaded: {err}",
                  flush=True)

    def _prune(self) -> None:
        for old in self._complete()[:-self.policy.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)


@dataclass
class PhaseCheckpoint:
    """What a training loop sees: restore once, then `step` after every optimizer step."""

    owner: Checkpointer
    name: str
    step_offset: int
    context: dict[str, Any]
    resume: Loaded | None

    def restore(self, engine) -> dict[str, Any] | None:
        """Engine state, RNG states and the loop's own state (the dict the loop gave `step`)
        when the newest checkpoint is inside this phase; None when the loop starts fresh."""
        if self.resume is None:
            return None
        engine.load_state(self.resume.directory)
        rank, _ = rank_world()
        state = torch.load(self.resume.directory / f"loop-rank{rank}.pt", map_location="cpu",
                           weights_only=True)
        set_rng_state(state["rng"])
        return state["loop"]

    def step(self, local_step: int, engine, loop_state: Callable[[], dict[str, Any]],
             last: bool = False) -> Path | None:
        """Save when the policy says so, or at the phase's last step (`last`)."""
        global_step = self.step_offset + local_step
        if not (_agree(last) or self.owner.due(global_step)):
            return None

        def write(directory: Path) -> None:
            engine.save_state(directory)
            rank, _ = rank_world()
            torch.save({"loop": loop_state(), "rng": rng_state()},
                       directory / f"loop-rank{rank}.pt")

        return self.owner.save(global_step, self.name, local_step, self.context, write)


# --------------------------------------------------------------------------- epoch loops


class LoopStateLike(Protocol):
    """A training loop's typed resume state (r1vflow.train.loop.TrainState and subclasses)."""

    def to_dict(self) -> dict[str, Any]: ...

    def load_dict(self, saved: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class EpochPosition:
    """Where a loop over shuffled epochs is: `batch` batches of `epoch` done, the shuffling
    generator's state before that epoch's permutation (None: a fresh start)."""

    epoch: int = 0
    batch: int = 0
    generator: torch.Tensor | None = None


def restore_epoch_position(checkpoint: PhaseCheckpoint | None, engine,
                           generator: torch.Generator, state: LoopStateLike) -> EpochPosition:
    """For loops over shuffled epochs: restore `checkpoint` (engine, RNG states, the loop's
    `state` in place) and return its position, the shuffling `generator` put back to where
    that epoch's permutation was drawn; `EpochPosition()` when starting fresh."""
    restored = checkpoint.restore(engine) if checkpoint is not None else None
    if restored is None:
        return EpochPosition()
    generator.set_state(restored["epoch_generator"])
    state.load_dict(restored["state"])
    return EpochPosition(int(restored["epoch"]), int(restored["batch"]),
                         restored["epoch_generator"])


def save_epoch_position(checkpoint: PhaseCheckpoint | None, engine, step: int, last: bool,
                        position: EpochPosition, state: LoopStateLike) -> None:
    """After optimizer step `step` (`last`: the loop's final one) at `position`: let the
    policy decide whether to save (always at the last step) the engine, RNG, the position and
    the loop's `state`."""
    if checkpoint is not None:
        checkpoint.step(step, engine, lambda: {
            "epoch": position.epoch, "batch": position.batch,
            "epoch_generator": position.generator, "state": state.to_dict()}, last=last)
