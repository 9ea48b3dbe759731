"""The torch backend over 2 ranks (torchrun, gloo on CPU) is DistributedDataParallel: it trains
the same model as one process on the same global batch.

Why the numbers must agree (hand reasoning, as for the DeepSpeed-vs-torch test in
test_train.py): `train_sft` (r1vflow.train.loop) gives rank r the items r::2 of each global
batch of 4. Every item of `items()` has the same number n of response tokens (asserted below),
so one process's loss is the mean over 4n tokens = the mean of the two ranks' losses over 2n
tokens each, and its gradient is the mean of the ranks' gradients, which is what DDP's
all-reduce averages (with unequal token counts the loop weighs each rank's loss by its share of
the batch's tokens first). Same gradient, same clipping (the averaged norm), same AdamW update
on both ranks: the 2-rank weights equal each other exactly and the 1-rank weights up to float
summation order. The loop reports each step's loss as the token-weighted mean over the ranks:
one process's loss, on both ranks. This file is also the torchrun worker
(`python -m torch.distributed.run ... tests/test_ddp.py OUT CKPT`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import CORPUS, items, tiny_vlm

SFT = {"epochs": 2, "batch_size": 4, "lr": 3e-3, "weight_decay": 0.01, "warmup_ratio": 0.1,
       "max_length": 64, "seed": 0, "progress": False}


def _sft(tokenizer, backend="torch", checkpoint=None):
    from r1vflow.models.vlm import set_trainable
    from r1vflow.train.sft import SFTSettings, train_sft

    model = tiny_vlm(tokenizer)
    set_trainable(model, {"projector", "llm"})
    seen: list[dict] = []
    result = train_sft(model, tokenizer, items(), SFTSettings(backend=backend, **SFT),
                       on_step=lambda s, m: seen.append(m), checkpoint=checkpoint)
    assert seen == result.history
    return model, seen, result.items


def _worker(out: Path, ck_root: Path) -> None:
    import torch.distributed as dist

    from r1vflow.models.tokenizer import train_tokenizer
    from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy
    from r1vflow.train.engine import TrainEngine

    torch.set_num_threads(1)
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    ck = Checkpointer("sft", ck_root, CheckpointPolicy(every=2, keep=1))
    model, seen, trained = _sft(tokenizer, checkpoint=ck.phase("train"))
    # the engine (DDP) was released: the model is the plain module again
    assert not isinstance(model, torch.nn.parallel.DistributedDataParallel)
    wrapped = TrainEngine(model, 1e-3, 0.0, 0.0, 1)
    is_ddp = isinstance(wrapped.model, torch.nn.parallel.DistributedDataParallel)
    assert wrapped.module is model and wrapped.release() is model
    final = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(final) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, final)
    per_rank = torch.tensor([[m["loss"], m["grad_norm"], trained] for m in seen],
                            dtype=torch.float64)
    everyone = [torch.zeros_like(per_rank) for _ in gathered]
    dist.all_gather(everyone, per_rank)
    if dist.get_rank() == 0:
        out.write_text(json.dumps({
            "world": dist.get_world_size(), "ddp": is_ddp,
            "max_param_diff": max(float((g - final).abs().max()) for g in gathered),
            "params": final.tolist(), "per_rank": [t.tolist() for t in everyone]}))
    dist.barrier()
    dist.destroy_process_group()  # gloo's threads must not outlive the interpreter


def _launch(out: Path, ck_root: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", str(Path(__file__).resolve()), str(out), str(ck_root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_two_rank_torch_ddp_sft_equals_one_process(tmp_path):
    from r1vflow.models.processing import IGNORE_INDEX, encode_sft_batch
    from r1vflow.models.tokenizer import train_tokenizer
    from r1vflow.models.vlm import num_image_tokens
    from r1vflow.train.sft import eval_loss

    torch.set_num_threads(1)
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    n_image = num_image_tokens(tiny_vlm(tokenizer))
    counts = {int((encode_sft_batch(tokenizer, [(q, r)], n_image, 64)["labels"] != IGNORE_INDEX)
                  .sum()) for q, r, _ in items()}
    assert len(counts) == 1  # every item has as many response tokens: the reasoning holds
    out = tmp_path / "result.json"
    _launch(out, tmp_path / "ck")
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["ddp"]
    assert result["max_param_diff"] == 0.0  # gradients were averaged: one model on both ranks

    single, seen, trained = _sft(tokenizer)  # one process, the same global batches of 4
    rank0, rank1 = (torch.tensor(r) for r in result["per_rank"])
    assert rank0.shape == (len(seen), 3) == (4, 3)
    assert trained == 16 and rank0[0, 2] == rank1[0, 2] == 8  # each rank: half of each batch
    assert torch.equal(rank0[:, 0], rank1[:, 0])  # the loss: the mean over the ranks
    losses = [m["loss"] for m in seen]
    assert rank0[:, 0].tolist() == pytest.approx(losses, rel=1e-5)
    norms = [m["grad_norm"] for m in seen]  # clipping saw the averaged gradient on each rank
    assert rank0[:, 1].tolist() == pytest.approx(norms, rel=1e-4)
    assert rank1[:, 1].tolist() == pytest.approx(norms, rel=1e-4)
    expected = torch.cat([p.detach().flatten() for p in single.parameters()])
    torch.testing.assert_close(torch.tensor(result["params"]), expected, rtol=0, atol=1e-5)
    moved = (expected - torch.cat([p.detach().flatten() for p in tiny_vlm(tokenizer)
                                   .parameters()])).abs().max()
    assert moved > 1e-3  # the comparison is not between two untrained models

    # rank 0 alone wrote the engine state; each rank its loop state (r1vflow.train.checkpoint)
    step = tmp_path / "ck" / "step-000004"
    assert sorted(p.name for p in (tmp_path / "ck").glob("step-*")) == [step.name]
    assert {"engine.pt", "loop-rank0.pt", "loop-rank1.pt"} <= {p.name for p in step.iterdir()}
    state = torch.load(step / "engine.pt", map_location="cpu", weights_only=True)
    assert state["steps_done"] == 4
    restored = tiny_vlm(tokenizer)
    restored.load_state_dict(state["model"])  # the module's keys, no DDP "module." prefix
    torch.testing.assert_close(torch.cat([p.detach().flatten() for p in restored.parameters()]),
                               torch.tensor(result["params"]), rtol=0, atol=0)
    assert eval_loss(single, tokenizer, items(), 4, 64) < eval_loss(
        tiny_vlm(tokenizer), tokenizer, items(), 4, 64)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
