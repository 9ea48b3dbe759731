"""mpo and distill (AL-CoTD) on an imported family model: a tiny random-weight qwen2_5_vl
checkpoint in its published layout goes through import_model, synthesize_data and
train_reward_model, then the mpo and distill stage functions run on it with that reward model (per-image ImageInputs with Qwen's own image-token text,
not the tiny path's fixed [B,3,S,S] tensors)."""

from __future__ import annotations

import json

import pytest
import torch

from r1vflow.config import experiment_from_dict, load_experiment
from r1vflow.data.io import load_split
from r1vflow.eval.scoring import sample_pixels
from r1vflow.models.families import fixed_image_tokens
from r1vflow.models.families.fixtures import build_checkpoint
from r1vflow.models.families.images import ImageBatch
from r1vflow.models.io import load_model
from r1vflow.models.reward import load_reward_scorer
from r1vflow.models.tokenizer import load_tokenizer
from r1vflow.pref.data import PairRow, encode_items
from r1vflow.pref.train import pair_logprobs
from r1vflow.train.distill import _blank_images

from conftest import PRESETS, MicroChain

SHRINK = ["synthesize_data.num_train=16", "synthesize_data.num_val=8",
          "synthesize_data.num_test=8", "name=fam"]
MPO = {"trainable": ["projector", "llm"], "lr": 2e-3, "batch_size": 4, "epochs": 3,
       "val_limit": 4, "val_max_new_tokens": 8, "val_batch_size": 8, "w_nll": 0.0,
       "pairs": {"prompts": 8, "samples_per_prompt": 2, "max_new_tokens": 8}}
DISTILL = {"limit": 6, "max_attempts": 1, "max_new_tokens": 8, "batch_size": 8,
           "compare_limit": 3, "vision_scorer": "question_only_probe", "text_scorer": "judge",
           "judge": True}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam-mpo")
    source = build_checkpoint("qwen2_5_vl", root / "source")
    data = load_experiment(PRESETS / "pretrained-smoke.yaml",
                           [f"model.pretrained.source={source}", *SHRINK]).model_dump(mode="json")
    data.update(mpo=MPO, distill=DISTILL)
    micro = MicroChain(root, experiment_from_dict(data, []))
    micro.run("import_model", {}, {"base_model": "base", "substitute_llm": "substitute"})
    micro.run("synthesize_data", {}, {"dataset": "dataset"})
    micro.run("train_reward_model", {"base_model": "base", "dataset": "dataset"},
              {"model": "rm"})
    return micro


def _margin(model_dir, rows: list[PairRow], dataset, image_size: int) -> float:
    """Mean log pi(chosen) - log pi(rejected) of `rows` under the model saved in `model_dir`."""
    model, tokenizer = load_model(model_dir, "vlm"), load_tokenizer(model_dir)
    pixels = sample_pixels(dataset, rows, image_size, model)
    items = encode_items(tokenizer, rows, pixels, fixed_image_tokens(model), 192)
    with torch.no_grad():
        chosen, rejected, _, _ = pair_logprobs(model.eval(), items, tokenizer.pad_token_id)
    return float((chosen - rejected).mean())


def test_mpo_trains_an_imported_qwen2_5_vl(chain):
    outcome = chain.run("mpo", {"base_model": "base", "dataset": "dataset", "reward_model": "rm"},
                        {"model": "mpo", "pairs": "pairs"})
    rows = [PairRow(**json.loads(line))
            for line in (chain.root / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert outcome.metrics["train_pairs"] == len(rows) > 0
    assert outcome.metrics["steps"] == 3 * -(-len(rows) // 4)
    assert json.loads((chain.root / "mpo" / "config.json").read_text())["model_type"] == \
        "qwen2_5_vl"
    # the family's images went in as ImageInputs, and training moved the preference margin
    dataset, size = chain.root / "dataset", chain.exp.data.image_size
    base = load_model(chain.root / "base", "vlm")
    assert fixed_image_tokens(base) is None
    assert isinstance(sample_pixels(dataset, rows[:1], size, base), ImageBatch)
    before = _margin(chain.root / "base", rows, dataset, size)
    after = _margin(chain.root / "mpo", rows, dataset, size)
    assert after > before + 1.0  # measured: -131.7 -> -117.0


def test_distill_writes_chains_for_every_sample_of_an_imported_qwen2_5_vl(chain):
    outcome = chain.run("distill", {"base_model": "base", "dataset": "dataset",
                                    "reward_model": "rm"},
                        {"distilled": "distilled"})
    records = [json.loads(line) for line in
               (chain.root / "distilled" / "distill.jsonl").read_text().splitlines()]
    train = load_split(chain.root / "dataset", "train")
    assert [r["id"] for r in records] == [s.id for s in train[:6]]
    assert all(r["attempts"] == 1 and r["first_tokens"] > 0 for r in records)
    assert outcome.metrics["samples"] == 6.0
    # S_t came from the family reward model (the judge) on the family-encoded images
    scorer = load_reward_scorer(chain.root / "rm", 8, 256)
    rm_model = load_model(chain.root / "base", "vlm")
    pixels = sample_pixels(chain.root / "dataset", train[:6], chain.exp.data.image_size, rm_model)
    judged = scorer.score_0to5([s.question for s in train[:6]], pixels,
                               [s.response() for s in train[:6]])
    expected = [min(1.0, max(0.0, 1.0 - v / 5.0)) for v in judged]
    assert [r["s_t"] for r in records] == pytest.approx(expected, abs=1e-5)
    assert [s.id for s in load_split(chain.root / "distilled", "train")] == [s.id for s in train]
    # the question-only probe (which ran above) gives the family black images through its
    # image processor: Qwen's patches and grid, not a zeros tensor
    blank = _blank_images(load_model(chain.root / "base", "vlm"), 2, chain.exp.data.image_size)
    assert isinstance(blank, ImageBatch) and len(blank) == 2
    assert all(item.source.getextrema() == ((0, 0),) * 3 for item in blank.items)
    assert all("image_grid_thw" in item.tensors for item in blank.items)
