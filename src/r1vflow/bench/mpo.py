"""Benchmark our MPO step against TRL's DPOTrainer with the same loss types, in one run.

    r1vflow bench mpo --json OUT        (the CLI calls run_bench)

Policy: the text-only tiny Qwen2 LM of `r1vflow bench grpo` (bootstrap tokenizer, pretrained
here on the reasoning text corpus); TRL's DPOTrainer trains a VLM only through a multimodal
processor, which the tiny Llava models lack. Pairs: text versions of the tasks, chosen = the
reference response, rejected = the same reasoning with a wrong answer or a misread scene
(`r1vflow.data.synth.rejected_response`, kinds wrong_answer and miscount).

Same work on both sides: initial weights, pairs, batch (pairs per optimizer step), steps, lr,
cosine schedule without warmup, AdamW, grad clip 1.0, beta, loss types (DPO sigmoid + BCO pair
+ SFT/NLL) and weights, reference log-probs computed once before training (TRL:
`precompute_ref_log_probs=True`), no gradient checkpointing, CPU threads. Each trainer's whole
run (tokenizing the pairs, the reference pass, the steps; TRL does the first two in its
constructor) is timed, in interleaved rounds; `speedup` is the median over rounds of TRL seconds
/ our seconds; `speedup_train_only` the same for the optimizer steps alone (our `train_mpo`, TRL's
`train()`). Differences that remain: our BCO term is shifted by the
moving-average delta (TRL 1.16 has none) and our NLL term is a per-pair mean (TRL: token mean);
neither changes the amount of computation.
"""

from __future__ import annotations

import copy
import json
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from r1vflow.bench.grpo import build_text_policy
from r1vflow.config import MPOConfig
from r1vflow.data.families import FAMILIES, explain, make_meta
from r1vflow.data.schema import format_response
from r1vflow.data.synth import rejected_response
from r1vflow.pref.train import MPOSettings, PrefItem, reference_logprobs, train_mpo

__all__ = ["BenchSettings", "run_bench", "text_pairs"]

TextPair = tuple[str, str, str]  # prompt, chosen, rejected


def text_pairs(n: int, seed: int) -> list[TextPair]:
    """`n` pairs over the families: "The picture shows: <scene>. <question> " -> responses."""
    rng = random.Random(f"r1vflow-bench-mpo:{seed}")
    names = list(FAMILIES)
    out = []
    while len(out) < n:
        family = FAMILIES[names[len(out) % len(names)]]
        meta = make_meta(family, rng, 32, 4, "train")
        reasoning, answer = explain(family, meta)
        prompt = f"The picture shows: {family.scene(meta)}. {family.question(meta)} "
        kind = "miscount" if len(out) % 2 else "wrong_answer"
        try:
            rejected = rejected_response(family, meta, kind, rng)
        except ValueError:
            continue
        out.append((prompt, format_response(reasoning, answer), rejected))
    return out


@dataclass(frozen=True)
class BenchSettings:
    pretrain_steps: int = 300
    pairs: int = 256
    batch_size: int = 8
    steps: int = 32  # optimizer steps (pairs / batch_size = one epoch at the defaults)
    lr: float = 5e-5
    rounds: int = 3
    threads: int = 1
    seed: int = 0


FULL = BenchSettings()
QUICK = BenchSettings(pretrain_steps=20, pairs=16, batch_size=4, steps=4, rounds=1)


def _items(tokenizer, pairs: list[TextPair]) -> list[PrefItem]:
    eos = [tokenizer.eos_token_id]

    def enc(text):
        return tokenizer.encode(text, add_special_tokens=False)

    return [PrefItem(str(i), enc(p), enc(c) + eos, enc(r) + eos)
            for i, (p, c, r) in enumerate(pairs)]


