"""The MPO loop on a tiny VLM and the mpo stage on the micro chain (registration, lineage,
pairs, monitor stop, flags in the metadata, grpo after mpo)."""

import json

import pytest
import torch

from r1vflow.models.io import read_model_metadata
from r1vflow.models.tokenizer import train_tokenizer
from r1vflow.models.vlm import (
    assemble_vlm,
    build_tiny_llm,
    build_tiny_vision,
    num_image_tokens,
    set_trainable,
)
from r1vflow.pref.data import PairRow, encode_items
from r1vflow.pref.train import MPOSettings, pair_logprobs, reference_logprobs, train_mpo
from r1vflow.rl.monitor import RewardMonitor

from conftest import MicroChain

CHOSEN = "<think>red circle. 1 red circle.</think><answer>1</answer>"
REJECTED = "<think>blue square. 3 blue squares.</think><answer>3</answer>"
CORPUS = [f"How many red circles are there? {CHOSEN} {REJECTED}"] * 30


@pytest.fixture(scope="module")
def setup():
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    vision = build_tiny_vision(image_size=16, patch_size=8, hidden_size=32, num_layers=1,
                               num_heads=2)
    llm = build_tiny_llm(len(tokenizer), 32, 1, 2, 64, max_position_embeddings=256)
    model = assemble_vlm(vision, llm, tokenizer)
    rows = [PairRow(f"p{i}", "How many red circles are there?", "x.png", CHOSEN, REJECTED, "r")
            for i in range(4)]
    pixels = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    items = encode_items(tokenizer, rows, pixels, num_image_tokens(model), 200)
    return tokenizer, model, items


def _margin(model, items, pad_id):
    with torch.no_grad():
        chosen, rejected, _, _ = pair_logprobs(model, items, pad_id)
    return float((chosen - rejected).mean())


def test_training_raises_the_preference_margin(setup):
    tokenizer, base, items = setup
    model = assemble_copy(base)
    set_trainable(model, {"projector", "llm"})
    pad = tokenizer.pad_token_id
    refs = reference_logprobs(model, items, pad, batch_size=2)
    assert refs.shape == (4, 2)
    before = _margin(model, items, pad)
    result = train_mpo(model, items, refs, MPOSettings(
        epochs=4, batch_size=2, lr=3e-3, beta=0.1, w_dpo=0.8, w_bco=0.2, w_nll=1.0,
        bco_delta_decay=0.9, progress=False), pad_id=pad)
    assert len(result.history) == 8
    assert _margin(model, items, pad) > before + 1.0
    # the reference stayed the start model: step 1's rewards are 0 (policy == reference)
    assert result.history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert result.history[0]["bco_delta"] == 0.0  # no past batch yet
    assert result.history[1]["bco_delta"] == pytest.approx(result.history[0]["rewards/mean"])
    assert result.history[-1]["rewards/accuracy"] == 1.0  # step 1 had c == r (0.0)


def assemble_copy(model):
    import copy

    return copy.deepcopy(model)


def test_probe_and_monitor_stop_training(setup):
    tokenizer, base, items = setup
    model = assemble_copy(base)
    set_trainable(model, {"projector"})
    refs = reference_logprobs(model, items, tokenizer.pad_token_id, 4)
    calls = []

    def probe(m):  # the RM score climbs while rule accuracy stays at 0.1
        calls.append(1)
        return {"accuracy": 0.1, "format_rate": 1.0, "reward_model": 0.5 + 0.1 * len(calls)}

    monitor = RewardMonitor(window=2, rm_rise=10.0, format_drop=1.0, stop_on_flag=True,
                            patience=1, rm_accuracy_gap=0.5)
    result = train_mpo(model, items, refs, MPOSettings(
        epochs=10, batch_size=2, lr=1e-3, beta=0.1, w_dpo=1, w_bco=0, w_nll=0,
        bco_delta_window=4, probe_every=1, progress=False),
        pad_id=tokenizer.pad_token_id, probe=probe, monitor=monitor)
    # gap after step 2: mean(0.6, 0.7) - 0.1 = 0.55 > 0.5
    assert len(result.history) == 2 and result.summary["stopped_early"] == 1.0
    assert "rm_accuracy_gap" in result.stop_reason
    assert set(result.flags) == {"rm_accuracy_gap"}


def test_refs_must_match_the_items(setup):
    tokenizer, model, items = setup
    with pytest.raises(ValueError, match="refs has shape"):
        train_mpo(model, items, torch.zeros(3, 2), MPOSettings(
            epochs=1, batch_size=2, lr=1e-3, beta=0.1, w_dpo=1, w_bco=0, w_nll=0,
            bco_delta_window=1, progress=False), pad_id=0)


# ----------------------------------------------------------------------------- the stage
MPO = {"trainable": ["projector", "llm"], "lr": 1e-3, "batch_size": 8, "epochs": 1,
       "val_limit": 8, "val_max_new_tokens": 16, "val_batch_size": 16,
       "pairs": {"prompts": 16, "samples_per_prompt": 2, "max_new_tokens": 16}}


