"""Rollout backends for GRPO: sample `num_samples` completions per prompt from the policy.

Both backends implement one protocol, `RolloutBackend`:

    groups = backend.generate(prompt_ids, pixel_values, num_samples, seed)   # P lists of G
    backend.sync(model)        # make the backend sample from the policy's current weights

Prompts arrive already tokenized (chat template, `<image>` placeholders included), so the
token ids the loss sees are exactly the ones the backend continued; completions come back as
`r1vflow.models.generate.Completion` (text with the reasoning tags kept, token ids cut after
the first end-of-sequence, which is kept). Text-only policies (a plain causal LM) pass
`pixel_values=None`.

- `TransformersRollout` (CPU or one GPU): `model.generate` with the KV cache, batched, with the
  options `r1vflow.models.generate` uses for evaluation (left padding, plain temperature
  sampling, no top-k / top-p, `<image>` and `<pad>` never generated), seeded without touching
  the global RNG. It samples from the live policy object, so `sync` has nothing to do.
- `VLLMRollout` (GPUs): a colocated `vllm.LLM` built from a saved model directory; `sync`
  pushes the policy's weights into the engine (`load_weights`, as TRL's colocate mode does).
  `vllm` is an optional extra (`pip install 'r1vflow[gpu]'`, CUDA only) imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedTokenizerBase

from r1vflow.models.families.images import (
    ImageBatch,
    image_kwargs,
    repeat_each,
    token_type_kwargs,
)
from r1vflow.models.generate import (
    Completion,
    decode_completion,
    sampling_options,
    trim_completion,
)

__all__ = ["RolloutBackend", "TransformersRollout", "VLLMRollout", "left_pad", "trim_completion"]


@runtime_checkable
class RolloutBackend(Protocol):
    """Samples groups of completions from the current policy."""

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        pixel_values: torch.Tensor | None,
        num_samples: int,
        seed: int,
    ) -> list[list[Completion]]:
        """prompt_ids: P token-id lists; pixel_values: [P,3,H,W] or None (text-only policy).

        Returns P lists of `num_samples` completions, in prompt order. Same seed and weights,
        same completions.
        """
        ...

    def sync(self, model: torch.nn.Module) -> None:
        """Make later `generate` calls sample from `model`'s current weights."""
        ...


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows to one width: (input_ids, attention_mask), both [B, W] long."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("left_pad: every prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def _check_request(prompt_ids, pixel_values, num_samples: int) -> None:
    if not prompt_ids:
        raise ValueError("rollout: no prompts given")
    if num_samples < 1:
        raise ValueError(f"rollout: num_samples must be >= 1, got {num_samples}")
    if pixel_values is not None and len(pixel_values) != len(prompt_ids):
        raise ValueError(
            f"rollout: {len(prompt_ids)} prompts but {len(pixel_values)} images in pixel_values"
        )


