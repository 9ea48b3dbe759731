"""`r1vflow bench grpo --quick`: ours on transformers, ours on vLLM and TRL's GRPOTrainer run the
same work; each trainer's rollout tokens/s is over its own rollout time, not its whole step."""

import json
import statistics

import pytest

from r1vflow.bench.grpo import QUICK, Stopwatch, run_bench


def test_stopwatch_sums_the_time_inside_each_call_even_when_it_raises():
    ticks = iter([10.0, 12.5, 20.0, 20.25])
    watch = Stopwatch(clock=lambda: next(ticks))

    def work(x):
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    timed = watch.wrap(work)
    assert timed(3) == 6
    with pytest.raises(ValueError, match="negative"):
        timed(-1)
    assert (watch.seconds, watch.calls) == (2.75, 2)  # 2.5 + 0.25
    assert timed.__name__ == "work"


def test_quick_bench_times_each_trainers_rollouts_apart(tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(out, quick=True)
    assert json.loads(out.read_text()) == result
    trl, ours, vllm = result["trl"], result["ours"], result["ours_vllm"]
    # TRL's rollouts are the time inside GRPOTrainer._generate: a part of each step, which
    # also scores and trains (the whole step time is what the bench reported before)
    assert trl["rollout_s"] < trl["step_time_sum"]
    assert trl["rollout_tokens_per_s"] * trl["rollout_s"] == pytest.approx(
        trl["completion_tokens"], rel=1e-3)
    for run in (ours, vllm):
        assert run["rollout_tokens_per_s"] == pytest.approx(
            run["completion_tokens"] / run["where_time_goes"]["rollout_s"], rel=1e-3)
    # the speedups are the median over rounds of TRL seconds / ours, round by round
    assert result["speedup_vllm"] == pytest.approx(statistics.median(
        t / o for t, o in zip(trl["rounds_seconds"], vllm["rounds_seconds"], strict=True)),
        abs=1e-4)
    assert len(vllm["rounds_seconds"]) == QUICK.rounds
    # vLLM sampled the policy being trained: a full sync at the start, one per optimizer step,
    # and its log-probabilities match the trainer's (float32)
    assert (vllm["backend"], vllm["weight_syncs"]) == ("vllm", QUICK.steps + 1)
    assert vllm["logprob_gap_mean"] < 1e-3
    assert result["targets_met"]["vllm_speedup_ge_3"] == (result["speedup_vllm"] >= 3.0)
