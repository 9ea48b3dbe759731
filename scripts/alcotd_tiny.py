"""AL-CoTD on a tiny model: distil chains, then SFT on distilled vs templated data; prints JSON.

    .venv/bin/python scripts/alcotd_tiny.py --model RUN/align_projector/model \
        --dataset RUN/synthesize_data/dataset --limit 600 > alcotd.json

From one start model (e.g. a tiny run's aligned model), first `--warmup-epochs` of SFT on the
templated chains (R1V's iteration 0, M0: an aligned model that never saw the answer format writes
almost no acceptable chain), then AL-CoTD with that model over the first `--limit` train samples
with the rule-based scorers (r1vflow.train.distill; failures keep their templated chain,
so both arms have the same samples and steps), the fixed-penalty comparison on `--compare`
prompts, then two SFT runs from the same start model for one epoch (distilled chains vs the
templated ones) and greedy test accuracy of each on `--test` samples.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from r1vflow.data.alcotd import integration_rule, text_rule, vision_rule  # noqa: E402
from r1vflow.data.io import load_split  # noqa: E402
from r1vflow.eval.scoring import sample_pixels, score_model  # noqa: E402
from r1vflow.models.io import load_model  # noqa: E402
from r1vflow.models.tokenizer import load_tokenizer  # noqa: E402
from r1vflow.models.vlm import set_trainable  # noqa: E402
from r1vflow.train.distill import (  # noqa: E402
    DistillSettings,
    distill,
    fixed_penalty_comparison,
    score_samples,
)
from r1vflow.train.sft import SFTSettings, train_sft  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--compare", type=int, default=200)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    base, tokenizer = load_model(args.model, "vlm"), load_tokenizer(args.model)
    image_size = base.config.vision_config.image_size
    train = load_split(args.dataset, "train")[: args.limit]
    test = load_split(args.dataset, "test")[: args.test]
    pixels = sample_pixels(args.dataset, train, image_size)
    if args.warmup_epochs:
        set_trainable(base, {"projector", "llm"})
        train_sft(base, tokenizer, [(s.question, s.response(), pixels[i])
                                    for i, s in enumerate(train)],
                  SFTSettings(epochs=args.warmup_epochs, batch_size=16, lr=args.lr,
                              weight_decay=0.01, warmup_ratio=0.05, max_length=128, seed=0,
                              progress=False))
    settings = DistillSettings(alpha=args.alpha, beta=1.0, gamma=1.0, max_attempts=3,
                               temperature=0.7, max_new_tokens=64, batch_size=100,
                               on_failure="template", seed=0)
    scores = score_samples(train, vision_rule, text_rule, integration_rule)
    result = distill(base, tokenizer, train, pixels, scores, settings)
    n = min(args.compare, len(train))
    fixed = fixed_penalty_comparison(base, tokenizer, train[:n], pixels[:n], 1.0, settings)
    first = result.records[:n]
    out = {"warmup_epochs": args.warmup_epochs,
           "accepted": sum(r["accepted"] for r in result.records), "distill": result.metrics, "fixed_penalty": fixed,
           "adaptive_same_prompts": {
               "accuracy": sum(r["first_correct"] for r in first) / n,
               "tokens_mean": sum(r["first_tokens"] for r in first) / n},
           "start_test_accuracy": score_model(base, tokenizer, test, args.dataset, image_size,
                                              64, 100)[0]["accuracy"]}
    for arm, samples in (("templated", train), ("distilled", result.samples)):
        model = copy.deepcopy(base)
        set_trainable(model, {"projector", "llm"})
        items = [(s.question, s.response(), pixels[i]) for i, s in enumerate(samples)]
        stats = train_sft(model, tokenizer, items, SFTSettings(
            epochs=1, batch_size=16, lr=args.lr, weight_decay=0.01, warmup_ratio=0.05,
            max_length=128, seed=0, progress=False)).summary
        scored, _ = score_model(model, tokenizer, test, args.dataset, image_size, 64, 100)
        out[f"sft_{arm}"] = {"steps": stats["steps"], "test_accuracy": scored["accuracy"],
                             "test_tokens_mean": scored["mean_response_tokens"],
                             "hallucination_rate": scored.get("hallucination_rate")}
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
