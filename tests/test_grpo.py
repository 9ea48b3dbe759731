"""The GRPO loop: batching, loss rescaling, log-prob alignment, SSB replay, monitor stop,
KL / multi-epoch paths, the loss variants, checkpoints and resume, the offline prefilter and
the grpo stage."""

import json
from pathlib import Path

import pytest
import torch

from r1vflow.config import GRPOConfig, MonitorConfig, SSBConfig, load_experiment
from r1vflow.data.synth import synthesize
from r1vflow.models.io import save_model
from r1vflow.models.reward import RewardModel, ScoreCalibration, save_reward_model
from r1vflow.models.tokenizer import train_tokenizer
from r1vflow.models.vlm import (
    assemble_vlm,
    build_tiny_llm,
    build_tiny_vision,
    num_image_tokens,
    set_trainable,
)
from r1vflow.rl.batch import completion_logprobs, encode_vlm_prompts, loss_scale, sequence_batch
from r1vflow.rl.core import policy_loss
from r1vflow.rl.grpo import GRPOPrompt, GRPOState, prefilter_pool, train_grpo
from r1vflow.rl.rewards import format_reward, hybrid_reward, make_reward_model_reward
from r1vflow.rl.rollout import Rollout, left_pad
from r1vflow.stages.common import StageContext
from r1vflow.tracking.runs import StageTracker
from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy

CORPUS = [
    "How many red circles are there? <think>red circle, red circle. 2 red circles.</think>"
    "<answer>2</answer>",
    "What is the sum of the two digits? <think>3 + 4 = 7.</think><answer>7</answer>",
] * 20
QUESTIONS = ["How many red circles are there?", "What is the sum?", "Which side?", "Count."]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def tiny_vlm(tokenizer):
    torch.manual_seed(0)
    vision = build_tiny_vision(image_size=16, patch_size=8, hidden_size=32, num_layers=1,
                               num_heads=2)
    llm = build_tiny_llm(len(tokenizer), 32, 1, 2, 64, max_position_embeddings=128)
    model = assemble_vlm(vision, llm, tokenizer)
    set_trainable(model, {"projector", "llm"})
    return model


