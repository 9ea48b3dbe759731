"""The promotion gate: `decide_promotion` compares the candidate with the current champion,
`promote` (run under `dsl.If`) moves the `champion` alias. Never cached: the champion may have
changed since an identical evaluation."""

from kfp import dsl

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("base"), install_kfp_package=False)
def decide_promotion(experiment_json: str, evaluation: str) -> bool:
    from r1vflow.config.slicing import experiment_from_slice
    from r1vflow.runtime.execute import tracking_env
    from r1vflow.tracking.promotion import decide

    exp = experiment_from_slice(experiment_json)
    tracking_env(exp)
    return decide(evaluation, exp.tracking.promotion_min_delta)


@dsl.component(base_image=image_for("base"), install_kfp_package=False)
def promote(experiment_json: str, evaluation: str) -> str:
    from r1vflow.config.slicing import experiment_from_slice
    from r1vflow.runtime.execute import tracking_env
    from r1vflow.tracking.promotion import promote as move_champion

    tracking_env(experiment_from_slice(experiment_json))
    champion = move_champion(evaluation)
    print(f"champion -> {champion}")
    return champion
