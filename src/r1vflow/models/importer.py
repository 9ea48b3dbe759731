"""Import released checkpoints into r1vflow model directories (the lineage root of a run).

    import_checkpoint("ckpt/Qwen2.5-VL-7B", "models/base")               # family from config.json
    import_composition("ckpt/siglip", "ckpt/llm", "models/base",
                       substitute="ckpt/llm-instruct", substitute_output="models/substitute")

The result is what every stage loads: safetensors weights of the family's native transformers
class, the tokenizer with R1V's tags (`<think>`, `</think>`, `<answer>`, `</answer>`) added where
missing (embeddings resized), the slow image processor, and `r1vflow_model.json` naming the
source, the family and the sha256 of every source file. `internvl_chat` checkpoints are
converted to native InternVL first (r1vflow.models.families.internvl_chat), and a standalone
InternViT vision tower to `InternVLVisionModel` (`load_intern_vit`); no remote code runs.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from r1vflow.models.families import FAMILIES, PROCESSOR_ATTR, Family, detect_family, family

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
CHATML_END = "<|im_end|>"
INTERN_VIT = "intern_vit_6b"  # a standalone InternViT (remote code): converted, never run


def source_digests(directory: str | Path) -> dict[str, str]:
    """sha256 of every file under `directory` (relative POSIX path -> hex digest)."""
    root = Path(directory)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out[path.relative_to(root).as_posix()] = digest.hexdigest()
    return out


def _check_source(directory: str | Path) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path} (r1vflow imports local "
                                "directories; download hub checkpoints with a pinned revision)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not a transformers checkpoint")
    if not list(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} holds no *.safetensors weights (r1vflow reads "
                                "safetensors only, never pickled .bin files)")
    return path


def _load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{directory} holds no tokenizer (tokenizer.json)")
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                         trust_remote_code=False)


def prepare_tokenizer(tokenizer, fam: Family, vocab_size: int, image_token_id: int | None):
    """Check that `tokenizer` fits the model and add R1V's tags where missing; returns the
    number of tokens added. ChatML end `<|im_end|>` becomes eos when the tokenizer has it (the
    assistant turn ends there); pad falls back to eos."""
    from tokenizers import AddedToken

    from r1vflow.models.tokenizer import CHAT_TEMPLATE, TAG_TOKENS, check_special_tokens

    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} ids but the LLM's embeddings hold "
                         f"{vocab_size}: it is not this model's tokenizer")
    vocab = tokenizer.get_vocab()
    if fam.name == "llava" and fam.image_pad not in vocab:  # the composition's new token
        tokenizer.add_special_tokens({"extra_special_tokens": [fam.image_pad]},
                                     replace_extra_special_tokens=False)
    elif fam.name != "llava":
        missing = [t for t in fam.special_tokens if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks the {fam.name} image tokens {missing}: it is "
                             "not this model's tokenizer")
        if vocab[fam.image_pad] != image_token_id:
            raise ValueError(f"the tokenizer maps {fam.image_pad} to {vocab[fam.image_pad]} but "
                             f"the model's image_token_id is {image_token_id}")
    if CHATML_END in vocab:
        tokenizer.eos_token = CHATML_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    added = tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                                  for t in TAG_TOKENS if t not in vocab])
    check_special_tokens(tokenizer, (*fam.special_tokens, *TAG_TOKENS))
    return added


def _image_processor(directory: Path, min_pixels: int | None, max_pixels: int | None):
    from transformers import AutoImageProcessor

    if not (directory / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no preprocessor_config.json (the image "
                                "processor settings)")
    kwargs: dict[str, Any] = {}
    if min_pixels is not None or max_pixels is not None:
        raw = json.loads((directory / "preprocessor_config.json").read_text())
        size = dict(raw.get("size") or {})
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        kwargs["size"] = size
    return AutoImageProcessor.from_pretrained(str(directory), use_fast=False,
                                              local_files_only=True, **kwargs)


def _metadata(source: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    return {"stage": "import_model", "parent": None, "config_fingerprint": fingerprint,
            "extra": source}


def import_checkpoint(source: str | Path, output: str | Path, family_name: str | None = None,
                      dtype: str = "float32", min_pixels: int | None = None,
                      max_pixels: int | None = None, fingerprint: str = "") -> Path:
    """Import a whole-VLM checkpoint directory (qwen2_5_vl, qwen3_vl, internvl,
    internvl_chat) into an r1vflow model directory at `output`."""
    src = _check_source(source)
    config = json.loads((src / "config.json").read_text())
    fam = family(family_name) if family_name else detect_family(config)
    if fam.name == "llava":
        raise ValueError("llava models are assembled from a vision tower and an LLM: use "
                         "import_composition (r1vflow models import --vision V --llm L)")
    facts = {"source": str(source), "family": fam.name, "source_files": source_digests(src)}
    if fam.name == "internvl_chat":
        with tempfile.TemporaryDirectory(prefix="r1vflow-internvl-") as tmp:
            native = convert_internvl_chat(src, Path(tmp))
            return _import_native(native, FAMILIES["internvl"], output, dtype, min_pixels,
                                  max_pixels, {**facts, "converted_from": "internvl_chat"},
                                  fingerprint)
    return _import_native(src, fam, output, dtype, min_pixels, max_pixels, facts, fingerprint)


def _import_native(src: Path, fam: Family, output, dtype: str, min_pixels, max_pixels,
                   facts: dict[str, Any], fingerprint: str) -> Path:
    from r1vflow.models.families import model_class
    from r1vflow.models.io import save_model

    processor = _image_processor(src, min_pixels, max_pixels)
    tokenizer = _load_tokenizer(src)
    model = model_class(fam).from_pretrained(str(src), dtype=DTYPES[dtype],
                                             use_safetensors=True, local_files_only=True)
    text = model.config.get_text_config()
    prepare_tokenizer(tokenizer, fam, model.get_input_embeddings().num_embeddings,
                      getattr(model.config, "image_token_id", None))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    for cfg in (model.config, model.generation_config, text):
        cfg.pad_token_id, cfg.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    setattr(model, PROCESSOR_ATTR, processor)
    return save_model(model, tokenizer, output, _metadata(facts, fingerprint))


def convert_internvl_chat(src: Path, out: Path) -> Path:
    """Write the native InternVL checkpoint of an internvl_chat directory to `out` (config,
    safetensors, tokenizer, GotOcr2 image processor); verified both ways (see internvl_chat)."""
    from safetensors.torch import save_file
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig
    from transformers import InternVLForConditionalGeneration as Native

    from r1vflow.models.families import internvl_chat as chat

    config = json.loads((src / "config.json").read_text())
    tokenizer = _load_tokenizer(src)
    image_id = tokenizer.get_vocab().get("<IMG_CONTEXT>")
    if image_id is None:
        raise ValueError(f"{src}: the tokenizer has no <IMG_CONTEXT> token: not an "
                         "internvl_chat tokenizer")
    native_config = InternVLConfig(**{k: v for k, v in chat.native_config(config, image_id)
                                      .items() if k != "model_type"})
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Native(native_config).state_dict().items()}
    source = _read_safetensors(src)
    native = chat.to_native(source, expected)
    _check_inverse(chat.to_chat(native), source, "internvl_chat")
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in native.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    native_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GotOcr2ImageProcessorPil(**chat.image_processor_config(config)).save_pretrained(out)
    return out


def _read_safetensors(src: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    source: dict[str, torch.Tensor] = {}
    for file in sorted(src.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            source.update({k: handle.get_tensor(k) for k in handle.keys()})  # noqa: SIM118
    return source


def _check_inverse(back: dict[str, torch.Tensor], source: dict[str, torch.Tensor],
                   what: str) -> None:
    if back.keys() != source.keys() or any(not torch.equal(back[k], source[k]) for k in source):
        raise RuntimeError(f"{what} conversion does not invert exactly; refusing it")


def load_intern_vit(src: Path, dtype: str = "float32"):
    """A standalone InternViT checkpoint (model_type `intern_vit_6b`, remote code) as
    transformers' `InternVLVisionModel` and InternVL's per-tile image processor (the square
    image_size, bicubic, ImageNet mean/std), without running its code: config.json and the
    safetensors are read as data and converted with internvl_chat's vision rules, verified both
    ways (every tensor used once, shapes, exact inverse)."""
    from transformers import GotOcr2ImageProcessorPil, InternVLVisionConfig, InternVLVisionModel

    from r1vflow.models.families import internvl_chat as chat

    raw = json.loads((src / "config.json").read_text())
    config = InternVLVisionConfig(**chat.vision_native_config(raw))
    with torch.device("meta"):
        model = InternVLVisionModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    source = _read_safetensors(src)
    native = chat.vision_to_native(source, expected)
    _check_inverse(chat.vision_to_standalone(native), source, "InternViT")
    model.load_state_dict({k: v.to(DTYPES[dtype]) for k, v in native.items()}, strict=True,
                          assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"InternVLVisionModel tensors not loaded from {src}: {left[:8]}")
    processor = GotOcr2ImageProcessorPil(**chat.image_processor_config({"vision_config": raw}))
    return model.eval(), processor


def import_composition(vision: str | Path, llm: str | Path, output: str | Path,
                       substitute: str | Path | None = None,
                       substitute_output: str | Path | None = None, dtype: str = "float32",
                       fingerprint: str = "") -> dict[str, Path]:
    """R1V's composition: vision tower (SigLIP / CLIP checkpoint, or a standalone InternViT
    converted to `InternVLVisionModel`) + new MLP projector + causal LM, saved as a llava model
    at `output`; with `substitute`, that LLM (same hidden size and tokenizer, checked) is saved
    at `substitute_output` for align_projector."""
    from r1vflow.models.families import read_config
    from r1vflow.models.io import save_model
    from r1vflow.models.vlm import assemble_vlm

    vision_dir, llm_dir = _check_source(vision), _check_source(llm)
    facts: dict[str, Any] = {}
    if read_config(vision_dir).get("model_type") == INTERN_VIT:
        tower, processor = load_intern_vit(vision_dir, dtype)
        facts["vision_converted_from"] = INTERN_VIT
    else:
        processor = _image_processor(vision_dir, None, None)
        tower = _load_vision(vision_dir, dtype)
    reasoning, tokenizer = _load_llm(llm_dir, dtype)
    vlm = assemble_vlm(tower, reasoning, tokenizer)
    setattr(vlm, PROCESSOR_ATTR, processor)
    facts.update({"source": {"vision": str(vision), "llm": str(llm)}, "family": "llava",
                  "source_files": {"vision": source_digests(vision_dir),
                                   "llm": source_digests(llm_dir)}})
    out = {"base_model": save_model(vlm, tokenizer, output, _metadata(facts, fingerprint))}
    if substitute is not None:
        if substitute_output is None:
            raise ValueError("a substitute LLM needs substitute_output (where to save it)")
        out["substitute_llm"] = _import_substitute(substitute, substitute_output, reasoning,
                                                   tokenizer, dtype, fingerprint)
    return out


def _import_substitute(substitute, output, reasoning, tokenizer, dtype: str,
                       fingerprint: str) -> Path:
    from r1vflow.models.io import save_model
    from r1vflow.models.transfer import check_same_tokenizer

    sub_dir = _check_source(substitute)
    llm, sub_tokenizer = _load_llm(sub_dir, dtype)
    check_same_tokenizer(tokenizer, sub_tokenizer, "the substitute LLM's tokenizer")
    if llm.config.hidden_size != reasoning.config.hidden_size:
        raise ValueError(f"the substitute LLM has hidden_size={llm.config.hidden_size} but the "
                         f"reasoning LLM {reasoning.config.hidden_size}: the projector trained "
                         "on one cannot move to the other")
    facts = {"source": str(substitute), "family": "causal_lm",
             "source_files": source_digests(sub_dir)}
    return save_model(llm, sub_tokenizer, output, _metadata(facts, fingerprint))


def _load_llm(directory: Path, dtype: str):
    """A causal LM and its tokenizer, checked and given `<image>` and R1V's tags."""
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(str(directory), dtype=DTYPES[dtype],
                                               use_safetensors=True, local_files_only=True)
    tokenizer = _load_tokenizer(directory)
    prepare_tokenizer(tokenizer, FAMILIES["llava"], llm.get_input_embeddings().num_embeddings,
                      None)
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer))
    return llm, tokenizer


def _load_vision(directory: Path, dtype: str):
    """The vision tower of a SigLIP / CLIP checkpoint (vision-only or dual encoder)."""
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    sub = getattr(config, "vision_config", None)
    cls = MODEL_MAPPING[type(sub)] if sub is not None else AutoModel
    return cls.from_pretrained(str(directory), dtype=DTYPES[dtype], use_safetensors=True,
                               local_files_only=True)