@pytest.fixture(scope="module")
def mpo_chain(micro_inputs, micro_experiment):
    from r1vflow.config import experiment_from_dict

    data = micro_experiment.model_dump(mode="json")
    data["mpo"] = MPO
    exp = experiment_from_dict(data, [])
    chain = MicroChain(micro_inputs.root, exp)
    outcome = chain.run("mpo", {"base_model": "base_model", "dataset": "dataset"},
                        {"model": "mpo_model", "checkpoints": "mpo_ckpt", "pairs": "mpo_pairs"})
    return chain, outcome


def test_mpo_stage_trains_registers_and_reports_pairs(mpo_chain):
    chain, outcome = mpo_chain
    metrics = outcome.metrics
    rows = [json.loads(line) for line in (chain.root / "mpo_pairs" / "pairs.jsonl")
            .read_text().splitlines()]
    assert metrics["train_pairs"] == len(rows) == metrics["pairs/total"]
    assert metrics["pairs/total"] + metrics["dropped/total"] == 16  # one verdict per prompt
    by_rule = {k: v for k, v in metrics.items() if k.startswith("pairs/") and k != "pairs/total"}
    assert sum(by_rule.values()) == len(rows)
    assert {r["rule"].replace("/", "_") for r in rows} == {k[6:] for k in by_rule}
    meta = read_model_metadata(chain.root / "mpo_model")
    assert meta.stage == "mpo" and meta.extra["monitor_flags"] == {}
    base_version = read_model_metadata(chain.root / "base_model").model_version
    assert base_version.startswith("micro-bootstrap/")
    assert meta.parent == base_version and meta.model_version.startswith("micro-mpo/")
    assert metrics["trainable_params_vision"] == 0.0


def test_grpo_starts_from_mpo(mpo_chain, micro_experiment):
    from r1vflow.config import experiment_from_dict

    chain, _ = mpo_chain
    data = chain.exp.model_dump(mode="json")
    data["grpo"] = {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8,
                    "batch_size": 4, "val_limit": 4, "val_max_new_tokens": 8}
    exp = experiment_from_dict(data, [])
    grpo = MicroChain(chain.root, exp)
    grpo.run("grpo", {"mpo_model": "mpo_model", "base_model": "base_model",
                      "dataset": "dataset"}, {"model": "grpo_after_mpo", "checkpoints": "gck"})
    meta = read_model_metadata(chain.root / "grpo_after_mpo")
    assert meta.parent == read_model_metadata(chain.root / "mpo_model").model_version


# ----------------------------------------------------------------------------- resume
class _Crash(Exception):
    pass


def _resumable(setup, root, crash_at=None, probe=None, monitor=None, **kwargs):
    """train_mpo on a copy of the tiny model with checkpoints under `root` (every 3 steps);
    `crash_at`: on_step raises after that step (a killed run). Returns (model, result, ck)."""
    from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy

    tokenizer, base, items = setup
    model = assemble_copy(base)
    set_trainable(model, {"projector", "llm"})
    refs = reference_logprobs(model, items, tokenizer.pad_token_id, 4)
    ck = Checkpointer("mpo", root, CheckpointPolicy(every=3, minutes=None))

    def on_step(step, metrics):
        if step == crash_at:
            raise _Crash(step)

    settings = MPOSettings(**{"epochs": 2, "batch_size": 1, "lr": 1e-3, "beta": 0.1,
                              "w_dpo": 0.8, "w_bco": 0.2, "w_nll": 1.0,
                              "bco_delta_decay": 0.9, "progress": False, **kwargs})
    result = train_mpo(model, items, refs, settings, pad_id=tokenizer.pad_token_id,
                       probe=probe, monitor=monitor, on_step=on_step,
                       checkpoint=ck.phase("train"))
    return model, result, ck


def test_train_mpo_resumes_mid_epoch_to_the_same_weights(setup, tmp_path):
    reference, expected, _ = _resumable(setup, tmp_path / "ref")
    with pytest.raises(_Crash):
        _resumable(setup, tmp_path / "ck", crash_at=7)  # checkpoints at 3 and 6 of 8
    model, result, ck = _resumable(setup, tmp_path / "ck")
    assert ck.resumed_from_step == 6  # epoch 1 (4 pairs, batch 1), 2 of its batches done
    assert len(result.history) == 8
    # BCODelta's EMA and the data order came back: every step's numbers match
    assert [h["bco_delta"] for h in result.history] == [h["bco_delta"] for h in expected.history]
    assert [h["loss"] for h in result.history] == [h["loss"] for h in expected.history]
    ref_state, state = reference.state_dict(), model.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)


def test_a_run_the_monitor_stopped_stays_stopped_on_resume(setup, tmp_path):
    def probe(m):  # RM score far above rule accuracy: the gap flag stops at once
        return {"accuracy": 0.0, "format_rate": 1.0, "reward_model": 0.9}

    def monitor():
        return RewardMonitor(window=2, rm_rise=10.0, format_drop=1.0, stop_on_flag=True,
                             patience=1, rm_accuracy_gap=0.5)

    _, first, _ = _resumable(setup, tmp_path / "ck", probe=probe, probe_every=1,
                             monitor=monitor())
    assert len(first.history) == 2  # a full window at step 2: stopped, saved

    def never(m):
        raise AssertionError("trained again after the monitor stopped the run")

    _, again, ck = _resumable(setup, tmp_path / "ck", probe=never, probe_every=1,
                              monitor=monitor())
    assert ck.resumed_from_step == 2
    assert again.history == first.history and again.stop_reason == first.stop_reason
    assert again.flags == first.flags
