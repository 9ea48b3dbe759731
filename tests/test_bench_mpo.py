"""`r1vflow bench mpo --quick`: both trainers do the same number of steps on the same pairs, and
the speedup is the ratio of their measured seconds."""

import json

from r1vflow.bench.mpo import QUICK, run_bench, text_pairs


def test_text_pairs_differ_and_cover_the_families():
    pairs = text_pairs(12, seed=0)
    assert len(pairs) == 12 and all(c != r for _, c, r in pairs)
    prompts = [p for p, _, _ in pairs]
    assert any("How many" in p for p in prompts)  # counting
    assert any("digit" in p for p in prompts)  # digit_arithmetic
    assert any("more" in p for p in prompts)  # comparison


def test_quick_bench_runs_both_trainers_on_the_same_work(tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(out, quick=True)
    assert json.loads(out.read_text())["speedup"] == result["speedup"]
    assert result["ours"]["steps"] == result["trl"]["steps"] == QUICK.steps
    ratio = result["trl"]["seconds"] / result["ours"]["seconds"]
    assert result["speedup"] == ratio
    # same start, same pairs, same loss types: the first losses agree up to the conventions
    # that differ (BCO shift 0 at step 1 on both; NLL per pair vs per token, and batch order)
    assert abs(result["ours"]["first_loss"] - result["trl"]["first_loss"]) < 0.5
