"""Tune the tiny CPU preset: bootstrap -> base eval -> SFT -> eval, in one process; prints JSON.

    .venv/bin/python scripts/tune_tiny.py --seed 1 --sft-epochs 6 > tune.json

Synthesizes counting / digit_arithmetic / comparison at 32 px, trains the byte-level BPE,
pretrains a SigLIP-style vision tower on scene attributes and a Qwen2-style LLM on the
"reasoning" text corpus, assembles the VLM with a fresh projector (the "base" model), then
fine-tunes it and reports greedy test accuracy (text inside <answer>...</answer> == answer),
wall-clock and CPU seconds of each phase. `--cache-dir` keeps the bootstrapped parts (as
safetensors model directories) so that SFT settings can be compared on the same base.
"""

from __future__ import annotations

import os

# Before torch loads libgomp: with spinning OpenMP workers, 2 threads on 2 shared cores run up to
# 10x slower than 1 thread whenever another process competes for the CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from r1vflow.data.io import images_to_tensor, load_image, load_split  # noqa: E402
from r1vflow.data.synth import (  # noqa: E402
    synthesize,
    text_corpus,
    tokenizer_corpus,
    vision_pretraining_set,
)
from r1vflow.models.generate import generate_responses  # noqa: E402
from r1vflow.models.io import load_model, save_model  # noqa: E402
from r1vflow.models.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from r1vflow.models.vlm import (  # noqa: E402
    assemble_vlm,
    build_tiny_llm,
    build_tiny_vision,
    set_trainable,
)
from r1vflow.train.bootstrap import PretrainSettings, pretrain_llm, pretrain_vision  # noqa: E402
from r1vflow.train.sft import SFTSettings, eval_loss, train_sft  # noqa: E402

FAMILIES = ["counting", "digit_arithmetic", "comparison"]
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
BOOTSTRAP_KEYS = (
    "seed vocab image_size patch vision_hidden vision_layers vision_heads llm_hidden llm_layers "
    "llm_heads llm_intermediate vision_pretrain_n vision_steps vision_lr vision_batch llm_texts "
    "llm_steps llm_lr llm_batch max_length"
).split()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = p.add_argument
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=2)
    add("--image-size", type=int, default=32)
    add("--num-train", type=int, default=1200)
    add("--num-test", type=int, default=300)
    add("--vocab", type=int, default=512)
    add("--patch", type=int, default=8)
    add("--vision-hidden", type=int, default=64)
    add("--vision-layers", type=int, default=2)
    add("--vision-heads", type=int, default=4)
    add("--llm-hidden", type=int, default=128)
    add("--llm-layers", type=int, default=3)
    add("--llm-heads", type=int, default=4)
    add("--llm-intermediate", type=int, default=256)
    add("--vision-pretrain-n", type=int, default=4000)
    add("--vision-steps", type=int, default=2000)
    add("--vision-lr", type=float, default=1e-3)
    add("--vision-batch", type=int, default=64)
    add("--llm-texts", type=int, default=8000)
    add("--llm-steps", type=int, default=300)
    add("--llm-lr", type=float, default=3e-3)
    add("--llm-batch", type=int, default=32)
    add("--sft-epochs", type=int, default=5)
    add("--sft-lr", type=float, default=1e-3)
    add("--sft-batch", type=int, default=16)
    add("--sft-parts", default="projector,llm")
    add("--max-length", type=int, default=128)
    add("--max-new-tokens", type=int, default=64)
    add("--cache-dir", type=Path, default=None, help="reuse bootstrapped parts across runs")
    return p.parse_args(argv)


