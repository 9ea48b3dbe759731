"""A training stage in its own process, for the SIGKILL-and-resume tests (tests/test_resume.py).

    python tests/resume_worker.py prepare ROOT            # tiny models + data set under ROOT
    python tests/resume_worker.py run ROOT STAGE OUT [--slow S] [--mlflow URI] [k=v ...]

`run` calls the stage function on ROOT's inputs with the outputs under OUT and prints
`RESULT {"metrics": ..., "model_version": ...}` at the end. `--slow S` sleeps S seconds after
every training step (inside the tracker's log_metrics), so the test can kill the process
between two checkpoints instead of racing a fast loop. Checkpoints go where
$R1VFLOW_CHECKPOINT_DIR says.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [
    "How many red circles are there? <think>red circle, red circle. 2 red circles.</think>"
    "<answer>2</answer>",
    "What is the sum of the two digits? <think>3 + 4 = 7.</think><answer>7</answer>",
] * 20
BASE = ["data.image_size=16", "sft.batch_size=2", "sft.val_limit=2", "sft.val_max_new_tokens=4",
        "sft.val_batch_size=2", "sft.max_length=96", "grpo.val_limit=2",
        "grpo.val_max_new_tokens=4", "grpo.val_batch_size=2", "grpo.prompts_per_step=2",
        "grpo.group_size=2", "grpo.max_new_tokens=8", "grpo.max_length=96",
        "grpo.batch_size=4", "align_projector.batch_size=2", "align_projector.val_limit=2",
        "align_projector.val_max_new_tokens=4", "align_projector.val_batch_size=2",
        "align_projector.max_length=96", "train_reward_model.batch_size=2",
        "train_reward_model.max_length=96"]


def _vlm(tokenizer):
    from r1vflow.models.vlm import assemble_vlm, build_tiny_llm, build_tiny_vision

    torch.manual_seed(0)
    vision = build_tiny_vision(image_size=16, patch_size=8, hidden_size=32, num_layers=1,
                               num_heads=2)
    llm = build_tiny_llm(len(tokenizer), 32, 1, 2, 64, max_position_embeddings=128)
    return assemble_vlm(vision, llm, tokenizer)


def prepare(root: Path) -> None:
    from r1vflow.data.synth import synthesize
    from r1vflow.models.io import save_model
    from r1vflow.models.reward import RewardModel, ScoreCalibration, save_reward_model
    from r1vflow.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    synthesize(root / "dataset", families=["counting"], num_train=8, num_val=2, num_test=2,
               image_size=16, seed=0, progress=False)
    meta = {"stage": "bootstrap", "parent": None, "config_fingerprint": "f"}
    save_model(_vlm(tokenizer), tokenizer, root / "base_model", meta)
    save_reward_model(RewardModel(_vlm(tokenizer)), tokenizer, root / "reward_model", meta,
                      ScoreCalibration(-1.0, 1.0))
    from r1vflow.models.vlm import build_tiny_llm

    torch.manual_seed(1)
    save_model(build_tiny_llm(len(tokenizer), 32, 1, 2, 64, max_position_embeddings=128),
               tokenizer, root / "substitute_llm", meta)


class _Slow:
    """Wraps a tracker: every log_metrics call (one per training step) sleeps first."""

    def __init__(self, tracker, seconds: float) -> None:
        self._tracker, self._seconds = tracker, seconds

    def __getattr__(self, name):
        return getattr(self._tracker, name)

    def log_metrics(self, metrics, step=None):
        time.sleep(self._seconds)
        return self._tracker.log_metrics(metrics, step=step)


def run(root: Path, stage: str, out: Path, slow: float, mlflow_uri: str | None,
        overrides: list[str]) -> None:
    from r1vflow.config import load_experiment
    from r1vflow.stages import StageContext, stage_function
    from r1vflow.tracking.runs import stage_run

    exp = load_experiment(ROOT / "pipelines" / "configs" / "smoke.yaml", [*BASE, *overrides])
    inputs = {"sft": {"base_model": root / "base_model", "dataset": root / "dataset"},
              "grpo": {"sft_model": root / "base_model", "dataset": root / "dataset"},
              "mpo": {"base_model": root / "base_model", "dataset": root / "dataset"}}[stage]
    if stage == "sft" and exp.sft.iterative is not None:
        inputs["reward_model"] = root / "reward_model"
    outputs = {"sft": {"model": out / "model", "iterations": out / "iterations"},
               "grpo": {"model": out / "model", "checkpoints": out / "checkpoints"},
               "mpo": {"model": out / "model", "checkpoints": out / "checkpoints",
                       "pairs": out / "pairs"}}[stage]
    for path in outputs.values():
        path.mkdir(parents=True, exist_ok=True)
    with stage_run(mlflow_uri, "r1vflow-resume", stage, exp.name) as tracker:
        ctx = StageContext(exp=exp, stage=stage, inputs=inputs, outputs=outputs,
                           tracker=_Slow(tracker, slow) if slow else tracker)
        outcome = stage_function(stage)(ctx)
    print("RESULT " + json.dumps({"metrics": outcome.metrics,
                                  "model_version": outcome.model_version}), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "prepare":
        prepare(Path(argv[1]))
        return
    root, stage, out, rest = Path(argv[1]), argv[2], Path(argv[3]), argv[4:]
    slow, uri, overrides = 0.0, None, []
    while rest:
        head = rest.pop(0)
        if head == "--slow":
            slow = float(rest.pop(0))
        elif head == "--mlflow":
            uri = rest.pop(0)
        else:
            overrides.append(head)
    run(root, stage, out, slow, uri, overrides)


if __name__ == "__main__":
    main(sys.argv[1:])
