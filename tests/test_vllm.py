"""The vLLM generation engine against transformers, on every family vLLM serves.

Each family's tiny random checkpoint (built here in its published layout, imported as a run
would) is served by an in-process vLLM engine built empty and filled by the weight sync. The
weights are then perturbed and synced again, and vLLM's greedy completions of prompts with
images of two different sizes must equal transformers' `generate` token for token, with
per-token log-probabilities within LOGPROB_TOL of transformers' own (the independent
reference). vLLM is a requirement here: without it this module fails to import (CI installs it
with `make install`).
"""

from __future__ import annotations

import gc

import pytest
import torch
import vllm  # noqa: F401  (a missing vLLM is a failure, not a skip)

from r1vflow.config.generation import GenerationConfig
from r1vflow.generation import Sampling, TransformersEngine, WeightSyncError, build_engine
from r1vflow.generation.vllm_engine import collapse_runs, heap_freeze_kept
from r1vflow.generation.weights import NAME_MAPS, name_map, vllm_refusal
from r1vflow.models.families import encode_pixels
from r1vflow.models.families.fixtures import build_checkpoint, build_composition_parts
from r1vflow.models.families.images import stack_images
from r1vflow.models.generate import prompt_ids
from r1vflow.models.importer import import_checkpoint, import_composition
from r1vflow.models.io import load_model
from r1vflow.models.tokenizer import load_tokenizer, train_tokenizer
from r1vflow.models.vlm import build_tiny_llm

from conftest import random_image

# float32 on both sides; the largest gap seen was 3.5e-3 (Qwen2.5-VL, whose image processor
# resizes in vLLM's fast path); a wrong weight or a wrong image moves it by 0.1 or more.
LOGPROB_TOL = 1e-2
QUESTIONS = ["How many circles are there?", "What is 3 plus 4?"]
VLLM = GenerationConfig(backend="vllm", max_model_len=512)
FAMILIES = ("llava", "qwen2_5_vl", "qwen3_vl", "internvl")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """family -> imported model directory (llava: r1vflow's SigLIP + Qwen2 composition)."""
    root = tmp_path_factory.mktemp("vllm")
    made = {}
    for family in FAMILIES[1:]:
        made[family] = import_checkpoint(build_checkpoint(family, root / f"ckpt-{family}"),
                                         root / family)
    parts = build_composition_parts(root / "parts")
    made["llava"] = import_composition(parts["vision"], parts["llm"], root / "llava",
                                       substitute=parts["substitute"],
                                       substitute_output=root / "sub")["base_model"]
    return made


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def assert_same_greedy(vllm_engine, model, tokenizer, ids, images) -> float:
    """vLLM's greedy completions equal transformers'; returns the largest log-prob gap."""
    sampling = Sampling(max_new_tokens=16, logprobs=True)
    ours = vllm_engine.generate(ids, images, sampling)
    reference = TransformersEngine(model, tokenizer).generate(ids, images, sampling)
    gap = 0.0
    for got, want in zip(ours, reference, strict=True):
        assert got[0].token_ids == want[0].token_ids
        assert got[0].finished == want[0].finished
        diffs = [abs(a - b) for a, b in zip(got[0].logprobs, want[0].logprobs, strict=True)]
        gap = max(gap, *diffs)
    assert gap < LOGPROB_TOL
    return gap


@pytest.mark.parametrize("family", FAMILIES)
def test_synced_perturbed_weights_generate_as_transformers(served, family):
    model, tokenizer = load_model(served[family]).eval(), load_tokenizer(served[family])
    images = encode_pixels(model, [random_image(40, 56, 1), random_image(32, 32, 2)], 32)
    images = stack_images(list(images))
    ids = prompt_ids(tokenizer, QUESTIONS, images, model.config)
    engine = build_engine(VLLM, model, tokenizer, say=None)
    try:
        assert engine.backend == "vllm"
        assert_same_greedy(engine, model, tokenizer, ids, images)
        perturb(model, seed=1)
        before = engine.generate(ids, images, Sampling(16, logprobs=True))
        engine.sync(model)
        after = engine.generate(ids, images, Sampling(16, logprobs=True))
        moved = max(abs(a - b) for g, h in zip(before, after, strict=True)
                    for a, b in zip(g[0].logprobs, h[0].logprobs, strict=False))
        assert moved > 10 * LOGPROB_TOL  # the sync took effect: the engine's model changed
        assert_same_greedy(engine, model, tokenizer, ids, images)
    finally:
        engine.close()


