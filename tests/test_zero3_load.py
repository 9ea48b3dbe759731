"""A pretrained checkpoint loads under ZeRO-3 without any rank materialising the whole model
(transformers' DeepSpeed integration: `HfDeepSpeedConfig` alive around `from_pretrained`, so the
model is built under `deepspeed.zero.Init`), and SFT under ZeRO-3 from that load trains the
same model as one process with the torch backend.

2 ranks, CPU, gloo, on a tiny random-weight Qwen2.5-VL checkpoint saved with save_pretrained
and imported. What each rank must hold, by hand: DeepSpeed splits the flattened parameter of n
elements into world = 2 partitions of ceil(n / 2) elements (the last one zero-padded), rank r
holding flat[r * ceil(n/2) : (r + 1) * ceil(n/2)]; the parameter itself is an empty tensor
(numel 0) with `ds_numel` = n and `ds_shape` = its shape. The values are checked against the
safetensors file itself, so they are the checkpoint's, not a fresh random init. For the SFT
equivalence the reasoning of tests/test_ddp.py holds: every item has as many response tokens,
each rank trains on half of each global batch of 4, ZeRO averages the gradients, and the loop
reports each step's loss as the mean over the ranks (one process's loss). This file is
also the torchrun worker (`... tests/test_zero3_load.py MODEL_DIR OUT`).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SFT = {"epochs": 2, "batch_size": 4, "lr": 3e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
       "max_length": 256, "seed": 0, "progress": False}


def _items(model):
    from PIL import Image

    from r1vflow.models.families import encode_pixels

    rng = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=rng,
                                            dtype=torch.uint8).numpy(), mode="RGB")
              for _ in range(4)]
    pixels = encode_pixels(model, images, 32)  # every image 32x32: the same number of tokens
    return [(f"How many circles? ({i})", f"<think>I count {i}.</think><answer>{i}</answer>",
             pixels[i]) for i in range(4)]


def _sft(model, tokenizer, backend, zero_stage):
    from r1vflow.models.vlm import set_trainable
    from r1vflow.train.sft import SFTSettings, train_sft

    set_trainable(model, {"projector", "llm"})
    seen: list[float] = []
    result = train_sft(model, tokenizer, _items(model),
                       SFTSettings(backend=backend, zero_stage=zero_stage, **SFT),
                       on_step=lambda s, m: seen.append(m["loss"]))
    return seen, result.items


def _worker(model_dir: Path, out: Path) -> None:
    import torch.distributed as dist

    from r1vflow.models.io import load_model
    from r1vflow.models.tokenizer import load_tokenizer
    from r1vflow.models.vlm import part_sizes
    from r1vflow.train.engine import zero3_load_config

    torch.set_num_threads(1)
    config = zero3_load_config("deepspeed", 3, SFT["lr"], SFT["weight_decay"])
    model = load_model(model_dir, "vlm", zero3=config)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = {name: {"numel": param.numel(), "ds_numel": param.ds_numel,
                    "ds_shape": list(param.ds_shape), "partition": param.ds_tensor.detach().clone()}
             for name, param in model.named_parameters()}
    torch.save(local, out.with_name(f"rank{rank}.pt"))
    sizes = part_sizes(model)  # counts the full sizes (ds_numel), not the empty local tensors
    losses, trained = _sft(model, load_tokenizer(model_dir), "deepspeed", 3)
    final = torch.cat([p.detach().flatten() for p in model.parameters()])  # gathered back
    gathered = [torch.zeros_like(final) for _ in range(world)]
    dist.all_gather(gathered, final)
    everyone = [torch.zeros(len(losses) + 1, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(everyone, torch.tensor([*losses, trained], dtype=torch.float64))
    if rank == 0:
        out.write_text(json.dumps({
            "world": world, "part_sizes": sizes, "losses": [t.tolist()[:-1] for t in everyone],
            "items": [int(t[-1]) for t in everyone],
            "max_param_diff": max(float((g - final).abs().max()) for g in gathered),
            "params": final.tolist()}))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_zero3_load_partitions_and_sft_equals_one_process(tmp_path):
    pytest.importorskip("deepspeed")
    from r1vflow.models.families.fixtures import build_checkpoint
    from r1vflow.models.importer import import_checkpoint
    from r1vflow.models.io import load_model
    from r1vflow.models.tokenizer import load_tokenizer
    from r1vflow.models.vlm import part_sizes
    from r1vflow.train.sft import _encode

    torch.set_num_threads(1)
    model_dir = import_checkpoint(build_checkpoint("qwen2_5_vl", tmp_path / "src"),
                                  tmp_path / "model")
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", str(Path(__file__).resolve()), str(model_dir), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())

    whole = load_model(model_dir)  # one process, no DeepSpeed: the full model, as saved
    assert result["world"] == 2 and result["part_sizes"] == part_sizes(whole)
    held = [0, 0]
    for rank in range(2):
        local = torch.load(out.with_name(f"rank{rank}.pt"), weights_only=True)
        assert set(local) == {name for name, _ in whole.named_parameters()}
        for name, param in whole.named_parameters():
            n, got = param.numel(), local[name]
            part = math.ceil(n / 2)
            assert got["numel"] == 0 and got["ds_numel"] == n, name  # nothing whole locally
            assert got["ds_shape"] == list(param.shape), name
            assert got["partition"].numel() == part, (name, got["partition"].numel(), part)
            mine = param.detach().flatten()[rank * part:(rank + 1) * part]
            assert torch.equal(got["partition"][:mine.numel()], mine), name  # loaded values
            assert not got["partition"][mine.numel():].any(), name  # the last one's padding
            held[rank] += part
    n_params = sum(p.numel() for p in whole.parameters())
    assert held[0] == held[1] == sum(math.ceil(p.numel() / 2) for p in whole.parameters())
    assert held[0] < 0.51 * n_params  # each rank holds about half of the model
    tokenizer = load_tokenizer(model_dir)
    items = _items(whole)
    counts = {int((_encode(tokenizer, [item], None, SFT["max_length"])["labels"] != -100).sum())
              for item in items}
    assert len(counts) == 1  # the hand reasoning needs equal response lengths
    initial = torch.cat([p.detach().flatten().clone() for p in whole.parameters()])
    single, single_items = _sft(whole, tokenizer, "torch", 0)
    rank0, rank1 = result["losses"]  # each step's loss: the mean over the ranks, on each
    assert len(single) == len(rank0) == 2 and rank0 == rank1
    assert rank0 == pytest.approx(single, rel=1e-4)
    assert result["items"] == [single_items // 2] * 2 == [4, 4]  # half of each batch per rank
    assert result["max_param_diff"] == 0.0
    final = torch.cat([p.detach().flatten() for p in whole.parameters()])
    assert (final - initial).abs().max() > 1e-3
    torch.testing.assert_close(torch.tensor(result["params"]), final, rtol=0, atol=1e-5)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
