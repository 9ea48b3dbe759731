"""Projector alignment: the transfer's compatibility checks and their errors, the transfer
itself, the sub-stage data selection, and the align_projector stage on micro models."""

from __future__ import annotations

import pytest
import torch

from r1vflow.data.schema import CaptionSample, Sample
from r1vflow.models.tokenizer import train_tokenizer
from r1vflow.models.transfer import check_same_tokenizer, language_model_of, transfer_projector
from r1vflow.models.vlm import assemble_vlm, build_tiny_llm, build_tiny_vision
from r1vflow.stages.common import read_metadata
from r1vflow.train.align import CAPTION_QUESTION, alignment_texts, subset

CORPUS = [
    "How many red circles are there? <think>red circle, red circle. 2 red circles.</think>"
    "<answer>2</answer>",
    "Describe the picture. a blue square top-left and a green triangle bottom-right.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def vlm_with(tokenizer, llm_hidden: int = 32, vocab: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    vision = build_tiny_vision(image_size=16, patch_size=8, hidden_size=32, num_layers=1,
                               num_heads=2)
    llm = build_tiny_llm(vocab or len(tokenizer), llm_hidden, 1, 2, 64,
                         max_position_embeddings=128)
    return assemble_vlm(vision, llm, tokenizer)


# --------------------------------------------------------------------------- compatibility


def test_same_tokenizer_passes_and_a_different_one_is_named(tokenizer):
    check_same_tokenizer(tokenizer, train_tokenizer(CORPUS, vocab_size=300), "the copy")
    other = train_tokenizer(["zebra quartz jukebox vexing " * 5] * 20, vocab_size=300)
    with pytest.raises(ValueError, match="the substitute's tokenizer (lacks|has)"):
        check_same_tokenizer(tokenizer, other, "the substitute's tokenizer")


def test_transfer_refuses_another_hidden_size(tokenizer):
    substitute = vlm_with(tokenizer, llm_hidden=32)
    reasoning = vlm_with(tokenizer, llm_hidden=48)
    with pytest.raises(ValueError, match="hidden size 32 but the new LLM has hidden_size=48"):
        transfer_projector(substitute, reasoning, tokenizer)


def test_transfer_refuses_another_vocabulary(tokenizer):
    substitute = vlm_with(tokenizer)
    reasoning = vlm_with(tokenizer, vocab=len(tokenizer) + 8)
    with pytest.raises(ValueError, match="vocab_size"):
        transfer_projector(substitute, reasoning, tokenizer)


def test_transfer_moves_the_projector_onto_the_reasoning_llm(tokenizer):
    substitute, reasoning = vlm_with(tokenizer, seed=1), vlm_with(tokenizer, seed=2)
    moved = transfer_projector(substitute, reasoning, tokenizer, source_tokenizer=tokenizer)
    for part, source in ((moved.model.multi_modal_projector, substitute.model.multi_modal_projector),
                         (moved.model.vision_tower, substitute.model.vision_tower),
                         (moved.model.language_model, reasoning.model.language_model),
                         (moved.lm_head, reasoning.lm_head)):
        for (name, a), (_, b) in zip(part.state_dict().items(), source.state_dict().items(),
                                     strict=True):
            assert torch.equal(a, b), name
    assert not torch.equal(moved.model.multi_modal_projector.linear_1.weight,
                           reasoning.model.multi_modal_projector.linear_1.weight)


def test_language_model_of_matches_the_vlm_on_text(tokenizer):
    vlm = vlm_with(tokenizer).eval()
    llm = language_model_of(vlm)
    ids = torch.tensor([tokenizer.encode("How many red circles are there?")])
    with torch.no_grad():
        assert torch.allclose(llm(input_ids=ids).logits, vlm(input_ids=ids).logits, atol=1e-5)


# --------------------------------------------------------------------------- data selection


def test_subset_sizes_are_fraction_then_limit():
    assert len(subset(10, 0.5, None, "s")) == 5
    assert len(subset(10, 0.5, 3, "s")) == 3
    assert len(subset(10, 0.01, None, "s")) == 1  # never empty
    assert sorted(subset(10, 1.0, None, "s")) == list(range(10))
    assert subset(10, 0.5, None, "s") == subset(10, 0.5, None, "s")
    assert subset(10, 0.5, None, "s") != subset(10, 0.5, None, "t")
    with pytest.raises(ValueError, match="fraction"):
        subset(10, 0.0, None, "s")


def test_alignment_texts_pick_train_captions_and_responses():
    captions = [CaptionSample(id="c1", split="train", image="images/a.png", caption="a red dot."),
                CaptionSample(id="c2", split="val", image="images/b.png", caption="a blue dot.")]
    sample = Sample(id="s1", family="counting", split="train", image="images/a.png",
                    question="How many?", reasoning="red dot. 1 red object.", answer="1", meta={})
    assert alignment_texts("captions", captions, [sample], 1.0, None, "s") == [
        (CAPTION_QUESTION, "a red dot.", "images/a.png")]
    assert alignment_texts("cot", captions, [sample], 1.0, None, "s") == [
        ("How many?", sample.response(), "images/a.png")]
    assert len(alignment_texts("all", captions, [sample], 1.0, None, "s")) == 2
    with pytest.raises(ValueError, match="no cot data"):
        alignment_texts("cot", captions, [], 1.0, None, "s")


# --------------------------------------------------------------------------- the stage


def test_stage_reports_the_three_steps_and_registers_the_aligned_model(micro_inputs):
    outcome = micro_inputs.run(
        "align_projector",
        {"base_model": "base_model", "substitute_llm": "substitute_llm", "dataset": "dataset"},
        {"model": "aligned"})
    for step in ("substitute", "transferred", "aligned"):
        assert outcome.metrics[f"val_loss/{step}"] > 0
        assert 0 <= outcome.metrics[f"val_accuracy/{step}"] <= 1
    assert {"train_loss/captions", "train_loss/cot", "train_loss/align"} <= set(outcome.metrics)
    assert outcome.model_version.startswith("micro-align-projector/")
    meta = read_metadata(outcome.model_dir)
    assert meta["parent"] == read_metadata(micro_inputs.root / "base_model")["model_version"]
    assert meta["extra"]["substitute_llm"] == "micro-bootstrap-substitute/1"
    assert "| transferred |" in outcome.report