def test_text_only_causal_lm_and_a_partial_sync(tmp_path):
    """A plain Qwen2 causal LM (GRPO on a text policy); a sync of only some parameters (GRPO
    pushes the trainable ones) takes effect and leaves the others as they were."""
    from r1vflow.data.synth import text_corpus

    tokenizer = train_tokenizer(text_corpus("reasoning", 200, 0), vocab_size=300)
    torch.manual_seed(0)
    llm = build_tiny_llm(len(tokenizer), 64, 2, 2, 128, max_position_embeddings=256).eval()
    ids = [tokenizer.encode(q, add_special_tokens=False) for q in QUESTIONS]
    engine = build_engine(GenerationConfig(backend="vllm"), llm, tokenizer, say=None)
    try:
        assert_same_greedy(engine, llm, tokenizer, ids, None)
        with torch.no_grad():
            llm.lm_head.weight.mul_(-1.0)
        engine.sync(llm, names=["lm_head.weight"])
        assert_same_greedy(engine, llm, tokenizer, ids, None)
    finally:
        engine.close()


def test_an_engine_keeps_the_processs_frozen_heap_and_leaves_its_own_objects_collectable():
    """The test workers froze their heap after collection (conftest), as the warm task server
    does: an engine's start and shutdown leave it frozen (vLLM's own shutdown unfreezes the
    whole heap), and the engine's objects are not frozen with it (vLLM's own start freezes the
    whole heap), so that gc frees them once the engine is closed."""
    tokenizer = train_tokenizer(["How many? <answer>2</answer>"] * 20, vocab_size=300)
    llm = build_tiny_llm(len(tokenizer), 64, 1, 2, 128, max_position_embeddings=256).eval()
    assert gc.get_freeze_count() > 0
    engine = build_engine(GenerationConfig(backend="vllm", max_model_len=128), llm, tokenizer,
                          say=None)
    frozen = gc.get_freeze_count()
    served_model = engine.llm.collective_rpc(_model_of)[0]
    # gc.get_objects() lists the tracked objects outside the permanent (frozen) generation
    assert any(o is served_model for o in gc.get_objects()), "the engine's model is frozen"
    del served_model
    engine.close()
    assert gc.get_freeze_count() >= frozen - 1000  # what was frozen stays (give or take deaths)


def _model_of(worker):
    return worker.model_runner.get_model()


def test_heap_freeze_kept_only_when_asked():
    freeze, unfreeze = gc.freeze, gc.unfreeze
    before = gc.get_freeze_count()
    fresh = [[] for _ in range(1000)]  # tracked objects that are not frozen yet
    with heap_freeze_kept(True):  # (frozen objects that die leave the count meanwhile)
        gc.freeze()
        assert gc.get_freeze_count() <= before
        gc.unfreeze()
        assert gc.get_freeze_count() >= before - 100
    assert (gc.freeze, gc.unfreeze) == (freeze, unfreeze)
    with heap_freeze_kept(False):
        gc.freeze()
    assert gc.get_freeze_count() >= before + len(fresh)


def test_a_name_no_table_places_fails_naming_it(served):
    model, tokenizer = load_model(served["llava"]), load_tokenizer(served["llava"])
    engine = build_engine(VLLM, model, tokenizer, say=None)
    try:
        model.register_parameter("value_head_weight", torch.nn.Parameter(torch.zeros(3)))
        with pytest.raises(WeightSyncError, match="'value_head_weight'"):
            engine.sync(model)
        renamed = name_map(model.config)("model.vision_tower.embeddings.patch_embedding.weight")
        assert renamed == "vision_tower.vision_model.embeddings.patch_embedding.weight"
    finally:
        engine.close()


