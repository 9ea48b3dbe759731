"""The transformers generation engine under GRPO's rollouts: padding/trimming helpers, shapes,
determinism, greedy mode, bad requests (the vLLM engine: tests/test_vllm.py)."""

import pytest
import torch

from r1vflow.generation import GenerationEngine, Sampling, TransformersEngine
from r1vflow.models.tokenizer import train_tokenizer
from r1vflow.models.vlm import assemble_vlm, build_tiny_llm, build_tiny_vision, num_image_tokens
from r1vflow.rl.batch import encode_vlm_prompts
from r1vflow.rl.rollout import Rollout, left_pad, trim_completion

CORPUS = [
    "How many red circles are there? <think>red circle, red circle. 2 red circles.</think>"
    "<answer>2</answer>",
    "What is the sum of the two digits? <think>3 + 4 = 7.</think><answer>7</answer>",
] * 20
QUESTIONS = ["How many red circles are there?", "What is the sum of the two digits?", "Sum?"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def vlm(tokenizer):
    torch.manual_seed(0)
    vision = build_tiny_vision(image_size=16, patch_size=8, hidden_size=32, num_layers=1,
                               num_heads=2)
    llm = build_tiny_llm(len(tokenizer), 32, 1, 2, 64, max_position_embeddings=128)
    return assemble_vlm(vision, llm, tokenizer)


def rollout(model, tokenizer, temperature=1.0):
    return Rollout.transformers(model, tokenizer, max_new_tokens=6, temperature=temperature,
                                batch_size=2)


def test_left_pad_hand_values():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_id=0)


def test_trim_completion_keeps_eos_and_drops_padding():
    assert trim_completion([4, 5, 2, 9, 2], eos_id=2, pad_id=0) == ([4, 5, 2], True)
    assert trim_completion([4, 5, 0, 0], eos_id=2, pad_id=0) == ([4, 5], False)
    assert trim_completion([4, 5, 6], eos_id=2, pad_id=0) == ([4, 5, 6], False)


def test_vlm_groups_have_the_requested_shape(vlm, tokenizer):
    backend = rollout(vlm, tokenizer)
    assert isinstance(backend.engine, GenerationEngine)
    ids = encode_vlm_prompts(tokenizer, QUESTIONS, num_image_tokens(vlm))
    groups = backend.generate(ids, torch.randn(3, 3, 16, 16), num_samples=4, seed=0)
    assert [len(g) for g in groups] == [4, 4, 4]  # batch_size 2: two generate calls
    for c in (c for g in groups for c in g):
        assert 1 <= c.num_tokens <= 6
        assert vlm.config.image_token_id not in c.token_ids
        assert tokenizer.pad_token_id not in c.token_ids
        assert c.finished == (c.token_ids[-1] == tokenizer.eos_token_id)
        assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_same_seed_same_completions_other_seed_differs(vlm, tokenizer):
    backend = rollout(vlm, tokenizer)
    ids = encode_vlm_prompts(tokenizer, QUESTIONS, num_image_tokens(vlm))
    pixels = torch.randn(3, 3, 16, 16)

    def tokens(seed):
        return [[c.token_ids for c in g] for g in backend.generate(ids, pixels, 3, seed)]

    state = torch.random.get_rng_state()
    assert tokens(7) == tokens(7)
    assert tokens(7) != tokens(8)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched


def test_text_only_policy_and_greedy_mode(tokenizer):
    torch.manual_seed(0)
    llm = build_tiny_llm(len(tokenizer), 32, 1, 2, 64, max_position_embeddings=128)
    ids = [tokenizer.encode(q, add_special_tokens=False) for q in QUESTIONS]
    sampled = rollout(llm, tokenizer).generate(ids, None, num_samples=2, seed=0)
    assert [len(g) for g in sampled] == [2, 2, 2]
    greedy = TransformersEngine(llm, tokenizer, batch_size=2)
    first = greedy.generate(ids, None, Sampling(6, temperature=0.0, seed=0))
    again = greedy.generate(ids, None, Sampling(6, temperature=0.0, seed=123))
    assert [g[0].token_ids for g in first] == [g[0].token_ids for g in again]
    with pytest.raises(ValueError, match="n=1"):
        Sampling(6, temperature=0.0, n=2)


def test_bad_requests_are_rejected(vlm, tokenizer):
    backend = rollout(vlm, tokenizer)
    ids = encode_vlm_prompts(tokenizer, QUESTIONS, num_image_tokens(vlm))
    with pytest.raises(ValueError, match="3 prompts but images for 2"):
        backend.generate(ids, torch.randn(2, 3, 16, 16), 2, seed=0)
    with pytest.raises(ValueError, match="no prompts"):
        backend.generate([], None, 2, seed=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        rollout(vlm, tokenizer, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        Sampling(6, temperature=-1.0)


def test_transformers_logprobs_are_the_trainers(vlm, tokenizer):
    """The engine's per-token log-probabilities equal a forward pass over prompt + completion
    (what the GRPO loss computes), so the rollout/trainer gap measures only the backend."""
    from r1vflow.rl.batch import completion_logprobs, sequence_batch

    ids = encode_vlm_prompts(tokenizer, QUESTIONS, num_image_tokens(vlm))
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    engine = TransformersEngine(vlm, tokenizer, batch_size=3)
    groups = engine.generate(ids, pixels, Sampling(6, temperature=1.0, n=2, seed=4, logprobs=True))
    rows = [c for g in groups for c in g]
    batch = sequence_batch([ids[i // 2] for i in range(6)], [c.token_ids for c in rows],
                           tokenizer.pad_token_id)
    with torch.no_grad():
        trainer = completion_logprobs(vlm.eval(), batch, pixels.repeat_interleave(2, dim=0))
    for i, c in enumerate(rows):
        assert len(c.logprobs) == c.num_tokens
        assert torch.allclose(torch.tensor(c.logprobs), trainer[i, :c.num_tokens], atol=1e-4)
