"""Does GRPO with LoRA learn? The grpo stage, from a smoke run's SFT model, with LoRA on the LLM
and with full weights, scored on a fresh test split; prints JSON (docs/models.md, LoRA).

    .venv/bin/r1vflow run pipelines/configs/smoke.yaml --set sft.lora.rank=8 --output-dir RUN
    .venv/bin/python scripts/lora_grpo_smoke.py RUN --steps 40 > lora_grpo.json

Each variant runs the real stage function (`r1vflow.stages.grpo.run`: load, set_trainable,
apply_lora, rollouts on the configured generation engine with a weight sync per step, save the
merged model) on the smoke preset's grpo section with the overrides below, on the run's data;
then the start model and each saved model answer the test split of a fresh synthesis
(data seed 1, `--test` items, greedy, transformers) and the accuracy is the share whose
<answer> is right.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from r1vflow.config import load_experiment
from r1vflow.data.io import load_split
from r1vflow.data.synth import synthesize
from r1vflow.eval.scoring import score_model
from r1vflow.models.io import load_model
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.stages.common import StageContext
from r1vflow.stages.grpo import run as run_grpo
from r1vflow.tracking.runs import StageTracker

PRESET = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "smoke.yaml"
VARIANTS = {
    "lora_r8": ["grpo.trainable=[projector]", "grpo.lora.rank=8"],
    "full_llm": ["grpo.trainable=[projector,llm]"],
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path, help="output dir of a smoke run (summary.json)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--test", type=int, default=480, help="items of the fresh test split")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    return p.parse_args(argv)


def score(model_dir: Path, samples, dataset: Path, exp) -> dict[str, float]:
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    metrics, _ = score_model(model, tokenizer, samples, dataset, exp.data.image_size,
                             exp.evaluate.max_new_tokens, exp.evaluate.batch_size)
    return {k: round(v, 4) for k, v in metrics.items()
            if k.startswith("accuracy") or k == "format_rate"}


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    summary = json.loads((args.run_dir / "summary.json").read_text())
    sft = Path(summary["stages"]["sft"]["model_uri"])
    dataset = next(args.run_dir.glob("pipeline_root/*/synthesize-data/dataset"))
    work = Path(tempfile.mkdtemp(prefix="lora-grpo-"))
    os.environ["R1VFLOW_CHECKPOINT_DIR"] = str(work / "checkpoints")  # never resume a run
    exp = load_experiment(PRESET)
    fresh = work / "fresh"
    synthesize(fresh, families=exp.data.families, num_train=1, num_val=1, num_test=args.test,
               image_size=exp.data.image_size, max_objects=exp.data.max_objects, seed=1,
               progress=False)
    test = load_split(fresh, "test")
    out = {"start": str(sft), "steps": args.steps, "lr": args.lr, "test_items": len(test),
           "sft": score(sft, test, fresh, exp)}
    for name in args.variants:
        exp = load_experiment(PRESET, [f"grpo.steps={args.steps}", f"grpo.lr={args.lr}",
                                       "grpo.prompts_per_step=8", "grpo.group_size=8",
                                       *VARIANTS[name]])
        ctx = StageContext(exp=exp, stage="grpo", inputs={"sft_model": sft, "dataset": dataset},
                           outputs={"model": work / name}, tracker=StageTracker(None, "lora"))
        started = time.perf_counter()
        outcome = run_grpo(ctx)
        keep = ("reward_mean", "accuracy_mean", "accuracy_late", "weight_syncs")
        out[name] = {"overrides": VARIANTS[name], "seconds": round(time.perf_counter() - started),
                     **{k: round(outcome.metrics[k], 4) for k in keep if k in outcome.metrics},
                     "trainable_params_llm": outcome.metrics["trainable_params_llm"],
                     "test": score(work / name, test, fresh, exp)}
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
