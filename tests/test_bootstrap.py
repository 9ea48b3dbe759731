"""The bootstrap stage's base models are a function of the config alone: whatever the global
torch RNG held before, two runs write identical weights (the pipeline's runs repeat)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from conftest import MicroChain


def _weights(chain: MicroChain, name: str) -> dict[str, torch.Tensor]:
    return load_file(chain.root / name / "model.safetensors")


def test_bootstrap_weights_do_not_depend_on_the_global_rng(tmp_path, micro_experiment):
    runs = []
    for rng_state in (1, 2):
        torch.manual_seed(rng_state)  # what earlier work in the process may have left behind
        chain = MicroChain(tmp_path / f"run{rng_state}", micro_experiment)
        chain.root.mkdir()
        chain.run("bootstrap", {}, {"base_model": "base", "substitute_llm": "substitute"})
        runs.append(chain)
    for name in ("base", "substitute"):
        first, second = _weights(runs[0], name), _weights(runs[1], name)
        assert first.keys() == second.keys()
        different = [k for k in first if not torch.equal(first[k], second[k])]
        assert not different, f"{name}: weights differ between runs: {different[:5]}"
