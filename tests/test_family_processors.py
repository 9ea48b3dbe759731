"""With torchvision installed (vLLM's environment), transformers' own Processor classes of the
Qwen-VL families import. r1vflow still writes a prompt's image tokens itself from the slow
image processor's output (docs/models.md): here the family's own Processor is the independent
reference, and both must give the same token ids for the same chat, image and question."""

from __future__ import annotations

import pytest
import transformers

from r1vflow.models.families import encode_pixels
from r1vflow.models.families.fixtures import build_checkpoint
from r1vflow.models.families.images import stack_images
from r1vflow.models.generate import prompt_ids
from r1vflow.models.importer import import_checkpoint
from r1vflow.models.io import load_model
from r1vflow.models.tokenizer import load_tokenizer

from conftest import random_image

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_our_image_tokens_equal_the_family_processors(family, tmp_path):
    directory = import_checkpoint(build_checkpoint(family, tmp_path / "ckpt"), tmp_path / "m")
    model, tokenizer = load_model(directory), load_tokenizer(directory)
    pictures = [random_image(40, 96, 1), random_image(56, 28, 2)]
    processor = transformers.AutoProcessor.from_pretrained(directory)
    for picture in pictures:
        ours = prompt_ids(tokenizer, ["How many?"],
                          stack_images(list(encode_pixels(model, [picture], 32))),
                          model.config)[0]
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": PLACEHOLDER + "\nHow many?"}], tokenize=False,
            add_generation_prompt=True)
        theirs = processor(text=[chat], images=[picture], return_tensors="pt")["input_ids"][0]
        assert ours == theirs.tolist()
        assert ours.count(model.config.image_token_id) > 1  # the image was expanded
