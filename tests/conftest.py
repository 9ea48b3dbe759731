"""Shared fixtures: a micro experiment (smaller than the smoke preset) for component tests."""

from pathlib import Path

import pytest

from r1vflow.config import load_experiment

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "pipelines" / "configs"

# Overrides that shrink the smoke preset further for in-process component tests.
MICRO = [
    "name=micro",
    "bootstrap.vision_steps=5", "bootstrap.vision_examples=64", "bootstrap.llm_steps=5",
    "bootstrap.llm_texts=64", "synthesize_data.num_train=48", "synthesize_data.num_val=16",
    "synthesize_data.num_test=16", "evaluate.max_new_tokens=16", "sft.batch_size=16",
]


@pytest.fixture(scope="session")
def micro_experiment():
    return load_experiment(PRESETS / "smoke.yaml", MICRO)