def run_ours(model, tokenizer, pairs, cfg: BenchSettings, mpo: MPOConfig) -> dict:
    start = time.perf_counter()
    items = _items(tokenizer, pairs)[: cfg.steps * cfg.batch_size]
    refs = reference_logprobs(model, items, tokenizer.pad_token_id, cfg.batch_size)
    prepared = time.perf_counter()
    settings = MPOSettings(epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, beta=mpo.beta,
                           w_dpo=mpo.w_dpo, w_bco=mpo.w_bco, w_nll=mpo.w_nll,
                           bco_delta_window=mpo.bco_delta_window,
                           bco_delta_decay=mpo.bco_delta_decay, seed=cfg.seed, progress=False)
    result = train_mpo(model, items, refs, settings, pad_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "train_seconds": seconds - (prepared - start),
            "pairs_per_s": len(items) / seconds, "steps": len(result.history), "first_loss": result.history[0]["loss"],
            "last_loss": result.history[-1]["loss"],
            "reward_accuracy_last": result.history[-1]["rewards/accuracy"]}


def run_trl(model, tokenizer, pairs, cfg: BenchSettings, mpo: MPOConfig, workdir: Path) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    collected: list[dict] = []

    class Collect(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                collected.append(dict(logs))

    n = cfg.steps * cfg.batch_size
    args = DPOConfig(
        output_dir=str(workdir), use_cpu=True, seed=cfg.seed, data_seed=cfg.seed,
        max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1, learning_rate=cfg.lr, lr_scheduler_type="cosine",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=mpo.beta,
        loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[mpo.w_dpo, mpo.w_bco, mpo.w_nll],
        precompute_ref_log_probs=True, precompute_ref_batch_size=cfg.batch_size,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, bf16=False,
        dataloader_num_workers=0, gradient_checkpointing=False, max_length=None)
    data = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs[:n]])
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data,
                         processing_class=tokenizer, callbacks=[Collect()])
    trainer.remove_callback(PrinterCallback)
    prepared = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    steps = [e for e in collected if "loss" in e]
    return {"seconds": seconds, "train_seconds": seconds - (prepared - start),
            "pairs_per_s": n / seconds, "steps": len(steps),
            "first_loss": steps[0]["loss"] if steps else None,
            "last_loss": steps[-1]["loss"] if steps else None}


def run_bench(out_json: Path, quick: bool = False) -> dict:
    """Run the bench (module docstring), write `out_json`, return the result."""
    import transformers
    import trl

    cfg = QUICK if quick else FULL
    torch.set_num_threads(cfg.threads)
    tokenizer, base, pretrain_s = build_text_policy(cfg.seed, cfg.pretrain_steps)
    pairs = text_pairs(cfg.pairs, cfg.seed + 1)
    mpo = MPOConfig()
    ours, theirs = [], []
    for _ in range(cfg.rounds):
        ours.append(run_ours(copy.deepcopy(base), tokenizer, pairs, cfg, mpo))
        with tempfile.TemporaryDirectory() as tmp:
            theirs.append(run_trl(copy.deepcopy(base), tokenizer, pairs, cfg, mpo, Path(tmp)))
    ratios = [t["seconds"] / o["seconds"] for o, t in zip(ours, theirs, strict=True)]
    median = sorted(range(len(ratios)), key=lambda i: ratios[i])[len(ratios) // 2]
    result = {
        "setup": {**asdict(cfg), "quick": quick, "beta": mpo.beta,
                  "weights": [mpo.w_dpo, mpo.w_bco, mpo.w_nll],
                  "pretrain_seconds": round(pretrain_s, 2),
                  "versions": {"torch": torch.__version__,
                               "transformers": transformers.__version__,
                               "trl": trl.__version__}},
        "ours": ours[median], "trl": theirs[median],
        "speedup": statistics.median(ratios), "speedup_per_round": ratios,
        "speedup_train_only": statistics.median(
            t["train_seconds"] / o["train_seconds"] for o, t in zip(ours, theirs, strict=True)),
    }
    result["targets_met"] = {"speedup_ge_1": result["speedup"] >= 1.0}
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result
