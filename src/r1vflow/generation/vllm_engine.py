"""The vLLM backend: an in-process vLLM V1 engine colocated with the trainer.

The engine is built empty (`load_format="dummy"`) from a serving folder that holds the policy's
config, tokenizer and image processor, then filled by the first weight sync: the same path that
pushes the trainer's changed parameters after every optimizer step, so whatever a run samples
from went through the one sync that is tested. A sync runs in the worker (`collective_rpc`):
vLLM's layerwise reload puts each touched layer back in checkpoint format, `load_weights` takes
the mapped names (`r1vflow.generation.weights`), and the CPU or GPU kernels' post-processing
(`process_weights_after_loading`) runs again; then the prefix and encoder caches are dropped.
Without the reload, the CPU backend keeps sampling from its repacked old weights.

Prompts reach vLLM with each run of image placeholder tokens collapsed to one token: vLLM's
processor expands every image placeholder to the image's feature count itself, from the image
(the ImageInput's source, or the SigLIP-scaled tensor turned back into its RGB image).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from r1vflow.config.generation import GenerationConfig
from r1vflow.generation.base import (
    Completion,
    PromptImages,
    Sampling,
    WeightSyncError,
    check_prompts,
    per_prompt_images,
    trim_completion,
)
from r1vflow.generation.hf import suppressed_ids
from r1vflow.generation.weights import name_map
from r1vflow.models.distributed import rank_world
from r1vflow.models.families import PROCESSOR_ATTR
from r1vflow.models.families.images import ImageInput
from r1vflow.models.lora import has_lora, merged_parameters

log = logging.getLogger(__name__)


class _QuietPartialReload(logging.Filter):
    """A sync of only the changed parameters leaves the other layers as they are; vLLM's reload
    warns 'Failed to load weights' for each of them, which here is the intent."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to load weights" not in record.getMessage()


