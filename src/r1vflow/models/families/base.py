"""What r1vflow needs to know about one VLM family, as data: the `Family` record.

A family names the transformers class that loads it, the `model_type` values of its
`config.json`, how its parameters split into R1V's three parts (vision encoder, projector,
LLM: the names `trainable` uses) and the text that stands for an image in a prompt (Llava's
`<image>` x n, Qwen-VL's `<|vision_start|><|image_pad|>x n<|vision_end|>`, InternVL's
`<img><IMG_CONTEXT>x n</img>`). The records live in `r1vflow.models.families.FAMILIES`; nothing
here imports transformers or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTS: frozenset[str] = frozenset({"vision", "projector", "llm"})


@dataclass(frozen=True)
class Family:
    """One VLM family.

    parts: (parameter-name prefix, part) pairs, the first matching prefix wins; every parameter
        of a model of this family must match one (`part_of` raises otherwise).
    image_open / image_pad / image_close: an image of n tokens is written in the prompt as
        image_open + image_pad * n + image_close; image_pad is the token the model replaces
        with the image's features (its config's image_token_id).
    processor: how images become model inputs: "siglip" (one fixed-size image, `[3,S,S]`),
        "qwen_vl" (dynamic resolution: flattened patches + image_grid_thw) or "got_ocr2"
        (InternVL's 448px tiles).
    """

    name: str
    model_class: str
    model_types: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    image_pad: str
    processor: str
    image_open: str = ""
    image_close: str = ""

    def part_of(self, parameter: str) -> str:
        """The part ("vision", "projector", "llm") a parameter name belongs to."""
        for prefix, part in self.parts:
            if parameter.startswith(prefix):
                return part
        raise ValueError(f"{self.name}: parameter {parameter!r} belongs to no part; known "
                         f"prefixes: {[p for p, _ in self.parts]}")

    def placeholder(self, n_tokens: int) -> str:
        """The prompt text of one image that the model expands to `n_tokens` features."""
        if n_tokens < 1:
            raise ValueError(f"an image needs at least one token, got {n_tokens}")
        return self.image_open + self.image_pad * n_tokens + self.image_close

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The image marker tokens its tokenizer must hold as single ids."""
        return tuple(t for t in (self.image_open, self.image_pad, self.image_close) if t)


_LLM = (("model.language_model.", "llm"), ("lm_head.", "llm"))

LLAVA = Family(
    name="llava", model_class="LlavaForConditionalGeneration", model_types=("llava",),
    parts=(("model.vision_tower.", "vision"), ("model.multi_modal_projector.", "projector"),
           *_LLM),
    image_pad="<image>", processor="siglip")
QWEN2_5_VL = Family(
    name="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration",
    model_types=("qwen2_5_vl",),
    parts=(("model.visual.merger.", "projector"), ("model.visual.", "vision"), *_LLM),
    image_open="<|vision_start|>", image_pad="<|image_pad|>", image_close="<|vision_end|>",
    processor="qwen_vl")
QWEN3_VL = Family(
    name="qwen3_vl", model_class="Qwen3VLForConditionalGeneration", model_types=("qwen3_vl",),
    parts=(("model.visual.merger.", "projector"),
           ("model.visual.deepstack_merger_list.", "projector"),
           ("model.visual.", "vision"), *_LLM),
    image_open="<|vision_start|>", image_pad="<|image_pad|>", image_close="<|vision_end|>",
    processor="qwen_vl")
INTERNVL = Family(
    name="internvl", model_class="InternVLForConditionalGeneration", model_types=("internvl",),
    parts=(("model.vision_tower.", "vision"), ("model.multi_modal_projector.", "projector"),
           *_LLM),
    image_open="<img>", image_pad="<IMG_CONTEXT>", image_close="</img>", processor="got_ocr2")
# The remote-code layout of Skywork-R1V/R1V2 and OpenGVLab's InternVL-Chat. It is never loaded
# as such: import converts it into INTERNVL (r1vflow.models.families.internvl_chat).
INTERNVL_CHAT = Family(
    name="internvl_chat", model_class="InternVLForConditionalGeneration",
    model_types=("internvl_chat",),
    parts=(("vision_model.", "vision"), ("mlp1.", "projector"), ("language_model.", "llm")),
    image_open="<img>", image_pad="<IMG_CONTEXT>", image_close="</img>", processor="got_ocr2")

# Families a whole-VLM checkpoint can be imported from (llava is assembled from parts).
FAMILIES_WITH_CHECKPOINTS: tuple[str, ...] = ("qwen2_5_vl", "qwen3_vl", "internvl",
                                              "internvl_chat")
