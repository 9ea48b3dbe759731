"""mpo: R1V2 Mixed Preference Optimization on the latest model before it (SFT, aligned or base):
pairs sampled from that model and checked by rules (and the reward model, when the DAG trains
one), the DPO + BCO + NLL loss on the parts `mpo.trainable` names. Outputs the trained model,
the periodic checkpoints (`mpo.checkpoint_every`) and the training pairs."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("rollout"), install_kfp_package=False)
def mpo(experiment_json: str, dataset: Input[Dataset], base_model: Input[Model],
        model: Output[Model], checkpoints: Output[Artifact], pairs: Output[Dataset],
        metrics: Output[Metrics], report: Output[Markdown], html_report: Output[HTML],
        aligned_model: Input[Model] = None,
        sft_model: Input[Model] = None, reward_model: Input[Model] = None) -> str:
    from r1vflow.runtime.execute import execute

    models = {"aligned_model": aligned_model, "sft_model": sft_model,
              "reward_model": reward_model}
    return execute("mpo", experiment_json,
                   inputs={"dataset": dataset.path, "base_model": base_model.path,
                           **{k: m.path for k, m in models.items() if m is not None}},
                   outputs={"model": model.path, "checkpoints": checkpoints.path,
                            "pairs": pairs.path},
                   metrics=metrics, report=report, html_report=html_report)
