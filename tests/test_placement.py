"""Every stage loads its models through the one placement helper,
`r1vflow.models.devices.load_placed` (the model on this rank's device, in its dtype), read from
the source with `ast` (nothing of the stages is imported):

- no stage module calls `load_model` (r1vflow.models.io) or a `from_pretrained` loader of a
  model itself (configs, tokenizers and processors may load as they like), nor imports
  `load_model`;
- every stage of the stage table that takes a model input calls `load_placed` (mpo and
  distill included: they once kept their model on the CPU), and the reward-model loaders the
  stages call
  (`r1vflow.models.reward.load_reward_model`, hence `load_reward_scorer`) load through it too.

The checks are functions of a module's source, so the tests below also run them on a stage
that loads its model the old way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from r1vflow.config.stage_table import TABLE

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "src" / "r1vflow" / "stages"
HELPER = "load_placed"
# The stages that take a model (bootstrap builds its models, import_model converts released
# checkpoints reading only their configs, synthesize_data draws images).
RUNS_A_MODEL = sorted(s.module.rsplit(".", 1)[1] for s in TABLE
                      if any(i.type == "Model" for i in s.inputs))
LOADER_RECEIVERS_ALLOWED = ("Config", "Tokenizer", "Processor", "ImageProcessor")


def stray_loads(source: str) -> list[str]:
    """Model loads in `source` that bypass the helper: calls of `load_model`, `.from_pretrained`
    on anything but a config / tokenizer / processor class, imports of `load_model`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "r1vflow.models.io":
            found += [f"line {node.lineno}: imports load_model" for a in node.names
                      if a.name == "load_model"]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "load_model":
            found.append(f"line {node.lineno}: load_model(...)")
        if isinstance(func, ast.Attribute) and func.attr == "from_pretrained":
            receiver = ast.unparse(func.value)
            if not receiver.endswith(LOADER_RECEIVERS_ALLOWED):
                found.append(f"line {node.lineno}: {receiver}.from_pretrained(...)")
    return found


def calls(source: str, name: str, inside: str | None = None) -> bool:
    """Whether `source` calls `name` (within function `inside` when given)."""
    tree = ast.parse(source)
    if inside is not None:
        tree = next(n for n in ast.walk(tree)
                    if isinstance(n, ast.FunctionDef) and n.name == inside)
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
               for n in ast.walk(tree))


@pytest.mark.parametrize("stage", [p.stem for p in sorted(STAGES.glob("*.py"))])
def test_no_stage_module_loads_a_model_around_the_helper(stage):
    assert stray_loads((STAGES / f"{stage}.py").read_text()) == []


@pytest.mark.parametrize("stage", RUNS_A_MODEL)
def test_every_stage_that_runs_a_model_loads_it_placed(stage):
    assert calls((STAGES / f"{stage}.py").read_text(), HELPER)


def test_the_stages_list_covers_mpo_and_distill():
    assert {"mpo", "distill", "sft", "train_reward_model", "align_projector", "evaluate",
            "grpo"} <= set(RUNS_A_MODEL)


def test_reward_models_load_through_the_helper():
    source = (ROOT / "src" / "r1vflow" / "models" / "reward.py").read_text()
    assert calls(source, HELPER, inside="load_reward_model")
    assert calls(source, "load_reward_model", inside="load_reward_scorer")
    assert not calls(source, "load_model")


def test_the_checks_catch_a_stage_that_loads_its_model_unplaced():
    old_mpo = ("from r1vflow.models.io import load_model, save_model\n"
               "def run(ctx):\n"
               "    model = load_model(start, 'vlm')\n"
               "    other = LlavaForConditionalGeneration.from_pretrained(path)\n"
               "    tokenizer = AutoTokenizer.from_pretrained(path)\n")
    assert stray_loads(old_mpo) == ["line 1: imports load_model", "line 3: load_model(...)",
                                    "line 4: LlavaForConditionalGeneration.from_pretrained(...)"]
    assert not calls(old_mpo, HELPER)
    placed = "from r1vflow.models.devices import load_placed\nmodel = load_placed(start)\n"
    assert stray_loads(placed) == [] and calls(placed, HELPER)