def test_name_tables_and_refusals_by_hand():
    assert NAME_MAPS["llava"]("model.language_model.layers.0.mlp.up_proj.weight") == \
        "language_model.model.layers.0.mlp.up_proj.weight"
    assert NAME_MAPS["llava"]("lm_head.weight") == "language_model.lm_head.weight"
    assert NAME_MAPS["qwen2_5_vl"]("model.visual.blocks.0.attn.qkv.weight") == \
        "model.visual.blocks.0.attn.qkv.weight"
    with pytest.raises(WeightSyncError, match="'visual.x'"):
        NAME_MAPS["qwen3_vl"]("visual.x")
    internvit = {"model_type": "llava", "vision_config": {"model_type": "internvl_vision"},
                 "text_config": {"hidden_size": 64, "num_attention_heads": 2}}
    assert "not 'internvl_vision'" in vllm_refusal(internvit, on_cpu=True)
    tiny_heads = {"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 4}
    assert "not this LLM's 8" in vllm_refusal(tiny_heads, on_cpu=True)
    assert vllm_refusal(tiny_heads, on_cpu=False) is None
    assert vllm_refusal({"model_type": "gemma3"}, on_cpu=True).startswith("r1vflow has no")


def test_collapse_runs_leaves_one_placeholder_per_image():
    assert collapse_runs([1, 7, 7, 7, 2, 7, 7, 3], token=7) == [1, 7, 2, 7, 3]
    assert collapse_runs([1, 5, 7, 7, 6, 3], token=7, drop=(5, 6)) == [1, 7, 3]
    assert collapse_runs([1, 2, 3], token=None) == [1, 2, 3]


# --------------------------------------------------------------------------- rollout check


@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_check_passes_after_a_perturbed_sync(served, family, tmp_path):
    import json

    from typer.testing import CliRunner

    from r1vflow.cli import app

    out = tmp_path / "check.json"
    result = CliRunner().invoke(app, ["rollout", "check", str(served[family]), "--perturb",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "rollout check passed" in result.output
    report = json.loads(out.read_text())
    assert report["family"] == family and report["perturbed"] is True
    assert report["greedy_match"] == 1.0 and report["logprob_gap_max"] <= LOGPROB_TOL
    assert report["prompts"] == 6  # four with images of four sizes, two text-only


def test_rollout_check_names_a_weight_it_cannot_map(served, monkeypatch):
    """A table that lost a prefix (as when a transformers release renames keys): the check
    fails in one line naming the weight, exit 2."""
    from typer.testing import CliRunner

    from r1vflow.cli import app
    from r1vflow.generation import weights

    table = weights.NAME_MAPS["qwen2_5_vl"]
    renamed = weights.NameMap("qwen2_5_vl", tuple(r for r in table.rules
                                                   if r[0] != "model.visual."))
    monkeypatch.setitem(weights.NAME_MAPS, "qwen2_5_vl", renamed)
    result = CliRunner().invoke(app, ["rollout", "check", str(served["qwen2_5_vl"])])
    assert result.exit_code == 2, result.output
    assert "rollout check: weight sync (qwen2_5_vl): no rule places the policy parameter " \
           "'model.visual." in result.output


def test_same_seed_same_samples_and_the_callers_rng_untouched(served):
    model, tokenizer = load_model(served["llava"]).eval(), load_tokenizer(served["llava"])
    images = stack_images(list(encode_pixels(model, [random_image(32, 32, 3)] * 2, 32)))
    ids = prompt_ids(tokenizer, QUESTIONS, images, model.config)
    engine = build_engine(VLLM, model, tokenizer, say=None)
    try:
        def tokens(seed):
            groups = engine.generate(ids, images, Sampling(12, temperature=1.0, n=4, seed=seed))
            return [[c.token_ids for c in g] for g in groups]

        state = torch.random.get_rng_state()
        first = tokens(7)
        assert first == tokens(7)
        assert first != tokens(8)
        assert len({tuple(t) for t in first[0]}) > 1  # the n samples of a prompt differ
        assert torch.equal(torch.random.get_rng_state(), state)
    finally:
        engine.close()

