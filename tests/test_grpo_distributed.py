"""2-process GRPO runs on CPU (gloo), started with torchrun from the test: DeepSpeed ZeRO-2,
the torch backend (DistributedDataParallel), and DeepSpeed ZeRO-3 with vLLM rollouts (each rank
colocates its own vLLM engine; every sync gathers the partitioned parameters module by module).

Each rank draws its own prompts and samples its own groups, so the ranks' losses differ; the
engine averages the gradients, so after the steps every rank must hold the same weights, and
they must have moved. This file is also the torchrun worker (`python -m torch.distributed.run
... tests/test_grpo_distributed.py OUT BACKEND`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = 2


def _worker(out: Path, backend: str) -> None:
    import torch
    import torch.distributed as dist

    from r1vflow.config import GRPOConfig, SSBConfig
    from r1vflow.models.tokenizer import train_tokenizer
    from r1vflow.models.vlm import (
        assemble_vlm,
        build_tiny_llm,
        build_tiny_vision,
        num_image_tokens,
        set_trainable,
    )
    from r1vflow.rl.batch import encode_vlm_prompts
    from r1vflow.rl.grpo import GRPOPrompt, train_grpo
    from r1vflow.rl.rewards import hybrid_reward
    from r1vflow.rl.rollout import Rollout

    if backend == "zero3-vllm":
        from r1vflow.config.generation import GenerationConfig
        from r1vflow.generation import Sampling, TransformersEngine, build_engine
    torch.set_num_threads(1)
    tokenizer = train_tokenizer(["How many red circles? <think>2 red.</think><answer>2</answer>"]
                                * 20, vocab_size=300)
    torch.manual_seed(0)  # same initial weights on every rank
    vision = build_tiny_vision(16, 8, 32, 1, 2)
    model = assemble_vlm(vision, build_tiny_llm(len(tokenizer), 64, 1, 2, 128, 128), tokenizer)
    set_trainable(model, {"projector", "llm"})
    initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    questions = [f"How many objects of kind {i}?" for i in range(8)]
    ids = encode_vlm_prompts(tokenizer, questions, num_image_tokens(model))
    # pixels of uint8 images (what the vLLM engine's images round-trip to exactly)
    pixels = torch.randint(0, 256, (8, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    pixels = pixels.float() / 127.5 - 1.0
    prompts = [GRPOPrompt(f"p{i}", ids[i], "2", q, pixels[i]) for i, q in enumerate(questions)]

    def even_length(completions, answers, **kw):
        return [float(len(c) % 2 == 0) for c in completions]

    reward = hybrid_reward({"accuracy": even_length}, {"accuracy": 1.0})
    zero3 = backend == "zero3-vllm"
    if zero3:
        engine = build_engine(GenerationConfig(backend="vllm", max_model_len=128), model,
                              tokenizer, say=None)
        rollout = Rollout(engine, max_new_tokens=6, temperature=1.0)
    else:
        rollout = Rollout.transformers(model, tokenizer, max_new_tokens=6, temperature=1.0)
    cfg = GRPOConfig(steps=STEPS, prompts_per_step=2, group_size=4, lr=1e-2,
                     backend="torch" if backend == "torch" else "deepspeed",
                     zero_stage={"torch": 0, "deepspeed": 2}.get(backend, 3), seed=0,
                     ssb=SSBConfig(capacity=32, max_age_steps=4, target_effective_ratio=0.75,
                                   max_replay_fraction=0.5))
    result = train_grpo(model, tokenizer, prompts, reward, rollout, cfg, progress=False)
    served = None
    if zero3:  # the engine serves the weights of the last step (the model holds them again)
        sampling = Sampling(8, logprobs=True)
        got = rollout.engine.generate(ids, pixels, sampling)
        want = TransformersEngine(model, tokenizer).generate(ids, pixels, sampling)
        served = {"same_greedy": [g[0].token_ids == w[0].token_ids for g, w in zip(got, want, strict=True)],
                  "gap": max(abs(a - b) for g, w in zip(got, want, strict=True)
                             for a, b in zip(g[0].logprobs, w[0].logprobs, strict=False)),
                  "syncs": result.summary["weight_syncs"]}
        rollout.engine.close()
    final = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(final) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, final)
    losses = [torch.zeros(STEPS, dtype=torch.float64) for _ in gathered]
    dist.all_gather(losses, torch.tensor([h["loss"] for h in result.history],
                                         dtype=torch.float64))
    every_rank = [None] * dist.get_world_size()
    dist.all_gather_object(every_rank, served)
    if dist.get_rank() == 0:
        out.write_text(json.dumps({
            "world": dist.get_world_size(),
            "max_param_diff": max(float((g - final).abs().max()) for g in gathered),
            "moved": float((final - initial).abs().max()),
            "losses": [t.tolist() for t in losses],
            "steps": len(result.history),
            "effective_after": [h["effective_ratio_after"] for h in result.history],
            "served": every_rank,
        }))
    dist.barrier()
    # Without this, gloo's worker threads can outlive the interpreter and abort the process at
    # exit ("terminate called without an active exception"), as `launch.run_worker` also avoids.
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["deepspeed", "torch", "zero3-vllm"])
def test_two_process_grpo_steps(tmp_path, backend):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", str(Path(__file__).resolve()), str(out), backend]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["steps"] == STEPS
    assert result["max_param_diff"] == 0.0  # gradients were averaged: one model on both ranks
    assert result["moved"] > 0.0
    assert result["losses"][0] != result["losses"][1]  # the ranks trained on different samples
    if backend == "zero3-vllm":  # each rank's engine serves exactly the gathered weights
        for served in result["served"]:
            assert served["syncs"] == STEPS + 1  # the first full one, then one per step
            assert all(served["same_greedy"]), served
            assert served["gap"] < 1e-4, served


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2])