def tensor_to_image(pixels: torch.Tensor):
    """[3,S,S] in [-1, 1] (SigLIP scaling, r1vflow.data.io.images_to_tensor) -> RGB image."""
    from PIL import Image

    array = ((pixels.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode="RGB")


def collapse_runs(ids: Sequence[int], token: int | None, drop: Sequence[int] = ()) -> list[int]:
    """Each run of `token` -> one `token`, and the `drop` tokens removed: vLLM's processor
    expands one placeholder per image itself (InternVL's also writes the `<img>`/`</img>`
    around it)."""
    out: list[int] = []
    for t in ids:
        if t in drop or (t == token and out and out[-1] == token):
            continue
        out.append(int(t))
    return out


def write_serving_dir(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                      out: Path) -> Path:
    """What vLLM needs to build the policy's architecture, without its weights: config.json
    (architectures set), tokenizer, and the image processor (the family's own, or for the tiny
    Llava path a SigLIP processor that reproduces `images_to_tensor`)."""
    config = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if config.model_type == "internvl":  # transformers' InternVLProcessor reads these
        _name_tokens(out, INTERNVL_TOKENS)
        (out / "processor_config.json").write_text(json.dumps(
            {"processor_class": "InternVLProcessor",
             "image_seq_length": config.image_seq_length}, indent=2))
    processor = getattr(model, PROCESSOR_ATTR, None)
    vision = getattr(config, "vision_config", None)
    if processor is not None:
        processor.save_pretrained(out)
    elif vision is not None:
        from transformers import SiglipImageProcessor

        side = vision.image_size
        SiglipImageProcessor(size={"height": side, "width": side}, resample=2,  # bilinear
                             image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(out)
    return out


INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                   "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


def _name_tokens(folder: Path, named: dict[str, str]) -> None:
    """Add `named` (attribute -> token) to the saved tokenizer's extra_special_tokens."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    extra = config.get("extra_special_tokens") or {}
    if isinstance(extra, list):  # a list of tokens: keep them, add the named ones
        extra = {**{f"extra_{i}": t for i, t in enumerate(extra)}, **named}
    config["extra_special_tokens"] = {**extra, **named}
    path.write_text(json.dumps(config, indent=2))


def _reload(worker: Any, weights: list, expect_all: bool) -> list[str]:
    """(In the worker) load `weights` in checkpoint format; the vLLM parameters left unset
    when every weight was meant to be given."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    runner = worker.model_runner
    model = runner.get_model()
    with set_current_vllm_config(worker.vllm_config):
        initialize_layerwise_reload(model)
        try:
            loaded = model.load_weights(weights)
        finally:
            finalize_layerwise_reload(model, runner.model_config)
    runner.reset_encoder_cache()
    if not expect_all or loaded is None:
        return []
    return sorted({name for name, _ in model.named_parameters()} - set(loaded))


@contextlib.contextmanager
def heap_freeze_kept(keep: bool):
    """While `keep`, gc.freeze and gc.unfreeze do nothing (in every thread; restored after).

    vLLM freezes gc's whole heap when an engine starts (vllm.utils.gc_utils.freeze_gc_heap)
    and unfreezes the whole heap when it shuts down (EngineCore and Worker shutdown,
    cleanup_dist_env_and_memory), then collects twice. In a process that had frozen its own
    heap (the warm task server's imports, the test workers' collection: 600,000-800,000
    objects with vLLM imported), the shutdown unfroze those too, and the shutdown's
    collections and every full collection after it walked them all again: 0.3-1 s each.
    VLLMEngine therefore, in such a process, collects and freezes what the process holds
    before the engine starts (what vLLM's start does), runs the start and the shutdown inside
    this block, and so never freezes the engine's own objects: its shutdown's collections free
    them and walk nothing else. test_vllm.py: 67 s before, 38 s after (gc 38 s, 7 s). A
    process that froze nothing gets vLLM's own behaviour (keep=False)."""
    if not keep:
        yield
        return
    saved = gc.freeze, gc.unfreeze
    gc.freeze = gc.unfreeze = _leave_frozen_heap
    try:
        yield
    finally:
        gc.freeze, gc.unfreeze = saved


def _leave_frozen_heap() -> None:
    """gc.freeze / gc.unfreeze inside heap_freeze_kept(True)."""


def _wrapper_ids(config: Any, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Tokens vLLM's processor writes around each image itself (InternVL: <img>, </img>)."""
    if config.model_type != "internvl":
        return ()
    vocab = tokenizer.get_vocab()
    return tuple(vocab[t] for t in ("<img>", "</img>") if t in vocab)


def _engine_args(settings: GenerationConfig, model: torch.nn.Module, on_gpu: bool) -> dict:
    dtype = settings.dtype if settings.dtype != "auto" else str(
        next(model.parameters()).dtype).removeprefix("torch.")
    text = getattr(model.config, "text_config", None) or model.config
    args: dict[str, Any] = {
        "dtype": dtype, "seed": 0, "load_format": "dummy", "enable_prefix_caching": True,
        "max_model_len": settings.max_model_len or text.max_position_embeddings,
        "enforce_eager": settings.enforce_eager or not on_gpu,
        "tensor_parallel_size": settings.tensor_parallel_size}
    if getattr(model.config, "vision_config", None) is not None:
        # The image processor normalizes, as in training: vLLM's default for Qwen-VL moves
        # that to the device, and with the families' slow processors it was then applied twice
        # (measured: image features 0.12 off transformers').
        args.update(limit_mm_per_prompt={"image": settings.images_per_prompt},
                    mm_device_do_normalize=False)
    if on_gpu:
        args.update(gpu_memory_utilization=settings.gpu_memory_utilization,
                    enable_sleep_mode=settings.sleep_mode)
    else:  # a partly prefilled seeded request rewinds its generator, which CPU generators
        args["enable_chunked_prefill"] = False  # refuse ("CPU Generator does not use offset")
    if rank_world(os.environ)[1] > 1:  # inside torchrun: the engine lives in each rank
        args["distributed_executor_backend"] = "external_launcher"
    return args


class VLLMEngine:
    """A colocated vLLM engine serving `model`'s current weights.

    Args:
        model: the policy (a VLM of a family vLLM serves, or a causal LM); read for its config
            and, through `sync`, its weights.
        tokenizer: its tokenizer (eos, pad, decoding).
        settings: the `generation` section (dtype, max_model_len, KV cache, ...).
    """

    backend = "vllm"

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                 settings: GenerationConfig) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: syncs pass tensors
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.cpu_kvcache_gb:g}")
        import vllm

        if rank_world(os.environ)[1] > 1:  # the trainer's process group first: vLLM joins it
            from r1vflow.models.distributed import init_deepspeed_distributed

            init_deepspeed_distributed()
        self._vllm = vllm
        self.tokenizer, self.config = tokenizer, model.config
        self.names = name_map(model.config)
        self.image_token = getattr(model.config, "image_token_id", None)
        self.drop = _wrapper_ids(model.config, tokenizer)
        self.suppress = {i: -100.0 for i in suppressed_ids(model, tokenizer)}
        self.on_gpu = torch.cuda.is_available()
        self.sleeping = False
        self.sleep = settings.sleep_mode and self.on_gpu
        self.syncs, self.sync_seconds = 0, 0.0
        self._dir = tempfile.TemporaryDirectory(prefix="r1vflow-vllm-")
        serving = write_serving_dir(model, tokenizer, Path(self._dir.name))
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
            _QuietPartialReload())
        self.args = _engine_args(settings, model, self.on_gpu)
        self.keep_freeze = gc.get_freeze_count() > 0  # the same choice when the engine closes
        if self.keep_freeze:  # see heap_freeze_kept
            gc.collect()
            gc.freeze()
        with heap_freeze_kept(self.keep_freeze):
            self.llm = vllm.LLM(model=str(serving), tokenizer=str(serving), **self.args)
        self.dtype = getattr(torch, self.args["dtype"])
        self.sync(model)

    def close(self) -> None:
        """Free the engine (its memory and its serving folder). Inside torchrun vLLM shares the
        trainer's process group, which its shutdown would destroy, and its exit hook fails once
        the trainer destroyed it: there the hook is detached and the engine only dropped."""
        if self.llm is not None:
            core = self.llm.llm_engine.engine_core
            if "distributed_executor_backend" in self.args:
                core._finalizer.detach()
            else:
                with heap_freeze_kept(self.keep_freeze):
                    core.shutdown()
            self.llm = None
        self._dir.cleanup()

    def _wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def _rest(self) -> None:
        if self.sleep:
            self.llm.sleep(level=1)
            self.sleeping = True

    def sync(self, model: torch.nn.Module, names: Iterable[str] | None = None) -> float:
        """Push `model`'s parameters (only `names`, when given) into the engine; every engine
        parameter must be set by a full sync. Returns the seconds it took."""
        start = time.perf_counter()
        wanted = None if names is None else set(names)
        module = getattr(model, "module", model)  # a DDP / DeepSpeed wrapper
        # LoRA: each adapted layer as its merged weight under the base name (models.lora)
        source = merged_parameters(module, wanted) if has_lora(module) else _gathered(
            module, wanted)
        weights = [(self.names(name), param.detach().to(self.dtype)) for name, param in source]
        self._wake()
        try:
            unset = self.llm.collective_rpc(_reload, args=(weights, wanted is None))[0]
        except (KeyError, ValueError, AssertionError) as err:
            raise WeightSyncError(f"weight sync ({self.names.family}): vLLM's model could not "
                                  f"place a weight: {err}") from err
        if unset:
            raise WeightSyncError(f"weight sync ({self.names.family}): the policy set none of "
                                  f"vLLM's {unset[:5]} ({len(unset)} unset)")
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self._rest()
        seconds = time.perf_counter() - start
        self.syncs, self.sync_seconds = self.syncs + 1, self.sync_seconds + seconds
        return seconds

    def generate(self, prompt_ids: Sequence[Sequence[int]], images: PromptImages,
                 sampling: Sampling) -> list[list[Completion]]:
        check_prompts(prompt_ids)
        rows = per_prompt_images(images, len(prompt_ids))
        params = self._vllm.SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=1.0, top_k=0,
            max_tokens=sampling.max_new_tokens,
            repetition_penalty=sampling.repetition_penalty,
            stop_token_ids=[self.tokenizer.eos_token_id], logit_bias=self.suppress or None,
            logprobs=0 if sampling.logprobs else None, detokenize=False)
        requests = [self._request(ids, None if rows is None else rows[i])
                    for i, ids in enumerate(prompt_ids)]
        self._wake()
        # Seeded through the sampler's RNG for the call (the engine runs in this process), not
        # per request: vLLM's per-request generators sample one request at a time (3.7x slower
        # measured here) and fail under chunked prefill on CPUs. The caller's RNG is untouched.
        devices = [torch.cuda.current_device()] if self.on_gpu else []
        with torch.random.fork_rng(devices=devices):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        self._rest()
        return [[self._completion(sample, sampling.logprobs) for sample in out.outputs]
                for out in outputs]

    def _request(self, ids: Sequence[int], images: list | None) -> dict:
        request: dict[str, Any] = {
            "prompt_token_ids": collapse_runs(ids, self.image_token, self.drop)}
        if images:
            pil = [i.source if isinstance(i, ImageInput) else tensor_to_image(i) for i in images]
            request["multi_modal_data"] = {"image": pil if len(pil) > 1 else pil[0]}
        return request

    def _completion(self, sample: Any, want_logprobs: bool) -> Completion:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ids, finished = trim_completion(sample.token_ids, eos, pad)
        logprobs = None
        if want_logprobs:
            logprobs = tuple(step[token].logprob
                             for step, token in zip(sample.logprobs, ids, strict=False))
        return Completion(self.tokenizer.decode(ids, skip_special_tokens=True), ids, finished,
                          logprobs)


def _gathered(module: torch.nn.Module, names: set[str] | None):
    """(name, full tensor) of `module`'s parameters (those in `names`); under DeepSpeed ZeRO-3
    each module's partitioned parameters are gathered for the moment they are read."""
    for prefix, sub in module.named_modules():
        own = [(f"{prefix}.{n}" if prefix else n, p)
               for n, p in sub.named_parameters(recurse=False)]
        own = [(n, p) for n, p in own if names is None or n in names]
        if not own:
            continue
        if hasattr(own[0][1], "ds_id"):  # ZeRO-3: partitioned
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in own]):
                yield from ((n, p.data.clone()) for n, p in own)
        else:
            yield from own


def describe(engine: VLLMEngine) -> str:
    """One line: the engine's settings, for the stage log."""
    shown = {k: v for k, v in engine.args.items() if k != "load_format"}
    return f"vLLM {engine._vllm.__version__} " + json.dumps(shown, sort_keys=True)
