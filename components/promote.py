"""The promotion gate: `decide_promotion` compares the candidate with the current champion,
`promote` (run under `dsl.If`) moves the `champion` alias. Never cached: the champion may have
changed since an identical evaluation."""

from kfp import dsl

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("base"), install_kfp_package=False)
def decide_promotion(experiment_json: str, evaluation: str) -> bool:
    from r1vflow.config.slicing import experiment_from_slice
    from r1vflow.runtime.cluster import finish_parent_run
    from r1vflow.runtime.execute import tracking_env
    from r1vflow.tracking.promotion import decide
    from r1vflow.tracking.runs import experiment_name

    exp = experiment_from_slice(experiment_json)
    uri = tracking_env(exp)
    decision = decide(evaluation, exp.tracking.promotion_min_delta)
    # on a cluster: the parent run is FINISHED even when every stage came from KFP's cache
    finish_parent_run(uri, experiment_name(exp.name, exp.tracking.experiment_name), exp.name,
                      exp.fingerprint())
    return decision


@dsl.component(base_image=image_for("base"), install_kfp_package=False)
def promote(experiment_json: str, evaluation: str) -> str:
    from r1vflow.config.slicing import experiment_from_slice
    from r1vflow.runtime.execute import tracking_env
    from r1vflow.tracking.promotion import promote as move_champion

    tracking_env(experiment_from_slice(experiment_json))
    champion = move_champion(evaluation)
    print(f"champion -> {champion}")
    return champion
