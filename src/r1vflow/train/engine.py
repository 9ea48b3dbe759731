"""One training engine for every stage: AdamW on the trainable parameters, warmup + decay.

`TrainEngine` hides the backend. With backend="torch" it is a plain PyTorch loop (gradient
clipping, AdamW without weight decay on biases and norms, a LambdaLR schedule); under torchrun
with several ranks the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on CUDA),
so every rank's gradients are averaged before the identical update on each rank. With
backend="deepspeed" the same optimizer and schedule run inside `deepspeed.initialize` with a
ZeRO config (stage 0-3); on CPU it uses the gloo backend and DeepSpeed's torch AdamW, so the
ZeRO path is exercised on a laptop exactly as on a GPU cluster (where it runs under torchrun).
DeepSpeed is imported only when asked for.

    engine = TrainEngine(model, lr=1e-4, weight_decay=0.05, warmup_ratio=0.03, total_steps=100)
    loss = engine.model(**batch).loss
    stats = engine.step(loss)          # {"lr": ..., "grad_norm": ...}
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from rich.progress import Progress
from torch.nn.parallel import DistributedDataParallel as DDP

from r1vflow.models.devices import model_device
from r1vflow.models.distributed import (
    init_deepspeed_distributed,
    rank_device_backend,
    rank_world,
)
from r1vflow.train.safe_load import check_files, weights_only_engine

Backend = Literal["torch", "deepspeed"]
Schedule = Literal["cosine", "linear"]
ENGINE_STATE = "engine.pt"


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: Schedule) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then decay to 0.

    warmup: (step + 1) / warmup_steps for step < warmup_steps; then cosine or linear decay over
    the remaining steps, reaching 0 after `total_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed (matrices) and undecayed (biases, norms) groups."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters; check set_trainable(parts)")
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def _ddp(model: torch.nn.Module) -> torch.nn.Module:
    """`model` wrapped in DistributedDataParallel when this process is one of several ranks.

    Under torchrun (WORLD_SIZE > 1 in the environment) the process group is opened here if
    nobody did (NCCL with CUDA, else gloo), as `deepspeed.init_distributed` does for the other
    backend. DDP broadcasts rank 0's weights at wrap time and averages gradients in backward.
    find_unused_parameters: some stages leave trainable parameters out of a forward (the reward
    model's LM head when its likelihood term is off), which plain DDP would wait for forever.
    One process: the model itself."""
    dist = torch.distributed
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend=rank_device_backend())
    if rank_world()[1] == 1:
        return model
    device, _ = model_device(model)
    device_ids = [device] if device.type == "cuda" else None
    return DDP(model, device_ids=device_ids, find_unused_parameters=True)


def deepspeed_config(
    lr: float, weight_decay: float, grad_clip: float, zero_stage: int, on_gpu: bool, bf16: bool
) -> dict[str, Any]:
    """The DeepSpeed config dict the engine uses (micro batch 1: batches are formed outside)."""
    adam: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.999]}
    if not on_gpu:
        adam["torch_adam"] = True
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "optimizer": {"type": "AdamW", "params": adam},
        "bf16": {"enabled": bf16},
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


def zero3_load_config(backend: Backend, zero_stage: int, lr: float, weight_decay: float,
                      grad_clip: float = 1.0, bf16: bool = False) -> dict[str, Any] | None:
    """The DeepSpeed config a TrainEngine with these settings will use, when it is ZeRO-3 (the
    config to load the model under, r1vflow.models.io.load_model); None otherwise."""
    if backend != "deepspeed" or zero_stage != 3:
        return None
    return deepspeed_config(lr, weight_decay, grad_clip, zero_stage, torch.cuda.is_available(),
                            bf16)


class TrainEngine:
    """Optimizer + schedule + backend around `model`; call `.model(...)` and `.step(loss)`."""

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        weight_decay: float,
        warmup_ratio: float,
        total_steps: int,
        grad_clip: float = 1.0,
        backend: Backend = "torch",
        zero_stage: int = 0,
        schedule: Schedule = "cosine",
        bf16: bool = False,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
        if backend == "torch" and zero_stage:
            raise ValueError(f"zero_stage={zero_stage} needs backend='deepspeed'")
        if backend == "torch" and bf16:
            raise ValueError(
                "bf16=True needs backend='deepspeed'; with torch, load the model in bf16"
            )
        self.backend = backend
        self.zero_stage = zero_stage
        self.grad_clip = grad_clip
        self.steps_done = 0
        self._released = False
        warmup = max(1, round(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0
        self._factor = lambda step: lr_factor(step, warmup, total_steps, schedule)
        groups = param_groups(model, weight_decay)
        self._params = [p for g in groups for p in g["params"]]
        if backend == "torch":
            self.model = _ddp(model)
            self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._factor)
        elif backend == "deepspeed":
            self._init_deepspeed(model, groups, lr, weight_decay, zero_stage, bf16)
        else:
            raise ValueError(f"unknown backend {backend!r}; choose 'torch' or 'deepspeed'")
        self.model.train()

    def _init_deepspeed(self, model, groups, lr, weight_decay, zero_stage, bf16) -> None:
        import deepspeed  # lazy: only this backend needs it

        init_deepspeed_distributed()
        config = deepspeed_config(lr, weight_decay, self.grad_clip, zero_stage,
                                  torch.cuda.is_available(), bf16)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model,
            model_parameters=groups,
            config=config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, self._factor),
        )
        self.model, self.optimizer, self.scheduler = engine, optimizer, scheduler

    @property
    def module(self) -> torch.nn.Module:
        """The underlying model (unwrapped from DeepSpeed or DDP), e.g. for save_pretrained."""
        wrapped = self.backend == "deepspeed" or isinstance(self.model, DDP)
        return self.model.module if wrapped else self.model

    def release(self) -> torch.nn.Module:
        """End training and return the plain model, usable and saveable without DeepSpeed.

        Under ZeRO-3 the full parameters are gathered back into the module first. The engine
        cannot step afterwards.
        """
        if self.backend != "deepspeed" or self._released:
            self.model = self.module  # drops the DDP wrapper (its reducer and hooks with it)
            self._released = True
            return self.model
        import deepspeed

        engine = self.model
        module = engine.module
        params = dict(module.named_parameters())
        full: dict[str, torch.Tensor] = {}
        if self.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(params.values())):
                full = {name: p.detach().clone() for name, p in params.items()}
        for handle in (engine.module_forward_pre_hook, engine.module_forward_post_hook):
            if handle is not None:
                handle.remove()
        engine.destroy()
        for name, param in params.items():
            if name in full:
                param.data = full[name]
            for attr in [a for a in vars(param) if a.startswith("ds_")]:
                delattr(param, attr)
        self.model, self.backend, self._released = module, "torch", True
        return module

    def save_state(self, directory: Path) -> None:
        """Model, optimizer, scheduler and step count into `directory` (created).

        torch: one `engine.pt` (the module's full state dict), written by rank 0 alone (under
        DDP every rank holds the same weights and optimizer state); DeepSpeed: its own
        checkpoint API under `directory/deepspeed` (ZeRO-sharded optimizer state, one file per
        rank). Every rank must call this with the same `directory` (the caller's barrier
        follows: r1vflow.train.checkpoint)."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.backend == "deepspeed":
            self.model.save_checkpoint(str(directory / "deepspeed"), tag="state",
                                       client_state={"steps_done": self.steps_done})
            return
        if rank_world()[0] != 0:
            return
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "steps_done": self.steps_done},
                   directory / ENGINE_STATE)

    def load_state(self, directory: Path) -> None:
        """Restore what `save_state` wrote (same backend and ZeRO stage; every rank calls).
        Every file is read weights-only: a checkpoint holding pickled code is refused with
        UnsafeCheckpoint naming the file, before any of it runs (r1vflow.train.safe_load)."""
        if self.backend == "deepspeed":
            check_files(directory / "deepspeed")
            with weights_only_engine(self.model):
                _, client = self.model.load_checkpoint(str(directory / "deepspeed"),
                                                       tag="state")
            if client is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
            self.steps_done = int(client["steps_done"])
            return
        path = directory / ENGINE_STATE
        if not path.is_file():
            raise FileNotFoundError(f"no {ENGINE_STATE} in {directory}: it was written by the "
                                    "deepspeed backend, or is not a training checkpoint")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps_done = int(state["steps_done"])

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _grad_norm(self) -> float:
        grads = [p.grad for p in self._params if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def step(self, loss: torch.Tensor) -> dict[str, float]:
        """Backward `loss`, clip, update, advance the schedule. Returns lr used and grad norm."""
        if self._released:
            raise RuntimeError("TrainEngine.step() after release(); build a new engine")
        if not torch.isfinite(loss.detach()).item():
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.steps_done}")
        lr = self.current_lr()
        if self.backend == "deepspeed":
            self.model.backward(loss)
            pre_step_norm = self._grad_norm() if self.zero_stage == 0 else None
            self.model.step()
            norm = self.model.get_global_grad_norm()  # None without ZeRO
            grad_norm = float(norm) if norm is not None else pre_step_norm
        else:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1
        return {"lr": lr, "grad_norm": grad_norm}


def training_progress(enabled: bool) -> Progress:
    """The training loops' progress: a rich bar with live loss and tokens/s fields on a
    terminal, a plain line per step in a task's log (r1vflow.train.progress); disabled:
    nothing."""
    from r1vflow.train.progress import training_progress as progress

    return progress(enabled)
