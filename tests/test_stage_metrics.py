"""What a stage's metrics must be before KFP, MLflow and summary.json take them."""


def test_undefined_stage_metrics_are_left_out_not_serialized_as_nan(capsys):
    """The tiny preset's distill accepted chains of one length: its rank correlation is NaN,
    which KFP's metrics refused (SerializeToJsonError) after the stage had succeeded."""
    from r1vflow.runtime.execute import finite_metrics

    kept = finite_metrics({"acceptance_rate": 0.5, "length_difficulty_spearman": float("nan"),
                           "ratio": float("inf")})
    assert kept == {"acceptance_rate": 0.5}
    assert "metric length_difficulty_spearman is undefined (nan)" in capsys.readouterr().out