def make_prompts(model, tokenizer):
    ids = encode_vlm_prompts(tokenizer, QUESTIONS, num_image_tokens(model))
    pixels = torch.randn(len(QUESTIONS), 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return [GRPOPrompt(f"p{i}", ids[i], "2", q, pixels[i]) for i, q in enumerate(QUESTIONS)]


def make_rollout(model, tokenizer, max_new_tokens=6):
    return Rollout.transformers(model, tokenizer, max_new_tokens, temperature=1.0)


class Scripted:
    """Reward component returning values[call] per completion: a list per call, or a callable."""

    def __init__(self, script):
        self.script, self.calls = script, 0

    def __call__(self, completions, answers, **kw):
        values = self.script(self.calls, len(completions))
        self.calls += 1
        return values


def alternating_then_zero(call, n):
    return [float(i % 2) for i in range(n)] if call == 0 else [0.0] * n


SSB = SSBConfig(capacity=64, max_age_steps=4, target_effective_ratio=0.75,
                max_replay_fraction=0.5)


def settings(**kw) -> GRPOConfig:
    """A small `grpo` section: 3 steps of 2 prompts x 4, lr 1e-3, SSB off unless given."""
    return GRPOConfig(**{"steps": 3, "prompts_per_step": 2, "group_size": 4, "lr": 1e-3,
                         "seed": 0, "ssb": SSBConfig(enabled=False), **kw})


def run(model, tokenizer, reward, checkpoint=None, on_step=None, **kw):
    return train_grpo(model, tokenizer, make_prompts(model, tokenizer), reward,
                      make_rollout(model, tokenizer), settings(**kw), checkpoint=checkpoint,
                      on_step=on_step, progress=False)


# --------------------------------------------------------------------------- pure helpers


def test_sequence_batch_hand_values():
    batch = sequence_batch([[5, 6], [7]], [[8, 2], [9]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 8, 2], [0, 7, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 1, 1]]
    assert batch["completion_ids"].tolist() == [[8, 2], [9, 0]]
    assert batch["completion_mask"].tolist() == [[1, 1], [1, 0]]


def test_loss_scale_hand_values():
    assert loss_scale([2, 3, 5], [0, 2], "seq-mean-token-mean") == pytest.approx(2 / 3)
    assert loss_scale([2, 3, 5], [0, 2], "token-mean") == pytest.approx(7 / 10)


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_loss_on_effective_rows_times_scale_equals_full_batch_loss(aggregation):
    torch.manual_seed(0)
    logprobs, old = -torch.rand(4, 3), -torch.rand(4, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    adv = torch.tensor([0.8, 0.0, -1.2, 0.0])
    full = policy_loss(logprobs, old, adv, mask, aggregation=aggregation)
    keep = [0, 2]
    scale = loss_scale(mask.sum(1).tolist(), keep, aggregation)
    part = policy_loss(logprobs[keep], old[keep], adv[keep], mask[keep], aggregation=aggregation)
    assert float(scale * part) == pytest.approx(float(full), abs=1e-6)


def test_completion_logprobs_match_the_generation_logits(tokenizer):
    model = tiny_vlm(tokenizer).eval()
    prompts = make_prompts(model, tokenizer)[:3]
    ids, mask = left_pad([p.token_ids for p in prompts], tokenizer.pad_token_id)
    pixels = torch.stack([p.pixel_values for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                             max_new_tokens=5, min_new_tokens=5, do_sample=False,
                             output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id)
        completion = out.sequences[:, ids.shape[1]:]
        expected = torch.stack(out.logits, 1).float().log_softmax(-1)
        expected = expected.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        batch = sequence_batch([p.token_ids for p in prompts], completion.tolist(),
                               tokenizer.pad_token_id)
        got = completion_logprobs(model, batch, pixels)
    assert got.shape == (3, 5)
    assert torch.allclose(got, expected, atol=1e-4)


# --------------------------------------------------------------------------- the loop


def test_loop_trains_and_reports_every_metric(tokenizer, tmp_path):
    model = tiny_vlm(tokenizer)
    before = model.model.multi_modal_projector.linear_1.weight.detach().clone()
    reward = hybrid_reward({"accuracy": Scripted(lambda c, n: [float(i % 3 == 0) for i in
                                                               range(n)]),
                            "format": format_reward}, {"accuracy": 1.0, "format": 1.0})
    seen = []
    ck = Checkpointer("grpo", tmp_path, CheckpointPolicy(every=2, minutes=None, keep=5))
    monitor = MonitorConfig(window=2, thresholds={"rm_rise": 0.2, "format_drop": 0.3},
                            patience=1)
    result = run(model, tokenizer, reward, ssb=SSB, on_step=lambda s, m: seen.append(s),
                 monitor=monitor, checkpoint=ck.phase("train"))
    assert seen == [1, 2, 3] and len(result.history) == 3
    for h in result.history:
        assert torch.isfinite(torch.tensor(h["loss"]))
        assert h["effective_ratio_after"] >= h["effective_ratio_before"]
        for key in ("buffer_size", "replay_fraction", "clip_fraction", "tokens_per_s",
                    "reward/accuracy", "reward/format", "format_rate", "accuracy",
                    "monitor/reward_hacking", "monitor/format_collapse", "grad_norm"):
            assert key in h, key
    assert result.history[-1]["buffer_size"] > 0
    assert not torch.equal(before, model.model.multi_modal_projector.linear_1.weight)
    s = result.summary
    assert s["effective_ratio_mean"] >= s["effective_ratio_before_mean"]
    assert s["stopped_early"] == 0.0 and s["steps"] == 3.0
    # one checkpoint path: every 2 steps and the last, engine + the loop's GRPOState
    assert [p.name for p in sorted(tmp_path.glob("step-*"))] == ["step-000002", "step-000003"]
    saved = torch.load(tmp_path / "step-000003" / "loop-rank0.pt", weights_only=True)
    state = GRPOState.from_dict(saved["loop"])
    assert state.history == result.history and state.stop_reason is None
    assert len(state.ssb["entries"]) == result.history[-1]["buffer_size"]


def test_ssb_replays_when_every_advantage_vanishes(tokenizer):
    results = {}
    for name, ssb in (("on", SSB), ("off", SSBConfig(enabled=False))):
        reward = hybrid_reward({"accuracy": Scripted(alternating_then_zero)}, {"accuracy": 1.0})
        results[name] = run(tiny_vlm(tokenizer), tokenizer, reward, ssb=ssb).history
    on, off = results["on"], results["off"]
    assert on[0]["effective_ratio_before"] == 1.0 and on[0]["replay_fraction"] == 0.0
    for h in on[1:]:  # all rewards equal: nothing to learn from but the buffer
        assert h["effective_ratio_before"] == 0.0
        assert h["effective_ratio_after"] == 0.5  # capped by max_replay_fraction
        assert h["replay_fraction"] == 0.5 and h["loss"] != 0.0
    for h in off[1:]:
        assert h["effective_ratio_after"] == 0.0 and h["loss"] == 0.0


def test_monitor_stops_when_the_reward_model_score_rises_alone(tokenizer):
    calls = []

    def rising_rm(prompts, completions):
        calls.append(1)
        return [0.3 * len(calls)] * len(completions)

    reward = hybrid_reward({"accuracy": Scripted(lambda c, n: [0.0] * n),
                            "format": format_reward,
                            "reward_model": make_reward_model_reward(rising_rm)},
                           {"accuracy": 1.0, "format": 1.0, "reward_model": 1.0})
    monitor = MonitorConfig(window=2, thresholds={"rm_rise": 0.2, "format_drop": 0.5},
                            stop_on_flag=True, patience=1)
    result = run(tiny_vlm(tokenizer), tokenizer, reward, steps=5, monitor=monitor)
    assert len(result.history) == 2
    assert result.summary["stopped_early"] == 1.0
    assert result.stop_reason.startswith("step 2: stopped early on reward_hacking")
    assert result.history[-1]["monitor/reward_hacking"] == 1.0


def test_rm_accuracy_gap_is_recorded_without_stopping(tokenizer):
    """The MPO threshold in GRPO: RM score 0.9 with rule accuracy 0 is a gap of 0.9 > 0.5; with
    stop_on_flag off the run goes on and the flag (first message) is kept for the gate."""
    reward = hybrid_reward({"accuracy": Scripted(lambda c, n: [0.0] * n),
                            "format": format_reward,
                            "reward_model": make_reward_model_reward(
                                lambda prompts, completions: [0.9] * len(completions))},
                           {"accuracy": 1.0, "format": 1.0, "reward_model": 0.0})
    monitor = MonitorConfig(window=2, patience=1, thresholds={
        "rm_rise": 10.0, "format_drop": 1.0, "rm_accuracy_gap": 0.5})
    result = run(tiny_vlm(tokenizer), tokenizer, reward, steps=3, monitor=monitor)
    assert len(result.history) == 3 and result.stop_reason is None
    assert list(result.flags) == ["rm_accuracy_gap"]
    assert result.flags["rm_accuracy_gap"].startswith("step 2: rm_accuracy_gap: reward-model "
                                                      "score exceeds rule accuracy by 0.900")
    assert result.history[-1]["monitor/rm_accuracy_gap_value"] == pytest.approx(0.9)


def test_kl_to_the_reference_and_several_epochs(tokenizer):
    def reward():
        scripted = Scripted(lambda c, n: [float(i % 2) for i in range(n)])
        return hybrid_reward({"accuracy": scripted}, {"accuracy": 1.0})

    one = run(tiny_vlm(tokenizer), tokenizer, reward(), steps=2, kl_coef=0.1).history
    assert one[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # first forward: policy == reference
    assert one[1]["kl"] > 0.0
    two = run(tiny_vlm(tokenizer), tokenizer, reward(), steps=2, kl_coef=0.1, ppo_epochs=2,
              aggregation="token-mean").history
    assert two[0]["kl"] > 0.0  # the second epoch sees the updated policy
    for h in one + two:
        assert torch.isfinite(torch.tensor([h["loss"], h["kl"], h["clip_fraction"]])).all()


def test_truncated_importance_sampling_and_the_logprob_gap(tokenizer):
    """With the engine's log-probabilities (transformers here: the trainer's own numerics), the
    gap is ~0, the importance weights ~1, and tis_cap turns them on; without it, no weights."""
    def reward():
        return hybrid_reward({"accuracy": Scripted(lambda c, n: [float(i % 2) for i in range(n)])},
                             {"accuracy": 1.0})

    model = tiny_vlm(tokenizer)
    rollout = Rollout.transformers(model, tokenizer, 6, temperature=1.0)
    rollout.logprobs = True
    result = train_grpo(model, tokenizer, make_prompts(model, tokenizer), reward(), rollout,
                        settings(steps=2, tis_cap=2.0), progress=False)
    for step in result.history:
        assert step["logprob_gap_max"] < 1e-4
        assert step["tis_weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert result.summary["logprob_gap_mean"] < 1e-4
    plain = run(tiny_vlm(tokenizer), tokenizer, reward(), steps=1).history[0]
    assert "tis_weight_mean" not in plain and "logprob_gap_mean" not in plain


def test_bad_arguments_are_named(tokenizer):
    reward = hybrid_reward({"format": format_reward}, {"format": 1.0})
    with pytest.raises(ValueError, match="group_size"):  # the config section refuses it
        run(tiny_vlm(tokenizer), tokenizer, reward, group_size=1)
    with pytest.raises(ValueError, match="zero_stage 3 needs rollouts on vLLM"):
        run(tiny_vlm(tokenizer), tokenizer, reward, backend="deepspeed", zero_stage=3)
    model = tiny_vlm(tokenizer)
    unknown = settings().model_copy(update={"loss": "ppo"})  # past the config's own check
    with pytest.raises(ValueError, match="unknown grpo.loss 'ppo'; known policy losses: "
                                         "dr_grpo, grpo, gspo"):
        train_grpo(model, tokenizer, make_prompts(model, tokenizer), reward,
                   make_rollout(model, tokenizer), unknown, progress=False)


def test_dr_grpo_in_the_config_sets_its_advantages_and_normaliser():
    cfg = GRPOConfig(loss="dr_grpo")
    assert (cfg.scale_by_std, cfg.aggregation) == (False, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="grpo.loss dr_grpo divides no advantage"):
        GRPOConfig(loss="dr_grpo", scale_by_std=True)
    with pytest.raises(ValueError, match="grpo.loss dr_grpo divides no advantage"):
        GRPOConfig(loss="dr_grpo", aggregation="token-mean")


@pytest.mark.parametrize("loss", ["gspo", "dr_grpo"])
def test_the_loop_trains_with_each_loss_variant(tokenizer, loss):
    """Two epochs per batch: the second sees ratios != 1, where the variants differ."""
    reward = hybrid_reward({"accuracy": Scripted(lambda c, n: [float(i % 2) for i in range(n)])},
                           {"accuracy": 1.0})
    model = tiny_vlm(tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    history = run(model, tokenizer, reward, steps=2, loss=loss, ppo_epochs=2).history
    for h in history:
        assert torch.isfinite(torch.tensor([h["loss"], h["clip_fraction"]])).all()
        assert h["loss"] != 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_resume_from_a_checkpoint_continues_exactly(tokenizer, tmp_path):
    """A run resumed from its step-2 checkpoint (fresh model object, RNGs elsewhere) ends with
    the weights and history of the uninterrupted 4-step run: engine, RNGs, sampler, SSB and
    monitor all come back through the one checkpoint path."""
    import shutil

    def reward():
        return hybrid_reward({"accuracy": Scripted(lambda c, n: [float(i % 3 == 0)
                                                                for i in range(n)]),
                              "format": format_reward}, {"accuracy": 1.0, "format": 1.0})

    policy = CheckpointPolicy(every=2, minutes=None, keep=5)
    whole = tiny_vlm(tokenizer)
    full = run(whole, tokenizer, reward(), steps=4, ssb=SSB,
               checkpoint=Checkpointer("grpo", tmp_path / "a", policy).phase("train"))
    shutil.copytree(tmp_path / "a" / "step-000002", tmp_path / "b" / "step-000002")
    ck = Checkpointer("grpo", tmp_path / "b", policy)
    assert ck.resumed_from_step == 2
    resumed_model = tiny_vlm(tokenizer)
    torch.manual_seed(123)  # the checkpoint's RNG states must win over whatever is current
    resumed = run(resumed_model, tokenizer, reward(), steps=4, ssb=SSB,
                  checkpoint=ck.phase("train"))
    assert len(resumed.history) == 4
    for a, b in zip(full.history, resumed.history, strict=True):
        assert {k: v for k, v in a.items() if not k.endswith("_s") and "per_s" not in k} == \
            {k: v for k, v in b.items() if not k.endswith("_s") and "per_s" not in k}
    for a, b in zip(whole.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_prefilter_keeps_prompts_with_reward_spread(tokenizer):
    model = tiny_vlm(tokenizer)
    prompts = make_prompts(model, tokenizer)

    def spread_on_first_two(call, n):  # n = 2 prompts x 3: only the first prompt varies
        return [0.0, 1.0, 0.0, 1.0, 1.0, 1.0] if call == 0 else [0.0] * n

    reward = hybrid_reward({"accuracy": Scripted(spread_on_first_two)}, {"accuracy": 1.0})
    kept, stats = prefilter_pool(prompts, make_rollout(model, tokenizer), reward, group_size=3,
                                 batch_prompts=2, seed=0)
    assert [p.id for p in kept] == ["p0"]
    assert stats == {"prefilter_kept": 1.0, "prefilter_total": 4.0}


# --------------------------------------------------------------------------- the stage


def _stage_ctx(tokenizer, tmp_path, overrides, reward_model=False):
    root = Path(__file__).resolve().parents[1]
    exp = load_experiment(root / "pipelines" / "configs" / "smoke.yaml", [
        "data.image_size=16", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=2",
        "grpo.max_new_tokens=8", "evaluate.max_new_tokens=8", *overrides])
    dataset = tmp_path / "data"
    synthesize(dataset, families=["counting"], num_train=4, num_val=2, num_test=2,
               image_size=16, seed=0, progress=False)
    meta = {"stage": "sft", "parent": None, "config_fingerprint": "f"}
    inputs = {"sft_model": save_model(tiny_vlm(tokenizer), tokenizer, tmp_path / "sft", meta),
              "dataset": dataset}
    if reward_model:
        rm = RewardModel(tiny_vlm(tokenizer))
        inputs["reward_model"] = save_reward_model(rm, tokenizer, tmp_path / "rm", meta,
                                                   ScoreCalibration(-1.0, 1.0))
    return StageContext(exp=exp, stage="grpo", inputs=inputs,
                        outputs={"model": tmp_path / "out", "checkpoints": tmp_path / "ckpt"},
                        tracker=StageTracker(None, "test", register=False))


def test_grpo_stage_trains_saves_and_reports(tokenizer, tmp_path):
    from r1vflow.stages.grpo import run as run_stage

    outcome = run_stage(_stage_ctx(tokenizer, tmp_path, ["grpo.checkpoint_every=1"]))
    for key in ("effective_ratio_mean", "effective_ratio_before_mean", "val_accuracy",
                "tokens_per_s", "stopped_early"):
        assert key in outcome.metrics, key
    assert outcome.metrics["trainable_params_llm"] == 0.0  # default: projector only
    assert list((tmp_path / "out").glob("*.safetensors"))
    index = json.loads((tmp_path / "ckpt" / "index.json").read_text())
    root = Path(index.pop("root"))  # the checkpoints output: the resumable ones, as mpo's
    assert index == {"checkpoints": ["step-000001", "step-000002"], "store_prefix": None,
                     "resumed_from_step": 0}
    assert (root / "step-000002" / "loop-rank0.pt").is_file()
    assert "| step | reward |" in outcome.report


def test_grpo_stage_adds_the_reward_model_score(tokenizer, tmp_path):
    from r1vflow.stages.grpo import run as run_stage

    ctx = _stage_ctx(tokenizer, tmp_path, ["grpo.reward_weights.reward_model=0.5"],
                     reward_model=True)
    outcome = run_stage(ctx)
    rm_score = outcome.metrics["reward/reward_model_mean"]  # calibrated 0..5, then / 5
    assert 0.0 <= rm_score <= 1.0
    assert 0.0 <= outcome.metrics["reward_mean_mean"] <= 2.5  # 1 + 1 + 0.5 * [0, 1]
    del ctx.inputs["reward_model"]
    with pytest.raises(ValueError, match="enable the train_reward_model stage"):
        run_stage(ctx)
