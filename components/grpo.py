"""grpo: R1V2 GRPO on the latest model before it (MPO, else SFT, else base) (hybrid rewards, Selective Sample Buffer, reward monitor);
the reward model, when the DAG trains one, adds its score to the reward (and to the monitor).
Outputs the trained model and the index of its periodic checkpoints (`grpo.checkpoint_every`)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("rollout"), install_kfp_package=False)
def grpo(experiment_json: str, dataset: Input[Dataset],
         model: Output[Model], checkpoints: Output[Artifact], metrics: Output[Metrics],
         report: Output[Markdown], html_report: Output[HTML],
         reward_model: Input[Model] = None, sft_model: Input[Model] = None,
         mpo_model: Input[Model] = None, base_model: Input[Model] = None) -> str:
    from r1vflow.runtime.execute import execute

    models = {"reward_model": reward_model, "sft_model": sft_model, "mpo_model": mpo_model,
              "base_model": base_model}
    extra = {k: m.path for k, m in models.items() if m is not None}
    return execute("grpo", experiment_json,
                   inputs={"dataset": dataset.path, **extra},
                   outputs={"model": model.path, "checkpoints": checkpoints.path},
                   metrics=metrics, report=report, html_report=html_report)
