"""Does GRPO with LoRA learn? The grpo stage, from a run's SFT model, with LoRA on the LLM and
with full weights, scored on the run's test split; prints JSON (docs/models.md, LoRA).

    .venv/bin/r1vflow run pipelines/configs/tiny.yaml --output-dir RUN
    .venv/bin/python scripts/lora_grpo.py RUN --preset tiny --steps 60 --json out.json

Each variant runs the real stage function (`r1vflow.stages.grpo.run`: load, set_trainable,
apply_lora, rollouts on the configured generation engine with a weight sync per step, save the
merged model) with the preset's grpo section and the variant's overrides, on the run's data;
then the start model and each saved model answer the run's test split (greedy, transformers)
and the accuracy is the share whose <answer> is right. The smoke preset's SFT model answers
in the format too rarely for GRPO to gain from it in a few steps; tiny's does.
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
from r1vflow.eval.scoring import score_model
from r1vflow.models.io import load_model
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.stages.common import StageContext
from r1vflow.stages.grpo import run as run_grpo
from r1vflow.tracking.runs import StageTracker

PRESETS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
VARIANTS = {  # LoRA takes a higher learning rate than full weights, as is usual
    "lora": ["grpo.trainable=[projector]", "grpo.lora.rank=16"],
    "full_llm": ["grpo.trainable=[projector,llm]", "grpo.lr=5e-5"],
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path, help="output dir of a run (summary.json)")
    p.add_argument("--preset", default="tiny", help="the run's preset (pipelines/configs)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lora-lr", type=float, default=5e-4, help="the lora variant's lr")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", type=Path, required=True, help="where the figures go")
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
    preset = PRESETS / f"{args.preset}.yaml"
    exp = load_experiment(preset)
    test = load_split(dataset, "test")
    out = {"start": str(sft), "preset": args.preset, "steps": args.steps,
           "test_items": len(test), "sft": score(sft, test, dataset, exp)}
    variants = {**VARIANTS, "lora": [*VARIANTS["lora"], f"grpo.lr={args.lora_lr}"]}
    for name in args.variants:
        exp = load_experiment(preset, [f"grpo.steps={args.steps}", "grpo.prompts_per_step=8",
                                       "grpo.group_size=8", *variants[name]])
        ctx = StageContext(exp=exp, stage="grpo", inputs={"sft_model": sft, "dataset": dataset},
                           outputs={"model": work / name}, tracker=StageTracker(None, "lora"))
        started = time.perf_counter()
        outcome = run_grpo(ctx)
        keep = ("accuracy_mean", "accuracy_late", "weight_syncs")
        out[name] = {"overrides": variants[name], "seconds": round(time.perf_counter() - started),
                     **{k: round(outcome.metrics[k], 4) for k in keep if k in outcome.metrics},
                     "trainable_params_llm": outcome.metrics["trainable_params_llm"],
                     "test": score(work / name, test, dataset, exp)}
        args.json.write_text(json.dumps(out, indent=2) + "\n")  # after each variant
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