class TransformersRollout:
    """`model.generate` rollouts from the live policy (batched, KV cache, seeded sampling).

    Args:
        model: the policy (a Llava VLM or a causal LM); sampled as it is at call time.
        tokenizer: its tokenizer (eos, pad and decoding; control tokens are dropped from the
            text, the reasoning tags kept).
        max_new_tokens: completion budget per response.
        temperature: sampling temperature; 0 means greedy decoding (then num_samples must be
            1, e.g. for held-out accuracy).
        batch_size: prompts per `generate` call (each expands to batch_size x num_samples rows).
        suppress_ids: token ids never sampled (e.g. `<image>`, `<pad>`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        temperature: float = 1.0,
        batch_size: int = 64,
        suppress_ids: Sequence[int] = (),
    ) -> None:
        if temperature < 0:
            raise ValueError(f"TransformersRollout: temperature must be >= 0, got {temperature}")
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(
                f"TransformersRollout: max_new_tokens ({max_new_tokens}) and batch_size "
                f"({batch_size}) must be >= 1"
            )
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("TransformersRollout: the tokenizer needs an eos and a pad token")
        self.model = model
        self.tokenizer = tokenizer
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.suppress_ids = sorted(set(suppress_ids))

    def sync(self, model: torch.nn.Module) -> None:
        """Sample from `model` from now on (the same object while training: nothing to copy)."""
        self.model = model

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        pixel_values: torch.Tensor | None,
        num_samples: int,
        seed: int,
    ) -> list[list[Completion]]:
        _check_request(prompt_ids, pixel_values, num_samples)
        if self.temperature == 0 and num_samples != 1:
            raise ValueError("TransformersRollout: greedy decoding (temperature 0) gives identical "
                             f"copies; ask for num_samples=1, not {num_samples}")
        was_training = self.model.training
        self.model.eval()
        groups: list[list[Completion]] = []
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seed)
                for start in range(0, len(prompt_ids), self.batch_size):
                    stop = start + self.batch_size
                    pixels = None if pixel_values is None else pixel_values[start:stop]
                    groups += self._chunk(prompt_ids[start:stop], pixels, num_samples)
        finally:
            self.model.train(was_training)
        return groups

    def _chunk(self, rows, pixels, num_samples: int) -> list[list[Completion]]:
        param = next(self.model.parameters())
        expand = isinstance(pixels, ImageBatch)  # tiles / patches: expand rows here, not in
        if expand:  # generate (whose expansion repeats dim 0 of pixel_values per row)
            rows = [row for row in rows for _ in range(num_samples)]
            pixels = repeat_each(pixels, num_samples)
        ids, mask = left_pad(rows, self.pad_id)
        kwargs = {
            "input_ids": ids.to(param.device),
            "attention_mask": mask.to(param.device),
            "max_new_tokens": self.max_new_tokens,
            "num_return_sequences": 1 if expand else num_samples,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_id,
            "use_cache": True,
            **sampling_options(self.temperature),
        }
        if self.suppress_ids:
            kwargs["suppress_tokens"] = self.suppress_ids
        if pixels is not None:
            kwargs.update(image_kwargs(pixels, param.device, param.dtype))
            kwargs.update(token_type_kwargs(self.model, kwargs["input_ids"]))
        out = self.model.generate(**kwargs)[:, ids.shape[1] :].tolist()
        return [
            [decode_completion(self.tokenizer, out[p * num_samples + j])
             for j in range(num_samples)]
            for p in range(len(out) // num_samples)
        ]


def _tensor_to_image(pixels: torch.Tensor):
    """[3,H,W] in [-1, 1] (SigLIP scaling, see r1vflow.data.io) -> RGB PIL image."""
    from PIL import Image

    array = ((pixels.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode="RGB")


# Vision towers vLLM's Llava implementation builds (its init_vision_tower_for_llava).
VLLM_LLAVA_TOWERS = ("clip_vision_model", "siglip_vision_model", "pixtral")


def _check_vllm_serves(model_dir: Path) -> None:
    """ValueError when vLLM cannot build the model: a Llava composition whose vision tower is
    not CLIP / SigLIP / Pixtral (e.g. InternViT as InternVLVisionModel)."""
    import json

    path = model_dir / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    tower = (config.get("vision_config") or {}).get("model_type")
    if config.get("model_type") == "llava" and tower not in VLLM_LLAVA_TOWERS:
        raise ValueError(f"vLLM's Llava builds only {', '.join(VLLM_LLAVA_TOWERS)} vision "
                         f"towers, not {tower!r} ({model_dir}); set grpo.rollout: transformers")


class VLLMRollout:
    """Colocated vLLM engine over a saved model directory (GPU; `pip install 'r1vflow[gpu]'`).

    Args:
        model_dir: directory written by `r1vflow.models.io.save_model` (config, safetensors,
            tokenizer; for a VLM also the image processor config vLLM needs).
        eos_id, pad_id: token ids as in `TransformersRollout`.
        max_new_tokens, temperature: sampling settings.
        gpu_memory_utilization: share of GPU memory vLLM may take (the policy and optimizer
            live on the same GPU).
        dtype: weights dtype inside vLLM.
    Completions carry token ids exactly as sampled; texts are decoded by vLLM with the
    reasoning tags kept (`skip_special_tokens` drops only control tokens).
    """

    def __init__(
        self,
        model_dir: str | Path,
        eos_id: int,
        pad_id: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        gpu_memory_utilization: float = 0.3,
        dtype: str = "bfloat16",
    ) -> None:
        _check_vllm_serves(Path(model_dir))
        try:
            import vllm
        except ImportError as err:
            raise ImportError(
                "VLLMRollout needs the optional 'vllm' package (CUDA only): "
                "pip install 'r1vflow[gpu]', or set grpo.rollout='transformers' on a CPU"
            ) from err
        if temperature <= 0:
            raise ValueError(f"VLLMRollout: temperature must be > 0, got {temperature}")
        self._vllm = vllm
        self.eos_id, self.pad_id = eos_id, pad_id
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.llm = vllm.LLM(
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
            seed=0,
        )

    def sync(self, model: torch.nn.Module) -> None:
        """Copy the policy's parameters into the vLLM engine and drop its prefix cache."""
        worker_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, param in model.named_parameters():
            worker_model.load_weights([(name, param.data)])
        self.llm.reset_prefix_cache()

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        pixel_values: torch.Tensor | None,
        num_samples: int,
        seed: int,
    ) -> list[list[Completion]]:
        _check_request(prompt_ids, pixel_values, num_samples)
        params = self._vllm.SamplingParams(
            n=num_samples,
            temperature=self.temperature,
            top_p=1.0,
            top_k=-1,
            max_tokens=self.max_new_tokens,
            seed=seed,
            stop_token_ids=[self.eos_id],
            skip_special_tokens=True,
        )
        requests = []
        for i, ids in enumerate(prompt_ids):
            request = {"prompt_token_ids": list(ids)}
            if isinstance(pixel_values, ImageBatch):  # vLLM preprocesses the image itself
                request["multi_modal_data"] = {"image": pixel_values.items[i].source}
            elif pixel_values is not None:
                request["multi_modal_data"] = {"image": _tensor_to_image(pixel_values[i])}
            requests.append(request)
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        groups = []
        for output in outputs:
            group = []
            for sample in output.outputs:
                ids, finished = trim_completion(sample.token_ids, self.eos_id, self.pad_id)
                if sample.finish_reason == "stop" and not finished:
                    ids, finished = ids + [self.eos_id], True  # keep eos, as generate() does
                group.append(Completion(text=sample.text, token_ids=ids, finished=finished))
            groups.append(group)
        return groups