class Clock:
    """Wall and process-CPU seconds since construction."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {
            "wall_s": round(time.perf_counter() - self.wall, 1),
            "cpu_s": round(time.process_time() - self.cpu, 1),
        }


def accuracy(model, tokenizer, samples, pixels, max_new_tokens: int) -> dict:
    """Greedy accuracy overall and per family on `samples`; pixels [n,3,H,W]."""
    clock = Clock()
    texts = generate_responses(
        model, tokenizer, [s.question for s in samples], pixels, max_new_tokens, batch_size=64
    )
    hits: dict[str, list[bool]] = {family: [] for family in FAMILIES}
    for sample, (text,) in zip(samples, texts, strict=True):
        match = ANSWER.search(text)
        hits[sample.family].append(bool(match) and match.group(1).strip() == sample.answer)
    total = [h for family in FAMILIES for h in hits[family]]
    return {
        "accuracy": round(sum(total) / len(total), 3),
        "per_family": {f: round(sum(h) / max(1, len(h)), 3) for f, h in hits.items()},
        "eval": clock.read(),
        "example": texts[0][0],
    }


def bootstrap(args, tokenizer) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    torch.manual_seed(args.seed)
    vision = build_tiny_vision(
        args.image_size, args.patch, args.vision_hidden, args.vision_layers, args.vision_heads
    )
    llm = build_tiny_llm(
        len(tokenizer),
        args.llm_hidden,
        args.llm_layers,
        args.llm_heads,
        args.llm_intermediate,
        max_position_embeddings=256,
    )
    clock = Clock()
    images, targets = vision_pretraining_set(
        args.vision_pretrain_n, args.image_size, args.seed, families=FAMILIES
    )
    texts = text_corpus("reasoning", args.llm_texts, args.seed, families=FAMILIES)
    v = pretrain_vision(
        vision,
        images,
        targets,
        PretrainSettings(steps=args.vision_steps, lr=args.vision_lr,
                         batch_size=args.vision_batch, seed=args.seed, progress=False),
    )
    lm = pretrain_llm(
        llm,
        tokenizer,
        texts,
        PretrainSettings(steps=args.llm_steps, lr=args.llm_lr, batch_size=args.llm_batch,
                         max_length=args.max_length, seed=args.seed, progress=False),
    )
    stats = {
        "vision": _round(v),
        "llm": _round(lm),
        **clock.read(),
        "params": {"vision": _n(vision), "llm": _n(llm)},
    }
    return vision, llm, stats


def cached_bootstrap(args, tokenizer) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    if args.cache_dir is None:
        return bootstrap(args, tokenizer)
    key = "-".join(str(getattr(args, k)) for k in BOOTSTRAP_KEYS)
    root = args.cache_dir / key
    if (root / "stats.json").is_file():
        stats = json.loads((root / "stats.json").read_text()) | {"cached": True}
        return load_model(root / "vision", "vision"), load_model(root / "llm", "causal_lm"), stats
    vision, llm, stats = bootstrap(args, tokenizer)
    meta = {"stage": "bootstrap", "parent": None, "config_fingerprint": key}
    save_model(vision, None, root / "vision", meta)
    save_model(llm, tokenizer, root / "llm", meta)
    (root / "stats.json").write_text(json.dumps(stats))
    return vision, llm, stats


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _round(stats: dict) -> dict:
    return {k: round(v, 4) for k, v in stats.items()}


def load_data(args) -> tuple[list, torch.Tensor, list, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(
            tmp,
            families=FAMILIES,
            num_train=args.num_train,
            num_val=0,
            num_test=args.num_test,
            image_size=args.image_size,
            seed=args.seed,
            progress=False,
            overwrite=True,
        )
        train, test = load_split(tmp, "train"), load_split(tmp, "test")
        pix_train = images_to_tensor([load_image(tmp, s.image) for s in train], args.image_size)
        pix_test = images_to_tensor([load_image(tmp, s.image) for s in test], args.image_size)
    return train, pix_train, test, pix_test


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    train, pix_train, test, pix_test = load_data(args)
    tokenizer = train_tokenizer(tokenizer_corpus(args.seed), args.vocab)
    vision, llm, report["bootstrap"] = cached_bootstrap(args, tokenizer)
    if report["bootstrap"].get("cached"):
        tokenizer = load_tokenizer(
            args.cache_dir / "-".join(str(getattr(args, k)) for k in BOOTSTRAP_KEYS) / "llm"
        )
    report["vocab"] = len(tokenizer)
    torch.manual_seed(args.seed)  # the projector's initialisation, cached bootstrap or not
    model = assemble_vlm(vision, llm, tokenizer)
    items = [(s.question, s.response(), p) for s, p in zip(train, pix_train, strict=True)]
    test_items = [(s.question, s.response(), p) for s, p in zip(test, pix_test, strict=True)]
    report["base"] = accuracy(model, tokenizer, test, pix_test, args.max_new_tokens)
    report["base"]["test_loss"] = round(eval_loss(model, tokenizer, test_items, 64, 128), 4)
    report["trainable"] = set_trainable(model, set(args.sft_parts.split(",")))
    clock = Clock()
    sft = train_sft(
        model,
        tokenizer,
        items,
        SFTSettings(epochs=args.sft_epochs, batch_size=args.sft_batch, lr=args.sft_lr,
                    weight_decay=0.01, warmup_ratio=0.05, max_length=args.max_length,
                    seed=args.seed, progress=False),
    ).summary
    report["sft"] = {**_round(sft), **clock.read()}
    report["sft"] |= accuracy(model, tokenizer, test, pix_test, args.max_new_tokens)
    report["sft"]["test_loss"] = round(eval_loss(model, tokenizer, test_items, 64, 128), 4)
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
