"""Resume of a 2-process DeepSpeed ZeRO-2 GRPO run (CPU, gloo): the torchrun job is SIGKILLed
after its step-2 checkpoint and started again; it resumes from DeepSpeed's sharded checkpoint
(every rank its own optimizer shard, sampler and SSB) and ends with the weights of an
uninterrupted run. This file is also the torchrun worker (`... test_resume_distributed.py
ROOT OUT`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 4


def _worker(root: Path, out: Path) -> None:
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
    from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy

    torch.set_num_threads(1)
    tokenizer = train_tokenizer(["How many red circles? <think>2 red.</think><answer>2</answer>"]
                                * 20, vocab_size=300)
    torch.manual_seed(0)
    model = assemble_vlm(build_tiny_vision(16, 8, 32, 1, 2),
                         build_tiny_llm(len(tokenizer), 32, 1, 2, 64, 128), tokenizer)
    set_trainable(model, {"projector", "llm"})
    questions = [f"How many objects of kind {i}?" for i in range(8)]
    ids = encode_vlm_prompts(tokenizer, questions, num_image_tokens(model))
    pixels = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    prompts = [GRPOPrompt(f"p{i}", ids[i], "2", q, pixels[i]) for i, q in enumerate(questions)]

    def even_length(completions, answers, **kw):
        time.sleep(float(os.environ.get("SLOW", "0")))  # lets the test kill between steps
        return [float(len(c) % 2 == 0) for c in completions]

    reward = hybrid_reward({"accuracy": even_length}, {"accuracy": 1.0})
    rollout = Rollout.transformers(model, tokenizer, max_new_tokens=6, temperature=1.0)
    ck = Checkpointer("grpo", root, CheckpointPolicy(every=2, keep=2))
    cfg = GRPOConfig(steps=STEPS, prompts_per_step=2, group_size=4, lr=1e-2,
                     backend="deepspeed", zero_stage=2, seed=0,
                     ssb=SSBConfig(capacity=32, max_age_steps=4, target_effective_ratio=0.75,
                                   max_replay_fraction=0.5))
    train_grpo(model, tokenizer, prompts, reward, rollout, cfg, progress=False,
               checkpoint=ck.phase("train"))
    final = torch.cat([p.detach().flatten() for p in model.parameters()])
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"params": final.tolist(),
                                   "resumed_from_step": ck.resumed_from_step}))
    dist.barrier()
    dist.destroy_process_group()


def _launch(root: Path, out: Path, slow: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", str(Path(__file__).resolve()), str(root), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLOW": str(slow)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and its ranks (torchrun starts them in sessions of their own)."""
    import psutil

    parent = psutil.Process(pid)
    for proc in [*parent.children(recursive=True), parent]:
        proc.send_signal(signal.SIGKILL)


@pytest.mark.slow
def test_two_process_zero2_grpo_killed_and_resumed(tmp_path):
    pytest.importorskip("deepspeed")
    ref = _launch(tmp_path / "ref-ck", tmp_path / "ref.json", 0.0)
    assert ref.wait(timeout=400) == 0, ref.stdout.read()[-3000:]
    job = _launch(tmp_path / "ck", tmp_path / "killed.json", 1.0)
    for line in job.stdout:
        if line.startswith("checkpoint: grpo step 2"):
            _kill_tree(job.pid)
            break
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL and not (tmp_path / "killed.json").exists()
    shards = list((tmp_path / "ck" / "step-000002" / "deepspeed" / "state").glob("*optim*"))
    assert len(shards) == 2  # ZeRO-2: one optimizer shard per rank
    again = _launch(tmp_path / "ck", tmp_path / "resumed.json", 0.0)
    assert again.wait(timeout=400) == 0, again.stdout.read()[-3000:]
    reference = json.loads((tmp_path / "ref.json").read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["resumed_from_step"] == 2
    assert resumed["params"] == reference["params"]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
